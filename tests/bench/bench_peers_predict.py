"""Benchmark: `geossl predict` against what a user would run instead, same raster, weights and machine.

Rows, each timed end to end (raster on disk → classified GeoTIFF on disk), repeats interleaved:

- **geossl**: `geossl predict` with its defaults (torch).
- **Deepness (ONNX Runtime)**: the model exported by `geossl export` (its default: the training
  tile, Deepness's 25 % overlap) run the way the Deepness QGIS plugin runs a segmentation model:
  the whole raster read into memory, tiles of the exported size one at a time (its default batch
  of 1), each tile standardised (÷255, then Deepness's mean/std from the model's metadata), the
  centre of each tile kept (no blending), argmax, one GeoTIFF written.
- **geossl, each engine**: `--engine torch` and `--engine onnxruntime` (the default picks one by
  raster size), to show what each engine brings.
- **torchgeo**: torchgeo's ``RasterDataset`` + ``GridGeoSampler`` + ``DataLoader`` at geossl's tile
  and overlap (its documented inference loop), the model in torch's default layout, each patch's
  centre kept, one GeoTIFF written.

Agreement: share of pixels where a row's classes equal geossl's. Not a test (never timed in CI).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from geossl.checkpoint import load_checkpoint, versions  # noqa: E402
from geossl.classes import ClassTable  # noqa: E402
from geossl.export import run_export  # noqa: E402
from geossl.models import build_model, pick_device  # noqa: E402
from geossl.predict import run_predict  # noqa: E402
from geossl.raster_io import BandStats, geotiff_writer, open_raster, raster_info  # noqa: E402
from geossl.schemas import ExportParams, PredictParams  # noqa: E402
from geossl.tiling import tile_plan  # noqa: E402

from tests.bench.bench_predict import write_big_raster, write_model  # noqa: E402


def class_values(model_path: Path) -> np.ndarray:
    """Class index → the value geossl writes (the map's pixel values)."""
    return np.array(ClassTable.from_dict(load_checkpoint(str(model_path), "segmentation")["classes"]).values, np.uint8)


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def deepness_like(onnx_path: Path, raster: Path, out: Path, lut: np.ndarray) -> None:
    """Deepness's segmentation loop, re-created outside QGIS (its MapProcessorSegmentation)."""
    session = ort_session(onnx_path)
    meta = session.get_modelmeta().custom_metadata_map
    tile, overlap_pct = int(json.loads(meta["tile_size"])), int(json.loads(meta["tiles_overlap"]))
    mean = np.array(json.loads(meta["standardization_mean"]), np.float32)[:, None, None]
    std = np.array(json.loads(meta["standardization_std"]), np.float32)[:, None, None]
    name = session.get_inputs()[0].name
    with open_raster(raster) as src:
        image = src.read()  # Deepness holds the whole mosaic in memory
        info = raster_info(str(raster))
    bands, h, w = image.shape
    overlap = tile * overlap_pct // 100
    stride = tile - overlap
    result = np.zeros((h, w), np.uint8)
    for y0 in range(0, max(1, h - overlap), stride):
        for x0 in range(0, max(1, w - overlap), stride):
            patch = np.zeros((bands, tile, tile), np.float32)  # Deepness pads the last tiles with zeros
            part = image[:, y0:y0 + tile, x0:x0 + tile]
            patch[:, :part.shape[1], :part.shape[2]] = part
            x = ((patch / 255.0 - mean) / std)[None]
            classes = lut[session.run(None, {name: x})[0][0].argmax(0)]
            top = 0 if y0 == 0 else overlap // 2  # keep the centre: half the overlap trimmed inside
            left = 0 if x0 == 0 else overlap // 2
            y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
            result[y0 + top:y1, x0 + left:x1] = classes[top:y1 - y0, left:x1 - x0]
    with geotiff_writer(out, info, 1, "uint8", None) as dst:
        dst.write(result[None])


def torchgeo_like(model_path: Path, raster: Path, out: Path, tile: int, overlap: int, batch: int) -> None:
    """torchgeo's documented sliding-window inference: RasterDataset, GridGeoSampler, DataLoader."""
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler

    ckpt = load_checkpoint(str(model_path), "segmentation")
    model = build_model(ckpt["encoder"], int(ckpt["in_channels"]), int(ckpt["num_classes"]))
    model.load_state_dict(ckpt["state_dict"])
    model = model.eval()
    stats = BandStats.from_dict(ckpt["band_stats"])
    low, high = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (stats.low, stats.high))
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (stats.mean, stats.std))

    class Scene(RasterDataset):
        filename_glob = raster.name
        is_image = True

    dataset = Scene(paths=str(raster.parent))
    res = dataset.res[0] if isinstance(dataset.res, tuple) else dataset.res
    sampler = GridGeoSampler(dataset, size=tile, stride=tile - overlap)
    loader = DataLoader(dataset, sampler=sampler, batch_size=batch, collate_fn=stack_samples)
    info = raster_info(str(raster))
    west, north = info.transform[2], info.transform[5]
    result = np.zeros((info.height, info.width), np.uint8)
    half = overlap // 2
    lut = class_values(model_path)
    with torch.inference_mode():
        for sample in loader:
            x = (sample["image"].float().clamp(low, high) - mean) / std
            classes = lut[model(x).argmax(1).numpy()]
            for c, box in zip(classes, sample["bounds"], strict=True):
                x0 = round((_min_x(box) - west) / res)
                y0 = round((north - _max_y(box)) / res)
                # the grid's last patches reach past the raster's edge (read as nodata): keep what is inside
                r0, c0 = max(0, y0 + (half if y0 > 0 else 0)), max(0, x0 + (half if x0 > 0 else 0))
                r1, c1 = min(info.height, y0 + tile), min(info.width, x0 + tile)
                result[r0:r1, c0:c1] = c[r0 - y0:r1 - y0, c0 - x0:c1 - x0]
    with geotiff_writer(out, info, 1, "uint8", None) as dst:
        dst.write(result[None])


def _min_x(box) -> float:
    return box.minx if hasattr(box, "minx") else box[0].start


def _max_y(box) -> float:
    return box.maxy if hasattr(box, "maxy") else box[1].stop


def read_classes(path: Path) -> np.ndarray:
    with open_raster(path) as src:
        return src.read(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--rows", nargs="*", default=["geossl", "geossl_torch", "geossl_ort", "deepness", "torchgeo"])
    args = ap.parse_args()
    rows: dict[str, list[float]] = {r: [] for r in args.rows}
    agreement: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        os.environ["GEOSSL_CACHE_DIR"] = str(d / "cache")  # exported graphs: made here, gone afterwards
        model = write_model(d / "m.pt", args.bands, 128)
        (d / "scene").mkdir()  # torchgeo reads every matching file of a folder: this one alone
        raster = write_big_raster(d / "scene" / "r.tif", args.size, args.bands)
        plan = tile_plan(128, args.size, args.size, pick_device().type)
        run_export(ExportParams(model=str(model), out=str(d / "train_tile.onnx")))
        lut = class_values(model)

        def geossl(engine: str):
            return lambda out: run_predict(PredictParams(model=str(model), raster=str(raster), out=str(out),
                                                         engine=engine))

        runners = {
            "geossl": geossl("auto"),
            "geossl_torch": geossl("torch"),
            "geossl_ort": geossl("onnxruntime"),
            "deepness": lambda out: deepness_like(d / "train_tile.onnx", raster, out, lut),
            "torchgeo": lambda out: torchgeo_like(model, raster, out, plan.tile, plan.overlap, plan.batch),
        }
        engine_used = "?"
        for name in args.rows:  # warm-up (the ONNX export included) and the maps compared
            result = runners[name](d / f"{name}.tif")
            if name == "geossl":
                engine_used = result["engine"]
        for name in args.rows:
            agreement[name] = round(float((read_classes(d / f"{name}.tif") == read_classes(d / "geossl.tif")).mean()),
                                    4)
        for _ in range(args.repeats):
            for name in args.rows:
                t = time.perf_counter()
                runners[name](d / f"{name}.tif")
                rows[name].append(args.size ** 2 / 1e6 / (time.perf_counter() - t))
            print({k: round(v[-1], 3) for k, v in rows.items()}, flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    import onnxruntime

    extra = {"onnxruntime": onnxruntime.__version__}
    try:
        import torchgeo

        extra["torchgeo"] = torchgeo.__version__
    except ImportError:
        pass
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
            "processor": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
            "device": str(pick_device()), "versions": versions() | extra, "size": args.size, "bands": args.bands,
            "plan": {"tile": plan.tile, "overlap": plan.overlap, "batch": plan.batch}, "repeats": args.repeats}
    table = [{"row": k, "mpx_per_s": round(med[k], 3), "geossl_ratio": round(med["geossl"] / med[k], 3)
              if "geossl" in med else None, "agreement": agreement[k],
              "per_repeat": [round(v, 3) for v in rows[k]]} for k in args.rows]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers_predict.json").write_text(json.dumps({"meta": meta, "rows": table}, indent=2))
    labels = {"geossl": f"`geossl predict` (defaults: engine {engine_used})",
              "geossl_torch": "`geossl predict --engine torch`",
              "geossl_ort": "`geossl predict --engine onnxruntime`",
              "deepness": "Deepness way: exported ONNX at the training tile (128, 25 % overlap), batch 1, ONNX Runtime",
              "torchgeo": f"torchgeo RasterDataset + GridGeoSampler + DataLoader (tile {plan.tile}, overlap "
                          f"{plan.overlap}, batch {plan.batch})"}
    lines = ["# Prediction side by side: geossl and the tools a user would pick instead", "",
             f"{meta['date']}, {meta['device']} ({meta['cpu_threads']} threads), {meta['processor']}; resnet18 "
             f"DeepLabV3+ trained at tile 128 (same weights in every row), {args.bands}-band uint16 {args.size}² "
             f"raster on disk → classified GeoTIFF on disk. Medians of {args.repeats} interleaved repeats; "
             f"onnxruntime {extra['onnxruntime']}" + (f", torchgeo {extra['torchgeo']}" if "torchgeo" in extra else "")
             + ".", "",
             "| row | Mpx/s | geossl ÷ row (goal ≥ 1.0) | pixels equal to geossl's map | per repeat |",
             "|---|---|---|---|---|"]
    lines += [f"| {labels[r['row']]} | {r['mpx_per_s']} | {r['geossl_ratio']} | {100 * r['agreement']:.1f} % | "
              f"{', '.join(map(str, r['per_repeat']))} |" for r in table]
    lines += ["", "Untrained weights (speed does not depend on them); the agreement shows each row computes the "
              "same model: rows at another tile or without blending differ where context does."]
    (args.out / "peers_predict.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
