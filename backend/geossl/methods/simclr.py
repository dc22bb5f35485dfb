"""SimCLR (Chen et al., 2020) on the DeepLabV3+ encoder, the paper's main instance-wise baseline.

Both views get the full augmentation (:func:`geossl.augment.full_augment`); the deepest encoder
features are global-average-pooled, projected by an MLP and compared with the standard NT-Xent
(positive kept in the denominator). Only the encoder is trained; the decoder and segmentation head
receive no gradient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from geossl.augment import augment, full_augment
from geossl.losses import nt_xent
from geossl.methods.base import PretrainMethod, deeplab_features, logs_to_floats, projection_head

if TYPE_CHECKING:
    from segmentation_models_pytorch import DeepLabV3Plus

__all__ = ["SimCLR"]


class SimCLR(PretrainMethod):
    """Instance discrimination on global-average-pooled encoder features."""

    name = "simclr"

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return {"temperature": 0.5, "hidden_dim": 512, "proj_dim": 128}

    def __init__(self, model: DeepLabV3Plus, view_size: int, **options: Any) -> None:
        super().__init__(model, view_size, **options)
        opts = self.options
        self.augmentation = full_augment(view_size)
        self.head = projection_head(model.encoder.out_channels[-1], opts["hidden_dim"], opts["proj_dim"])

    def forward(self, batch: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        view1 = augment(batch, self.augmentation, generator)
        view2 = augment(batch, self.augmentation, generator)
        deepest = deeplab_features(self.model, torch.cat((view1.image, view2.image)), aspp=False, decoder=False)
        z1, z2 = self.head(deepest.encoder[-1].mean(dim=(2, 3))).chunk(2)
        loss = nt_xent(z1, z2, self.options["temperature"])
        return loss, logs_to_floats(loss=loss)
