"""Joining a ``torchrun`` process group: which process this is, its device, and agreeing on success.

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; the same entry points (``geossl pretrain``,
``geossl predict``) then run as one job of several processes: NCCL between GPUs, gloo on CPU.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        yield start(ctx, device)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if started and dist.is_initialized():
            dist.destroy_process_group()


def all_succeeded(ok: bool, device: torch.device) -> list[int]:
    """The ranks that failed (every process gets the same answer); ``[]`` when all succeeded."""
    flags = torch.zeros(dist.get_world_size(), dtype=torch.int32, device=device)
    flags[dist.get_rank()] = 0 if ok else 1
    dist.all_reduce(flags)
    return [r for r, f in enumerate(flags.tolist()) if f]
