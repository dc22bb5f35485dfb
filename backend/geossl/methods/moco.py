"""MoCo v2 (He et al., CVPR 2020; Chen et al., 2020): momentum key encoder and a queue of negatives.

Query: DeepLabV3+ encoder → global average pool → MLP head (MoCo v2). Key: a momentum copy of
encoder + head (m = 0.999, updated after every optimiser step, :meth:`after_step`), run without
gradient. Loss: InfoNCE with τ = 0.2 of each query against its key and the queued keys of earlier
batches; then the batch's keys enter the queue (oldest out). Under DistributedDataParallel the keys
of all processes are gathered before they are queued, so every process holds the same queue.
Queue and key encoder are buffers/parameters of the method: the resume state holds them.

The queue size defaults to the data: min(65536, windows the run will see, distinct tiles in the
rasters), a multiple of the batch — a queue longer than that only repeats ground as negatives.
The momentum is fixed, so under the loop's constant schedule a snapshot at step N is the end of an
N-step run, except that the default queue of a short run is capped by batch × N: snapshots of one
long run then hold a longer queue than short runs would have (pass ``queue_size`` to make them
identical; the queue is not part of the saved encoder).
Views as in :mod:`geossl.views` (so RS-BYOL's band groups / paired rasters work here too), each
augmented with :func:`geossl.augment.moco_v2_augment`.

Where this departs from the paper: no shuffled BatchNorm (it needs several GPUs; with one process
BN statistics are per view batch as in most single-GPU reimplementations); only the encoder is
trained; Adam + cosine (the loop's) instead of SGD.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from geossl.augment import augment, moco_v2_augment
from geossl.losses import info_nce
from geossl.methods.base import PretrainMethod, logs_to_floats, projection_head
from geossl.methods.momentum import ema_update, frozen_copy
from geossl.views import ViewBands, select_views

if TYPE_CHECKING:
    from segmentation_models_pytorch import DeepLabV3Plus

__all__ = ["MAX_QUEUE", "MoCo", "default_queue_size", "gather_keys"]

MAX_QUEUE = 65536  # MoCo's K


def default_queue_size(batch: int, total_steps: int, windows: int) -> int:
    """min(65536, batch × steps, distinct windows) rounded down to a multiple of the batch, ≥ batch."""
    cap = min(MAX_QUEUE, batch * total_steps, max(windows, batch))
    return max(batch, cap // batch * batch)


def gather_keys(keys: Tensor) -> Tensor:
    """Keys of all processes in rank order (no gradient); the keys themselves without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return keys
    parts = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, keys.contiguous())
    return torch.cat(parts)


class MoCo(PretrainMethod):
    """Momentum Contrast v2 on global-average-pooled encoder features."""

    name = "moco"
    supports_views = True

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return {"temperature": 0.2, "queue_size": None, "momentum": 0.999, "hidden_dim": None, "proj_dim": 128}

    @classmethod
    def check_options(cls, options: dict[str, Any], batch: int) -> None:
        k = options.get("queue_size")
        if k is not None and (not isinstance(k, int) or k < batch or k % batch):
            raise ValueError(f"moco queue_size must be a multiple of the batch ({batch}) and at least the batch, "
                             f"got {k!r}")

    @classmethod
    def resolve_options(cls, options: dict[str, Any], *, batch: int, total_steps: int, windows: int,
                        lr_schedule: str = "cosine") -> dict[str, Any]:
        out = dict(options)
        if out.get("queue_size") is None:
            out["queue_size"] = default_queue_size(batch, total_steps, windows)
        cls.check_options(out, batch)
        return out

    def __init__(self, model: DeepLabV3Plus, view_size: int, views: ViewBands | None = None, **options: Any) -> None:
        super().__init__(model, view_size, **options)
        opts = self.options
        if opts["queue_size"] is None:
            raise ValueError("moco needs queue_size (the loop fills it in from the data: resolve_options)")
        if not 0.0 <= opts["momentum"] <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {opts['momentum']}")
        self.views = views
        self.augmentation = moco_v2_augment(view_size)
        width = model.encoder.out_channels[-1]
        self.head = projection_head(width, opts["hidden_dim"] or width, opts["proj_dim"])
        self.key_encoder = frozen_copy(model.encoder)
        self.key_head = frozen_copy(self.head)
        self.register_buffer("queue", F.normalize(torch.randn(int(opts["queue_size"]), opts["proj_dim"]), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queued", torch.zeros((), dtype=torch.long))  # keys enqueued so far

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` (N, D) at the pointer, oldest first out (wrapping), and advance the pointer."""
        size = self.queue.shape[0]
        if keys.shape[0] > size:
            raise ValueError(f"{keys.shape[0]} keys do not fit a queue of {size}")
        slots = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue.index_copy_(0, slots, keys.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)
        self.queued.add_(keys.shape[0])

    def forward(self, batch: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        x_q, x_k = select_views(batch, self.views, generator)
        v_q = augment(x_q, self.augmentation, generator).image
        v_k = augment(x_k, self.augmentation, generator).image
        q = self.head(self.model.encoder(v_q)[-1].mean(dim=(2, 3)))
        with torch.no_grad():
            k = F.normalize(self.key_head(self.key_encoder(v_k)[-1].mean(dim=(2, 3))).float(), dim=1)
        loss = info_nce(q, k, self.queue.clone(), self.options["temperature"], unit_queue=True)
        keys = gather_keys(k)
        self.enqueue(keys)
        return loss, logs_to_floats(loss=loss, keys_queued=torch.tensor(float(keys.shape[0]), device=loss.device),
                                    queue_fill=torch.clamp(self.queued, max=self.queue.shape[0]).float())

    def after_step(self, step: int, total: int) -> None:
        ema_update(self.key_encoder, self.model.encoder, self.options["momentum"])
        ema_update(self.key_head, self.head, self.options["momentum"])
