"""The measured-gain table the Pretrain panel quotes, built from benchmark results.

A budget-curve benchmark (pretrain once with ``--lr-schedule constant`` and snapshots, fine-tune
from each snapshot and from random init with the same polygons per seed) writes its results in the
*curve format* below; :func:`build_gain_table` turns them into the table that
``geossl.pretraining_gain`` reads, and :func:`write_gain_table` puts it where the backend package
ships it. :func:`curve_from_fewlabel` reads the older few-label results (one pretraining run per
method, fixed steps, cosine schedule) into the same format: that is how the first table was seeded.

    backend/.venv/bin/python tests/bench/gain_table.py   # seed from bench/results/fewlabel*.json

Curve format::

    {"meta": {"date": ISO 8601, "machine": str, "hardware": "cpu-2-cores", "hardware_label": "2-core CPU",
              "protocol": how the figures were made, in a sentence or two},
     "datasets": {"dubai-rgb": {"label": "Dubai RGB", "bands": 3, "date": ISO 8601 (optional: meta's),
                                "finetune": "150 steps × batch 8 × 128 px, …", "pretrain": "batch 16 × 128 px, …",
                                "random": [Kappa (0–1) fine-tuned from random init, one per seed],
                                "pretrained": {"glcnet": [{"minutes": 10, "steps": 760,
                                                           "kappa": [same seeds, same order]}, …]}}}}

``minutes`` is the budget the snapshot stands for (the one asked, not the wall time it happened
to take), ``steps`` the steps it made.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TABLE_PATH = ROOT / "backend" / "geossl" / "data" / "pretraining_gain.json"
RESULTS = ROOT / "bench" / "results"


def gain_point(minutes: float, steps: int, pretrained: list[float], random: list[float]) -> dict[str, Any]:
    """One budget's paired gain in Kappa points: mean, population std and the per-seed differences."""
    if len(pretrained) != len(random) or not random:
        raise ValueError(f"{len(pretrained)} pretrained against {len(random)} random-init results: pair them by seed")
    d = 100 * (np.asarray(pretrained, float) - np.asarray(random, float))
    return {"minutes": round(float(minutes), 2), "steps": int(steps), "delta_kappa": round(float(d.mean()), 2),
            "std": round(float(d.std()), 2), "seeds": len(d), "per_seed": [round(float(x), 2) for x in d]}


def build_gain_table(curve: dict[str, Any]) -> dict[str, Any]:
    """The ``pretraining_gain.json`` table (schema 1, see ``geossl.pretraining_gain``) from a curve result."""
    meta = curve["meta"]
    datasets = {}
    for name, data in curve["datasets"].items():
        curves = {method: sorted((gain_point(p["minutes"], p["steps"], p["kappa"], data["random"]) for p in points),
                                 key=lambda p: p["minutes"])
                  for method, points in data["pretrained"].items()}
        datasets[name] = {"label": data["label"], "bands": int(data["bands"]),
                          "measured": str(data.get("date") or meta["date"])[:10],
                          "finetune": data["finetune"], "pretrain": data["pretrain"], "curves": curves}
    dates = [d["measured"] for d in datasets.values()]
    return {"schema": 1, "measured": max(dates) if dates else str(meta["date"])[:10], "machine": meta["machine"],
            "hardware": meta["hardware"], "hardware_label": meta["hardware_label"], "protocol": meta["protocol"],
            "datasets": datasets}


def write_gain_table(table: dict[str, Any], path: Path = TABLE_PATH) -> Path:
    path.write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def curve_from_fewlabel(result: dict[str, Any], label: str, bands: int, rows: dict[str, str], finetune: str,
                        pretrain: str) -> dict[str, Any]:
    """A few-label result (``fewlabel.py`` / ``fewlabel_s2.py`` JSON) as one curve-format dataset.

    ``rows``: curve name → the result's row (e.g. ``{"moco": "moco v2"}``). Each row is one budget:
    the run's fixed steps, and its measured wall time as the minutes.
    """
    meta, runs = result["meta"], result["runs"]
    random = [r["kappa"] for r in runs["random init"]]
    pretrained = {name: [{"minutes": meta["pretrain"]["seconds"][row] / 60, "steps": meta["pretrain"]["steps"],
                          "kappa": [r["kappa"] for r in runs[row]]}]
                  for name, row in rows.items() if row in runs}
    return {"label": label, "bands": bands, "date": meta["date"], "finetune": finetune, "pretrain": pretrain,
            "random": random, "pretrained": pretrained}


OLD_PROTOCOL = ("Old recipe, before the budget curve: one pretraining run per method (seed 0) at a fixed step "
                "count with the cosine schedule; its minutes are that run's wall time on 2 CPU cores. Each seed "
                "fine-tunes from random init and from each encoder on the same polygons; the gain is Kappa on "
                "held-out pixels, pretrained minus random init, paired by seed (mean ± population std).")


def seed_curve(results: Path = RESULTS) -> dict[str, Any]:
    """The curve format of the few-label results of 2026-11-23 (Dubai RGB and Sentinel-2, archived: the
    tables of the old 150/300-step recipe, the only pretrained-vs-random pairs measured until the curve
    bench, :mod:`tests.bench.pretrain_curve`, replaces them)."""
    dubai = json.loads((results / "archive" / "fewlabel_2026-11-23.json").read_text())
    s2 = json.loads((results / "archive" / "fewlabel_s2_2026-11-23.json").read_text())
    ft = dubai["meta"]["finetune"]
    datasets = {
        "dubai-rgb": curve_from_fewlabel(
            dubai, "Dubai RGB", 3, {m: m for m in ("glcnet", "simclr", "byol", "moco")},
            f"{ft['steps']} steps × batch {ft['batch']} × {ft['tile']} px, {ft['encoder']} DeepLabV3+, "
            f"{dubai['meta']['images']} aerial tiles, ~{dubai['meta']['label_share']:.0%} of pixels as polygons",
            f"{dubai['meta']['pretrain']['steps']} steps × batch {dubai['meta']['pretrain']['batch']} × "
            f"{dubai['meta']['pretrain']['tile']} px, cosine schedule, all 12 tiles"),
        "sentinel2-13band": curve_from_fewlabel(
            s2, "Sentinel-2 (13 bands)", 13, {"byol": "byol", "moco": "moco v2", "rs-byol": "rs-byol (band groups)"},
            f"{s2['meta']['finetune']['steps']} steps × batch {s2['meta']['finetune']['batch']} × "
            f"{s2['meta']['finetune']['tile']} px on bands 2,3,4,8, {s2['meta']['train_share']:.0%} of each class's "
            "OSM polygons",
            f"{s2['meta']['pretrain']['steps']} steps × batch {s2['meta']['pretrain']['batch']} × "
            f"{s2['meta']['pretrain']['tile']} px, cosine schedule; BYOL and MoCo v2 on bands 2,3,4,8, RS-BYOL on "
            "all 13 (views 2,3,4,8 | 5,6,7,9)"),
    }
    return {"meta": {"date": max(dubai["meta"]["date"], s2["meta"]["date"]), "machine": dubai["meta"]["machine"],
                     "hardware": "cpu-2-cores", "hardware_label": "2-core CPU", "protocol": OLD_PROTOCOL},
            "datasets": datasets}


def main() -> None:
    path = write_gain_table(build_gain_table(seed_curve()))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
