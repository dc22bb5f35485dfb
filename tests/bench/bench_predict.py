"""Benchmark: `geossl predict` against the model's physical limit, its own replayed batches, and peak memory.

Not a test (never timed in CI): `make bench` runs it and saves a markdown + JSON table. What matters
are ratios measured side by side in one run (machines are noisy):

- physical-limit ratio = raster pixels ÷ end-to-end seconds of `geossl predict` *with its defaults*
  (model trained at tile 128), over the model's best forward throughput: the forward alone on
  tiles already in memory at each tile size (each at its default batch), the fastest one. Pixels
  are counted once: whatever the overlap recomputes is a cost, not throughput. The old default
  (the training tile, a quarter of it as overlap) is measured beside it.

- throughput ratio = forward-only seconds ÷ end-to-end seconds. The forward-only baseline replays
  exactly the batches `predict` makes (same count, same sizes), on tensors already in memory, with
  the same softmax and copy back to numpy. Repeats alternate the two and the medians are compared.
- peak RSS of a separate `geossl predict` process on each raster size, and its ratio to the
  smallest size: memory must not grow with the raster.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from geossl.checkpoint import save_checkpoint, versions  # noqa: E402
from geossl.classes import ClassTable  # noqa: E402
from geossl.models import build_model, pick_device  # noqa: E402
from geossl.onnx_engine import choose_engine, exported_graph, onnx_predictor  # noqa: E402
from geossl.predict import load_model, run_predict, torch_predictor  # noqa: E402
from geossl.raster_io import BandStats  # noqa: E402
from geossl.schemas import PredictParams  # noqa: E402
from geossl.tiling import batch_sizes, computed_pixels, tile_plan  # noqa: E402

from tests.data import ORIGIN, PEAK_RSS_MB_CODE, PIXEL, UTM33  # noqa: E402

CLASSES = 6


def write_big_raster(path: Path, size: int, bands: int) -> Path:
    """A ``size``² uint16 raster written block row by block row (tiled, deflate), so a 16k² file is
    generated in bounded memory. Smooth fields plus noise: compressible, yet not constant."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": "uint16", "crs": UTM33,
               "transform": from_origin(*ORIGIN, PIXEL, PIXEL), "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    cols = np.arange(size, dtype=np.float32)
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, 1024):
            rows = np.arange(r0, min(r0 + 1024, size), dtype=np.float32)[:, None]
            chunk = np.empty((bands, len(rows), size), np.uint16)
            for b in range(bands):
                field = 4000 + 2500 * np.sin(cols / (97 + 13 * b)) * np.cos(rows / (131 + 7 * b))
                chunk[b] = field + rng.integers(0, 8, field.shape, dtype=np.uint16)
            # All bands at once: pixel-interleaved blocks written band by band get re-compressed
            # (slower, and the file grows when GDAL's small cache flushes half-written blocks).
            dst.write(chunk, window=rasterio.windows.Window(0, r0, size, len(rows)))
    return path


def write_model(path: Path, bands: int, tile: int) -> Path:
    table = ClassTable.from_field_values([f"c{i}" for i in range(CLASSES)])
    stats = BandStats([0.0] * bands, [10000.0] * bands, [5000.0] * bands, [2900.0] * bands)
    save_checkpoint(path, "segmentation", build_model("resnet18", bands, CLASSES).state_dict(),
                    encoder="resnet18", in_channels=bands, num_classes=CLASSES, classes=table.to_dict(),
                    band_stats=stats.to_dict(), tile=tile)
    return path


def forward_only(model_path: Path, sizes: list[int], bands: int, tile: int) -> float:
    """Seconds for the same batches as `predict`, on random tiles already in memory."""
    device = pick_device()
    model, _ = load_model(str(model_path), device)
    predictor = torch_predictor(model, device, amp=True)
    rng = np.random.default_rng(0)
    pool = {n: rng.standard_normal((n, bands, tile, tile), dtype=np.float32) for n in set(sizes)}
    predictor(pool[max(pool)])  # warm-up; predict pays its model loading and first batch inside its timing
    t = time.perf_counter()
    for n in sizes:
        predictor(pool[n])
    return time.perf_counter() - t


def end_to_end(model: Path, raster: Path, out: Path, tile: int, overlap: int, batch: int) -> float:
    t = time.perf_counter()
    run_predict(PredictParams(model=str(model), raster=str(raster), out=str(out), confidence=str(out) + ".conf.tif",
                              tile=tile, overlap=overlap, batch=batch, engine="torch"))  # the replay's engine
    return time.perf_counter() - t


def peak_rss_predict(raster: Path, model: Path, out: Path, tile: int, batch: int) -> tuple[float, float]:
    """(peak RSS MB, seconds) of a separate `geossl predict` process (classes + confidence)."""
    code = ("import sys,time; from geossl.cli import main; t=time.perf_counter(); "
            f"main(['predict','--model','{model}','--raster','{raster}','--out','{out}','--confidence',"
            f"'{out}.conf.tif','--tile','{tile}','--batch','{batch}','--json']); "
            f"print({PEAK_RSS_MB_CODE}, time.perf_counter()-t, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rss, seconds = r.stderr.strip().splitlines()[-1].split()
    return float(rss), float(seconds)


def forward_mpx_s(model_path: Path, tile: int, bands: int, engine: str, mpx: float = 6.0) -> float:
    """Mpx/s of the model alone on ``tile``² tiles in memory, at the batch `predict` would use."""
    device = pick_device()
    model, ckpt = load_model(str(model_path), device)
    if engine == "onnxruntime":
        predictor = onnx_predictor(exported_graph(str(model_path), model, ckpt, tile, None))
    else:
        predictor = torch_predictor(model, device, amp=True)
    batch = tile_plan(tile, 1 << 16, 1 << 16, device.type, tile=tile).batch
    x = np.random.default_rng(0).standard_normal((batch, bands, tile, tile), dtype=np.float32).clip(-1.7, 1.7)
    predictor(x)  # warm-up (kernels chosen for this shape)
    n = max(2, round(mpx * 1e6 / (batch * tile * tile)))
    t = time.perf_counter()
    for _ in range(n):
        predictor(x)
    return n * batch * tile * tile / 1e6 / (time.perf_counter() - t)


def physical_limit(d: Path, bands: int, size: int, tiles: list[int], engines: list[str], repeats: int) -> dict:
    """`geossl predict` with its tile plan on each engine, and with the old defaults, against the
    best forward of any engine at any tile size."""
    model = write_model(d / "m128.pt", bands, 128)
    raster = write_big_raster(d / f"limit{size}.tif", size, bands)
    planned = tile_plan(128, size, size, pick_device().type)
    auto = choose_engine("auto", pick_device(), False, computed_pixels(size, size, planned.tile, planned.overlap),
                         lambda: False)  # what a first run here gets: nothing cached yet

    def e2e(**over) -> tuple[float, dict]:
        t = time.perf_counter()
        r = run_predict(PredictParams(model=str(model), raster=str(raster), out=str(d / "limit.tif"),
                                      confidence=str(d / "limit.conf.tif"), **over))
        return size * size / 1e6 / (time.perf_counter() - t), r

    cold = {}
    for engine in engines:  # first-call costs (and the ONNX export) outside the timings, but recorded
        cold[engine] = size * size / 1e6 / e2e(engine=engine)[0]
    runs: dict[str, list[float]] = {**{f"e2e {e}": [] for e in engines}, "old": [],
                                    **{f"{e} {t}": [] for e in engines for t in tiles}}
    plan: dict = {}
    for _ in range(repeats):
        for engine in engines:
            mpx, r = e2e(engine=engine)
            runs[f"e2e {engine}"].append(mpx)
            plan = {k: r[k] for k in ("tile", "overlap", "batch")}
        runs["old"].append(e2e(tile=128, overlap=32, batch=8, engine="torch")[0])
        for engine in engines:
            for t in tiles:
                runs[f"{engine} {t}"].append(forward_mpx_s(model, t, bands, engine))
        print({k: round(v[-1], 3) for k, v in runs.items()}, flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    forward = {e: {t: round(med[f"{e} {t}"], 3) for t in tiles} for e in engines}
    best_engine, best_tile = max(((e, t) for e in engines for t in tiles), key=lambda et: forward[et[0]][et[1]])
    best = forward[best_engine][best_tile]
    return {"size": size, "plan": plan, "auto_engine": auto, "forward_mpx_s": forward,
            "best": {"engine": best_engine, "tile": best_tile, "mpx_s": best},
            "end_to_end_mpx_s": {e: round(med[f"e2e {e}"], 3) for e in engines},
            "ratio": {e: round(med[f"e2e {e}"] / best, 3) for e in engines},
            "own_engine_ratio": {e: round(med[f"e2e {e}"] / max(forward[e].values()), 3) for e in engines},
            "old_default_mpx_s": round(med["old"], 3), "old_ratio": round(med["old"] / best, 3),
            "first_run_s": {e: round(v, 1) for e, v in cold.items()},
            "warm_run_s": {e: round(size * size / 1e6 / med[f"e2e {e}"], 1) for e in engines}}


def limit_lines(limit: dict, bands: int, repeats: int, meta: dict) -> list[str]:
    p, best = limit["plan"], limit["best"]
    tiles = list(next(iter(limit["forward_mpx_s"].values())))
    lines = [
        "# Tiled inference: end-to-end against the model's best forward throughput", "",
        f"{meta['date']}, {meta['device']} ({meta['cpu_threads']} threads), resnet18 DeepLabV3+ trained at tile 128, "
        f"{bands} bands uint16 (tiled, deflate), {limit['size']}² raster, classes + confidence written. Medians of "
        f"{repeats} alternating repeats; pixels counted once (what the overlap recomputes is a cost).", "",
        "| forward alone (Mpx/s), tile | " + " | ".join(f"{t}²" for t in tiles) + " |",
        "|---|" + "---|" * len(tiles)]
    lines += [f"| {e} | " + " | ".join(str(v) for v in f.values()) + " |" for e, f in limit["forward_mpx_s"].items()]
    lines += ["", f"| `geossl predict` (tile {p['tile']}, overlap {p['overlap']}, batch {p['batch']}) | Mpx/s | "
              f"÷ best forward: {best['engine']} at {best['tile']}² (goal ≥ 0.9 CPU, ≥ 0.7 GPU) | ÷ its own engine's "
              "best forward |", "|---|---|---|---|"]
    lines += [f"| `--engine {e}` | {v} | **{limit['ratio'][e]}** | {limit['own_engine_ratio'][e]} |"
              for e, v in limit["end_to_end_mpx_s"].items()]
    lines += [f"| old defaults: training tile 128, overlap 32, batch 8, torch | {limit['old_default_mpx_s']} | "
              f"{limit['old_ratio']} | |", "",
              "First run (ONNX export included) against later runs, seconds: " + ", ".join(
                  f"{e} {limit['first_run_s'][e]} / {limit['warm_run_s'][e]}" for e in limit["first_run_s"]) + ".",
              "",
              f"On this {limit['size']}² raster `--engine auto` picks **{limit['auto_engine']}**. The forward runs at "
              "`predict`'s default batch for each tile (about 0.6 Mpx a pass on CPU), softmax and copy to numpy "
              "included; end-to-end adds reading, normalising, blending the overlaps, argmax and writing two "
              "compressed GeoTIFFs.", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--sizes", type=int, nargs="*", default=[1024, 2048], help="rasters for the throughput ratio")
    ap.add_argument("--rss-sizes", type=int, nargs="*", default=[2048, 8192], help="rasters for peak RSS")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--limit-size", type=int, default=4096, help="raster for the physical-limit ratio (0: skip)")
    ap.add_argument("--limit-tiles", type=int, nargs="*", default=[128, 256, 512, 768, 1024])
    ap.add_argument("--limit-engines", nargs="*", default=["torch", "onnxruntime"])
    args = ap.parse_args()
    overlap = args.tile // 4
    rows, rss_rows, limit = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        os.environ["GEOSSL_CACHE_DIR"] = str(d / "cache")  # exported graphs: made here, gone afterwards
        if args.limit_size:
            limit = physical_limit(d, args.bands, args.limit_size, args.limit_tiles, args.limit_engines, args.repeats)
        model = write_model(d / "m.pt", args.bands, args.tile)
        rasters = {s: write_big_raster(d / f"r{s}.tif", s, args.bands) for s in sorted({*args.sizes, *args.rss_sizes})}
        if args.sizes:  # first-call costs (allocator, oneDNN kernels) outside the timings
            end_to_end(model, rasters[min(args.sizes)], d / "warm.tif", args.tile, overlap, args.batch)
        for size in args.sizes:
            sizes = batch_sizes(size, size, args.tile, overlap, args.batch)
            e2e, fwd = [], []
            for _ in range(args.repeats):
                e2e.append(end_to_end(model, rasters[size], d / "c.tif", args.tile, overlap, args.batch))
                fwd.append(forward_only(model, sizes, args.bands, args.tile))
            e, f = statistics.median(e2e), statistics.median(fwd)
            rows.append({"size": size, "tiles": sum(sizes), "batches": len(sizes), "end_to_end_s": round(e, 2),
                         "forward_s": round(f, 2), "ratio": round(f / e, 3),
                         "ratio_per_repeat": [round(b / a, 3) for a, b in zip(e2e, fwd, strict=True)]})
            print(rows[-1], flush=True)
        for size in args.rss_sizes:
            rss, seconds = peak_rss_predict(rasters[size], model, d / "c2.tif", args.tile, args.batch)
            mpix_s = size * size / 1e6 / seconds
            rss_rows.append({"size": size, "peak_rss_mb": round(rss, 1), "seconds": round(seconds, 1),
                             "mpix_per_s": round(mpix_s, 3),
                             "raster_mb": round(rasters[size].stat().st_size / 2**20, 1)})
            print(rss_rows[-1], flush=True)
    base = rss_rows[0]["peak_rss_mb"] if rss_rows else None
    for r in rss_rows:
        r["rss_ratio"] = round(r["peak_rss_mb"] / base, 3)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
            "processor": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
            "device": str(pick_device()), "versions": versions(), "tile": args.tile, "overlap": overlap,
            "batch": args.batch, "bands": args.bands, "encoder": "resnet18", "repeats": args.repeats}
    setup = (f"{meta['date']}, {meta['device']} ({meta['cpu_threads']} threads), resnet18 DeepLabV3+, "
             f"{args.bands} bands uint16 (tiled, deflate), tile {args.tile}, overlap {overlap}, batch {args.batch}, "
             "classes + confidence written.")
    args.out.mkdir(parents=True, exist_ok=True)
    if rows or limit:
        (args.out / "predict.json").write_text(json.dumps({"meta": meta, "limit": limit, "rows": rows}, indent=2))
        lines = limit_lines(limit, args.bands, args.repeats, meta) if limit else []
        if rows:
            lines += ["## End-to-end vs the same batches replayed", "", f"{setup} Medians of {args.repeats} "
                      "alternating repeats.", "",
                      "| raster | tiles | end-to-end s | forward-only s | ratio (goal ≥ 0.85 CPU, ≥ 0.7 GPU) | "
                      "per repeat |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['size']}² | {r['tiles']} | {r['end_to_end_s']} | {r['forward_s']} | {r['ratio']} | "
                      f"{', '.join(map(str, r['ratio_per_repeat']))} |" for r in rows]
            lines += ["", "Forward-only replays exactly the batches `predict` makes, on tiles already in memory "
                      "(softmax and copy to numpy included); end-to-end adds reading, normalising, blending, "
                      "argmax and writing two compressed GeoTIFFs."]
        (args.out / "predict.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    if rss_rows:
        (args.out / "memory.json").write_text(json.dumps({"meta": meta, "rows": rss_rows}, indent=2))
        lines = ["# Tiled inference: peak memory against raster size", "", setup, "",
                 "| raster | file MB | peak RSS MB (goal ≤ 1536 at 16k²) | × smallest (goal ≤ 1.2) | "
                 "seconds | Mpixel/s |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['size']}² | {r['raster_mb']} | {r['peak_rss_mb']} | {r['rss_ratio']} | {r['seconds']} | "
                  f"{r['mpix_per_s']} |" for r in rss_rows]
        lines += ["", "Peak RSS (VmHWM) of a separate `geossl predict` process, torch and the model included."]
        (args.out / "memory.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
