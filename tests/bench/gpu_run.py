"""`make bench BENCH=gpu`: the GPU benchmarks as one prepared run, sized for one device call.

A lent GPU machine is held for minutes and reaches no package index, so everything it measures
runs from this one command, each step under its own time limit, and every table lands in ``--out``
(default ``bench/results/gpu``) even when a later step fails or runs out of time:

1. pretraining step speed of every method with AMP (``bench_pretrain.py``);
2. prediction end to end ÷ the model's best forward, on CUDA (``bench_predict.py``; goal ≥ 0.7);
3. GLCNet pretraining on the Dubai tiles (≥ 300k samples at the default budget), then fine-tunes
   from it and from random init on the same polygons per seed: its gain (``pretrain_curve.py``);
   the gain table for the GPU is written too, so the panel can quote it.

``--tiny`` runs the same steps at a budget a 2-core CPU finishes in minutes (the suite checks the
script that way, with pyogrio blocked). On the device (first, here: ``make device-kit``, which runs
``../shared/tools/device-kit dubai sentinel2_brandenburg`` with the Makefile's ``DEVICE_KIT_EXTRA``
wheels, no pyogrio: the polygons are GeoJSON, read without it; measured 52 MiB in ``.device``, 54 MiB
with the working tree, of a call's 64 MiB; then carry ``.device``)::

    pip install -q --no-index --no-deps .device/wheels/*.whl && export PYTHONPATH=$PWD/backend && \\
        python tests/bench/gpu_run.py --data .device/data
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "tests" / "bench"


def steps(args: argparse.Namespace, work: Path) -> list[tuple[str, list[str], float]]:
    """(name, command, seconds allowed) of each step at the chosen budget."""
    s2 = args.data / "sentinel2_brandenburg" / "s2l1c_13band_10m.tif"
    py = sys.executable
    if args.tiny:
        pretrain = ["--methods", "glcnet", "simclr", "--batch", "2", "--tile", "64", "--steps", "1", "--rounds", "1",
                    "--warmup", "0"]
        predict = ["--limit-size", "512", "--limit-tiles", "128", "--limit-engines", "torch", "--repeats", "1"]
        curve = ["--images", "2", "--minutes", "0.25", "--snapshots", "0.1", "--pretrain-batch", "2",
                 "--pretrain-tile", "64", "--seeds", "0", "--finetune", json.dumps({"steps": 2, "tile": 64, "batch": 2})]
        limits = [240.0, 240.0, 600.0]
        args.pretrain_batch = 2
    else:  # one H200: ≈ 1 + 1.5 + 5 minutes
        pretrain = ["--batch", "64", "--tile", "256", "--steps", "20", "--rounds", "2", "--workers", "4"]
        predict = ["--limit-size", "16384", "--limit-engines", "torch", "--limit-tiles", "512", "768", "1024",
                   "--repeats", "2"]
        # 300k samples: batch 256 × ≥ 1,200 steps in 2.5 minutes; fine-tunes at a fixed GPU step count
        curve = ["--images", "12", "--minutes", "2.5", "--snapshots", "1.25", "--pretrain-batch", "256",
                 "--pretrain-tile", "128", "--pretrain-workers", "6", "--seeds", "0", "1", "2",
                 "--finetune", json.dumps({"steps": 600, "batch": 32})]
        limits = [150.0, 150.0, 330.0]
        args.pretrain_batch = 256
    out = str(args.out)
    return [
        ("pretrain speed (AMP)", [py, str(BENCH / "bench_pretrain.py"), "--raster", str(s2), "--device",
                                  args.device, "--out", out, *pretrain], limits[0]),
        ("predict ÷ forward", [py, str(BENCH / "bench_predict.py"), "--out", out, "--sizes", "--rss-sizes",
                               *predict], limits[1]),
        ("GLCNet pretraining gain", [py, str(BENCH / "pretrain_curve.py"), "--data", str(args.data / "dubai"),
                                     "--methods", "glcnet", "--out", out, "--work", str(work / "curve"),
                                     "--hardware", args.hardware, "--hardware-label", args.hardware_label,
                                     *([] if args.gain_table else ["--no-gain-table"]), *curve], limits[2]),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                    help="folder holding dubai/ and sentinel2_brandenburg/ (on the device: .device/data)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu")
    ap.add_argument("--tiny", action="store_true", help="a budget a 2-core CPU finishes in minutes")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--hardware", default="gpu-h200")
    ap.add_argument("--hardware-label", default="one H200 GPU")
    ap.add_argument("--no-gain-table", dest="gain_table", action="store_false",
                    help="do not write the panel's gain table (tiny runs never do)")
    args = ap.parse_args()
    if args.tiny:
        args.gain_table, args.hardware, args.hardware_label = False, "tiny", "tiny check machine"
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "tiny": args.tiny, "steps": []}
    failed = 0
    with tempfile.TemporaryDirectory(prefix="geossl-gpu-run-") as tmp:
        for name, cmd, limit in steps(args, Path(tmp)):
            t = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
                code, tail = proc.returncode, (proc.stdout + proc.stderr)[-2000:]
            except subprocess.TimeoutExpired as exc:
                code, tail = "timeout", str(exc.stdout or "")[-2000:]
            seconds = round(time.perf_counter() - t, 1)
            failed += code != 0
            report["steps"].append({"name": name, "returncode": code, "seconds": seconds, "limit_s": limit,
                                    "tail": tail if code != 0 else ""})
            print(f"{name}: {'ok' if code == 0 else f'FAILED ({code})'} in {seconds} s", flush=True)
            (args.out / "gpu_run.json").write_text(json.dumps(report, indent=1))
    curve = args.out / "pretrain_curve.json"
    if curve.exists():  # the pretraining's size (issue goal: ≥ 300k samples on the GPU)
        plan = json.loads(curve.read_text())["meta"]["pretrain"].get("glcnet", {}).get("plan", {})
        report["glcnet_samples"] = int(plan.get("steps", 0)) * args.pretrain_batch
        (args.out / "gpu_run.json").write_text(json.dumps(report, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
