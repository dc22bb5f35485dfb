"""Few-label accuracy on the 13-band Sentinel-2 scene: random init vs BYOL vs RS-BYOL vs MoCo v2.

Why a second table: RS-BYOL's point is that two band groups (or two sensors) of one place are the
"augmentation"; the Dubai tiles (fewlabel.py) are RGB, where a random split of three bands is not
RS-BYOL. Here every row fine-tunes on the same four 10 m bands (B02, B03, B04, B08 = bands
2,3,4,8) from the same polygons, so the rows differ only in how the encoder was pretrained:

* random init: no pretraining;
* BYOL, MoCo v2 (and optionally SimCLR / GLCNet): pretrained on those four bands, both views from
  the same bands;
* RS-BYOL: BYOL pretrained on the full 13-band raster with ``--view-bands 2,3,4,8 5,6,7,9``: view 1
  sees B02/B03/B04/B08, view 2 the red-edge bands B05/B06/B07/B8A of the same ground; the
  encoder, which sees four bands either way, is fine-tuned on view 1's bands.

Labels: the OSM land-use polygons (8 classes, field ``fclass``), per seed a share of each class's
polygons for training (whole polygons), every other polygon held out for evaluation with
``geossl evaluate``. Results: bench/results/fewlabel_s2.{md,json}.

    backend/.venv/bin/python tests/bench/fewlabel_s2.py --seeds 0 1 2 --steps 300 --pretrain-steps 2000
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
from geossl.evaluate import run_evaluate  # noqa: E402
from geossl.finetune import run_finetune  # noqa: E402
from geossl.predict import run_predict  # noqa: E402
from geossl.schemas import EvaluateParams, FinetuneParams, PredictParams  # noqa: E402

from tests.data import SHARED_DATA  # noqa: E402

S2 = SHARED_DATA / "sentinel2_brandenburg"
FT_BANDS = (2, 3, 4, 8)  # B02 B03 B04 B08 (10 m)
OTHER_VIEW = (5, 6, 7, 9)  # B05 B06 B07 B8A (red edge, 20 m resampled)
FIELD = "fclass"
# row name → (method, pretraining raster: "subset" = the fine-tuning bands, "full" = 13 bands, view bands)
ROWS = {
    "byol": ("byol", "subset", None),
    "rs-byol (band groups)": ("byol", "full", [",".join(map(str, FT_BANDS)), ",".join(map(str, OTHER_VIEW))]),
    "moco v2": ("moco", "subset", None),
    "simclr": ("simclr", "subset", None),
    "glcnet": ("glcnet", "subset", None),
}
DEFAULT_ROWS = ["byol", "rs-byol (band groups)", "moco v2"]


def subset_raster(src: Path, out: Path, bands: tuple[int, ...]) -> Path:
    """The fine-tuning raster: ``bands`` (1-based) of ``src``, same grid and nodata."""
    import rasterio

    if out.exists():
        return out
    with rasterio.open(src) as s:
        profile = s.profile | {"count": len(bands)}
        with rasterio.open(out, "w", **profile) as d:
            for i, b in enumerate(bands, start=1):
                d.write(s.read(b), i)
                d.set_band_description(i, s.descriptions[b - 1])
    return out


def split_polygons(src: Path, train: Path, test: Path, seed: int, share: float) -> dict[str, int]:
    """``share`` of each class's polygons (at least one) for training, the rest held out (at least one)."""
    import pyogrio.raw

    meta, _, wkb, fields = pyogrio.raw.read(src, columns=[FIELD])
    values = fields[0]
    rng = np.random.default_rng(seed)
    is_train = np.zeros(len(values), bool)
    for c in np.unique(values):
        idx = np.flatnonzero(values == c)
        n = min(len(idx) - 1, max(1, round(len(idx) * share)))
        is_train[rng.choice(idx, n, replace=False)] = True
    for path, keep in ((train, is_train), (test, ~is_train)):
        path.unlink(missing_ok=True)
        pyogrio.raw.write(str(path), geometry=wkb[keep], field_data=[values[keep]], fields=[FIELD],
                          crs=meta["crs"], geometry_type="MultiPolygon", promote_to_multi=True)
    return {"train_polygons": int(is_train.sum()), "test_polygons": int((~is_train).sum())}


def pretrain(row: str, rasters: dict[str, Path], work: Path, args) -> tuple[Path, float]:
    method, which, view_bands = ROWS[row]
    out = work / f"{row.split()[0]}.pt"
    cmd = [str(Path(sys.executable).parent / "geossl"), "pretrain", "--method", method, "--raster",
           str(rasters[which]), "--out", str(out), "--steps", str(args.pretrain_steps), "--tile",
           str(args.pretrain_tile), "--batch", str(args.pretrain_batch), "--seed", "0", "--json"]
    if view_bands:
        cmd += ["--view-bands", *view_bands]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out, time.perf_counter() - t


def deep_row(raster: Path, train: Path, test: Path, work: Path, seed: int, args, name: str,
             init: Path | None) -> dict:
    model = work / f"model_{name.split()[0]}_{seed}.pt"
    t = time.perf_counter()
    run_finetune(FinetuneParams(rasters=[str(raster)], labels=str(train), class_field=FIELD, out=str(model),
                                init=str(init) if init else None, steps=args.steps,
                                steps_per_epoch=args.steps_per_epoch, tile=args.tile, batch=args.batch, seed=seed,
                                patience=100))
    train_s = time.perf_counter() - t
    pred = work / f"pred_{name.split()[0]}_{seed}.tif"
    run_predict(PredictParams(model=str(model), raster=str(raster), out=str(pred), batch=8))
    result = run_evaluate(EvaluateParams(prediction=str(pred), labels=str(test), class_field=FIELD))
    return {"kappa": result["kappa"], "overall_accuracy": result["overall_accuracy"], "miou": result["miou"],
            "pixels": result["pixels"], "train_seconds": round(train_s, 1)}


def summarise(rows: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for name, runs in rows.items():
        def ms(key, runs=runs):
            v = np.array([r[key] for r in runs]) * 100
            return {"mean": round(float(v.mean()), 2), "std": round(float(v.std()), 2)}

        out[name] = {"kappa": ms("kappa"), "oa": ms("overall_accuracy"), "miou": ms("miou"), "seeds": len(runs),
                     "train_seconds": round(float(np.mean([r["train_seconds"] for r in runs])), 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=S2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-share", type=float, default=0.2, help="share of each class's polygons to train on")
    ap.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=list(ROWS))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--steps-per-epoch", type=int, default=50)
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pretrain-steps", type=int, default=0, help="0: only the random-init row")
    ap.add_argument("--pretrain-tile", type=int, default=128)
    ap.add_argument("--pretrain-batch", type=int, default=16)
    ap.add_argument("--work", type=Path, help="keep intermediate files here")
    args = ap.parse_args()
    full = args.data / "s2l1c_13band_10m.tif"
    if not full.exists():
        sys.exit(f"no Sentinel-2 raster at {full}")
    work = args.work or Path(tempfile.mkdtemp(prefix="geossl-fewlabel-s2-"))
    work.mkdir(parents=True, exist_ok=True)
    rasters = {"full": full, "subset": subset_raster(full, work / "s2_b2348.tif", FT_BANDS)}
    inits: dict[str, Path | None] = {"random init": None}
    pretrain_s: dict[str, float] = {}
    if args.pretrain_steps:
        for row in args.rows:
            inits[row], pretrain_s[row] = pretrain(row, rasters, work, args)
            print(f"pretrained {row} in {pretrain_s[row]:.0f} s", flush=True)
    rows: dict[str, list[dict]] = {name: [] for name in inits}
    splits = {}
    for seed in args.seeds:
        train, test = work / f"train_{seed}.gpkg", work / f"test_{seed}.gpkg"
        splits[seed] = split_polygons(args.data / "osm_landuse.gpkg", train, test, seed, args.train_share)
        for name, init in inits.items():
            rows[name].append(deep_row(rasters["subset"], train, test, work, seed, args, name, init))
            print(f"seed {seed} {name}: kappa {rows[name][-1]['kappa']:.3f}", flush=True)
    table = summarise(rows)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
            "versions": versions(), "raster": str(full), "finetune_bands": FT_BANDS,
            "rs_byol_view_bands": [FT_BANDS, OTHER_VIEW], "train_share": args.train_share, "splits": splits,
            "finetune": {"steps": args.steps, "tile": args.tile, "batch": args.batch, "encoder": "resnet18"},
            "pretrain": {"steps": args.pretrain_steps, "tile": args.pretrain_tile, "batch": args.pretrain_batch,
                         "seconds": pretrain_s}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fewlabel_s2.json").write_text(json.dumps({"meta": meta, "table": table, "runs": rows}, indent=1))
    lines = ["# Few-label accuracy — Sentinel-2 T33UUU, OSM land use (8 classes)", "",
             f"{meta['date']}; fine-tuned on bands {','.join(map(str, FT_BANDS))} (B02 B03 B04 B08) from "
             f"{args.train_share:.0%} of each class's OSM polygons, evaluated on all other polygons; fine-tune "
             f"{args.steps} steps × batch {args.batch} × {args.tile}px, resnet18 DeepLabV3+; pretraining "
             f"{args.pretrain_steps} steps × batch {args.pretrain_batch} × {args.pretrain_tile}px "
             f"({', '.join(f'{m} {s:.0f} s' for m, s in pretrain_s.items()) or 'none'}); RS-BYOL views: bands "
             f"{','.join(map(str, FT_BANDS))} | {','.join(map(str, OTHER_VIEW))} of the 13-band raster.", "",
             "| row | Kappa | OA | mIoU | seeds | fine-tune s |", "|---|---|---|---|---|---|"]
    for name, r in table.items():
        lines.append(f"| {name} | {r['kappa']['mean']} ± {r['kappa']['std']} | {r['oa']['mean']} ± {r['oa']['std']} | "
                     f"{r['miou']['mean']} ± {r['miou']['std']} | {r['seeds']} | {r['train_seconds']} |")
    (args.out / "fewlabel_s2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.work is None:  # about 1 GB of models and maps per run; --work keeps them
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
