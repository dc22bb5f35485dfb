"""Benchmark: one raster predicted by 1 and by N ``torchrun`` processes, side by side.

Every row runs the real command (``torchrun --standalone --nproc_per_node N -m geossl.cli predict``,
N = 1 too, so start-up costs match), with the machine's cores split evenly between the processes
(``OMP_NUM_THREADS``). Repeats alternate the rows; medians are compared, as a ratio to one process.
Each row's map is checked against the one-process map: the classes must be identical pixel for
pixel (the confidence is bit-identical only at equal threads per process, so it is not compared).

    backend/.venv/bin/python tests/bench/bench_distributed.py --size 2048 --processes 1 2

Writes ``distributed.json`` and ``distributed.md`` (machine, versions, date) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench import tables  # noqa: E402
from tests.bench.bench_predict import write_big_raster, write_model  # noqa: E402


def predict(n: int, threads: int, model: Path, raster: Path, out: Path, tile: int, batch: int) -> float:
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(sys.path)}
    t = time.perf_counter()
    subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", str(n), "-m", "geossl.cli", "predict",
                    "--model", str(model), "--raster", str(raster), "--out", str(out), "--tile", str(tile),
                    "--batch", str(batch), "--json"], check=True, capture_output=True, env=env)
    return time.perf_counter() - t


def classes(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="geossl-dist-") as tmp:
        work = Path(tmp)
        raster = write_big_raster(work / "big.tif", args.size, args.bands)
        model = write_model(work / "model.pt", args.bands, args.tile)
        seconds: dict[int, list[float]] = {n: [] for n in args.processes}
        for _ in range(args.repeats):
            for n in args.processes:
                seconds[n].append(predict(n, max(1, cores // n), model, raster, work / f"c{n}.tif", args.tile,
                                          args.batch))
        ref = classes(work / f"c{args.processes[0]}.tif")
        rows = []
        for n in args.processes:
            med = statistics.median(seconds[n])
            rows.append({"processes": n, "threads_each": max(1, cores // n), "seconds": round(med, 2),
                         "mpx_per_s": round(args.size ** 2 / med / 1e6, 3),
                         "speedup": round(statistics.median(seconds[args.processes[0]]) / med, 3),
                         "identical_classes": bool(np.array_equal(classes(work / f"c{n}.tif"), ref)),
                         "all_seconds": [round(s, 2) for s in seconds[n]]})
    meta = tables.meta(size=args.size, bands=args.bands, tile=args.tile, batch=args.batch, cores=cores,
                       repeats=args.repeats)
    lines = ["# Distributed prediction: 1 vs N processes", "",
             f"{meta['date']}; {args.size}² px, {args.bands} bands, random resnet18 DeepLabV3+, tile {args.tile}, "
             f"batch {args.batch}; {cores} cores split between the processes; median of {args.repeats} "
             f"alternating runs of the whole `torchrun … predict` command; {meta['cpu']}.", "",
             "| processes | threads each | s | Mpx/s | speed-up | classes identical to 1 process |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['processes']} | {r['threads_each']} | {r['seconds']} | {r['mpx_per_s']} | {r['speedup']}× | "
              f"{'yes' if r['identical_classes'] else 'NO'} |" for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distributed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / "distributed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
