"""BYOL (Grill et al., NeurIPS 2020) with RS-BYOL's multi-band / multi-sensor views (Jain et al.).

Online network: DeepLabV3+ encoder → global average pool → projector → predictor. Target network:
an exponential moving average of the online encoder + projector (momentum rising from 0.996 to 1
on a cosine schedule over the run, updated after every optimiser step, :meth:`after_step`), run
without gradient. Under the loop's constant learning rate (``--lr-schedule constant``) the momentum
stays at 0.996 (``momentum_schedule`` follows the loop unless given): a cosine over the run's length
would make step N of a long run differ from the end of an N-step run, and the constant schedule is
there so that every snapshot is such an end. Loss: symmetric normalised MSE between each view's prediction and the other
view's target projection; no negatives, so it trains at the small batches a single GPU allows
(RS-BYOL used batch 32). Projector and predictor are Linear–BatchNorm–ReLU–Linear (4096 → 256 as in
BYOL; RS-BYOL used a 256 hidden layer: ``hidden_dim=256``).

Views: the two views are taken from the tile batch by :func:`geossl.views.select_views` (the same
bands twice, two band groups, random bands, or raster + paired raster), then augmented by
:func:`geossl.augment.byol_augment` (no colour jitter; random erasing).

Where this departs from the papers, and why: both views go through the online network in one
batch (BatchNorm statistics shared by the views, as SimCLR here); only the encoder is trained (the
decoder and ASPP receive no gradient, like SimCLR/MoCo); optimiser and learning-rate schedule are
the loop's (Adam + cosine) rather than LARS / SGD with warm restarts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from geossl.augment import augment, byol_augment
from geossl.losses import byol_loss
from geossl.methods.base import PretrainMethod, logs_to_floats
from geossl.methods.momentum import cosine_momentum, ema_update, frozen_copy
from geossl.views import ViewBands, select_views

if TYPE_CHECKING:
    from segmentation_models_pytorch import DeepLabV3Plus

__all__ = ["BYOL", "byol_mlp"]


def byol_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """BYOL's projector/predictor: Linear → BatchNorm → ReLU → Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


class BYOL(PretrainMethod):
    """Bootstrap Your Own Latent on global-average-pooled encoder features."""

    name = "byol"
    supports_views = True

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        # momentum_schedule None: "constant" under the loop's constant learning rate, else "cosine".
        return {"hidden_dim": 4096, "proj_dim": 256, "base_momentum": 0.996, "momentum_schedule": None}

    @classmethod
    def check_options(cls, options: dict[str, Any], batch: int) -> None:
        if options.get("momentum_schedule") not in (None, "cosine", "constant"):
            raise ValueError(f"byol momentum_schedule must be cosine or constant, got {options['momentum_schedule']!r}")

    @classmethod
    def resolve_options(cls, options: dict[str, Any], *, batch: int, total_steps: int, windows: int,
                        lr_schedule: str = "cosine") -> dict[str, Any]:
        out = dict(options)
        if out.get("momentum_schedule") is None:
            out["momentum_schedule"] = "constant" if lr_schedule == "constant" else "cosine"
        return out

    def __init__(self, model: DeepLabV3Plus, view_size: int, views: ViewBands | None = None, **options: Any) -> None:
        super().__init__(model, view_size, **options)
        opts = self.options
        if not 0.0 <= opts["base_momentum"] <= 1.0:
            raise ValueError(f"base_momentum must be in [0, 1], got {opts['base_momentum']}")
        self.views = views
        self.t1, self.t2 = byol_augment(view_size)
        width = model.encoder.out_channels[-1]
        self.projector = byol_mlp(width, opts["hidden_dim"], opts["proj_dim"])
        self.predictor = byol_mlp(opts["proj_dim"], opts["hidden_dim"], opts["proj_dim"])
        self.target_encoder = frozen_copy(model.encoder)
        self.target_projector = frozen_copy(self.projector)

    def forward(self, batch: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        x1, x2 = select_views(batch, self.views, generator)
        views = torch.cat((augment(x1, self.t1, generator).image, augment(x2, self.t2, generator).image))
        p1, p2 = self.predictor(self.projector(self.model.encoder(views)[-1].mean(dim=(2, 3)))).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_encoder(views)[-1].mean(dim=(2, 3))).chunk(2)
        loss = byol_loss(p1, p2, z1, z2)
        return loss, logs_to_floats(loss=loss)

    def after_step(self, step: int, total: int) -> None:
        base = self.options["base_momentum"]
        m = base if self.options["momentum_schedule"] == "constant" else cosine_momentum(step, total, base)
        ema_update(self.target_encoder, self.model.encoder, m)
        ema_update(self.target_projector, self.projector, m)
