"""Benchmark: end-to-end `geossl predict` vs pure model forward on the same tiles, and peak memory.

Not a test (never timed in CI): `make bench` runs it and saves a markdown + JSON table. The ratio
is what matters (machines are noisy): end-to-end tiles/s ÷ forward-only tiles/s, measured in one
run on one machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from geossl.checkpoint import save_checkpoint, versions  # noqa: E402
from geossl.classes import ClassTable  # noqa: E402
from geossl.models import build_model, pick_device  # noqa: E402
from geossl.predict import run_predict  # noqa: E402
from geossl.raster_io import BandStats  # noqa: E402
from geossl.schemas import PredictParams  # noqa: E402
from geossl.tiling import tile_starts  # noqa: E402

from tests.data import write_raster  # noqa: E402


def make_inputs(d: Path, size: int, bands: int, classes: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    raster = d / f"r{size}.tif"
    data = rng.integers(0, 10000, (bands, size, size), dtype=np.uint16)
    write_raster(raster, data, tiled=True)
    model = d / "m.pt"
    if not model.exists():
        table = ClassTable.from_field_values([f"c{i}" for i in range(classes)])
        stats = BandStats([0.0] * bands, [10000.0] * bands, [5000.0] * bands, [2900.0] * bands)
        save_checkpoint(model, "segmentation", build_model("resnet18", bands, classes).state_dict(),
                        encoder="resnet18", in_channels=bands, num_classes=classes, classes=table.to_dict(),
                        band_stats=stats.to_dict(), tile=256)
    return raster, model


def forward_only(n_tiles: int, bands: int, classes: int, tile: int, batch: int) -> float:
    """Seconds for the model alone on ``n_tiles`` random tiles already in memory."""
    device = pick_device()
    model = build_model("resnet18", bands, classes).to(device).eval()
    x = torch.randn(batch, bands, tile, tile, device=device)
    with torch.inference_mode():
        model(x)
        t = time.perf_counter()
        for _ in range(0, n_tiles, batch):
            torch.softmax(model(x), 1).cpu()
    return time.perf_counter() - t


def peak_rss_predict(raster: Path, model: Path, out: Path) -> float:
    """Peak RSS (MB) of a separate `geossl predict` process."""
    code = (f"import resource,sys; from geossl.cli import main; main(['predict','--model','{model}','--raster',"
            f"'{raster}','--out','{out}','--json']); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(r.stderr.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for size in args.sizes:
            raster, model = make_inputs(d, size, args.bands, 6)
            overlap = args.tile // 4
            n_tiles = len(tile_starts(size, args.tile, args.tile - overlap)) ** 2
            t = time.perf_counter()
            run_predict(PredictParams(model=str(model), raster=str(raster), out=str(d / "c.tif"),
                                      tile=args.tile, overlap=overlap, batch=args.batch))
            e2e = time.perf_counter() - t
            fwd = forward_only(n_tiles, args.bands, 6, args.tile, args.batch)
            rss = peak_rss_predict(raster, model, d / "c2.tif")
            rows.append({"size": size, "tiles": n_tiles, "end_to_end_s": round(e2e, 2), "forward_s": round(fwd, 2),
                         "ratio": round(fwd / e2e, 3), "peak_rss_mb": round(rss, 1)})
            print(rows[-1], flush=True)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
            "cpu_threads": torch.get_num_threads(), "device": str(pick_device()), "versions": versions(),
            "tile": args.tile, "overlap": args.tile // 4, "batch": args.batch, "bands": args.bands,
            "encoder": "resnet18"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "predict.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["# Tiled inference: end-to-end vs forward-only", "",
             f"{meta['date']}, {meta['device']} ({meta['cpu_threads']} threads), resnet18 DeepLabV3+, "
             f"{args.bands} bands uint16, tile {args.tile}, overlap {args.tile // 4}, batch {args.batch}.", "",
             "| raster | tiles | end-to-end s | forward-only s | ratio (goal ≥ 0.85 CPU) | peak RSS MB |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['size']}² | {r['tiles']} | {r['end_to_end_s']} | {r['forward_s']} | {r['ratio']} | "
              f"{r['peak_rss_mb']} |" for r in rows]
    (args.out / "predict.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
