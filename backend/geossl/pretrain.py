"""Self-supervised pretraining of a whole DeepLabV3+ on the user's unlabeled rasters.

The loop is method-agnostic (:mod:`geossl.methods`): batches of spaced, mostly-valid windows
(:class:`geossl.datasets.UnlabeledTiles`) go through ``method(batch, generator) -> (loss, logs)``,
optimised with Adam (β 0.9/0.99, weight decay 1e-5) and a cosine schedule to 0 over the run, as in
the GLCNet paper. AMP and channels-last on CUDA.

Files, next to ``--out``:

* ``<out>``: the pretrained checkpoint (kind ``pretrained``) that ``finetune --init`` loads: the
  DeepLabV3+ encoder + decoder weights, band statistics, method and options, tile, seed, config,
  and under ``init`` what the encoder started from (``--init`` / ``--encoder-weights``: weights users
  have, see :mod:`geossl.weights`; random otherwise).
* ``<out>.state.pt``: the resume state (kind ``pretrain-state``) every ``checkpoint_every`` steps,
  written atomically and removed when the run completes. ``--resume`` continues *exactly*: the
  data of step ``i`` come from ``(seed, i)``, the augmentation generator and torch's global RNG
  (ASPP dropout) are re-seeded from ``(seed, rank, i)`` at every step, and model, optimiser,
  scheduler, scaler (and global RNG) states are restored, so an interrupted and resumed run ends
  with the same weights as an uninterrupted one. ``--resume`` after the run completed does nothing.
* ``<out>.log.jsonl``: one line per step (loss, the method's logs, lr, samples/s, data wait).

Scale-out: started by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the same entry point
runs DistributedDataParallel (NCCL on GPU, gloo on CPU). ``batch`` is the global batch; every
process plans the same global batch and reads its slice, the losses gather embeddings from all
processes, and only rank 0 writes files and reports progress.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rasterio.windows import Window
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .checkpoint import load_checkpoint, pack, rng_states, save_checkpoint, set_rng_states, unpack
from .datasets import UnlabeledTiles
from .errors import GeoSSLError
from .methods import PretrainMethod, get_method
from .models import autocast, build_model, pick_device, prepare
from .paired import check_pairs, stacked_stats
from .progress import Clock, ProgressCallback, null_progress
from .raster_io import (
    BandStats,
    RasterInfo,
    check_output_path,
    compute_band_stats,
    extent_window,
    raster_info,
)
from .schemas import PretrainParams
from .views import ViewBands, parse_view_bands
from .weights import EncoderWeights, encoder_start

RASTER_SUFFIXES = (".tif", ".tiff")
# Options that define the optimisation trajectory: a resume state is only continued with the same.
RUN_DEFINING = ("method", "method_options", "encoder", "init", "encoder_weights", "tile", "batch", "lr",
                "weight_decay", "seed", "view_bands", "pair")


def state_path(out: str | os.PathLike) -> Path:
    return Path(f"{out}.state.pt")


def log_path(out: str | os.PathLike) -> Path:
    return Path(f"{out}.log.jsonl")


def expand_rasters(paths: list[str]) -> list[str]:
    """Rasters given directly, plus the *.tif/*.tiff files of any folder among ``paths`` (sorted)."""
    out: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES)
            if not found:
                raise GeoSSLError(f"Folder '{p}' holds no .tif/.tiff file.", "give a folder of GeoTIFFs or raster files.")
            out.extend(found)
        else:
            out.append(str(p))
    return out


def extent_regions(infos: list[RasterInfo], params: PretrainParams) -> list[Window | None] | None:
    """Per raster, the window of the user's extent (an empty one for rasters it misses)."""
    if not params.extent:
        return None
    regions = [extent_window(i, params.extent, params.extent_crs) or Window(0, 0, 0, 0) for i in infos]
    if not any(r.width for r in regions):
        raise GeoSSLError("The extent does not overlap any of the rasters.",
                          "choose an extent over the imagery (or none to use whole rasters).")
    return regions


def check_rasters(paths: list[str]) -> list[RasterInfo]:
    """Infos of the pretraining rasters; same band count required, no CRS needed (no labels here)."""
    infos = [raster_info(p) for p in paths]
    if len({i.count for i in infos}) > 1:
        listing = ", ".join(f"{Path(i.path).name}: {i.count}" for i in infos)
        raise GeoSSLError(f"The rasters have different band counts ({listing}).",
                          "pretrain on rasters with the same bands in the same order.")
    return infos


def check_views(params: PretrainParams, infos: list[RasterInfo]) -> tuple[list[RasterInfo] | None, ViewBands | None]:
    """Paired rasters and the views' bands (RS-BYOL), refused now if they cannot work with the rasters."""
    if (params.view_bands or params.pair) and not get_method(params.method).supports_views:
        raise GeoSSLError(f"Method {params.method} takes both views from the same bands.",
                          "use --method byol or moco with --view-bands / --pair.")
    pairs = check_pairs(infos, params.pair) if params.pair else None
    views = parse_view_bands(params.view_bands, infos[0].count, pairs[0].count if pairs else None)
    return pairs, views


def distinct_windows(infos: list[RasterInfo], tile: int) -> int:
    """How many non-overlapping ``tile`` windows the rasters hold (at least one each)."""
    return sum(max(1, (i.width // tile) * (i.height // tile)) for i in infos)


# --- distributed ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when started directly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def _start_distributed(ctx: Distributed, device: torch.device) -> torch.device:
    """Join the torchrun process group (NCCL on GPU, gloo on CPU); one GPU per process."""
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


# --- reproducibility ------------------------------------------------------------------------------


def step_seed(seed: int, rank: int, step: int, stream: int) -> int:
    """A 63-bit seed for random stream ``stream`` of ``step`` on ``rank``: independent of history."""
    return int(np.random.SeedSequence([seed, rank, step, stream]).generate_state(1, np.uint64)[0] >> 1)


def cosine(total: int) -> Any:
    """LR factor: cosine from 1 to 0 over the run (the paper's schedule, no warm-up)."""

    def factor(step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))

    return factor


# --- the run --------------------------------------------------------------------------------------


@dataclass
class _Trainer:
    """Everything a resume state holds, built identically for a fresh and a resumed run."""

    method: PretrainMethod
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    init: dict[str, Any] | None = None  # what the encoder started from (recorded in the checkpoint)

    def state(self) -> dict[str, Any]:
        return {"method": self.method.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_states()}

    def load(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["method"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_states(state["rng"])


def _build(params: PretrainParams, in_channels: int, device: torch.device, views: ViewBands | None = None,
           windows: int = 0, start: EncoderWeights | None = None) -> _Trainer:
    torch.manual_seed(params.seed)  # same initial weights on every process and every resume
    model = build_model(params.encoder, in_channels, 1)
    # Before the method wraps the model: BYOL's target and MoCo's key encoder start as copies of it.
    init = start.load_into(model, params.encoder) if start is not None else None
    cls = get_method(params.method)
    options = cls.resolve_options(params.method_options, batch=params.batch, total_steps=params.total_steps,
                                  windows=windows)
    extra = {"views": views} if cls.supports_views else {}
    method = prepare(cls(model, params.view_size, **extra, **options), device)
    # Momentum copies (BYOL target, MoCo key encoder) have no gradient and stay out of the optimiser.
    trainable = [p for p in method.parameters() if p.requires_grad]
    # Fused kernels: one pass over all parameters (on CPU ~7x faster than the default per-tensor loop).
    opt = torch.optim.Adam(trainable, lr=params.lr, betas=(0.9, 0.99), weight_decay=params.weight_decay,
                           fused=device.type in ("cpu", "cuda"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine(params.total_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and params.amp
                                  and not torch.cuda.is_bf16_supported())
    return _Trainer(method, opt, sched, scaler, init)


def _differences(saved: dict[str, Any], total: int, rasters: list[str], params: PretrainParams,
                 now_rasters: list[str]) -> list[str]:
    """Run-defining options that differ between a saved run and this one."""
    now = params.model_dump()
    diff = [k for k in RUN_DEFINING if saved.get(k) != now[k]]
    if total != params.total_steps:
        diff.append("steps/epochs")
    if rasters != now_rasters:
        diff.append("rasters")
    return diff


def _load_resume(path: Path, params: PretrainParams, rasters: list[str]) -> dict[str, Any]:
    """Load a resume state and refuse one written with other run-defining options."""
    ck = load_checkpoint(path, "pretrain-state")
    diff = _differences(ck["params"], ck["total_steps"], ck["rasters"], params, rasters)
    if diff:
        raise GeoSSLError(
            f"The resume state '{path.name}' was written with other options ({', '.join(diff)}).",
            f"resume with the same options, or delete {path.name} (or drop --resume) to start afresh.",
        )
    return ck


def _finished(out: Path, params: PretrainParams, rasters: list[str]) -> dict[str, Any] | None:
    """The checkpoint of this very run if it already completed (``--resume`` after the end)."""
    if not out.is_file():
        return None
    try:
        ck = load_checkpoint(out, "pretrained")
    except GeoSSLError:
        return None
    if ck.get("steps") != params.total_steps or _differences(ck["config"], ck["steps"], ck["rasters"], params, rasters):
        return None
    return ck


def _save_state(path: Path, trainer: _Trainer, params: PretrainParams, rasters: list[str], stats: BandStats,
                step: int, seconds: float) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = pack(trainer.state(), tensors)
    save_checkpoint(path, "pretrain-state", tensors, resume=skeleton, params=params.model_dump(),
                    rasters=rasters, band_stats=stats.to_dict(), step=step, total_steps=params.total_steps,
                    seconds=seconds, init=trainer.init)


def _open_log(path: Path, resume_step: int) -> Any:
    """The loss log, truncated to the resumed step (lines of a lost tail would be duplicated)."""
    kept: list[str] = []
    if resume_step and path.exists():
        kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resume_step]
    fh = open(path, "w", buffering=1)  # noqa: SIM115 - closed by the caller after the loop
    fh.writelines(ln + "\n" for ln in kept)
    return fh


def run_pretrain(params: PretrainParams, progress: ProgressCallback = null_progress) -> dict[str, Any]:
    """Pretrain and write the checkpoint (rank 0); returns a summary (paths, steps, losses, timing)."""
    ctx = Distributed.from_env()
    started_dist = ctx.enabled and not dist.is_initialized()
    device = pick_device(params.device)
    if ctx.enabled:
        device = _start_distributed(ctx, device)
    try:
        return _run(params, progress if ctx.main else null_progress, ctx, device)
    finally:
        if started_dist and dist.is_initialized():
            dist.destroy_process_group()


def _run(params: PretrainParams, progress: ProgressCallback, ctx: Distributed, device: torch.device) -> dict[str, Any]:
    t0 = time.monotonic()
    out = check_output_path(params.out)
    spath, lpath = state_path(out), log_path(out)
    if params.batch % ctx.world_size:
        raise GeoSSLError(f"--batch {params.batch} cannot be split over {ctx.world_size} processes.",
                          f"use a multiple of {ctx.world_size}.")
    rasters = expand_rasters(params.rasters)
    infos = check_rasters(rasters)
    rasters = [i.path for i in infos]
    pairs, views = check_views(params, infos)
    in_channels = views.channels if views else infos[0].count
    warnings: list[str] = []
    resume = None
    if params.resume:
        if spath.exists():
            resume = _load_resume(spath, params, rasters)
        elif (done := _finished(out, params, rasters)) is not None:
            progress(Clock().event("pretrain", done["steps"], done["steps"], message="Already complete."))
            return _summary(params, out, done["steps"], None, None, len(rasters), ctx, device,
                            ["the run had already completed; nothing to resume."], t0)
        else:
            warnings.append(f"--resume: no resume state {spath.name} yet, starting from step 0.")
    elif spath.exists():
        warnings.append(f"{spath.name} from an earlier run will be replaced (pass --resume to continue it).")
    for w in warnings:
        progress(Clock().event("pretrain", 0, 0, message=f"warning: {w}"))
    if resume is not None:
        stats = BandStats.from_dict(resume["band_stats"])
    else:
        progress(Clock().event("band statistics", 0, 0, message="Computing band statistics…"))
        stats = compute_band_stats(rasters, seed=params.seed)
        if pairs:
            stats = stacked_stats(stats, compute_band_stats([p.path for p in pairs], seed=params.seed))

    total = params.total_steps
    # A resumed run's weights come from its state: the start weights are read only for a fresh run.
    start = encoder_start(params.init, params.encoder_weights, params.encoder) if resume is None else None
    trainer = _build(params, in_channels, device, views, distinct_windows(infos, params.tile), start)
    if trainer.init is not None:
        progress(Clock().event("pretrain", 0, params.total_steps, message=trainer.init["summary"]))
    step, prior_s = 0, 0.0
    if resume is not None:
        trainer.load(unpack(resume["resume"], resume["state_dict"]))
        trainer.init = resume.get("init")
        step, prior_s = int(resume["step"]), float(resume["seconds"])
        progress(Clock().event("pretrain", step, total, message=f"Resuming from step {step} of {total}."))
    model: nn.Module = trainer.method
    if ctx.enabled:  # SimCLR leaves the decoder unused; GLCNet's ablations leave heads unused
        model = DistributedDataParallel(trainer.method, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=True)

    progress(Clock().event("pretrain", step, total, message="Mapping valid pixels…"))
    dataset = UnlabeledTiles(infos, stats, params.tile, params.batch, total, params.seed, ctx.rank, ctx.world_size,
                             regions=extent_regions(infos, params), pairs=pairs)
    loader = DataLoader(dataset, batch_size=None, sampler=range(step, total), num_workers=params.workers,
                        pin_memory=device.type == "cuda")
    log = _open_log(lpath, step) if ctx.main else None
    clock = Clock()
    clock.start -= prior_s  # ETA over the whole run
    first_loss = last_loss = None
    trainer.method.train()
    try:
        tick = time.monotonic()
        for x, info in loader:
            waited = time.monotonic() - tick
            x = x.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            torch.manual_seed(step_seed(params.seed, ctx.rank, step, 0))  # ASPP dropout
            gen = torch.Generator().manual_seed(step_seed(params.seed, ctx.rank, step, 1))
            lr = trainer.opt.param_groups[0]["lr"]
            with autocast(device, params.amp):
                loss, logs = model(x, gen)
            if not math.isfinite(logs["loss"]):
                raise GeoSSLError(f"The loss became {logs['loss']} at step {step + 1}.",
                                  "lower --lr (or use --no-amp), then --resume from the last state.")
            trainer.opt.zero_grad(set_to_none=True)
            trainer.scaler.scale(loss).backward()
            trainer.scaler.step(trainer.opt)
            trainer.scaler.update()
            trainer.sched.step()
            trainer.method.after_step(step, total)  # momentum encoders follow the weights just stepped
            step += 1
            logs = {**logs, "data_nodata": float(info[0]), "data_overlap": float(info[1])}
            first_loss = logs["loss"] if first_loss is None else first_loss
            last_loss = logs["loss"]
            seconds = time.monotonic() - tick
            if log is not None:
                log.write(json.dumps({"step": step, "loss": logs["loss"], "logs": logs, "lr": lr,
                                      "samples_per_s": round(params.batch / seconds, 3),
                                      "data_wait_s": round(waited, 4), "step_s": round(seconds, 4),
                                      "time": round(time.monotonic() - clock.start, 3)}) + "\n")
            if ctx.main and step % params.checkpoint_every == 0 and step < total:
                _save_state(spath, trainer, params, rasters, stats, step, time.monotonic() - clock.start)
            progress(clock.event("pretrain", step, total, loss=logs["loss"], metrics=logs))
            tick = time.monotonic()
    finally:
        if log is not None:
            log.close()

    model_state = {k: v.contiguous() for k, v in trainer.method.model.state_dict().items()
                   if not k.startswith("segmentation_head.")}  # untrained 1-class head: nothing to reuse
    if ctx.main:
        save_checkpoint(
            out, "pretrained", model_state,
            arch="DeepLabV3Plus", encoder=params.encoder, in_channels=in_channels,
            # With band views the encoder saw other bands than the stack's: fine-tuning computes its own.
            band_stats=None if views else stats.to_dict(), source_band_stats=stats.to_dict() if views else None,
            views=views.to_dict() if views else None, pair=[p.path for p in pairs] if pairs else None,
            method=params.method, method_options=trainer.method.options, tile=params.tile,
            view_size=params.view_size, seed=params.seed, config=params.model_dump(), steps=step,
            rasters=rasters, world_size=ctx.world_size, final_loss=last_loss, init=trainer.init,
        )
        spath.unlink(missing_ok=True)  # a resume state exists only while a run is unfinished
    if ctx.enabled:
        dist.barrier()  # the checkpoint exists when any process returns
    return _summary(params, out, step, first_loss, last_loss, len(rasters), ctx, device, warnings, t0)


def _summary(params: PretrainParams, out: Path, step: int, first_loss: float | None, last_loss: float | None,
             n_rasters: int, ctx: Distributed, device: torch.device, warnings: list[str], t0: float) -> dict[str, Any]:
    return {
        "model": str(out.resolve()),
        "log": str(log_path(out).resolve()),
        "method": params.method,
        "encoder": params.encoder,
        "steps": step,
        "total_steps": params.total_steps,
        "first_loss": first_loss,
        "final_loss": last_loss,
        "rasters": n_rasters,
        "world_size": ctx.world_size,
        "device": str(device),
        "warnings": warnings,
        "seconds": round(time.monotonic() - t0, 2),
    }
