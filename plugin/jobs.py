"""Reading the backend's job objects: state, progress, ETA, losses and metrics, as plain functions.

The panel and the Processing algorithms both show jobs; keeping the interpretation here (and out of
the widgets) means one place to adapt when the service adds a field, and tests without a network.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from html import escape
from typing import Any

KINDS = ("pretrain", "finetune", "predict", "evaluate")
KIND_LABELS = {"pretrain": "Pretrain", "finetune": "Fine-tune", "predict": "Segment", "evaluate": "Evaluate",
               "suggest": "Suggest"}
SUCCEEDED = frozenset({"succeeded", "success", "done", "completed", "finished"})
FAILED = frozenset({"failed", "error"})
CANCELLED = frozenset({"cancelled", "canceled"})
INTERRUPTED = frozenset({"interrupted"})  # the service stopped under it: resumable
TERMINAL = SUCCEEDED | FAILED | CANCELLED | INTERRUPTED


@dataclass(frozen=True)
class Progress:
    """Where a job stands, from its latest progress event."""

    stage: str = ""
    step: int = 0
    total: int = 0
    loss: float | None = None
    eta_s: float | None = None
    message: str = ""

    @property
    def fraction(self) -> float | None:
        """0–1, or None when the stage has no known length (e.g. computing band statistics)."""
        return min(1.0, max(0.0, self.step / self.total)) if self.total > 0 else None


def job_id(job: Mapping[str, Any]) -> str:
    return str(job.get("id") or job.get("job_id") or "")


def job_kind(job: Mapping[str, Any]) -> str:
    return str(job.get("kind") or job.get("type") or job.get("job_type") or "")


def job_state(job: Mapping[str, Any]) -> str:
    return str(job.get("state") or job.get("status") or "").lower()


def is_terminal(job: Mapping[str, Any]) -> bool:
    return job_state(job) in TERMINAL


def succeeded(job: Mapping[str, Any]) -> bool:
    return job_state(job) in SUCCEEDED


def resumable(job: Mapping[str, Any]) -> bool:
    """Interrupted or failed jobs can run again (``POST /jobs/{id}/resume``)."""
    return bool(job.get("resumable", job_state(job) in FAILED | INTERRUPTED))


def job_error(job: Mapping[str, Any]) -> str:
    """The backend's explanation of a failure (already phrased for users by the backend)."""
    error = job.get("error")
    if isinstance(error, Mapping):
        text = str(error.get("message") or error.get("detail") or error)
        hint = error.get("hint")
        return f"{text} ({hint})" if hint else text
    return str(error or "")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def job_progress(job: Mapping[str, Any]) -> Progress:
    """The latest progress event; accepts it nested (``progress: {...}``) or flat on the job."""
    event = job.get("progress")
    if not isinstance(event, Mapping):
        event = job
    step = _number(event.get("step")) or 0
    total = _number(event.get("total")) or 0
    if not total and isinstance(job.get("progress"), int | float):  # a bare 0–1 fraction
        step, total = float(job["progress"]) * 1000, 1000
    return Progress(stage=str(event.get("stage") or ""), step=int(step), total=int(total),
                    loss=_number(event.get("loss")), eta_s=_number(event.get("eta_s")),
                    message=str(event.get("message") or ""))


def format_duration(seconds: float | None) -> str:
    """"45 s", "3 min 05 s", "1 h 02 min": short enough for a progress bar."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_text(job: Mapping[str, Any]) -> str:
    """One line for the progress bar: stage, step/total and time left."""
    state = job_state(job)
    if state in TERMINAL or state in ("queued", "pending"):
        return state
    p = job_progress(job)
    parts = [p.stage] if p.stage else []
    if p.total:
        parts.append(f"{p.step}/{p.total}")
    if p.eta_s is not None and p.total and p.step < p.total:
        parts.append(f"ETA {format_duration(p.eta_s)}")
    return " · ".join(parts) or state or "…"


def loss_points(data: Any) -> list[tuple[float, float]]:
    """(step, loss) pairs from ``GET /jobs/{id}/losses``: a list of pairs or of {step, loss} objects,
    or an object holding such a list (``{"losses": [...]}`` / ``{"steps": [...], "losses": [...]}``)."""
    if isinstance(data, Mapping):
        if isinstance(data.get("steps"), list) and isinstance(data.get("losses"), list):
            return _finite(zip(data["steps"], data["losses"], strict=False))
        for key in ("losses", "points", "items", "history"):
            if isinstance(data.get(key), list):
                return loss_points(data[key])
        return []
    points = []
    for i, item in enumerate(data or []):
        if isinstance(item, Mapping):
            loss = item.get("loss", item.get("train_loss"))
            points.append((item.get("step", i + 1), loss))
        elif isinstance(item, list | tuple) and len(item) >= 2:
            points.append((item[0], item[1]))
        else:
            points.append((i + 1, item))
    return _finite(points)


def _finite(pairs: Iterable[tuple[Any, Any]]) -> list[tuple[float, float]]:
    out = []
    for step, loss in pairs:
        s, v = _number(step), _number(loss)
        if s is not None and v is not None:
            out.append((s, v))
    return out


def job_metrics(job: Mapping[str, Any]) -> dict[str, Any] | None:
    """Accuracy metrics of a finished job: ``evaluate`` results, or a fine-tune's validation."""
    result = job.get("result")
    if not isinstance(result, Mapping):
        return None
    if "overall_accuracy" in result:
        return dict(result)
    for key in ("validation", "metrics"):
        value = result.get(key)
        if isinstance(value, Mapping) and "overall_accuracy" in value:
            return dict(value)
    return None


def metrics_html(metrics: Mapping[str, Any]) -> str:
    """OA, Kappa, mIoU and per-class F1/IoU as a compact HTML table for a QLabel."""
    def f(value: Any) -> str:
        number = _number(value)
        return "–" if number is None else f"{number:.3f}"

    head = (f"<b>OA</b> {f(metrics.get('overall_accuracy'))} &nbsp; <b>Kappa</b> {f(metrics.get('kappa'))}"
            f" &nbsp; <b>mIoU</b> {f(metrics.get('miou'))}")
    pixels = metrics.get("pixels")
    if pixels:
        head += f" &nbsp; <span style='color:gray'>({int(pixels)} px)</span>"
    rows = []
    for name, scores in (metrics.get("per_class") or {}).items():
        if isinstance(scores, Mapping):
            rows.append(f"<tr><td>{escape(str(name))}</td><td align='right'>{f(scores.get('f1'))}</td>"
                        f"<td align='right'>{f(scores.get('iou'))}</td>"
                        f"<td align='right'>{int(_number(scores.get('support')) or 0)}</td></tr>")
    if not rows:
        return head
    return (head + "<table cellspacing='0' cellpadding='2'><tr><th align='left'>class</th><th>F1</th>"
            "<th>IoU</th><th>support</th></tr>" + "".join(rows) + "</table>")
