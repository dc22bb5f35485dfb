"""Benchmark: pretraining step throughput of GeoSSL's SimCLR, BYOL and MoCo v2 against lightly's.

Why: GeoSSL ships its own SSL methods instead of depending on a library; this checks that doing so
costs no speed. Both sides train the same randomly initialised DeepLabV3+ encoder
(``geossl.models.build_model``; only the encoder is trained, as GeoSSL's three methods do) with
the same optimiser (the loop's fused Adam + cosine LambdaLR), the same AMP / channels-last policy
(``geossl.models.autocast`` / ``prepare``), and on identical input tensors, so the difference is
the SSL machinery: heads, loss, momentum update, queue, and the step's bookkeeping.

* GeoSSL: the method built by ``geossl.pretrain._build`` and stepped by ``geossl.pretrain._train_step``,
  exactly as the loop does (forward → loss with its finite check → backward → optimiser, scaler and
  scheduler step → ``after_step`` momentum update), its per-step seeding and the host sync of its
  loss log included; the lightly side only detaches its loss (read after the run).
* lightly (1.6.0): ``SimCLRProjectionHead`` + ``NTXentLoss``; ``BYOLProjectionHead`` /
  ``BYOLPredictionHead`` + ``NegativeCosineSimilarity`` + ``update_momentum`` /
  ``deactivate_requires_grad`` / ``cosine_schedule``; ``MoCoProjectionHead`` +
  ``NTXentLoss(memory_bank_size=(K, 128))``, with GeoSSL's dimensions, temperatures, queue size
  and momenta. Row ``lightly``: both views in one pass, as GeoSSL; row ``lightly-split`` (SimCLR,
  BYOL): one pass per view, as lightly's examples write it.

Views: by default (``--augment pool``) a fixed pool of view pairs is made once with GeoSSL's own
augmentation of each method and served to both sides (GeoSSL's ``augment`` is patched to hand them
out), so augmentation cost is excluded; ``--augment live`` runs GeoSSL's augmentation inside every
step on both sides, with the same per-step generator seeds, so the views are still identical.

Per step: the time from a synchronised start to a synchronised end of one full training step.
Every round visits the methods in turn; for each, all its implementations are built afresh and
take their ``--warmup`` untimed, then ``--steps`` timed steps alternately (the order rotating every
step), so noise on a shared machine hits them alike. Samples/s: batch ÷ the median over rounds of
each round's median step. GeoSSL ÷ lightly: the median over rounds of the within-round throughput
ratio (goal ≥ 1.0).
Synthetic ``torch.randn`` input of ``--bands`` bands: no data files. Not part of ``make test``.

    backend/.venv/bin/python tests/bench/bench_peers_pretrain.py --batch 8 --tile 128 --steps 10 \\
        --warmup 2 --rounds 3 --bands 4 --out bench/results

Writes ``peers_pretrain.json`` and ``peers_pretrain.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import gc
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "backend"))

import lightly  # noqa: E402
from geossl.augment import AugmentConfig, View, augment, byol_augment, full_augment, moco_v2_augment  # noqa: E402
from geossl.checkpoint import versions  # noqa: E402
from geossl.distributed import Distributed  # noqa: E402
from geossl.errors import GeoSSLError  # noqa: E402
from geossl.methods import get_method  # noqa: E402
from geossl.methods.moco import MAX_QUEUE  # noqa: E402
from geossl.models import autocast, build_model, pick_device, prepare  # noqa: E402
from geossl.pretrain import _build, _train_step, lr_factor, step_seed  # noqa: E402
from geossl.schemas import PretrainParams, view_size  # noqa: E402
from lightly.loss import NegativeCosineSimilarity, NTXentLoss  # noqa: E402
from lightly.models.modules import (  # noqa: E402
    BYOLPredictionHead,
    BYOLProjectionHead,
    MoCoProjectionHead,
    SimCLRProjectionHead,
)
from lightly.models.utils import deactivate_requires_grad, update_momentum  # noqa: E402
from lightly.utils.scheduler import cosine_schedule  # noqa: E402

METHODS = ("simclr", "byol", "moco")
SPLIT_METHODS = ("simclr", "byol")  # where lightly's examples run one pass per view (MoCo's views differ anyway)


def view_configs(method: str, size: int) -> tuple[AugmentConfig, AugmentConfig]:
    """The two views' augmentations of GeoSSL's ``method`` (what its constructor sets up)."""
    if method == "simclr":
        return full_augment(size), full_augment(size)
    if method == "byol":
        return byol_augment(size)
    return moco_v2_augment(size), moco_v2_augment(size)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The loop's per-step seeding (global RNG for dropout, generator for the augmentation), so that
    ``--augment live`` draws the same views on both sides."""
    torch.manual_seed(step_seed(seed, 0, step, 0))
    return torch.Generator().manual_seed(step_seed(seed, 0, step, 1))


def make_pool(method: str, x: Tensor, size: int, pairs: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """``pairs`` view pairs of batch ``x`` made once with GeoSSL's augmentation of ``method``."""
    c1, c2 = view_configs(method, size)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return [(augment(x, c1, gen).image, augment(x, c2, gen).image) for _ in range(pairs)]


class ViewServer:
    """Stands in for ``augment`` in a GeoSSL method module: hands out the views queued for this step,
    checking that the method asked for the augmentation the pool was made with."""

    def __init__(self, configs: tuple[AugmentConfig, AugmentConfig]) -> None:
        self.configs = configs
        self.queue: list[Tensor] = []

    def __call__(self, x: Tensor, config: AugmentConfig, generator: torch.Generator | None = None) -> View:
        expected = self.configs[2 - len(self.queue)]
        if config != expected:
            raise RuntimeError(f"GeoSSL asked for {config}, the pool was made with {expected}")
        image = self.queue.pop(0)
        return View(image, image.new_empty(0, dtype=torch.long))


def optimiser(params: PretrainParams, trainable: list[nn.Parameter], total: int, device: torch.device
              ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, torch.amp.GradScaler]:
    """The loop's optimiser, schedule and scaler (as ``geossl.pretrain._build``), for the lightly side."""
    opt = torch.optim.Adam(trainable, lr=params.lr, betas=(0.9, 0.99), weight_decay=params.weight_decay,
                           fused=device.type in ("cpu", "cuda"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(params, total))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and params.amp
                                  and not torch.cuda.is_bf16_supported())
    return opt, sched, scaler


# --- the two implementations ----------------------------------------------------------------------


class GeoSSLRun:
    """GeoSSL's method, built and stepped by the pretraining loop's own functions."""

    def __init__(self, method: str, params: PretrainParams, total: int, bands: int, device: torch.device,
                 pool: bool) -> None:
        self.params, self.total, self.device = params, total, device
        self.trainer = _build(params, total, bands, device)
        self.trainer.method.train()
        self.ctx = Distributed()
        self.server = ViewServer(view_configs(method, params.view_size)) if pool else None
        self._patch = (mock.patch.object(sys.modules[type(self.trainer.method).__module__], "augment", self.server)
                       if pool else contextlib.nullcontext())
        self._patch.__enter__()

    def step(self, i: int, x: Tensor, views: tuple[Tensor, Tensor] | None) -> Tensor:
        if self.server is not None and views is not None:
            self.server.queue = list(views)
        logs = _train_step(self.trainer, self.trainer.method, x, i, self.total, self.params, self.ctx, self.device)
        if self.server is not None and self.server.queue:
            raise RuntimeError("GeoSSL's method did not take exactly two views")
        return torch.tensor(logs["loss"])

    def close(self) -> None:
        self._patch.__exit__(None, None, None)


def pooled(encoder: nn.Module, x: Tensor) -> Tensor:
    """Backbone as lightly's examples use it: deepest features → global average pool → flatten."""
    return nn.functional.adaptive_avg_pool2d(encoder(x)[-1], 1).flatten(1)


class LightlyRun:
    """The same step written with lightly's heads, losses and momentum utilities on GeoSSL's encoder."""

    def __init__(self, method: str, params: PretrainParams, total: int, bands: int, device: torch.device,
                 split: bool, live: bool) -> None:
        self.method, self.params, self.total, self.device = method, params, total, device
        self.split, self.live = split, live
        self.configs = view_configs(method, params.view_size)
        opts = get_method(method).resolve_options(params.method_options, batch=params.batch, total_steps=total,
                                                  windows=0, lr_schedule=params.lr_schedule)
        self.opts = get_method(method).default_options() | opts
        torch.manual_seed(params.seed)  # the same initial encoder as GeoSSL's (``_build`` seeds the same way)
        self.backbone = build_model(params.encoder, bands, 1).encoder
        width = self.backbone.out_channels[-1]
        o = self.opts
        net = nn.ModuleDict({"backbone": self.backbone})
        if method == "simclr":
            net["head"] = SimCLRProjectionHead(width, o["hidden_dim"], o["proj_dim"], batch_norm=False)
            self.criterion: nn.Module = NTXentLoss(temperature=o["temperature"])
        elif method == "byol":
            net["head"] = BYOLProjectionHead(width, o["hidden_dim"], o["proj_dim"])
            net["predictor"] = BYOLPredictionHead(o["proj_dim"], o["hidden_dim"], o["proj_dim"])
            self.criterion = NegativeCosineSimilarity()
        else:
            net["head"] = MoCoProjectionHead(width, o["hidden_dim"] or width, o["proj_dim"])
            self.criterion = NTXentLoss(temperature=o["temperature"],
                                        memory_bank_size=(int(o["queue_size"]), o["proj_dim"]))
        if method in ("byol", "moco"):
            net["backbone_momentum"] = copy.deepcopy(net["backbone"])
            net["head_momentum"] = copy.deepcopy(net["head"])
            deactivate_requires_grad(net["backbone_momentum"])
            deactivate_requires_grad(net["head_momentum"])
        self.net = prepare(net, device).train()
        self.criterion = self.criterion.to(device)
        self.opt, self.sched, self.scaler = optimiser(params, [p for p in self.net.parameters() if p.requires_grad],
                                                      total, device)

    def step(self, i: int, x: Tensor, views: tuple[Tensor, Tensor] | None) -> Tensor:
        if views is None:  # --augment live: GeoSSL's augmentation, seeded as the loop seeds it
            gen = step_generator(self.params.seed, i)
            views = augment(x, self.configs[0], gen).image, augment(x, self.configs[1], gen).image
        n = self.net
        if self.method == "byol":  # lightly's examples update the momentum networks first
            m = cosine_schedule(i, self.total, self.opts["base_momentum"], 1.0)
            update_momentum(n["backbone"], n["backbone_momentum"], m)
            update_momentum(n["head"], n["head_momentum"], m)
        elif self.method == "moco":
            update_momentum(n["backbone"], n["backbone_momentum"], self.opts["momentum"])
            update_momentum(n["head"], n["head_momentum"], self.opts["momentum"])
        with autocast(self.device, self.params.amp):
            loss = self._loss(*views)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        return loss.detach()

    def _loss(self, x0: Tensor, x1: Tensor) -> Tensor:
        n = self.net
        if self.method == "moco":
            query = n["head"](pooled(n["backbone"], x0))
            key = n["head_momentum"](pooled(n["backbone_momentum"], x1)).detach()
            return self.criterion(query, key)

        def online(x: Tensor) -> Tensor:
            z = n["head"](pooled(n["backbone"], x))
            return n["predictor"](z) if self.method == "byol" else z

        def target(x: Tensor) -> Tensor:
            return n["head_momentum"](pooled(n["backbone_momentum"], x)).detach()

        if self.split:
            o0, o1 = online(x0), online(x1)
        else:
            o0, o1 = online(torch.cat((x0, x1))).chunk(2)
        if self.method == "simclr":
            return self.criterion(o0, o1)
        if self.split:
            z0, z1 = target(x0), target(x1)
        else:
            z0, z1 = target(torch.cat((x0, x1))).chunk(2)
        return 0.5 * (self.criterion(o0, z1) + self.criterion(o1, z0))

    def close(self) -> None:
        pass


# --- timing ---------------------------------------------------------------------------------------

IMPLS = {"geossl": "GeoSSL (geossl.pretrain._train_step)",
         "lightly": "lightly 1.6 modules, both views in one pass (as GeoSSL)",
         "lightly-split": "lightly 1.6 modules, one pass per view (lightly's examples)"}


def params_for(method: str, args: argparse.Namespace, total: int, out: str) -> PretrainParams:
    options = {"queue_size": max(args.batch, args.queue // args.batch * args.batch)} if method == "moco" else {}
    return PretrainParams(rasters=["synthetic"], out=out, method=method, method_options=options,
                          encoder=args.encoder, tile=args.tile, batch=args.batch, steps=total,
                          device=args.device, seed=args.seed, amp=args.amp, checkpoint_minutes=None)


def run_method(method: str, impls: list[str], args: argparse.Namespace, x: Tensor,
               pool: list[tuple[Tensor, Tensor]] | None, device: torch.device, tmp: str, shift: int
               ) -> dict[str, dict[str, Any]]:
    """Build every implementation of ``method`` afresh, then let them take their warm-up and timed
    steps in turn, the order rotating every step (``shift``: the round's offset), so each timed step
    of one has neighbours in time in the others and a disturbance hits all alike."""
    total = args.warmup + args.steps
    params = params_for(method, args, total, str(Path(tmp) / f"{method}.pt"))
    runners: dict[str, GeoSSLRun | LightlyRun] = {
        i: GeoSSLRun(method, params, total, args.bands, device, pool is not None) if i == "geossl" else
        LightlyRun(method, params, total, args.bands, device, i == "lightly-split", pool is None) for i in impls}
    out: dict[str, dict[str, Any]] = {i: {"times": [], "losses": [], "error": None} for i in impls}
    try:
        for step in range(total):
            views = pool[step % len(pool)] if pool is not None else None
            k = (step + shift) % len(impls)
            for impl in impls[k:] + impls[:k]:
                res = out[impl]
                if res["error"]:
                    continue
                sync(device)
                t = time.perf_counter()
                try:
                    res["losses"].append(runners[impl].step(step, x, views))
                except GeoSSLError as exc:  # GeoSSL's own finite-loss check
                    res["error"] = str(exc)
                    continue
                sync(device)
                if step >= args.warmup:
                    res["times"].append(time.perf_counter() - t)
    finally:
        for r in runners.values():
            r.close()
    del runners
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    for res in out.values():
        res["losses"] = [float(v) for v in res["losses"]]
        res["finite"] = res["error"] is None and all(math.isfinite(v) for v in res["losses"])
    return out


def summarise(method: str, impl: str, runs: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    medians = [statistics.median(r["times"]) if r["times"] else math.nan for r in runs]
    step = statistics.median(medians)
    return {"method": method, "impl": impl, "description": IMPLS[impl], "steps_timed": sum(len(r["times"]) for r in runs),
            "step_s_median": step, "round_medians": medians, "samples_per_s": batch / step,
            "samples_per_s_rounds": [batch / m for m in medians], "all_step_s": [t for r in runs for t in r["times"]],
            "first_loss": runs[-1]["losses"][0] if runs[-1]["losses"] else None,
            "last_loss": runs[-1]["losses"][-1] if runs[-1]["losses"] else None,
            "finite": all(r["finite"] for r in runs), "errors": [r["error"] for r in runs if r["error"]]}


def geossl_over(row: dict[str, Any], geo: dict[str, Any]) -> float:
    """Median over rounds of GeoSSL's samples/s ÷ this row's, each from neighbours in time."""
    return statistics.median(o / g for g, o in zip(geo["round_medians"], row["round_medians"], strict=True))


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    out = {"node": platform.node(), "cpu": cpu, "platform": platform.platform(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    cfg, mach = meta["config"], meta["machine"]
    aug = (f"excluded: a fixed pool of {cfg['pool']} view pairs made once with GeoSSL's augmentation of each "
           "method, the same tensors served to both sides" if cfg["augment"] == "pool" else
           "included: GeoSSL's augmentation inside every step on both sides, same seeds, identical views")
    head = (f"Pretraining step throughput, GeoSSL vs lightly {meta['versions']['lightly']}: {cfg['encoder']} "
            f"DeepLabV3+ encoder (encoder trained), batch {cfg['batch']}, {cfg['bands']} bands, tile {cfg['tile']} "
            f"(views {cfg['view_size']}), MoCo queue {cfg['moco_queue']}, synthetic input, device {meta['device']}, AMP {cfg['amp']}; "
            f"{cfg['rounds']} rounds of every method in turn, its implementations stepping alternately, "
            f"{cfg['steps']} timed steps after {cfg['warmup']} warm-up each; on {mach['cpu']}{' / ' + mach['gpu'] if 'gpu' in mach else ''} ({mach['node']}), "
            f"{mach['torch_threads']} torch threads ({meta['date']}).\n\n"
            f"Augmentation {aug}. A step: forward → loss → backward → Adam (fused) + LR schedule step → "
            "momentum update (BYOL, MoCo) and queue update (MoCo).\n\n")
    lines = ["| method | implementation | step (s, median) | samples/s | samples/s per round | GeoSSL ÷ this | "
             "loss first → last | finite |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "" if r["impl"] == "geossl" else f"{r['geossl_over']:.2f}×"
        loss = (f"{r['first_loss']:.4f} → {r['last_loss']:.4f}" if r["last_loss"] is not None else "–")
        lines.append(f"| {r['method']} | {r['description']} | {r['step_s_median']:.3f} | {r['samples_per_s']:.2f} | "
                     f"{', '.join(f'{s:.2f}' for s in r['samples_per_s_rounds'])} | {ratio} | {loss} | "
                     f"{'yes' if r['finite'] else 'NO'} |")
    foot = ("\n\nGeoSSL ÷ this: median over rounds of GeoSSL's samples/s over this row's in the same round "
            "(goal ≥ 1.0 against the one-pass `lightly` row, the same computation). Losses are on each "
            "side's own scale (GeoSSL's BYOL loss is the sum of two 2 − 2·cos terms, lightly's the mean of "
            "two −cos).\n")
    return head + "\n".join(lines) + foot


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--bands", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="timed steps per row and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first, after every fresh build")
    p.add_argument("--rounds", type=int, default=3, help="every row runs once per round, in turn")
    p.add_argument("--augment", default="pool", choices=["pool", "live"],
                   help="pool: views made once and served (augmentation excluded); live: augmented in every step")
    p.add_argument("--pool", type=int, default=4, help="view pairs in the pool, cycled")
    p.add_argument("--queue", type=int, default=MAX_QUEUE, help="MoCo queue size (rounded to a multiple of the batch)")
    p.add_argument("--split", action=argparse.BooleanOptionalAction, default=True,
                   help="also time lightly with one pass per view (SimCLR, BYOL)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="mixed precision on CUDA")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results", help="folder for peers_pretrain.json / peers_pretrain.md")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    size = view_size(args.tile)
    torch.manual_seed(args.seed)
    x = torch.randn(args.batch, args.bands, args.tile, args.tile).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    pools = ({m: make_pool(m, x, size, args.pool, args.seed) for m in args.methods} if args.augment == "pool"
             else dict.fromkeys(args.methods))
    order = [(m, i) for m in args.methods for i in IMPLS
             if i != "lightly-split" or (args.split and m in SPLIT_METHODS)]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {k: [] for k in order}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for m in args.methods:
                impls = [i for mm, i in order if mm == m]
                for impl, res in run_method(m, impls, args, x, pools[m], device, tmp, r).items():
                    runs[m, impl].append(res)
                    print(f"round {r + 1}/{args.rounds} {m} {impl}: "
                          f"{statistics.median(res['times'] or [math.nan]):.3f} s/step", flush=True)
    wall = time.perf_counter() - t0
    rows = [summarise(m, i, runs[m, i], args.batch) for m, i in order]
    for row in rows:
        geo = next(g for g in rows if g["method"] == row["method"] and g["impl"] == "geossl")
        row["geossl_over"] = None if row is geo else geossl_over(row, geo)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
            "device": str(device), "versions": {**versions(), "lightly": str(lightly.__version__)},
            "config": {**{k: getattr(args, k) for k in ("encoder", "batch", "tile", "bands", "steps", "warmup",
                                                         "rounds", "augment", "pool", "amp", "seed", "methods")},
                       "view_size": size, "moco_queue": max(args.batch, args.queue // args.batch * args.batch)},
            "budget": {"rounds": args.rounds, "warmup_steps": args.warmup, "timed_steps": args.steps,
                       "timed_steps_per_row": args.rounds * args.steps, "wall_s": round(wall, 1)}}
    table = markdown(rows, meta)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers_pretrain.json").write_text(json.dumps({**meta, "results": rows}, indent=2))
    (out / "peers_pretrain.md").write_text(table)
    print(f"written: {out / 'peers_pretrain.json'}, {out / 'peers_pretrain.md'}")
    if not all(r["finite"] for r in rows):
        print("non-finite loss: " + ", ".join(f"{r['method']}/{r['impl']}" for r in rows if not r["finite"]),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
