"""What pretraining bought in our measurements: the figures the Pretrain panel quotes before a run.

Pretraining costs an hour or a night before the first map, and at the budgets measured so far it
did not beat fine-tuning from random weights (bench/results/fewlabel*.md). So the package ships the
measured gain — Kappa of a model fine-tuned from the pretrained encoder minus Kappa of the same
fine-tune from random init, paired by seed — per dataset, method and pretraining budget
(``data/pretraining_gain.json``, written by ``tests/bench/gain_table.py``), and
:func:`estimate_gain` says what applies to a chosen method and budget without ever going beyond
what was seen: the nearest measured budget at or below the chosen one, "not measured" above the
largest one or below the smallest.

Table (``schema`` 1)::

    {"schema": 1, "measured": ISO date of the newest figures, "machine": str,
     "hardware": "cpu-2-cores", "hardware_label": "2-core CPU", "protocol": how every figure was made,
     "datasets": {"dubai-rgb": {"label": "Dubai RGB", "bands": 3, "measured": ISO date,
                                "finetune": the fine-tune budget, "pretrain": the pretraining recipe,
                                "curves": {"glcnet": [{"minutes": 5.25, "steps": 400,
                                                       "delta_kappa": -1.96, "std": 5.3, "seeds": 3,
                                                       "per_seed": [2.02, 1.53, -9.43]}, ...], ...}},
                  "sentinel2-13band": {...}}}

``delta_kappa`` and ``per_seed`` are in Kappa points (×100); ``std`` is the population standard
deviation (ddof 0) of ``per_seed``, as the few-label tables print it. Curve keys are method names
(a variant such as ``rs-byol``, BYOL with band-group views, is looked up by its own name).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

TABLE = "pretraining_gain.json"
TOLERANCE = 0.02  # a point measured at up to 2% over the chosen budget counts as at it (10.1 min for "10 min")


def load_gain_table(path: str | Path | None = None) -> dict[str, Any]:
    """The table shipped with the package (or the one at ``path``)."""
    if path is not None:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    return json.loads(resources.files("geossl").joinpath("data", TABLE).read_text(encoding="utf-8"))


def pick_dataset(table: dict[str, Any], bands: int | None) -> str:
    """The measured dataset closest to imagery of ``bands`` bands (3–4: RGB(N), ≥ 10: Sentinel-2);
    the first one when the band count is unknown. Ties go to the one with fewer bands."""
    names = list(table["datasets"])
    if bands is None:
        return names[0]
    return min(names, key=lambda n: (abs(int(table["datasets"][n]["bands"]) - bands), table["datasets"][n]["bands"]))


def verdict(point: dict[str, Any]) -> str:
    """``pays`` when the mean gain is positive and beyond one standard deviation over ≥ 2 seeds, else ``no-gain``."""
    mean, std, seeds = point["delta_kappa"], point["std"], point["seeds"]
    return "pays" if seeds >= 2 and mean > 0 and mean > std else "no-gain"


def estimate_gain(table: dict[str, Any], method: str, *, minutes: float | None = None, steps: int | None = None,
                  bands: int | None = None) -> dict[str, Any]:
    """What was measured for ``method`` at the chosen budget (``minutes`` or ``steps``) on the closest dataset.

    ``basis``: ``measured`` (``point`` is the nearest measured budget at or below the chosen one;
    ``exact`` when it is the chosen one), ``beyond`` (above the largest measured budget: ``point`` is
    that largest one, and nothing is claimed for the chosen budget), ``below`` (under the smallest:
    ``point`` is the smallest), ``none`` (no curve for this method on that dataset). ``verdict`` is
    :func:`verdict` of the point for ``measured``, else ``unmeasured``; each quoted point carries its
    own ``verdict``. ``pays_from`` is the smallest measured budget that paid, if any: the
    recommendation when the chosen one did not.
    """
    if (minutes is None) == (steps is None):
        raise ValueError("give the budget as minutes or as steps")
    axis, budget = ("minutes", float(minutes)) if minutes is not None else ("steps", float(steps))
    name = pick_dataset(table, bands)
    data = table["datasets"][name]
    points = sorted(({**p, "verdict": verdict(p)} for p in data["curves"].get(method, [])), key=lambda p: p[axis])
    result: dict[str, Any] = {
        "method": method, "dataset": name, "dataset_label": data["label"], "bands": data["bands"],
        "hardware": table.get("hardware"), "hardware_label": table.get("hardware_label"),
        "measured": data.get("measured", table.get("measured")), "protocol": table.get("protocol"),
        "finetune": data.get("finetune"), "pretrain": data.get("pretrain"),
        "budget": {axis: minutes if minutes is not None else steps}, "axis": axis,
        "basis": "none", "point": None, "exact": False, "verdict": "unmeasured",
        "largest": None, "smallest": None, "pays_from": None,
    }
    if not points:
        return result
    result["largest"] = {k: points[-1][k] for k in ("minutes", "steps")}
    result["smallest"] = {k: points[0][k] for k in ("minutes", "steps")}
    result["pays_from"] = next((p for p in points if p["verdict"] == "pays"), None)
    within = [p for p in points if p[axis] <= budget * (1 + TOLERANCE)]
    if not within:
        result.update(basis="below", point=points[0])
    elif within[-1] is points[-1] and budget > points[-1][axis] * (1 + TOLERANCE):
        result.update(basis="beyond", point=points[-1])
    else:
        point = within[-1]
        result.update(basis="measured", point=point, verdict=point["verdict"],
                      exact=abs(point[axis] - budget) <= budget * TOLERANCE)
    return result
