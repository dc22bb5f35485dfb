"""Self-supervised pretraining of a whole DeepLabV3+ on the user's unlabeled rasters.

The loop is method-agnostic (:mod:`geossl.methods`): batches of spaced, mostly-valid windows
(:class:`geossl.datasets.UnlabeledTiles`) go through ``method(batch, generator) -> (loss, logs)``,
optimised with Adam (β 0.9/0.99, weight decay 1e-5) and a cosine schedule to 0 over the run, as in
the GLCNet paper, or a constant one (:func:`constant`) whose every intermediate state is a finished
run of that length. AMP and channels-last on CUDA.

Budget: steps (or epochs), or wall time (``minutes``): a few steps are then measured on real
batches on a throwaway copy of the trainer (:func:`plan_steps`, :mod:`geossl.budget`), the steps
that fit are fixed once, and the plan is recorded in the resume state, the checkpoint and the
summary, so a resumed run keeps it and ``--steps N`` reproduces the run anywhere.

Files, next to ``--out``:

* ``<out>``: the pretrained checkpoint (kind ``pretrained``) that ``finetune --init`` loads: the
  DeepLabV3+ encoder + decoder weights, band statistics, method and options, tile, seed, config,
  the step plan, the schedule and the snapshots written.
* ``<out stem>.step<N>.pt``: snapshots (``snapshot_steps``/``snapshot_minutes``), complete
  pretrained checkpoints of the weights after step N, with the training seconds spent to get there
  (checkpoint writes excluded): one run, fine-tuned from at several budgets.
* ``<out>.state.pt``: the resume state (kind ``pretrain-state``) every ``checkpoint_every`` steps and
  every ``checkpoint_minutes``, written atomically and removed when the run completes. ``--resume``
  continues *exactly*: the data of step ``i`` come from ``(seed, i)``, the augmentation generator
  and torch's global RNG (ASPP dropout) are re-seeded from ``(seed, rank, i)`` at every step, and
  model, optimiser, scheduler, scaler (and global RNG) states are restored, so an interrupted and
  resumed run ends with the same weights (and snapshots) as an uninterrupted one. ``--resume``
  after the run completed does nothing.
* ``<out>.log.jsonl``: one line per step (loss, the method's logs, lr, samples/s, data wait).

Scale-out: started by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the same entry point
runs DistributedDataParallel (NCCL on GPU, gloo on CPU). ``batch`` is the global batch; every
process plans the same global batch and reads its slice, the losses gather embeddings from all
processes, and only rank 0 writes files and reports progress.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rasterio.windows import Window
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .budget import StepPlan, measure_seconds, steps_for
from .checkpoint import load_checkpoint, pack, rng_states, save_checkpoint, set_rng_states, unpack
from .datasets import UnlabeledTiles
from .distributed import Distributed
from .distributed import start as start_distributed
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
# Options that define the optimisation trajectory: a resume state is only continued with the same
# (the budget is compared apart: a minutes run keeps the steps it planned).
RUN_DEFINING = ("method", "method_options", "encoder", "init", "encoder_weights", "tile", "batch", "lr",
                "lr_schedule", "warmup_steps", "weight_decay", "seed", "view_bands", "pair")
WARMUP_SHARE, WARMUP_MAX = 0.02, 100  # the constant schedule's default warm-up: 2% of the run, ≤ 100 steps
PROBE_WARMUP, PROBE_REPEATS = 1, 3  # steps measured (updates discarded) to plan a minutes budget


def state_path(out: str | os.PathLike) -> Path:
    return Path(f"{out}.state.pt")


def log_path(out: str | os.PathLike) -> Path:
    return Path(f"{out}.log.jsonl")


def snapshot_path(out: str | os.PathLike, step: int) -> Path:
    """``<out stem>.step<N>.pt`` beside ``out``: the weights after step ``step``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.step{step}.pt")


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


# --- reproducibility ------------------------------------------------------------------------------


def step_seed(seed: int, rank: int, step: int, stream: int) -> int:
    """A 63-bit seed for random stream ``stream`` of ``step`` on ``rank``: independent of history."""
    return int(np.random.SeedSequence([seed, rank, step, stream]).generate_state(1, np.uint64)[0] >> 1)


def cosine(total: int) -> Callable[[int], float]:
    """LR factor: cosine from 1 to 0 over the run (the paper's schedule, no warm-up)."""

    def factor(step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))

    return factor


def constant(warmup: int) -> Callable[[int], float]:
    """LR factor: a linear warm-up over the first ``warmup`` steps ((k + 1) / warmup), then 1.

    An *anytime* schedule: the factor of step k depends on k and the warm-up alone, never on the
    run's length, so the weights after step N of a long run are exactly what an N-step run with the
    same warm-up ends with. One run with snapshots therefore serves a whole budget curve (pretrain
    once, fine-tune from each snapshot), and a run stopped early is still a proper run of that
    length. A cosine to 0 is the better end point of a run of known length, but its intermediate
    states are no run's end: they still carry the high learning rate of the middle of a schedule.
    """

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup) if warmup > 1 else 1.0

    return factor


def warmup_steps(params: PretrainParams, total: int) -> int | None:
    """The constant schedule's warm-up (``warmup_steps``, else 2% of the run, at most 100); None for cosine."""
    if params.lr_schedule != "constant":
        return None
    if params.warmup_steps is not None:
        return params.warmup_steps
    return min(WARMUP_MAX, max(1, round(WARMUP_SHARE * total)))


def lr_factor(params: PretrainParams, total: int) -> Callable[[int], float]:
    return constant(warmup_steps(params, total)) if params.lr_schedule == "constant" else cosine(total)


def plan_steps(params: PretrainParams, budget_seconds: float, step_seconds: float, save_seconds: float,
               snapshots: int = 0) -> int:
    """Steps that fit in ``budget_seconds`` of training, given the measured step and save times.

    Every save (one resume state per ``checkpoint_every`` steps and per ``checkpoint_minutes``, the
    first state that records the plan, the final checkpoint and each snapshot) is charged at the
    measured time of a resume-state write, the largest of these files; the per-step log line and
    progress event (microseconds) are not. Pure: the plan is a function of what was measured, so a
    test (or a reader of the recorded plan) can recompute it.
    """
    budget = max(budget_seconds, 1e-9)  # spent already (setup took it all): still one step, a model
    timed = math.floor(budget / (params.checkpoint_minutes * 60)) if params.checkpoint_minutes else 0
    fixed = save_seconds * (2 + snapshots + timed)
    return steps_for(budget, step_seconds, every=params.checkpoint_every, every_seconds=save_seconds,
                     fixed_seconds=fixed)


# --- the run --------------------------------------------------------------------------------------

PROBE_TOTAL = 10**6  # nominal length of the planning probe: full learning rate, the largest default queue


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


def _build(params: PretrainParams, total: int, in_channels: int, device: torch.device, views: ViewBands | None = None,
           windows: int = 0, start: EncoderWeights | None = None) -> _Trainer:
    torch.manual_seed(params.seed)  # same initial weights on every process and every resume
    model = build_model(params.encoder, in_channels, 1)
    # Before the method wraps the model: BYOL's target and MoCo's key encoder start as copies of it.
    init = start.load_into(model, params.encoder) if start is not None else None
    cls = get_method(params.method)
    options = cls.resolve_options(params.method_options, batch=params.batch, total_steps=total, windows=windows,
                                  lr_schedule=params.lr_schedule)
    extra = {"views": views} if cls.supports_views else {}
    method = prepare(cls(model, params.view_size, **extra, **options), device)
    # Momentum copies (BYOL target, MoCo key encoder) have no gradient and stay out of the optimiser.
    trainable = [p for p in method.parameters() if p.requires_grad]
    # Fused kernels: one pass over all parameters (on CPU ~7x faster than the default per-tensor loop).
    opt = torch.optim.Adam(trainable, lr=params.lr, betas=(0.9, 0.99), weight_decay=params.weight_decay,
                           fused=device.type in ("cpu", "cuda"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(params, total))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and params.amp
                                  and not torch.cuda.is_bf16_supported())
    return _Trainer(method, opt, sched, scaler, init)


def _wrap(trainer: _Trainer, ctx: Distributed, device: torch.device) -> nn.Module:
    """The module the loop calls: the method, under DistributedDataParallel in a torchrun job."""
    if not ctx.enabled:
        return trainer.method
    # SimCLR leaves the decoder unused; GLCNet's ablations leave heads unused.
    return DistributedDataParallel(trainer.method, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def _train_step(trainer: _Trainer, model: nn.Module, x: torch.Tensor, step: int, total: int, params: PretrainParams,
                ctx: Distributed, device: torch.device) -> dict[str, float]:
    """Optimisation step ``step`` (0-based) on batch ``x``: the loop's, and the planner's on its probe."""
    x = x.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(step_seed(params.seed, ctx.rank, step, 0))  # ASPP dropout
    gen = torch.Generator().manual_seed(step_seed(params.seed, ctx.rank, step, 1))
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
    return logs


# --- planning a wall-time budget --------------------------------------------------------------------


def _time_save(spath: Path, trainer: _Trainer) -> float:
    """Seconds one resume-state write of this size takes on this disk (fsync included).

    Written to a temporary file named like the atomic writers' partials of the resume state, so the
    service's clean-up after a kill finds it, and removed at once.
    """
    tensors: dict[str, torch.Tensor] = {}
    skeleton = pack(trainer.state(), tensors)
    fd, tmp = tempfile.mkstemp(prefix=f".{spath.name}.", suffix=".partial", dir=spath.resolve().parent)
    start = time.perf_counter()
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"resume": skeleton, "state_dict": {k: v.detach().cpu() for k, v in tensors.items()}}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return time.perf_counter() - start
    finally:
        Path(tmp).unlink(missing_ok=True)


def _measure(params: PretrainParams, in_channels: int, device: torch.device, views: ViewBands | None, windows: int,
             dataset: UnlabeledTiles, ctx: Distributed, spath: Path) -> tuple[float, float]:
    """Median seconds of one training step (data included) and of one resume-state write.

    Measured on a probe: a trainer built like the run's (same model, method, optimiser, batches of
    the first steps, DDP when distributed) whose updates are thrown away with it; the run's trainer
    is built afresh from the seed and the global RNGs are restored, so the planning leaves no trace
    in the weights. All processes take the slowest one's times, so they plan the same steps.
    """
    rngs = rng_states()
    probe = _build(params, PROBE_TOTAL, in_channels, device, views, windows)
    model = _wrap(probe, ctx, device)
    data = copy.deepcopy(dataset)  # its own raster handles: none stay open for forked loader workers
    probe.method.train()
    steps = iter(range(PROBE_WARMUP + PROBE_REPEATS))

    def one_step(probe: _Trainer = probe, model: nn.Module = model, data: UnlabeledTiles = data) -> None:
        i = next(steps)
        _train_step(probe, model, data[i][0], i, PROBE_TOTAL, params, ctx, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step_s = measure_seconds(one_step, repeats=PROBE_REPEATS, warmup=PROBE_WARMUP)
    save_s = _time_save(spath, probe) if ctx.main else 0.0
    if ctx.enabled:
        times = torch.tensor([step_s, save_s], dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
        dist.all_reduce(times, op=dist.ReduceOp.MAX)
        step_s, save_s = times.tolist()
    del one_step, model, probe, data
    gc.collect()  # DDP's reducer holds cycles: free the probe before the run's trainer is built
    set_rng_states(rngs)
    return step_s, save_s


def plan_budget(params: PretrainParams, step_seconds: float, save_seconds: float,
                setup_seconds: float) -> dict[str, Any]:
    """The plan of a ``minutes`` run: ``StepPlan.to_dict()`` plus how the budget was spent.

    The budget counts from the start of the job (band statistics, the valid-pixel map and the
    measurement included): "30 minutes" is when the job ends. ``snapshot_minutes`` become the steps
    a run of that budget would have planned.
    """
    budget = params.minutes * 60 - setup_seconds
    n_snapshots = len(params.snapshot_steps or []) + len(params.snapshot_minutes or [])
    total = plan_steps(params, budget, step_seconds, save_seconds, n_snapshots)
    by_minutes = {f"{m:g}": min(total, plan_steps(params, m * 60 - setup_seconds, step_seconds, save_seconds))
                  for m in params.snapshot_minutes or []}
    return {**StepPlan(total, step_seconds, budget).to_dict(), "minutes": params.minutes,
            "save_seconds": save_seconds, "setup_seconds": setup_seconds, "snapshot_minutes": by_minutes}


def _snapshot_steps(params: PretrainParams, plan: dict[str, Any], total: int, warnings: list[str]) -> list[int]:
    """The steps to snapshot at: ``snapshot_steps`` and the planned ``snapshot_minutes``, within the run."""
    wanted = set(params.snapshot_steps or []) | set((plan.get("snapshot_minutes") or {}).values())
    beyond = sorted(n for n in wanted if n > total)
    if beyond:
        warnings.append(f"snapshot step(s) {', '.join(map(str, beyond))} beyond the run's {total} steps: not written.")
    return sorted(n for n in wanted if n <= total)


# --- resume ---------------------------------------------------------------------------------------


def _default(name: str) -> Any:
    """What an option was before it existed (resume states of older versions lack it)."""
    return PretrainParams.model_fields[name].default


def _differences(saved: dict[str, Any], total: int, rasters: list[str], params: PretrainParams,
                 now_rasters: list[str]) -> list[str]:
    """Run-defining options that differ between a saved run (``total`` steps) and this one.

    A ``minutes`` run is continued by the same minutes (its planned steps, not a new plan), and by
    ``--steps`` equal to the plan: the same trajectory either way.
    """
    now = params.model_dump()
    diff = [k for k in RUN_DEFINING if saved.get(k, _default(k)) != now[k]]
    if params.minutes is not None:
        if saved.get("minutes") != params.minutes:
            diff.append("minutes")
    elif total != params.total_steps:
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
    if ck.get("snapshot") or _differences(ck["config"], ck["steps"], ck["rasters"], params, rasters):
        return None
    return ck


@dataclass
class _Output:
    """What the run's files record beside the weights: the resume state, the final checkpoint, snapshots."""

    params: PretrainParams
    in_channels: int
    stats: BandStats
    views: ViewBands | None
    pairs: list[RasterInfo] | None
    rasters: list[str]
    world_size: int
    total: int
    plan: dict[str, Any]
    schedule: dict[str, Any]
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # written so far: step, path, train_seconds

    def save_model(self, path: Path, trainer: _Trainer, step: int, **meta: Any) -> Path:
        """A pretrained checkpoint of the weights after ``step`` (kind ``pretrained``: ``finetune --init``)."""
        model_state = {k: v.contiguous() for k, v in trainer.method.model.state_dict().items()
                       if not k.startswith("segmentation_head.")}  # untrained 1-class head: nothing to reuse
        p, views = self.params, self.views
        return save_checkpoint(
            path, "pretrained", model_state,
            arch="DeepLabV3Plus", encoder=p.encoder, in_channels=self.in_channels,
            # With band views the encoder saw other bands than the stack's: fine-tuning computes its own.
            band_stats=None if views else self.stats.to_dict(),
            source_band_stats=self.stats.to_dict() if views else None,
            views=views.to_dict() if views else None, pair=[r.path for r in self.pairs] if self.pairs else None,
            method=p.method, method_options=trainer.method.options, tile=p.tile, view_size=p.view_size,
            seed=p.seed, config=p.model_dump(), steps=step, total_steps=self.total, plan=self.plan,
            schedule=self.schedule, rasters=self.rasters, world_size=self.world_size, init=trainer.init, **meta,
        )

    def save_snapshot(self, out: Path, trainer: _Trainer, step: int, train_seconds: float) -> None:
        path = self.save_model(snapshot_path(out, step), trainer, step,
                               snapshot={"step": step, "train_seconds": round(train_seconds, 3)})
        entry = {"step": step, "path": str(path.resolve()), "train_seconds": round(train_seconds, 3)}
        self.snapshots = [s for s in self.snapshots if s["step"] != step] + [entry]

    def save_state(self, path: Path, trainer: _Trainer, step: int, seconds: float, train_seconds: float) -> None:
        tensors: dict[str, torch.Tensor] = {}
        skeleton = pack(trainer.state(), tensors)
        save_checkpoint(path, "pretrain-state", tensors, resume=skeleton, params=self.params.model_dump(),
                        rasters=self.rasters, band_stats=self.stats.to_dict(), step=step, total_steps=self.total,
                        seconds=seconds, train_seconds=train_seconds, plan=self.plan, schedule=self.schedule, init=trainer.init,
                        snapshots=self.snapshots)


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
        device = start_distributed(ctx, device)
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
                            ["the run had already completed; nothing to resume."], t0, done)
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

    progress(Clock().event("pretrain", 0, 0, message="Mapping valid pixels…"))
    windows = distinct_windows(infos, params.tile)
    dataset = UnlabeledTiles(infos, stats, params.tile, params.batch, params.total_steps or 1, params.seed, ctx.rank,
                             ctx.world_size, regions=extent_regions(infos, params), pairs=pairs)
    if resume is not None:  # the plan of the run being continued, never a new one
        total = int(resume["total_steps"])
        plan = resume.get("plan") or StepPlan(total).to_dict()
    elif params.minutes is not None:
        progress(Clock().event("planning", 0, 0, message=f"Measuring the step time ({PROBE_WARMUP + PROBE_REPEATS} "
                                                          "steps on real batches, then discarded)…"))
        step_s, save_s = _measure(params, in_channels, device, views, windows, dataset, ctx, spath)
        plan = plan_budget(params, step_s, save_s, time.monotonic() - t0)
        total = plan["steps"]
        progress(Clock().event("planning", 0, 0, message=f"Planned {total} steps for {params.minutes:g} min "
                                                          f"({step_s:.2f} s per step measured)."))
        if plan["budget_seconds"] <= 0:
            warnings.append("the time budget was spent before training (band statistics, measurement): 1 step.")
    else:
        total = params.total_steps
        plan = StepPlan(total).to_dict()
    dataset.length = total
    snapshots = _snapshot_steps(params, plan, total, warnings)
    # A resumed run's weights come from its state: the start weights are read only for a fresh run.
    start = encoder_start(params.init, params.encoder_weights, params.encoder) if resume is None else None
    trainer = _build(params, total, in_channels, device, views, windows, start)
    if trainer.init is not None:
        progress(Clock().event("pretrain", 0, total, message=trainer.init["summary"]))
    output = _Output(params, in_channels, stats, views, pairs, rasters, ctx.world_size, total, plan,
                     {"lr_schedule": params.lr_schedule, "warmup_steps": warmup_steps(params, total)})
    step, prior_s, train_s = 0, 0.0, 0.0
    if resume is not None:
        trainer.load(unpack(resume["resume"], resume["state_dict"]))
        trainer.init = resume.get("init")
        step, prior_s = int(resume["step"]), float(resume["seconds"])
        train_s = float(resume.get("train_seconds", 0.0))
        # Snapshots after the state's step were written by the lost tail: they are written again.
        output.snapshots = [s for s in resume.get("snapshots", []) if s["step"] <= step]
        missed = sorted(set(n for n in snapshots if n <= step) - {s["step"] for s in output.snapshots})
        if missed:
            warnings.append(f"snapshot step(s) {', '.join(map(str, missed))} precede the resumed step {step}: "
                            "not written.")
        progress(Clock().event("pretrain", step, total, message=f"Resuming from step {step} of {total}."))
    model = _wrap(trainer, ctx, device)
    loader = DataLoader(dataset, batch_size=None, sampler=range(step, total), num_workers=params.workers,
                        pin_memory=device.type == "cuda")
    log = _open_log(lpath, step) if ctx.main else None
    clock = Clock()
    clock.start -= prior_s  # ETA over the whole run
    if ctx.main and resume is None and params.minutes is not None:
        output.save_state(spath, trainer, 0, prior_s, 0.0)  # the plan survives a kill before the first state
    last_state = time.monotonic()
    every_s = params.checkpoint_minutes * 60 if params.checkpoint_minutes else math.inf
    first_loss = last_loss = None
    trainer.method.train()
    try:
        tick = time.monotonic()
        for x, info in loader:
            waited = time.monotonic() - tick
            lr = trainer.opt.param_groups[0]["lr"]
            logs = _train_step(trainer, model, x, step, total, params, ctx, device)
            step += 1
            logs = {**logs, "data_nodata": float(info[0]), "data_overlap": float(info[1])}
            first_loss = logs["loss"] if first_loss is None else first_loss
            last_loss = logs["loss"]
            seconds = time.monotonic() - tick
            train_s += seconds  # data and compute; no checkpoint writes
            if log is not None:
                log.write(json.dumps({"step": step, "loss": logs["loss"], "logs": logs, "lr": lr,
                                      "samples_per_s": round(params.batch / seconds, 3),
                                      "data_wait_s": round(waited, 4), "step_s": round(seconds, 4),
                                      "time": round(time.monotonic() - clock.start, 3)}) + "\n")
            if ctx.main and step in snapshots:  # before the state: a state at step S has every snapshot ≤ S on disk
                output.save_snapshot(out, trainer, step, train_s)
            due = step % params.checkpoint_every == 0 or time.monotonic() - last_state >= every_s
            if ctx.main and due and step < total:
                output.save_state(spath, trainer, step, time.monotonic() - clock.start, train_s)
                last_state = time.monotonic()
            progress(clock.event("pretrain", step, total, loss=logs["loss"], metrics=logs))
            tick = time.monotonic()
    finally:
        if log is not None:
            log.close()

    if ctx.main:
        output.save_model(out, trainer, step, final_loss=last_loss, train_seconds=round(train_s, 3),
                          snapshots=output.snapshots)
        spath.unlink(missing_ok=True)  # a resume state exists only while a run is unfinished
    if ctx.enabled:
        dist.barrier()  # the checkpoint exists when any process returns
    done = {"plan": plan, "schedule": output.schedule, "train_seconds": round(train_s, 3),
            "snapshots": output.snapshots, "total_steps": total}
    return _summary(params, out, step, first_loss, last_loss, len(rasters), ctx, device, warnings, t0, done)


def _summary(params: PretrainParams, out: Path, step: int, first_loss: float | None, last_loss: float | None,
             n_rasters: int, ctx: Distributed, device: torch.device, warnings: list[str], t0: float,
             run: dict[str, Any]) -> dict[str, Any]:
    """What the CLI prints and the service stores; ``run``: the plan, schedule and snapshots (as recorded)."""
    return {
        "model": str(out.resolve()),
        "log": str(log_path(out).resolve()),
        "method": params.method,
        "encoder": params.encoder,
        "steps": step,
        "total_steps": run.get("total_steps", step),
        "plan": run.get("plan"),
        "schedule": run.get("schedule"),
        "snapshots": run.get("snapshots") or [],
        "train_seconds": run.get("train_seconds"),
        "first_loss": first_loss,
        "final_loss": last_loss,
        "rasters": n_rasters,
        "world_size": ctx.world_size,
        "device": str(device),
        "warnings": warnings,
        "seconds": round(time.monotonic() - t0, 2),
    }
