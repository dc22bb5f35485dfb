"""Benchmark: pretraining step time of GLCNet, SimCLR, BYOL, RS-BYOL and MoCo v2 at the same batch and tile.

Runs the real loop (``geossl.pretrain.run_pretrain``) for each method and reads its per-step log
(step time, time blocked on the data loader), while timing the batch augmentation and GLCNet's
region matching inside the step (the methods' ``augment`` / ``sample_regions`` wrapped with timers,
synchronised on CUDA). Warm-up steps are dropped. Not part of ``make test``. The ``rs-byol`` row is
BYOL with the views from bands 2,3,4,8 | 5,6,7,9 (needs ≥ 9 bands, e.g. the 13-band Sentinel-2 raster).

    backend/.venv/bin/python tests/bench/bench_pretrain.py --raster R.tif --batch 8 --tile 128 --steps 10

Prints a markdown table; writes ``pretrain.json`` and ``pretrain.md`` (machine, versions, date) to
``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "backend"))

from geossl.checkpoint import versions  # noqa: E402
from geossl.methods import method_names  # noqa: E402
from geossl.pretrain import log_path, run_pretrain  # noqa: E402
from geossl.schemas import PretrainParams  # noqa: E402

S2 = ROOT.parent / "shared" / "data" / "sentinel2_brandenburg" / "s2l1c_13band_10m.tif"
# Rows that are a registered method run with band views (RS-BYOL): row -> (method, view bands).
VIEW_ROWS = {"rs-byol": ("byol", ["2,3,4,8", "5,6,7,9"])}


class Timer:
    """Accumulates the time spent in wrapped functions during the current step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0

    def wrap(self, fn: Callable) -> Callable:
        def timed(*args: Any, **kw: Any) -> Any:
            self._sync()
            t = time.perf_counter()
            out = fn(*args, **kw)
            self._sync()
            self.seconds += time.perf_counter() - t
            return out

        return timed

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def take(self) -> float:
        s, self.seconds = self.seconds, 0.0
        return s


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    out = {"cpu": cpu, "cores": torch.get_num_threads(), "platform": platform.platform()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def bench(method: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    aug, regions = Timer(device), Timer(device)
    row = method
    method, view_bands = VIEW_ROWS.get(row, (row, None))
    module = importlib.import_module(f"geossl.methods.{method}")
    saved = {"augment": module.augment, "sample_regions": getattr(module, "sample_regions", None)}
    module.augment = aug.wrap(saved["augment"])
    if saved["sample_regions"] is not None:
        module.sample_regions = regions.wrap(saved["sample_regions"])
    per_step: list[tuple[float, float]] = []
    try:
        out = folder / f"{row}.pt"
        params = PretrainParams(rasters=args.raster, out=str(out), method=method, encoder=args.encoder,
                                view_bands=view_bands,
                                tile=args.tile, batch=args.batch, steps=args.warmup + args.steps,
                                workers=args.workers, device=args.device, seed=0,
                                checkpoint_every=10**9)

        def on_event(ev: Any) -> None:
            if ev.loss is not None:
                per_step.append((aug.take(), regions.take()))

        run_pretrain(params, on_event)
        log = [json.loads(ln) for ln in log_path(out).read_text().splitlines()]
    finally:
        module.augment = saved["augment"]
        if saved["sample_regions"] is not None:
            module.sample_regions = saved["sample_regions"]
    keep = slice(args.warmup, None)
    return {"method": row, "device": str(device), "final_loss": log[-1]["loss"],
            "step": [r["step_s"] for r in log][keep], "wait": [r["data_wait_s"] for r in log][keep],
            "augment": [a for a, _ in per_step][keep], "regions": [r for _, r in per_step][keep]}


def pool(runs: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    """One row from a method's runs in every round: the timed steps of all rounds together."""
    step, wait, augs, regs = ([x for r in runs for x in r[k]] for k in ("step", "wait", "augment", "regions"))
    mean_step = statistics.mean(step)
    return {
        "method": runs[0]["method"],
        "steps_timed": len(step),
        "step_s_mean": mean_step,
        "step_s_median": statistics.median(step),
        "round_medians": [statistics.median(r["step"]) for r in runs],
        "samples_per_s": batch / mean_step,
        "data_wait_s": statistics.mean(wait),
        "augment_s": statistics.mean(augs),
        "regions_s": statistics.mean(regs),
        "data_share": statistics.mean(wait) / mean_step,
        "augment_share": statistics.mean(augs) / mean_step,
        "regions_share": statistics.mean(regs) / mean_step,
        "final_loss": runs[-1]["final_loss"],
        "device": runs[0]["device"],
    }


def vs_baseline(row: dict[str, Any], base: dict[str, Any]) -> float:
    """Median over rounds of the within-round ratio of median step times: methods run one after
    another, so a round's ratio compares neighbours in time, and a disturbance that hits one
    method in one round moves one ratio, not the result."""
    return statistics.median(m / b for m, b in zip(row["round_medians"], base["round_medians"], strict=True))


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    cfg = meta["config"]
    head = (f"Pretraining step time, {cfg['encoder']} DeepLabV3+, batch {cfg['batch']}, tile {cfg['tile']} "
            f"(views {cfg['tile'] * 7 // 8 // 16 * 16}), workers {cfg['workers']}, {cfg['rounds']} rounds of "
            f"every method in turn, {cfg['steps']} steps after {cfg['warmup']} warm-up each, on {meta['machine']['cpu']}"
            f"{' / ' + meta['machine']['gpu'] if 'gpu' in meta['machine'] else ''} ({meta['date']}).\n\n")
    lines = ["| method | step (s, mean) | step (s, median) | samples/s | data wait (s) | data share | "
             "augment (s) | augment share | regions (s) | regions share |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['step_s_mean']:.3f} | {r['step_s_median']:.3f} | "
                     f"{r['samples_per_s']:.2f} | {r['data_wait_s']:.3f} | {r['data_share']:.1%} | "
                     f"{r['augment_s']:.3f} | {r['augment_share']:.1%} | {r['regions_s']:.3f} | "
                     f"{r['regions_share']:.1%} |")
    foot = ("\n\nData share: time blocked on the data loader (window reads + normalisation; all of it when "
            "there are 0 workers, only what the workers have not prepared in time otherwise) over the whole step. Augment: both views' augmentation, on the training "
            "device inside the step. Regions: GLCNet's region selection and matching.\n")
    return head + "\n".join(lines) + foot


def decoder_floor(args: argparse.Namespace, bands: int, repeats: int = 5) -> dict[str, float]:
    """Forward + backward of the encoder alone vs encoder + ASPP + decoder on the same two-view
    batch: the least any method that trains the decoder (GLCNet's local module) can cost relative
    to one that trains the encoder only (SimCLR, BYOL, MoCo). Alternated, medians compared."""
    from geossl.methods.base import deeplab_features
    from geossl.models import build_model

    torch.manual_seed(0)
    model = build_model(args.encoder, bands, 2)
    view = args.tile * 7 // 8 // 16 * 16
    x = torch.randn(2 * args.batch, bands, view, view)

    def run(decoder: bool) -> float:
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        f = deeplab_features(model, x, aspp=decoder, decoder=decoder)
        (f.decoder if decoder else f.encoder[-1]).float().mean().backward()
        return time.perf_counter() - t

    run(False), run(True)
    enc, dec = [], []
    for _ in range(repeats):
        enc.append(run(False))
        dec.append(run(True))
    e, d = statistics.median(enc), statistics.median(dec)
    return {"encoder_s": e, "encoder_decoder_s": d, "ratio": d / e}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--raster", action="append", help=f"raster(s) or folder (default: {S2})")
    p.add_argument("--methods", nargs="+", default=[*method_names(), *VIEW_ROWS],
                   choices=[*method_names(), *VIEW_ROWS])
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per method and round")
    p.add_argument("--rounds", type=int, default=3, help="every method runs once per round, in turn")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default="bench/results", help="folder for pretrain.json / pretrain.md")
    args = p.parse_args()
    args.raster = args.raster or [str(S2)]
    if not all(Path(r).exists() for r in args.raster):
        print(f"raster not found: {args.raster}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        rounds = [[bench(m, args, Path(tmp)) for m in args.methods] for _ in range(args.rounds)]
    rows = [pool([r[i] for r in rounds], args.batch) for i in range(len(args.methods))]
    import rasterio

    with rasterio.open(next(Path(args.raster[0]).glob("*.tif")) if Path(args.raster[0]).is_dir()
                       else args.raster[0]) as src:
        floor = decoder_floor(args, src.count)
    base = next((r for r in rows if r["method"] == "simclr"), None)
    for r in rows:
        r["vs_simclr"] = vs_baseline(r, base) if base else None
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
            "versions": versions(), "rasters": args.raster,
            "config": {k: getattr(args, k) for k in ("encoder", "batch", "tile", "steps", "warmup", "workers",
                                                      "rounds")}}
    table = markdown(rows, meta)
    table += ("\nStep time against SimCLR's (median over rounds of the ratio of median steps; GLCNet goal ≤ 1.25×): "
              + ", ".join(f"{r['method']} {r['vs_simclr']:.2f}×" for r in rows if r["vs_simclr"]) + ".\n\n"
              f"Floor for a method that trains the decoder: encoder + ASPP + decoder forward/backward is "
              f"{floor['ratio']:.2f}× the encoder's alone on the same two-view batch "
              f"({floor['encoder_decoder_s']:.3f} s vs {floor['encoder_s']:.3f} s).\n")
    meta["decoder_floor"] = floor
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrain.json").write_text(json.dumps({**meta, "results": rows}, indent=2))
    (out / "pretrain.md").write_text(table)
    print(f"written: {out / 'pretrain.json'}, {out / 'pretrain.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
