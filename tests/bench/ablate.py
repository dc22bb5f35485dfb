"""Ablations of the few-label recipe on development data (never on the pixels a table reports).

Each config is a set of ``FinetuneParams`` overrides (plus ``tta`` for prediction); every config of
a seed trains on the same polygons, so configs are compared by paired per-seed deltas against the
first one. Every run is appended to a JSON-lines file as it finishes (a long sweep loses nothing if
stopped), and ``--summary`` turns that file into the markdown table kept in bench/results/.

    backend/.venv/bin/python tests/bench/ablate.py --data s2dev --seeds 0 1 2 \
        --config base '{}' --config natural '{"sampling": "pixels"}' --log bench/results/ablations.jsonl
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from geossl.evaluate import run_evaluate  # noqa: E402
from geossl.finetune import run_finetune  # noqa: E402
from geossl.predict import run_predict  # noqa: E402
from geossl.schemas import EvaluateParams, FinetuneParams, PredictParams  # noqa: E402

from tests.bench import baselines, devsets, dubai  # noqa: E402

BASE = {"tile": 128, "batch": 8, "steps": 300, "steps_per_epoch": 50, "patience": 100}


def predict(model: Path, raster: Path, out: Path, over: dict) -> None:
    run_predict(PredictParams(model=str(model), raster=str(raster), out=str(out), **over))


def run_s2(cfg: dict, seed: int, work: Path) -> dict:
    raster, train, score = devsets.s2_dev_split(work, seed)
    if cfg.get("row") == "rf":
        info = baselines.raster_info(str(raster))
        red, nir = baselines.band_index(info.descriptions, "B04"), baselines.band_index(info.descriptions, "B08")
        t = time.perf_counter()
        (pred,) = baselines.forest_maps([raster], train, "fclass", work, seed,
                                        lambda d: baselines.spectral_features(d, red, nir))
        secs = time.perf_counter() - t
    else:
        model, secs, summary = finetune([raster], train, "fclass", work, seed, cfg)
        pred = work / f"pred_{seed}.tif"
        predict(model, raster, pred, cfg.get("predict", {}))
    r = run_evaluate(EvaluateParams(prediction=str(pred), labels=str(score), class_field="fclass"))
    extra = {} if cfg.get("row") == "rf" else {"history": summary["history"], "best_epoch": summary["best_epoch"]}
    for name, over in cfg.get("variants", {}).items():  # other predictions of the same model: no retraining
        alt = work / f"pred_{seed}_{name}.tif"
        predict(model, raster, alt, over)
        extra[f"kappa_{name}"] = run_evaluate(EvaluateParams(prediction=str(alt), labels=str(score),
                                                             class_field="fclass"))["kappa"]
    return {"kappa": r["kappa"], "oa": r["overall_accuracy"], "miou": r["miou"], "seconds": round(secs, 1),
            "f1": {c: v["f1"] for c, v in r["per_class"].items()}, **extra}


def run_dubai(cfg: dict, seed: int, work: Path, scenes) -> dict:
    from tests.bench.fewlabel import evaluate

    geoms, names, used = dubai.draw_polygons(scenes, seed, 0.01)
    gpkg = dubai.write_gpkg(work / f"labels_{seed}.gpkg", geoms, names)
    import rasterio

    t = time.perf_counter()
    if cfg.get("row") == "rf":
        preds_paths = baselines.forest_maps([s.image for s in scenes], gpkg, "class", work, seed,
                                            baselines.texture_features)
        secs = time.perf_counter() - t
    else:
        model, secs, summary = finetune([s.image for s in scenes], gpkg, "class", work, seed, cfg)
        preds_paths = []
        for s in scenes:
            out = work / f"pred_{s.image.name}"
            predict(model, s.image, out, cfg.get("predict", {}))
            preds_paths.append(out)
    preds = []
    for p in preds_paths:
        with rasterio.open(p) as src:
            preds.append(src.read(1))
    r = evaluate(scenes, used, preds)
    extra = {} if cfg.get("row") == "rf" else {"history": summary["history"], "best_epoch": summary["best_epoch"]}
    for name, over in cfg.get("variants", {}).items():  # other predictions of the same model: no retraining
        alt = []
        for s in scenes:
            out = work / f"pred_{name}_{s.image.name}"
            predict(model, s.image, out, over)
            with rasterio.open(out) as src:
                alt.append(src.read(1))
        extra[f"kappa_{name}"] = evaluate(scenes, used, alt)["kappa"]
    return {"kappa": r["kappa"], "oa": r["overall_accuracy"], "miou": r["miou"], "seconds": round(secs, 1),
            "f1": {c: r["per_class"][c]["f1"] for c in dubai.NAMES}, **extra}


def finetune(rasters, labels, field, work: Path, seed: int, cfg: dict):
    over = {k: v for k, v in cfg.items() if k not in ("predict", "row", "variants")}
    model = work / f"model_{seed}.pt"
    t = time.perf_counter()
    summary = run_finetune(FinetuneParams(**{"rasters": [str(r) for r in rasters], "labels": str(labels),
                                              "class_field": field, "out": str(model), "seed": seed,
                                              **BASE, **over}))
    return model, time.perf_counter() - t, summary


def _variant(name: str, runs: list[dict]) -> str:
    """A variant's mean Kappa and its paired delta against the same models' own prediction."""
    pairs = [(100 * r[f"kappa_{name}"], 100 * r["kappa"]) for r in runs if f"kappa_{name}" in r]
    d = [a - b for a, b in pairs]
    return f"{name} {np.mean([a for a, _ in pairs]):.1f} ({np.mean(d):+.1f} ± {np.std(d):.1f})"


def summary(log: Path, out: Path) -> None:
    """Markdown: per (data, sweep), each config's mean ± std and the paired delta against the sweep's first."""
    runs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    lines = ["# Few-label recipe ablations (development data only)", "",
             "Dev data: Dubai tiles 3–6 (12 images never in the few-label table), Sentinel-2 demo *training*",
             "polygons split 70/30 per seed (the demo's held-out polygons never read). Δ = paired per-seed",
             "Kappa difference against the sweep's first config (same polygons, same seed).", ""]
    sweeps: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        sweeps.setdefault((r["data"], r["sweep"]), []).append(r)
    for (data, sweep), rs in sweeps.items():
        names = list(dict.fromkeys(r["config"] for r in rs))
        by = {n: {r["seed"]: r for r in rs if r["config"] == n} for n in names}
        ref = by[names[0]]
        lines += [f"## {data}: {sweep}", "", "| config | overrides | Kappa | Δ vs first (per seed) | "
                  "other predictions of the same models (Kappa) | s/run | seeds |", "|---|---|---|---|---|---|---|"]
        for n in names:
            k = np.array([100 * r["kappa"] for r in by[n].values()])
            common = sorted(set(by[n]) & set(ref))
            d = [100 * (by[n][s]["kappa"] - ref[s]["kappa"]) for s in common]
            secs = np.mean([r["seconds"] for r in by[n].values()])
            over = json.dumps(next(iter(by[n].values()))["overrides"])
            variants = sorted({key[6:] for r in by[n].values() for key in r if key.startswith("kappa_")})
            alt = ", ".join(_variant(v, list(by[n].values())) for v in variants) or "–"
            lines.append(f"| {n} | `{over}` | {k.mean():.1f} ± {k.std():.1f} | "
                         f"{np.mean(d):+.1f} ± {np.std(d):.1f} ({', '.join(f'{x:+.1f}' for x in d)}) | "
                         f"{alt} | {secs:.0f} | {len(k)} |")
        lines.append("")
    out.write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=["s2dev", "dubaidev"])
    ap.add_argument("--sweep", default="sweep", help="name grouping the configs of one comparison")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--config", nargs=2, action="append", metavar=("NAME", "JSON"), default=[])
    ap.add_argument("--log", type=Path, default=ROOT / "bench" / "results" / "ablations.jsonl")
    ap.add_argument("--summary", type=Path, help="write the markdown summary of --log here and exit")
    ap.add_argument("--threads", type=int, help="torch threads (two sweeps side by side on 2 cores)")
    args = ap.parse_args()
    if args.summary:
        summary(args.log, args.summary)
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="geossl-ablate-"))
    scenes = devsets.dubai_dev_scenes(work) if args.data == "dubaidev" else None
    try:
        for seed in args.seeds:
            for name, raw in args.config:
                cfg = json.loads(raw)
                run_dir = work / f"{name}_{seed}"
                run_dir.mkdir()
                r = run_s2(cfg, seed, run_dir) if args.data == "s2dev" else run_dubai(cfg, seed, run_dir, scenes)
                rec = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "data": args.data,
                       "sweep": args.sweep, "config": name, "overrides": cfg, "base": BASE, "seed": seed, **r}
                with args.log.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"{args.data} {args.sweep} seed {seed} {name}: kappa {r['kappa']:.3f} ({r['seconds']} s)",
                      flush=True)
                shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
