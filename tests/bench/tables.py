"""What every few-label table shares: rows of per-seed results, means ± std, paired deltas against a goal.

Every row of one seed is trained on the same polygons, so the difference between two rows seed by
seed removes the spread of the polygon draw that each row's ± std carries. Stds are population
stds (ddof 0) over seeds, as in every table of the README.
"""

from __future__ import annotations

import datetime as dt
import platform
from collections.abc import Sequence
from typing import Any

import numpy as np


def mean_std(values: Sequence[float], scale: float = 100.0) -> dict[str, float]:
    v = np.asarray(values, float) * scale
    return {"mean": round(float(v.mean()), 2), "std": round(float(v.std()), 2)}


def paired(a: Sequence[dict], b: Sequence[dict], key: str = "kappa") -> list[float]:
    """Per-seed ``a − b`` in points (×100)."""
    return [100 * (x[key] - y[key]) for x, y in zip(a, b, strict=True)]


def delta_line(name: str, base: str, d: Sequence[float], goal: float | None = None) -> str:
    text = (f"{name} − {base}: {np.mean(d):+.1f} ± {np.std(d):.1f} Kappa points (per seed: "
            + ", ".join(f"{x:+.1f}" for x in d) + ")")
    if goal is not None:
        text += f"; goal ≥ {goal:+g}, " + ("met" if round(float(np.mean(d)), 2) >= goal else "not met")
    return text + "."


def goal_lines(rows: dict[str, list[dict]], deep: str, baseline: str, over_baseline: float, absolute: float,
               max_std: float = 2.5) -> list[str]:
    """The three goals of a few-label table: absolute Kappa, margin over the baseline, seed spread."""
    k = np.array([r["kappa"] for r in rows[deep]]) * 100
    lines = [f"{deep}: Kappa {k.mean():.1f} ± {k.std():.1f} over {len(k)} seeds; goal ≥ {absolute:g}, "
             + ("met" if round(k.mean(), 2) >= absolute else "not met") + f"; seed std goal ≤ {max_std:g}, "
             + ("met" if round(k.std(), 2) <= max_std else "not met") + "."]
    if baseline in rows:
        lines.append(delta_line(deep, baseline, paired(rows[deep], rows[baseline]), over_baseline))
    return lines


def meta(**kw: Any) -> dict[str, Any]:
    from geossl.checkpoint import versions

    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
            "cpu": platform.processor() or platform.machine(), "versions": versions(), **kw}


def markdown(title: str, caption: str, rows: dict[str, list[dict]], columns: Sequence[tuple[str, str]],
             notes: Sequence[str] = ()) -> str:
    """A table: one line per row, ``columns`` = (header, result key) shown as mean ± std ×100, plus
    the mean fine-tune seconds and steps where the runs record them."""
    head = "| row | " + " | ".join(h for h, _ in columns) + " | train s | steps | seeds |"
    lines = [f"# {title}", "", caption, "", head, "|---|" + "---|" * (len(columns) + 3)]
    for name, runs in rows.items():
        cells = []
        for _, key in columns:
            ms = mean_std([r[key] for r in runs])
            cells.append(f"{ms['mean']:.1f} ± {ms['std']:.1f}")
        secs = np.mean([r.get("train_seconds", np.nan) for r in runs])
        steps = [r["steps"] for r in runs if r.get("steps") is not None]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {secs:.0f} | "
                     + (f"{np.mean(steps):.0f}" if steps else "–") + f" | {len(runs)} |")
    if notes:
        lines += [""] + list(notes)
    return "\n".join(lines) + "\n"
