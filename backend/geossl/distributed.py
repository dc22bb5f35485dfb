"""Joining a ``torchrun`` process group: which process this is, its device, and agreeing on success.

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; the same entry points (``geossl pretrain``,
``geossl predict``) then run as one job of several processes: NCCL between GPUs, gloo on CPU.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when started alone)."""

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


def start(ctx: Distributed, device: torch.device) -> torch.device:
    """Join the torchrun process group (NCCL on GPU, gloo on CPU); one GPU per process."""
    if device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            from .errors import GeoSSLError

            raise GeoSSLError(f"Process {ctx.local_rank} of this machine has no GPU of its own "
                              f"({torch.cuda.device_count()} found): one GPU per process.",
                              "start at most as many processes per machine as it has GPUs (or use --device cpu).")
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


@contextlib.contextmanager
def joined(ctx: Distributed, device: torch.device) -> Iterator[torch.device]:
    """The job's device for this process, inside the process group (left again if joined here).

    torchrun stops the other processes with SIGTERM when one dies; turned into ``SystemExit`` so
    every ``finally`` (temporary files, atomic outputs) still runs.
    """
    if not ctx.enabled:
        yield device
        return
    started = not dist.is_initialized()
    # only where nobody handles SIGTERM yet (a service worker has its own), and only the main thread may
    own = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    if own:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        yield start(ctx, device)
    finally:
        if own:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if started and dist.is_initialized():
            dist.destroy_process_group()


def all_succeeded(ok: bool, device: torch.device) -> list[int]:
    """The ranks that failed (every process gets the same answer); ``[]`` when all succeeded."""
    flags = torch.zeros(dist.get_world_size(), dtype=torch.int32, device=device)
    flags[dist.get_rank()] = 0 if ok else 1
    dist.all_reduce(flags)
    return [r for r, f in enumerate(flags.tolist()) if f]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _resolve(ref: str) -> Any:
    """The object a ``"module:name"`` reference names (runners and parameter classes cross processes so)."""
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def _rank_main(runner: str, params_class: str, params: dict, env: dict[str, str], threads: int) -> None:
    os.environ.update(env)
    torch.set_num_threads(threads)
    _resolve(runner)(_resolve(params_class).model_validate(params))


def run_local_group(runner: str, params: Any, progress: Any, processes: int) -> Any:
    """``runner(params, progress)`` as one job of ``processes`` processes on this machine, as
    ``torchrun --standalone`` would start it: this process is rank 0 (it reports progress and
    returns the result), the others are spawned; the cores are split evenly between them.
    One that fails makes the whole job fail (the runner's own agreement, e.g. predict's)."""
    n = max(1, processes)
    threads = max(1, (os.cpu_count() or 1) // n)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(n)}
    ctx = mp.get_context("spawn")
    params_class = f"{type(params).__module__}:{type(params).__name__}"
    others = [ctx.Process(target=_rank_main, daemon=True, name=f"geossl-rank{r}",
                          args=(runner, params_class, params.model_dump(), env | {"RANK": str(r),
                                                                                 "LOCAL_RANK": str(r)}, threads))
              for r in range(1, n)]
    saved = {k: os.environ.get(k) for k in [*env, "RANK", "LOCAL_RANK"]}
    saved_threads = torch.get_num_threads()
    for p in others:
        p.start()
    os.environ.update(env | {"RANK": "0", "LOCAL_RANK": "0"})
    torch.set_num_threads(threads)
    try:
        return _resolve(runner)(params, progress)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        torch.set_num_threads(saved_threads)
        for p in others:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
