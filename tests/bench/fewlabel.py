"""Few-label accuracy on the Dubai tiles: random init vs SimCLR, GLCNet, BYOL, MoCo v2 vs a pixel Random Forest.

Same polygons (drawn per seed as a user would, ~1% of labelled pixels), same fine-tune budget for
every row, evaluation on every other labelled pixel of the dense masks. Pretrained encoders are
made here with `geossl pretrain` on all the imagery (or passed with --glcnet/--simclr), so the
budget of each is stated beside the table. Results: bench/results/fewlabel.{md,json}.

RS-BYOL is not a row here: its views are two band groups (or two sensors), and these tiles are RGB —
a random split of three bands would not be RS-BYOL. Its row is in the Sentinel-2 table
(tests/bench/fewlabel_s2.py), beside BYOL and MoCo v2 on the same bands.

    backend/.venv/bin/python tests/bench/fewlabel.py --seeds 0 1 2 --steps 300 --pretrain-steps 2000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from geossl.checkpoint import versions  # noqa: E402
from geossl.finetune import run_finetune  # noqa: E402
from geossl.metrics import confusion_matrix, scores  # noqa: E402
from geossl.predict import run_predict  # noqa: E402
from geossl.schemas import FinetuneParams, PredictParams  # noqa: E402

from tests.bench import dubai  # noqa: E402
from tests.data import SHARED_DATA  # noqa: E402

K = len(dubai.NAMES)


def evaluate(scenes, used, predicted: list[np.ndarray]) -> dict:
    """Scores on all labelled pixels that no training polygon covers (values 1..K → index 0..K-1)."""
    cm = np.zeros((K, K), np.int64)
    for s, u, p in zip(scenes, used, predicted, strict=True):
        ref = s.reference.astype(np.int64) - 1
        ref[u] = -1
        cm += confusion_matrix(ref, p.astype(np.int64) - 1, K)
    return scores(cm, dubai.NAMES)


def deep_row(scenes, used, gpkg: Path, work: Path, seed: int, args, init: Path | None) -> dict:
    model = work / f"model_{init.stem if init else 'random'}_{seed}.pt"
    t = time.perf_counter()
    run_finetune(FinetuneParams(rasters=[str(s.image) for s in scenes], labels=str(gpkg), class_field="class",
                                out=str(model), init=str(init) if init else None, steps=args.steps,
                                steps_per_epoch=args.steps_per_epoch, tile=args.tile, batch=args.batch, seed=seed,
                                patience=100))
    train_s = time.perf_counter() - t
    import rasterio

    preds = []
    for s in scenes:
        out = work / f"pred_{s.image.name}"
        run_predict(PredictParams(model=str(model), raster=str(s.image), out=str(out), batch=8))
        with rasterio.open(out) as src:
            preds.append(src.read(1))
    return {**evaluate(scenes, used, preds), "train_seconds": round(train_s, 1)}


def forest_row(scenes, used, seed: int) -> dict:
    """Pixel Random Forest on the polygons' RGB values: what SCP/dzetsaka users get."""
    import rasterio
    from sklearn.ensemble import RandomForestClassifier

    xs, ys, images = [], [], []
    for s, u in zip(scenes, used, strict=True):
        with rasterio.open(s.image) as src:
            img = src.read().reshape(3, -1).T
        images.append(img)
        xs.append(img[u.ravel()])
        ys.append(s.reference.ravel()[u.ravel()])
    t = time.perf_counter()
    rf = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=seed).fit(np.concatenate(xs),
                                                                                   np.concatenate(ys))
    preds = [rf.predict(img).reshape(s.reference.shape) for img, s in zip(images, scenes, strict=True)]
    return {**evaluate(scenes, used, preds), "train_seconds": round(time.perf_counter() - t, 1)}



def pretrain(method: str, scenes, work: Path, args) -> tuple[Path, float]:
    out = work / f"{method}.pt"
    cmd = [str(Path(sys.executable).parent / "geossl"), "pretrain", "--method", method, "--out", str(out),
           "--steps", str(args.pretrain_steps), "--tile", str(args.pretrain_tile), "--batch",
           str(args.pretrain_batch), "--seed", "0", "--json"]
    for s in scenes:
        cmd += ["--raster", str(s.image)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out, time.perf_counter() - t


def summarise(rows: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for name, runs in rows.items():
        def ms(key, runs=runs):
            v = np.array([r[key] for r in runs]) * 100
            return {"mean": round(float(v.mean()), 2), "std": round(float(v.std()), 2)}

        out[name] = {"kappa": ms("kappa"), "oa": ms("overall_accuracy"), "miou": ms("miou"),
                     "f1": {c: round(float(np.mean([r["per_class"][c]["f1"] for r in runs])) * 100, 1)
                            for c in dubai.NAMES},
                     "seeds": len(runs), "train_seconds": round(float(np.mean([r["train_seconds"] for r in runs])), 1)}
    return out


GOALS = {"random init": 10.0, "simclr": 3.0, "random forest": 15.0}  # GLCNet − row, Kappa points (issue #7)


def paired_deltas(rows: dict[str, list[dict]], method: str = "glcnet") -> list[str]:
    """GLCNet − each baseline, seed by seed: every row of a seed is trained on the same polygons, so
    the paired difference removes the polygon draw's spread that the rows' ± std includes."""
    if method not in rows:
        return []
    lines = []
    for base, goal in GOALS.items():
        if base not in rows:
            continue
        d = [100 * (m["kappa"] - b["kappa"]) for m, b in zip(rows[method], rows[base], strict=True)]
        lines.append(f"{method} − {base}: {np.mean(d):+.1f} ± {np.std(d):.1f} Kappa points (per seed: "
                     + ", ".join(f"{x:+.1f}" for x in d) + f"); goal ≥ +{goal:g}, "
                     + ("met" if np.mean(d) >= goal else "not met") + ".")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED_DATA / "dubai")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--images", type=int, default=None, help="use only the first N images (quick runs)")
    ap.add_argument("--label-share", type=float, default=0.01)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--steps-per-epoch", type=int, default=50)
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pretrain-steps", type=int, default=0, help="0: no SSL rows unless --glcnet/--simclr")
    ap.add_argument("--pretrain-tile", type=int, default=128)
    ap.add_argument("--pretrain-batch", type=int, default=16)
    ap.add_argument("--glcnet", type=Path)
    ap.add_argument("--simclr", type=Path)
    ap.add_argument("--byol", type=Path)
    ap.add_argument("--moco", type=Path)
    ap.add_argument("--methods", nargs="+", default=["simclr", "glcnet", "byol", "moco"],
                    choices=["simclr", "glcnet", "byol", "moco"], help="pretrained rows")
    ap.add_argument("--work", type=Path, help="keep intermediate files here")
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"no Dubai data at {args.data}")
    work = args.work or Path(tempfile.mkdtemp(prefix="geossl-fewlabel-"))
    work.mkdir(parents=True, exist_ok=True)
    scenes = dubai.prepare(args.data, work / "scenes", args.images)
    inits: dict[str, Path | None] = {"random init": None}
    pretrain_s = {}
    for method in args.methods:
        given = getattr(args, method)
        if given:
            inits[method] = given
        elif args.pretrain_steps:
            inits[method], pretrain_s[method] = pretrain(method, scenes, work, args)
            print(f"pretrained {method} in {pretrain_s[method]:.0f} s", flush=True)
    rows: dict[str, list[dict]] = {name: [] for name in [*inits, "random forest"]}
    for seed in args.seeds:
        geoms, names, used = dubai.draw_polygons(scenes, seed, args.label_share)
        assert set(names) == set(dubai.NAMES), "every class needs a polygon"
        gpkg = dubai.write_gpkg(work / f"labels_{seed}.gpkg", geoms, names)
        for name, init in inits.items():
            rows[name].append(deep_row(scenes, used, gpkg, work, seed, args, init))
            print(f"seed {seed} {name}: kappa {rows[name][-1]['kappa']:.3f}", flush=True)
        rows["random forest"].append(forest_row(scenes, used, seed))
        print(f"seed {seed} random forest: kappa {rows['random forest'][-1]['kappa']:.3f}", flush=True)
    table = summarise(rows)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
            "versions": versions(), "images": len(scenes), "label_share": args.label_share,
            "finetune": {"steps": args.steps, "tile": args.tile, "batch": args.batch, "encoder": "resnet18"},
            "pretrain": {"steps": args.pretrain_steps, "tile": args.pretrain_tile, "batch": args.pretrain_batch,
                         "seconds": pretrain_s, "given": {m: str(getattr(args, m)) for m in args.methods
                                                          if getattr(args, m)}},
            "grid": "assumed EPSG:32640, 0.5 m (the tiles carry no georeference)"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fewlabel.json").write_text(json.dumps({"meta": meta, "table": table, "runs": rows}, indent=1))
    lines = ["# Few-label accuracy — Dubai aerial tiles", "",
             f"{meta['date']}; {len(scenes)} images; ~{args.label_share:.0%} of labelled pixels as polygons; "
             f"fine-tune {args.steps} steps × batch {args.batch} × {args.tile}px, resnet18 DeepLabV3+; "
             f"pretraining {args.pretrain_steps} steps × batch {args.pretrain_batch} × {args.pretrain_tile}px "
             f"({', '.join(f'{m} {s:.0f} s' for m, s in pretrain_s.items()) or 'none'}); {meta['grid']}.", "",
             "| row | Kappa | OA | mIoU | " + " | ".join(f"F1 {c}" for c in dubai.NAMES) + " | seeds |",
             "|---|---|---|---|" + "---|" * len(dubai.NAMES) + "---|"]
    for name, r in table.items():
        lines.append(f"| {name} | {r['kappa']['mean']} ± {r['kappa']['std']} | {r['oa']['mean']} ± {r['oa']['std']} | "
                     f"{r['miou']['mean']} ± {r['miou']['std']} | "
                     + " | ".join(str(r["f1"][c]) for c in dubai.NAMES) + f" | {r['seeds']} |")
    deltas = paired_deltas(rows)
    if deltas:
        lines += ["", "Paired by seed (same polygons): " + " ".join(deltas)]
    (args.out / "fewlabel.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.work is None:  # about 1 GB of models and maps per run; --work keeps them
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
