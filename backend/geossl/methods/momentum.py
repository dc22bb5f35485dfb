"""Momentum (EMA) copies of a network, shared by BYOL's target and MoCo's key encoder.

Pure functions on modules: the schedule and the update are written exactly as in the papers so a
test can check them against the formula.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["cosine_momentum", "ema_update", "frozen_copy"]


def cosine_momentum(step: int, total: int, base: float) -> float:
    """BYOL's schedule τ_k = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2: τ_base at k = 0, rising to 1 at k = K."""
    return 1 - (1 - base) * (math.cos(math.pi * min(step, total) / max(total, 1)) + 1) / 2


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy whose parameters never receive a gradient (and stay out of the optimiser)."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """θ_target ← m·θ_target + (1 − m)·θ_online for every parameter (buffers are left to the target's
    own forward passes, as in the reference implementations)."""
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError("target and online networks differ in structure")
    torch._foreach_lerp_(t_params, o_params, 1 - momentum)
