"""The measured pretraining gain in words: what the Pretrain section says before an hour is spent.

The backend judges (``GET /pretraining/gain``: the nearest measured budget at or below the chosen
one, never beyond the largest, with a verdict per point); here that answer becomes one sentence and
a level, so the panel and the Processing algorithm say the same thing. Plain functions, no widgets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

METHOD_LABELS = {"glcnet": "GLCNet", "simclr": "SimCLR", "byol": "BYOL", "moco": "MoCo v2", "rs-byol": "RS-BYOL"}
OK, WARN, UNKNOWN = "ok", "warn", "unknown"  # pays / did not pay / not measured
NOT_PAID = "Pretraining did not pay off at this budget in our tests; fine-tuning from scratch is as good."


def gain_path(method: str, minutes: float | None = None, steps: int | None = None, bands: int | None = None,
              views: bool = False) -> str:
    """The request for a method and budget; BYOL with band views is looked up as RS-BYOL."""
    query: dict[str, Any] = {"method": "rs-byol" if views and method == "byol" else method}
    query.update({"minutes": f"{minutes:g}"} if minutes is not None else {"steps": steps})
    if bands:
        query["bands"] = bands
    return "pretraining/gain?" + urlencode(query)


def budget_text(minutes: float | None = None, steps: int | None = None) -> str:
    """"10 min", "1 h", "1 h 30 min", "400 steps"."""
    if minutes is None:
        return f"{int(steps or 0)} steps"
    if minutes < 60:
        return f"{minutes:.3g} min"
    hours, rest = divmod(round(minutes), 60)
    return f"{hours} h" + (f" {rest} min" if rest else "")


def _budget(point: Mapping[str, Any], axis: str) -> str:
    return budget_text(minutes=point["minutes"]) if axis == "minutes" else budget_text(steps=point["steps"])


def _change(point: Mapping[str, Any]) -> str:
    return f"{point['delta_kappa']:+.1f} ± {point['std']:.1f}".replace("-", "−") + " points"


def gain_sentence(estimate: Mapping[str, Any], device: str = "cpu") -> tuple[str, str]:
    """(sentence, level) for the backend's estimate; level is OK, WARN (did not pay) or UNKNOWN."""
    method = METHOD_LABELS.get(str(estimate.get("method")), str(estimate.get("method")))
    axis = str(estimate.get("axis") or "minutes")
    budget = estimate.get("budget") or {}
    chosen = budget_text(minutes=budget.get("minutes"), steps=budget.get("steps"))
    dataset, hardware = estimate.get("dataset_label") or "?", estimate.get("hardware_label") or "?"
    point, basis = estimate.get("point"), estimate.get("basis")
    if not point or basis == "none":
        return (f"{method} was not measured on imagery like yours ({dataset}): there is no estimate of what "
                f"{chosen} of pretraining buys.", UNKNOWN)
    where = f"{dataset}, {hardware}, {point['seeds']} seed{'s' if point['seeds'] != 1 else ''}"
    paid = point.get("verdict") == "pays"
    measured = _budget(point, axis)
    if basis == "measured":
        at = f"for {chosen}" if estimate.get("exact") else f"for {measured}, the nearest measured budget below {chosen},"
        text = f"Measured ({where}): {method} {at} changed Kappa by {_change(point)} against no pretraining"
        if paid:
            text, level = text + ".", OK
        else:
            text += " — within noise." if point["delta_kappa"] > 0 else " — no gain."
            better = estimate.get("pays_from")
            if better and better[axis] > point[axis]:
                text += f" In our tests {_budget(better, axis)} did pay off ({_change(better)})."
            text, level = f"{text} ⚠ {NOT_PAID}", WARN
    elif basis == "beyond":
        text = (f"Not measured beyond {measured} ({method}, {where}): at {measured} it changed Kappa by "
                f"{_change(point)} against no pretraining. Whether {chosen} pays was not seen.")
        if not paid:
            text += f" ⚠ At {measured}, the longest measured, it did not pay off."
        level = UNKNOWN if paid else WARN
    else:
        text = (f"Not measured for budgets as short as {chosen} ({method}, {where}): the shortest measured, "
                f"{measured}, changed Kappa by {_change(point)} against no pretraining.")
        if not paid:
            text += f" ⚠ {measured} did not pay off in our tests."
        level = UNKNOWN if paid else WARN
    if axis == "minutes" and device == "cuda":
        text += f" (Minutes measured on a {hardware}: a GPU makes more steps in the same time.)"
    return text, level
