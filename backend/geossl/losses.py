"""Contrastive losses (NT-Xent) for global and region embeddings, DDP-aware.

Under DistributedDataParallel every process gathers the embeddings of all processes (with gradient)
and evaluates the same loss over the global batch, so negatives come from the whole batch, not just
the local shard. Each process back-propagates only into its own embeddings; the gathered gradient is
summed over processes in the backward pass, which DDP's gradient averaging turns back into the
gradient of the global-batch loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["byol_loss", "gather_with_grad", "info_nce", "normalized_mse", "nt_xent", "region_nt_xent"]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums the incoming gradients over processes.

    ``torch.distributed.nn.functional.all_gather`` does the same but is deprecated since torch 2.x
    (a FutureWarning on every call) and its suggested replacement lives in a private module; this
    uses only the public ``all_gather``/``all_reduce``, which every backend (NCCL, Gloo) supports.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all processes along dim 0 (rank order); identity without DDP.

    Float tensors keep their gradient path; bool/int tensors (masks) are gathered as plain data.
    All processes must pass the same shape.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if x.is_floating_point():
        return _GatherWithGrad.apply(x)
    as_int = x.to(torch.uint8) if x.dtype == torch.bool else x
    parts = [torch.empty_like(as_int) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, as_int.contiguous())
    return torch.cat(parts, dim=0).to(x.dtype)


def nt_xent(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.5,
    *,
    exclude_positive: bool = False,
    valid: Tensor | None = None,
) -> Tensor:
    """NT-Xent (SimCLR) over pairs (z1[i], z2[i]) with cosine similarity, averaged over 2N anchors.

    Each anchor's positive is its partner view; every other embedding of the (gathered) batch, from
    both views, is a negative. With ``exclude_positive`` the positive is left out of the denominator
    (GLCNet's authors' final code and the paper's eq. 5b/7b; the "decoupled" variant, which can go
    below zero). ``valid`` (N,) drops pairs entirely, as anchors and as negatives; anchors left with
    no negative are dropped too. With nothing left the loss is a graph-connected zero.
    Computed in float32 whatever the autocast dtype.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"expected two (N, D) tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if valid is None:
        valid = torch.ones(z1.shape[0], dtype=torch.bool, device=z1.device)
    z1, z2, valid = gather_with_grad(z1), gather_with_grad(z2), gather_with_grad(valid.bool())
    n = z1.shape[0]
    z = F.normalize(torch.cat((z1, z2)).float(), dim=1)
    logits = z @ z.T / temperature
    anchors = torch.arange(2 * n, device=z.device)
    partner = (anchors + n) % (2 * n)
    keep = torch.cat((valid, valid))
    allowed = keep[None, :] & (anchors[:, None] != anchors[None, :])
    if exclude_positive:
        allowed = allowed & (anchors[None, :] != partner[:, None])
    usable = keep & allowed.any(dim=1)
    # Rows without any allowed entry would give log(0); zero them and drop them after the reduction.
    masked = torch.where(usable[:, None], logits.masked_fill(~allowed, float("-inf")), 0.0)
    per_anchor = torch.logsumexp(masked, dim=1) - logits[anchors, partner]
    per_anchor = torch.where(usable, per_anchor, 0.0)
    return per_anchor.sum() / usable.sum().clamp_min(1)


def region_nt_xent(z1: Tensor, z2: Tensor, valid: Tensor | None = None, temperature: float = 0.5) -> Tensor:
    """GLCNet's local-matching loss (eq. 7) over matched region embeddings (N_regions, D).

    Negatives are all other regions of the batch from both views, including the other regions of the
    same image; the positive is excluded from the denominator as in the authors' final code. Regions
    that could not be placed (``valid`` False) are dropped.
    """
    return nt_xent(z1, z2, temperature, exclude_positive=True, valid=valid)


def normalized_mse(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's per-sample loss ‖p/‖p‖ − z/‖z‖‖² = 2 − 2·cos(p, z), shape (N,), in float32."""
    return 2 - 2 * F.cosine_similarity(p.float(), z.float(), dim=1)


def byol_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """Symmetric BYOL loss (Grill et al. 2020, eq. 2-3): online predictions ``p1``, ``p2`` of each view
    against the target projections of the *other* view, ``z2``, ``z1``; summed over the two
    directions, averaged over the batch. The targets are detached here, so no gradient reaches them
    whatever the caller did. No negatives: the batch size only matters for BatchNorm."""
    return (normalized_mse(p1, z2.detach()) + normalized_mse(p2, z1.detach())).mean()


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2, unit_queue: bool = False) -> Tensor:
    """MoCo's InfoNCE: each query ``q`` (N, D) against its key ``k`` (N, D) and the queued negatives
    (K, D), cosine similarity over τ, cross-entropy with the key as class 0 (He et al. 2020, eq. 1).

    Keys and queue are treated as constants (the key encoder is a momentum copy); float32 throughout.
    ``unit_queue``: the queue already holds unit vectors (MoCo queues normalised keys), so the
    K × D normalisation, the loss's costliest part at K = 65,536 on a CPU, is skipped.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.detach().float(), dim=1)
    negatives = queue.detach().float() if unit_queue else F.normalize(queue.detach().float(), dim=1)
    logits = torch.cat(((q * k).sum(dim=1, keepdim=True), q @ negatives.T), dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
