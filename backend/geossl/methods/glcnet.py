"""GLCNet: global style and local matching contrastive learning (Li et al., TGRS 2022).

View 1 is only a random resized crop, view 2 the full augmentation (:mod:`geossl.augment`); both are
encoded in one pass of the DeepLabV3+.

* Global style: per-channel spatial mean ‖ unbiased variance of the ASPP output (256 ch, stride 16)
  -> MLP 512→256→64 -> NT-Xent over the batch (eq. 4-5). ``use_style=False`` pools the mean only
  (the paper's "noStyle" ablation, MLP 256→256→64).
* Local matching: decoder output reduced to 64 channels by a 1×1 conv (the authors' last decoder
  conv), upsampled bilinearly to the view size, mean-pooled over each matched region (computed in
  the cheaper, equal order: pool, then apply the 1×1 conv to the region means; see ``reduce``)
  (:mod:`geossl.regions`; the upsampling is folded into the pooling weights, same result without
  the full-resolution map) -> MLP 64→64→64 -> NT-Xent over all regions of the batch (eq. 6-7).
* L = λ·L_G + (1−λ)·L_L with λ = ``global_weight``; ``use_global`` / ``use_local`` switch a module
  off entirely (the paper's noGlobal / noLocal ablations), the remaining loss then has weight 1.

Where this departs from the authors' code, and why:

* Regions are spaced so they never overlap and, by default, the view-2 region covers exactly the
  ground of the view-1 region (``region_mode="mapped"``; ``"same_size"`` is the paper's box). See
  :mod:`geossl.regions`.
* Both views go through the network in one batch, so BatchNorm statistics are shared by the views
  (the authors ran two passes); this is the usual SimCLR practice and halves the kernel launches.
* The ASPP tap is smp's ``decoder.aspp`` block (ASPP + separable conv + BN + ReLU), the feature the
  decoder consumes; the authors tapped their ASPP projection (same width and stride).
* Region selection runs on the training device inside the step, vectorised over the batch, instead
  of per sample on the CPU in the data loader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from geossl.augment import augment, crop_only, full_augment
from geossl.losses import nt_xent
from geossl.methods.base import PretrainMethod, deeplab_features, logs_to_floats, projection_head
from geossl.regions import default_region_size, region_pool, sample_regions

if TYPE_CHECKING:
    from segmentation_models_pytorch import DeepLabV3Plus

__all__ = ["GLCNet", "style_vector"]


def style_vector(features: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, 2C): channel means ‖ unbiased channel variances, in float32.

    Mean and variance are the AdaIN style statistics (Huang & Belongie) the paper uses as a global
    descriptor (eq. 4); float32 keeps the variance of fp16 activations from overflowing.
    """
    flat = features.float().flatten(2)
    return torch.cat((flat.mean(dim=2), flat.var(dim=2, correction=1)), dim=1)


class GLCNet(PretrainMethod):
    """Global style + local matching contrastive pretraining of a whole DeepLabV3+."""

    name = "glcnet"

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return {
            "temperature": 0.5,
            "global_weight": 0.5,
            "use_global": True,
            "use_local": True,
            "use_style": True,
            "n_regions": 4,
            "region_size": None,
            "region_mode": "mapped",
            "local_channels": 64,
            "proj_dim": 64,
            "exclude_positive": True,
        }

    def __init__(self, model: DeepLabV3Plus, view_size: int, **options: Any) -> None:
        super().__init__(model, view_size, **options)
        opts = self.options
        if not (opts["use_global"] or opts["use_local"]):
            raise ValueError("GLCNet needs at least one of use_global / use_local")
        if not 0.0 <= opts["global_weight"] <= 1.0:
            raise ValueError(f"global_weight must be in [0, 1], got {opts['global_weight']}")
        if opts["region_mode"] not in ("mapped", "same_size"):
            raise ValueError(f"region_mode must be 'mapped' or 'same_size', got {opts['region_mode']!r}")
        self.region_size = int(opts["region_size"] or default_region_size(view_size))
        if self.region_size >= view_size:
            raise ValueError(f"region_size {self.region_size} must be smaller than view_size {view_size}")
        self.t1 = crop_only(view_size)
        self.t2 = full_augment(view_size)

        width = model.segmentation_head[0].in_channels  # ASPP and decoder width (decoder_channels)
        self.global_head: nn.Module | None = None
        self.local_reduce: nn.Module | None = None
        self.local_head: nn.Module | None = None
        if opts["use_global"]:
            in_dim = 2 * width if opts["use_style"] else width
            self.global_head = projection_head(in_dim, width, opts["proj_dim"])
        if opts["use_local"]:
            local = opts["local_channels"]
            self.local_reduce = nn.Conv2d(width, local, kernel_size=1) if local != width else nn.Identity()
            self.local_head = projection_head(local, local, opts["proj_dim"])

    def reduce(self, pooled: Tensor) -> Tensor:
        """The 1×1 ``local_reduce`` conv applied to region means (B, n, C) instead of the dense map.

        Exact for every non-empty region: a 1×1 conv is affine per pixel and region pooling is a
        weighted mean (the bilinear weights sum to one), so they commute. Pooling first skips the
        conv and its gradient over the whole (2B, C, H/4, W/4) decoder output (≈5% of a CPU step).
        """
        if isinstance(self.local_reduce, nn.Conv2d):
            return F.linear(pooled, self.local_reduce.weight.flatten(1), self.local_reduce.bias)
        return pooled

    def forward(self, batch: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        opts = self.options
        _, _, height, width = batch.shape
        view1 = augment(batch, self.t1, generator)
        view2 = augment(batch, self.t2, generator)
        feats = deeplab_features(self.model, torch.cat((view1.image, view2.image)), decoder=opts["use_local"])
        logs: dict[str, Tensor] = {}
        loss_global = loss_local = None

        if self.global_head is not None:
            pooled = style_vector(feats.aspp) if opts["use_style"] else feats.aspp.float().mean(dim=(2, 3))
            z1, z2 = self.global_head(pooled).chunk(2)
            loss_global = nt_xent(z1, z2, opts["temperature"], exclude_positive=opts["exclude_positive"])
            logs["loss_global"] = loss_global

        if self.local_head is not None:
            regions = sample_regions(
                view1.index, view2.index, (height, width), opts["n_regions"], self.region_size,
                opts["region_mode"], generator,
            )
            # Pooled as if upsampled bilinearly to the view size (see region_pool), then reduced.
            dense1, dense2 = feats.decoder.chunk(2)
            z1 = self.local_head(self.reduce(region_pool(dense1, regions.mask1)).flatten(0, 1))
            z2 = self.local_head(self.reduce(region_pool(dense2, regions.mask2)).flatten(0, 1))
            loss_local = nt_xent(
                z1, z2, opts["temperature"], exclude_positive=opts["exclude_positive"],
                valid=regions.valid.flatten(),
            )
            logs["loss_local"] = loss_local
            logs["regions_valid"] = regions.valid.float().mean()

        if loss_global is not None and loss_local is not None:
            lam = opts["global_weight"]
            loss = lam * loss_global + (1 - lam) * loss_local
        else:
            loss = loss_global if loss_global is not None else loss_local
        return loss, logs_to_floats(loss=loss, **logs)
