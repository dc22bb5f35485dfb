"""Few-label fine-tuning of DeepLabV3+ from polygons.

Cross-entropy only on pixels inside polygons (``ignore_index``), class-balanced window sampling,
geometry-only augmentations, AMP on CUDA, and a validation split of *whole polygons* per class:
neighbouring pixels of a training polygon are nearly identical, so validating on them would
report memorisation, not mapping skill. The best epoch on validation is kept (early stopping).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .budget import StepPlan, measure_seconds, revise_steps, steps_for
from .checkpoint import load_checkpoint, pack, rng_states, save_checkpoint, set_rng_states, unpack
from .classes import IGNORE_INDEX, ClassTable
from .datasets import LabelledTiles, WindowTiles, labelled_pixels
from .errors import GeoSSLError
from .forest import ForestHead, Ratios, fit_forest, pixel_features, texture_halo
from .labels import load_label_polygons, read_vector, split_polygons, value_names
from .metrics import confusion_matrix, scores
from .models import autocast, build_model, pick_device, prepare
from .postprocess import Finish, choose_finish
from .progress import Clock, ProgressCallback, null_progress
from .raster_io import BandStats, check_output_path, check_training_rasters, compute_band_stats, pixel_size_m
from .sampling import validation_windows
from .schemas import FinetuneParams
from .selftrain import MixedTiles, PseudoLabelledTiles
from .weights import EncoderWeights, open_start


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# The closing work (choosing the forest's share: the forest on every validation window) costs about
# this many validations; reserved from the budget when the length is re-planned.
CLOSING_PER_VALIDATION = 8.0
# Band ratios by default from this many bands: they paid on 13-band Sentinel-2, not on RGB (dev ablations).
RATIOS_MIN_BANDS = 4


class CosineWithWarmup:
    """LR factor: linear warm-up then cosine decay to 0 — stable from random init with Adam.

    An object, not a closure: a minutes budget may revise ``total`` while the run goes
    (:func:`geossl.budget.revise_steps`), and ``LambdaLR`` saves and restores an object's
    attributes with the resume state.
    """

    def __init__(self, total: int, warmup: int) -> None:
        self.total, self.warmup = total, warmup

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))))


def load_pretrained(model: nn.Module, ckpt: dict, encoder: str, in_channels: int, aspp: bool) -> list[str]:
    """Copy a pretrained encoder (and optionally ASPP) into ``model``; refuse mismatches clearly."""
    if ckpt.get("encoder") != encoder:
        raise GeoSSLError(
            f"The pretrained checkpoint has encoder {ckpt.get('encoder')}, but fine-tuning asks for {encoder}.",
            f"use --encoder {ckpt.get('encoder')} or pretrain a {encoder}.",
        )
    if int(ckpt.get("in_channels", -1)) != in_channels:
        from .views import trained_on

        raise GeoSSLError(
            f"The pretrained checkpoint expects {ckpt.get('in_channels')} bands{trained_on(ckpt)}, "
            f"the raster has {in_channels}.",
            "fine-tune on rasters with the bands the encoder was pretrained on (e.g. gdal_translate -b …).",
        )
    prefixes = ("encoder.",) + (("decoder.aspp.",) if aspp else ())
    state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith(prefixes)}
    missing = [k for k in model.state_dict() if k.startswith(prefixes) and k not in state]
    if missing:
        raise GeoSSLError(
            f"The pretrained checkpoint lacks {len(missing)} weights (e.g. {missing[0]}).",
            "use a checkpoint written by `geossl pretrain`.",
        )
    model.load_state_dict(state, strict=False)
    return sorted(state)


def mixed_loss(loss_fn: nn.Module, logits: torch.Tensor, y: torch.Tensor, pseudo: torch.Tensor,
               weight: float) -> torch.Tensor:
    """Loss on the labelled windows plus ``weight`` × the loss on the pseudo-labelled ones (each a
    mean over its own pixels, so the share of pseudo windows does not dilute the real labels)."""
    total = logits.new_zeros(())
    for part, w in ((~pseudo, 1.0), (pseudo, weight)):
        if part.any() and (y[part] != IGNORE_INDEX).any():
            total = total + w * loss_fn(logits[part], y[part])
    return total


def weight_average(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s weights and buffers.

    With a few hundred polygons the last weights swing with the last batches; their average over
    the final part of the schedule maps unseen ground more steadily. The decay ramps up as
    (1 + n) / (10 + n) so the average is not dominated by the random initial weights.
    """

    def avg(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return averaged + (current - averaged) * (1.0 - d)

    return torch.optim.swa_utils.AveragedModel(model, avg_fn=avg, use_buffers=True)


def recalibrate_batchnorm(model: nn.Module, dataset: LabelledTiles, batch: int, n_batches: int,
                          device: torch.device, amp: bool) -> None:
    """Recompute BatchNorm population statistics for the current weights.

    After a few hundred steps from random init the running averages (momentum 0.1) still describe
    earlier weights, and eval-mode predictions collapse even though training loss is low.
    Averaging the statistics over fresh training windows (as SWA's ``update_bn`` does) makes the
    saved model predict as well as it trains.
    """
    saved_epoch = dataset.epoch
    dataset.epoch = 1_000_000 + saved_epoch  # windows distinct from training draws, still seeded
    loader = DataLoader(dataset, batch_size=batch, drop_last=True)
    inputs = (x.to(device) for x, _ in itertools.islice(loader, n_batches))
    with autocast(device, amp):
        torch.optim.swa_utils.update_bn(inputs, model)
    dataset.epoch = saved_epoch
    model.train()


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device, amp: bool) -> np.ndarray:
    """Confusion matrix of the model on validation windows (labelled pixels only)."""
    model.eval()
    cm = np.zeros((num_classes, num_classes), np.int64)
    for x, y in loader:
        with autocast(device, amp):
            pred = model(x.to(device)).argmax(1).cpu().numpy()
        cm += confusion_matrix(y.numpy(), pred, num_classes, ignore=IGNORE_INDEX)
    model.train()
    return cm


def forest_ratios(stats: BandStats, params: FinetuneParams) -> Ratios | None:
    """The band ratios the forest sees: asked for (by default on multispectral rasters) and meaningful
    for these bands. Dev ablations: Sentinel-2 +2.1 ± 0.6 Kappa in the model and their texture +1.5 ± 1.2
    more, RGB −0.4 forest-alone."""
    wanted = params.forest_ratios if params.forest_ratios is not None else stats.count >= RATIOS_MIN_BANDS
    return Ratios.for_bands(stats.low, stats.mean, stats.std, params.forest_ratio_texture) if wanted else None


def fit_pixel_forest(polys: list, stats: BandStats, params: FinetuneParams, num_classes: int,
                     ratios: Ratios | None) -> ForestHead:
    """The per-pixel forest of :mod:`geossl.forest`, fitted on the training polygons' pixels."""
    texture = tuple(params.forest_texture)

    def features(x: np.ndarray) -> np.ndarray:
        return pixel_features(torch.from_numpy(x)[None], texture, ratios)[0].numpy()

    x, y = labelled_pixels(polys, stats, features, texture_halo(texture), params.forest_pixels, params.seed)
    packed = fit_forest(x, y, num_classes, params.seed, jobs=max(1, torch.get_num_threads()))
    return ForestHead.from_packed(packed, x.shape[1])


def plan_steps(params: FinetuneParams, model: nn.Module, train_ds: LabelledTiles, n_val: int,
               device: torch.device, spent_s: float) -> StepPlan:
    """Steps that fit in ``params.minutes``, from a few measured steps on real windows.

    Measured on a copy of the model with its own optimiser and under a forked RNG, so the run that
    follows is exactly the one ``--steps N`` gives. Per epoch it adds BatchNorm re-estimation,
    validation and (self-training) labelling the coming epoch's windows; once, what the run has
    spent so far (band statistics, polygons).
    """
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        probe = copy.deepcopy(model).train()
        opt = torch.optim.AdamW(probe.parameters(), lr=params.lr)
        items = [train_ds[i] for i in range(params.batch)]
        t = time.perf_counter()
        items = [train_ds[i] for i in range(params.batch)]
        data_s = time.perf_counter() - t
        x = torch.stack([a for a, _ in items]).to(device)
        y = torch.stack([b for _, b in items]).to(device)
        loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)

        def train_step() -> None:
            with autocast(device, params.amp):
                loss = loss_fn(probe(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        @torch.no_grad()
        def eval_batch() -> None:
            with autocast(device, params.amp):
                probe(x)
            if device.type == "cuda":
                torch.cuda.synchronize()

        step_s = measure_seconds(train_step) + data_s
        probe.eval()
        fwd_s = measure_seconds(eval_batch)
    spe = params.steps_per_epoch
    per_epoch = fwd_s * (min(spe, 16) + math.ceil(n_val / params.batch)
                         + round(params.self_training * params.batch) * spe / params.batch)
    n = steps_for(params.minutes * 60, step_s, every=spe, every_seconds=per_epoch, fixed_seconds=spent_s + 2.0,
                  minimum=min(spe, 10), maximum=params.max_steps)
    return StepPlan(n, round(step_s, 4), params.minutes * 60)


def run_finetune(params: FinetuneParams, progress: ProgressCallback = null_progress) -> dict[str, Any]:
    """Fine-tune and write the model file; returns a summary (paths, metrics, history, warnings)."""
    t0 = time.monotonic()
    out = check_output_path(params.out)
    seed_everything(params.seed)
    infos = check_training_rasters(params.rasters)
    in_channels = infos[0].count
    warm = load_checkpoint(params.init_model, "segmentation") if params.init_model else None
    if warm is not None:
        params = warm_start_params(params, warm, in_channels)
    start = open_start(params.init, params.encoder_weights, params.encoder)  # a `geossl pretrain` checkpoint,
    pretrained = start if isinstance(start, dict) else None  # or outside weights (ImageNet, a state dict)
    if pretrained is not None and pretrained.get("band_stats"):  # none after band-view (RS-BYOL) pretraining
        stats = BandStats.from_dict(pretrained["band_stats"])
    elif warm is not None:
        stats = BandStats.from_dict(warm["band_stats"])
    else:
        progress(Clock().event("band statistics", 0, 0, message="Computing band statistics…"))
        stats = compute_band_stats(params.rasters, seed=params.seed)
    polys, table, warnings = load_label_polygons(
        params.labels, params.class_field, infos, colours=params.colours, layer=params.layer,
        table=ClassTable.from_dict(warm["classes"]) if warm is not None else None,
    )
    train_polys, val_polys = split_polygons(polys, params.val_fraction, params.seed)
    n_val = sum(len(p.geoms) for p in val_polys)
    if n_val == 0 and params.val_fraction > 0:
        warnings.append("No class has two polygons: nothing held out for validation, no early stopping.")
    for w in warnings:
        progress(Clock().event("labels", 0, 0, message=f"warning: {w}"))

    device = pick_device(params.device)
    model = build_model(params.encoder, in_channels, len(table))
    loaded = load_pretrained(model, pretrained, params.encoder, in_channels, params.init_aspp) if pretrained else []
    outside = start.load_into(model, params.encoder, params.init_aspp) if isinstance(start, EncoderWeights) else None
    if outside is not None:
        progress(Clock().event("init", 0, 0, message=outside["summary"]))
    if warm is not None:
        # every weight, head included: training continues (a forest is fitted afresh on the new polygons)
        model.load_state_dict({k: v for k, v in warm["state_dict"].items() if not k.startswith("forest.")})
    model = prepare(model, device)
    spe = params.steps_per_epoch if params.total_steps is None else min(params.steps_per_epoch, params.total_steps)
    train_ds = LabelledTiles(train_polys, stats, params.tile, spe * params.batch, params.seed,
                             balance=params.class_balance, photometric=params.photometric)
    loader_kw = {"num_workers": params.workers, "pin_memory": device.type == "cuda"}
    val_loader = None
    if n_val:
        val_ds = WindowTiles(val_polys, stats, validation_windows(val_polys, params.tile, params.seed))
        val_loader = DataLoader(val_ds, batch_size=params.batch, **loader_kw)
    forest, ratios = None, forest_ratios(stats, params)
    if params.forest:
        progress(Clock().event("forest", 0, 0, message="Fitting the per-pixel forest…"))
        forest = fit_pixel_forest(train_polys, stats, params, len(table), ratios)
    resumed = _load_state(state_path(out), params) if params.resume and state_path(out).exists() else None
    if resumed is not None:
        plan = StepPlan.from_dict(resumed["plan"])
    elif params.minutes is not None:
        progress(Clock().event("fine-tune", 0, 0, message=f"Measuring steps for a {params.minutes:g}-minute budget…"))
        plan = plan_steps(params, model, train_ds, n_val, device, time.monotonic() - t0)
    else:
        plan = StepPlan(params.total_steps)
    total = plan.steps
    spe = min(spe, total)

    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    schedule = CosineWithWarmup(total, max(1, total // 20))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and params.amp
                                  and not torch.cuda.is_bf16_supported())
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX, label_smoothing=params.label_smoothing)
    ema = weight_average(model, params.ema) if params.ema > 0 else None
    clock = Clock()
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"kappa": -math.inf, "state": None, "epoch": 0, "metrics": None}
    step, start_epoch, spent_before = 0, 0, 0.0
    spath = state_path(out)
    trainer = {"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler}
    if ema is not None:
        trainer["ema"] = ema
    final = ema.module if ema is not None else model  # the weights validated and saved
    if resumed is not None:
        saved = resumed
        live = unpack(saved["resume"], saved["state_dict"])
        for name, obj in trainer.items():
            if live[name]:
                obj.load_state_dict(live[name])
        set_rng_states(live["rng"])
        best = {"kappa": saved["best_kappa"], "epoch": saved["best_epoch"], "metrics": saved["best_metrics"],
                "state": live["best"]}
        history, step, start_epoch = list(saved["history"]), int(saved["step"]), int(saved["epoch"])
        spent_before = float(saved.get("spent_seconds", 0.0))
        progress(clock.event("fine-tune", step, total, message=f"Resuming after epoch {start_epoch} (step {step})."))
    elif params.resume:
        progress(clock.event("fine-tune", 0, total, message=f"warning: no resume state {spath.name}; starting afresh."))
    model.train()
    n_pseudo = round(params.self_training * params.batch)
    pool = PseudoLabelledTiles(train_polys, stats, params.tile, spe * n_pseudo, params.seed,
                               params.pseudo_threshold, params.pseudo_photometric) if n_pseudo else None
    loop_start, loop_step = time.monotonic(), step
    for epoch in itertools.count(start_epoch):
        train_ds.epoch = epoch
        data: Dataset = train_ds
        if pool is not None and step >= params.self_training_start * total:
            pool.refresh(final, device, params.amp, params.batch, epoch)
            data = MixedTiles(train_ds, pool, params.batch, n_pseudo)
        loader = DataLoader(data, batch_size=params.batch, shuffle=False, drop_last=True, **loader_kw)
        losses = []
        for x, y, *flag in loader:
            if step >= total:
                break
            if not (y != IGNORE_INDEX).any():
                continue
            x = x.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with autocast(device, params.amp):
                logits = model.context(x)
                if flag:
                    loss = mixed_loss(loss_fn, logits, y, flag[0].to(device), params.pseudo_weight)
                else:
                    loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            losses.append(loss.item())
            progress(clock.event("fine-tune", step, total, loss=losses[-1], metrics={"epoch": epoch + 1}))
        recalibrate_batchnorm(final, train_ds, params.batch, min(spe, 16), device, params.amp)
        record: dict[str, Any] = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses or [np.nan]))}
        if data is not train_ds:
            record["pseudo_coverage"] = round(pool.coverage, 4)
        val_s = time.monotonic()
        if val_loader is not None:
            m = scores(validate(final, val_loader, len(table), device, params.amp), table.names)
            record.update(val_kappa=m["kappa"], val_oa=m["overall_accuracy"], val_miou=m["miou"])
            improved = m["kappa"] > best["kappa"]
        else:
            m, improved = None, True
        val_s = time.monotonic() - val_s
        history.append(record)
        progress(clock.event("fine-tune", step, total, loss=record["train_loss"],
                             metrics={k: v for k, v in record.items() if k.startswith("val_")},
                             message=_epoch_line(record)))
        if improved:
            best.update(kappa=m["kappa"] if m else best["kappa"], epoch=epoch + 1, metrics=m,
                        state=copy.deepcopy({k: v.detach().cpu() for k, v in final.state_dict().items()}))
        elif epoch + 1 - best["epoch"] >= params.patience:
            progress(clock.event("fine-tune", step, total,
                                 message=f"Early stop: no validation gain for {params.patience} epochs."))
            break
        if plan.budget_seconds is not None and step < total:
            closing = 2.0 + val_s * (CLOSING_PER_VALIDATION if forest is not None else 1.0)
            left = plan.budget_seconds - spent_before - (time.monotonic() - t0) - closing
            revised = revise_steps(total, step - loop_step, time.monotonic() - loop_start, left,
                                   minimum=min(params.steps_per_epoch, 10), maximum=params.max_steps)
            if revised != total:
                plan, total = plan.revised(step, revised), revised
                schedule.total = total
                progress(clock.event("fine-tune", step, total, message=f"Re-planned to {total} steps from this "
                                     "machine's pace, to end within the budget."))
        if step >= total or epoch + 1 >= math.ceil(total / spe):
            break
        _save_state(spath, trainer, best, params, epoch + 1, step, history, plan,
                    spent_before + time.monotonic() - t0)

    config = params.model_dump() | {"plan": plan.to_dict()}
    state, forest_meta = best["state"], None
    final.load_state_dict(best["state"])
    if forest is not None:
        final.attach_forest(forest.to(device), tuple(params.forest_texture), 0.0, ratios)
    finish = choose_finish(final, val_loader, len(table), device, params)
    if forest is not None:
        final.forest_weight = finish.weight
        forest_meta = final.forest_meta() | {"validation_kappa": finish.weight_kappas()}
        state = {k: v.detach().cpu() for k, v in final.state_dict().items()}
    progress(clock.event("fine-tune", step, total, message=finish_message(finish, forest is not None)))
    save_checkpoint(
        out, "segmentation", state,
        arch="DeepLabV3Plus", encoder=params.encoder, in_channels=in_channels, num_classes=len(table),
        forest=forest_meta, smooth=finish.smooth, smooth_validation_kappa=finish.smooth_kappas(),
        classes=table.to_dict(), band_stats=stats.to_dict(), tile=params.tile, seed=params.seed,
        config=config, best_epoch=best["epoch"], history=history, validation=best["metrics"],
        init={"source": "geossl", "path": str(Path(params.init).resolve()), "method": pretrained.get("method"),
              "loaded": len(loaded)} if pretrained else outside,
        warm_start={"path": str(Path(params.init_model).resolve()), "steps": warm.get("steps"),
                    "validation": warm.get("validation")} if warm is not None else None,
        rasters=[i.path for i in infos], steps=step, resolution_m=pixel_size_m(infos[0]),
    )
    spath.unlink(missing_ok=True)  # the run is complete: nothing left to resume
    return {
        "model": str(out.resolve()),
        "classes": table.to_dict(),
        "steps": step,
        "plan": plan.to_dict(),
        "epochs": len(history),
        "best_epoch": best["epoch"],
        "validation": best["metrics"],
        "forest": forest_meta,
        "smooth": finish.smooth,
        "history": history,
        "warnings": warnings,
        "device": str(device),
        "seconds": round(time.monotonic() - t0, 2),
    }


def finish_message(finish: Finish, has_forest: bool) -> str:
    smooth = f"averaging the classes over {finish.smooth}×{finish.smooth} px" if finish.smooth > 1 else "no smoothing"
    blend = f"the forest blended at weight {finish.weight:g}, " if has_forest else ""
    return f"Finishing the map: {blend}{smooth} (best on the validation polygons)." if finish.kappas else \
        f"Finishing the map: {blend}{smooth}."


def warm_start_params(params: FinetuneParams, warm: dict, in_channels: int) -> FinetuneParams:
    """Check that ``params`` can continue the fine-tuned model ``warm``; returns them with its encoder.

    A warm start keeps the model's head, so its classes are fixed: polygons of a class the model
    does not know are refused (a new class needs a new head: fine-tune afresh, or from --init).
    """
    name = Path(params.init_model).name
    if int(warm["in_channels"]) != in_channels:
        raise GeoSSLError(f"The model '{name}' expects {warm['in_channels']} bands, the raster has {in_channels}.",
                          "continue training on rasters with the bands the model was trained on.")
    if "encoder" in params.model_fields_set and params.encoder != warm["encoder"]:
        raise GeoSSLError(f"The model '{name}' has encoder {warm['encoder']}, but {params.encoder} was asked for.",
                          f"leave the encoder out (or give {warm['encoder']}) to continue this model.")
    known = list(warm["classes"]["names"])
    vec = read_vector(params.labels, params.class_field, params.layer)
    new = sorted(set(value_names(vec.values)) - set(known))
    if new:
        raise GeoSSLError(
            f"The labels have class(es) {', '.join(new)} that the model '{name}' does not know "
            f"(it knows {', '.join(known)}); continuing its training cannot add a class.",
            "fine-tune a new model (without --init-model) to learn the new class(es), or remove those polygons.")
    return params.model_copy(update={"encoder": warm["encoder"]})


def state_path(out: str | Path) -> Path:
    """Where a fine-tune keeps its resume state (written after every epoch, removed at the end)."""
    return Path(f"{out}.state.pt")


_MAY_DIFFER_ON_RESUME = {"resume", "workers", "device"}


def _save_state(path: Path, trainer: dict[str, Any], best: dict[str, Any], params: FinetuneParams, epoch: int,
                step: int, history: list[dict[str, Any]], plan: StepPlan, spent_seconds: float) -> None:
    """Everything needed to continue after ``epoch`` exactly: weights, optimizer, schedule, RNG, best so far."""
    tensors: dict[str, torch.Tensor] = {}
    live = {name: obj.state_dict() for name, obj in trainer.items()} | {"rng": rng_states(), "best": best["state"]}
    save_checkpoint(path, "finetune-state", tensors, resume=pack(live, tensors), plan=plan.to_dict(),
                    params=json.loads(params.model_dump_json()), epoch=epoch, step=step, history=history,
                    spent_seconds=round(spent_seconds, 3),
                    best_kappa=best["kappa"], best_epoch=best["epoch"], best_metrics=best["metrics"])


def _load_state(path: Path, params: FinetuneParams) -> dict[str, Any]:
    """A resume state of this very run; one written with other run-defining options is refused."""
    saved = load_checkpoint(path, "finetune-state")
    now = json.loads(params.model_dump_json())
    diff = sorted(k for k in now if k not in _MAY_DIFFER_ON_RESUME and saved["params"].get(k) != now[k])
    if diff:
        raise GeoSSLError(f"The resume state '{path.name}' was written with other options ({', '.join(diff)}).",
                          f"resume with the same options, or delete {path.name} to start afresh.")
    return saved


def _epoch_line(r: dict[str, Any]) -> str:
    val = f", val kappa {r['val_kappa']:.3f}, OA {r['val_oa']:.3f}" if "val_kappa" in r else ""
    return f"epoch {r['epoch']}: train loss {r['train_loss']:.4f}{val}"

