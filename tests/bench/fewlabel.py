"""Few-label accuracy on the Dubai tiles at the panel's default budget, against a texture Random Forest.

Polygons are drawn per seed as a user would (a handful of squares per class inside the dense masks,
~1 % of the labelled pixels, written as a GeoPackage); every other labelled pixel is scored. Rows:

* **GeoSSL default**: ``geossl finetune`` with nothing but the polygons and the rasters (the
  recipe, budget and prediction defaults a user gets from the CLI, the panel or Processing);
* optional rows fine-tuned from given start weights (``--init NAME=PATH``, e.g. a pretrained
  encoder), with the same defaults;
* **random forest (RGB + texture)**: a pixel Random Forest on RGB plus local mean/std at 3 scales
  from the same polygons (``baselines.py``), the classic baseline a dzetsaka user can build.

Goals (issue #16): default ≥ 60 Kappa, ≥ the forest + 20, seed std ≤ 2.5. Results:
bench/results/fewlabel.{md,json}. The recipe was chosen on other Dubai tiles (``devsets.py``).

    backend/.venv/bin/python tests/bench/fewlabel.py --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from geossl.finetune import run_finetune  # noqa: E402
from geossl.metrics import confusion_matrix, scores  # noqa: E402
from geossl.predict import run_predict  # noqa: E402
from geossl.schemas import FinetuneParams, PredictParams  # noqa: E402

from tests.bench import baselines, dubai, tables  # noqa: E402
from tests.data import SHARED_DATA  # noqa: E402

K = len(dubai.NAMES)
DEFAULT_ROW = "GeoSSL default"
FOREST_ROW = "random forest (RGB + texture)"
NETWORK_ALONE = "network alone (its forest off)"
UNSMOOTHED = "without its smoothing (--smooth 1)"
GOALS = {"absolute": 60.0, "over_forest": 20.0, "max_std": 2.5}


def evaluate(scenes, used, predicted: list[np.ndarray]) -> dict:
    """Scores on all labelled pixels that no training polygon covers (values 1..K → index 0..K-1)."""
    cm = np.zeros((K, K), np.int64)
    for s, u, p in zip(scenes, used, predicted, strict=True):
        ref = s.reference.astype(np.int64) - 1
        ref[u] = -1
        cm += confusion_matrix(ref, p.astype(np.int64) - 1, K)
    return scores(cm, dubai.NAMES)


def read_maps(paths: list[Path]) -> list[np.ndarray]:
    import rasterio

    out = []
    for p in paths:
        with rasterio.open(p) as src:
            out.append(src.read(1))
    return out


def result(scenes, used, maps: list[Path], seconds: float, **extra) -> dict:
    r = evaluate(scenes, used, read_maps(maps))
    return {"kappa": r["kappa"], "overall_accuracy": r["overall_accuracy"], "miou": r["miou"],
            "f1": {c: r["per_class"][c]["f1"] for c in dubai.NAMES}, "train_seconds": round(seconds, 1), **extra}


def deep_row(scenes, used, gpkg: Path, work: Path, seed: int, name: str, finetune: dict, init: str | None = None,
             threads: int | None = None) -> dict:
    """Fine-tune with the product's defaults (plus ``finetune`` overrides), predict every image, score."""
    model = work / f"model_{name.replace(' ', '_')}_{seed}.pt"
    t = time.perf_counter()
    summary = run_finetune(FinetuneParams(rasters=[str(s.image) for s in scenes], labels=str(gpkg), class_field="class",
                                          out=str(model), seed=seed, **({"init": init} if init else {}), **finetune))
    secs = time.perf_counter() - t
    maps = []
    for s in scenes:
        out = work / f"pred_{s.image.stem}.tif"
        run_predict(PredictParams(model=str(model), raster=str(s.image), out=str(out)))
        maps.append(out)
    row = result(scenes, used, maps, secs, steps=summary["steps"], plan=summary["plan"],
                 predict_seconds=round(time.perf_counter() - t - secs, 1), threads=threads,
                 forest=summary.get("forest"))
    # the same model predicted otherwise: without its forest (the network alone), without its smoothing
    others = {"network_alone": {"forest_weight": 0.0}} if summary.get("forest") else {}
    for key, over in (others | {"unsmoothed": {"smooth": 1}}).items():
        alt = []
        for s in scenes:
            out = work / f"pred_{key}_{s.image.stem}.tif"
            run_predict(PredictParams(model=str(model), raster=str(s.image), out=str(out), **over))
            alt.append(out)
        row[key] = result(scenes, used, alt, secs)
    row["smooth"] = summary.get("smooth")
    return row


def forest_row(scenes, gpkg: Path, used, work: Path, seed: int) -> dict:
    t = time.perf_counter()
    maps = baselines.forest_maps([s.image for s in scenes], gpkg, "class", work, seed, baselines.texture_features)
    return result(scenes, used, maps, time.perf_counter() - t)


def write_tables(out: Path, meta: dict, rows: dict[str, list[dict]]) -> str:
    table = {name: {"kappa": tables.mean_std([r["kappa"] for r in runs]),
                    "oa": tables.mean_std([r["overall_accuracy"] for r in runs]),
                    "miou": tables.mean_std([r["miou"] for r in runs]),
                    "f1": {c: round(100 * float(np.mean([r["f1"][c] for r in runs])), 1) for c in dubai.NAMES},
                    "seeds": len(runs)} for name, runs in rows.items()}
    notes = tables.goal_lines(rows, DEFAULT_ROW, FOREST_ROW, GOALS["over_forest"], GOALS["absolute"],
                              GOALS["max_std"]) if DEFAULT_ROW in rows else []
    for name in rows:
        if name not in (DEFAULT_ROW, FOREST_ROW) and DEFAULT_ROW in rows:
            notes.append(tables.delta_line(name, DEFAULT_ROW, tables.paired(rows[name], rows[DEFAULT_ROW])))
    f1 = ["", "Per-class F1 (mean over seeds): " + "; ".join(
        f"{name}: " + ", ".join(f"{c} {t['f1'][c]:.0f}" for c in dubai.NAMES) for name, t in table.items()) + "."]
    ft = meta["finetune_defaults"]
    caption = (f"{meta['date']}; {meta['images']} images; ~{meta['label_share']:.0%} of labelled pixels as polygons; "
               f"GeoSSL's defaults: {ft}; {meta['grid']}; {meta['cpu']}, {meta['threads']} threads.")
    md = tables.markdown("Few-label accuracy — Dubai aerial tiles", caption, rows,
                         [("Kappa", "kappa"), ("OA", "overall_accuracy"), ("mIoU", "miou")],
                         ["Paired by seed (same polygons): " + " ".join(notes)] + f1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fewlabel.json").write_text(json.dumps({"meta": meta, "table": table, "runs": rows}, indent=1))
    (out / "fewlabel.md").write_text(md)
    return md


def default_budget_text() -> str:
    p = FinetuneParams(rasters=["x"], labels="x", class_field="x", out="x")
    budget = f"{p.minutes:g} min" if p.minutes else f"{p.total_steps} steps"
    return f"{budget} × batch {p.batch} × {p.tile} px, {p.encoder} DeepLabV3+"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED_DATA / "dubai")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--images", type=int, default=12, help="the first N images (tiles 1–2; the recipe was "
                    "chosen on tiles 3–6)")
    ap.add_argument("--label-share", type=float, default=0.01)
    ap.add_argument("--finetune", type=json.loads, default={}, help="FinetuneParams overrides as JSON (quick runs: "
                    "'{\"steps\": 40}'); none = the product's defaults")
    ap.add_argument("--init", action="append", default=[], metavar="NAME=PATH", help="extra row from start weights")
    ap.add_argument("--no-forest", action="store_true")
    ap.add_argument("--work", type=Path, help="keep intermediate files here")
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"no Dubai data at {args.data}")
    import torch

    work = args.work or Path(tempfile.mkdtemp(prefix="geossl-fewlabel-"))
    work.mkdir(parents=True, exist_ok=True)
    scenes = dubai.prepare(args.data, work / "scenes", args.images)
    inits = dict(kv.split("=", 1) for kv in args.init)
    rows: dict[str, list[dict]] = {DEFAULT_ROW: [], **{n: [] for n in inits}}
    if not args.no_forest:
        rows[FOREST_ROW] = []
    for seed in args.seeds:
        geoms, names, used = dubai.draw_polygons(scenes, seed, args.label_share)
        assert set(names) == set(dubai.NAMES), "every class needs a polygon"
        gpkg = dubai.write_gpkg(work / f"labels_{seed}.gpkg", geoms, names)
        for name, init in [(DEFAULT_ROW, None), *inits.items()]:
            rows[name].append(deep_row(scenes, used, gpkg, work, seed, name, args.finetune, init,
                                       torch.get_num_threads()))
            print(f"seed {seed} {name}: kappa {rows[name][-1]['kappa']:.3f} ({rows[name][-1]['train_seconds']} s)",
                  flush=True)
            for key, label in (("network_alone", NETWORK_ALONE), ("unsmoothed", UNSMOOTHED)):
                alt = rows[name][-1].pop(key, None)
                if alt is not None:
                    rows.setdefault(f"{name}: {label}", []).append(alt)
        if not args.no_forest:
            rows[FOREST_ROW].append(forest_row(scenes, gpkg, used, work, seed))
            print(f"seed {seed} forest: kappa {rows[FOREST_ROW][-1]['kappa']:.3f}", flush=True)
    m = tables.meta(images=len(scenes), label_share=args.label_share, seeds=args.seeds,
                    finetune_defaults=default_budget_text(), finetune_overrides=args.finetune, inits=inits,
                    threads=torch.get_num_threads(), grid="assumed EPSG:32640, 0.5 m (the tiles carry no georeference)")
    print(write_tables(args.out, m, rows))
    if args.work is None:  # models and maps: hundreds of MB per run
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
