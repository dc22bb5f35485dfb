"""One progress-event type for every front end: CLI bars, JSON lines, service streams, logs."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO


@dataclass
class ProgressEvent:
    """Where a job stands. ``step``/``total`` count the unit of ``stage`` (steps, tiles, windows)."""

    stage: str
    step: int
    total: int
    loss: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressCallback = Callable[[ProgressEvent], None]


def null_progress(_event: ProgressEvent) -> None:
    """Default callback: report nothing."""


class Clock:
    """Elapsed time and ETA of a stage from its start (linear extrapolation)."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def event(self, stage: str, step: int, total: int, **kw: Any) -> ProgressEvent:
        elapsed = time.monotonic() - self.start
        eta = elapsed / step * (total - step) if step > 0 and total >= step else None
        return ProgressEvent(stage, step, total, elapsed_s=round(elapsed, 3),
                             eta_s=None if eta is None else round(eta, 1), **kw)


class TqdmReporter:
    """Progress bars with ETA on stderr (one bar per stage), loss in the postfix."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.bar = None
        self.stage: str | None = None

    def __call__(self, ev: ProgressEvent) -> None:
        from tqdm import tqdm

        if ev.message:
            (self.bar.write if self.bar else lambda m: print(m, file=self.stream))(ev.message)
        if ev.total <= 0:
            return
        if ev.stage != self.stage or self.bar is None:
            self.close()
            self.bar = tqdm(total=ev.total, desc=ev.stage, file=self.stream, dynamic_ncols=True)
            self.stage = ev.stage
        self.bar.n = ev.step
        post = {}
        if ev.loss is not None:
            post["loss"] = f"{ev.loss:.4f}"
        post.update({k: f"{v:.3f}" for k, v in ev.metrics.items() if isinstance(v, float)})
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class JsonLinesReporter:
    """Machine-readable progress: one JSON object per line (``--json``)."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream

    def __call__(self, ev: ProgressEvent) -> None:
        self.stream.write(json.dumps({"event": "progress", **ev.to_dict()}) + "\n")
        self.stream.flush()
