"""Pieces shared by all pretraining methods: the method interface, feature taps on an smp
DeepLabV3Plus, and the projection MLP.

The training loop only knows :class:`PretrainMethod`: construct with ``Method(model, view_size,
**options)``, call ``method(batch, generator)`` to get ``(loss, logs)``, back-propagate, and save
``method.model.encoder`` / ``method.model.decoder`` plus ``method.options`` (JSON-serialisable).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from segmentation_models_pytorch import DeepLabV3Plus

__all__ = ["DeepLabFeatures", "PretrainMethod", "deeplab_features", "logs_to_floats", "projection_head"]


class DeepLabFeatures(NamedTuple):
    """encoder: smp encoder pyramid (input first, deepest last); aspp: output of ``decoder.aspp``
    (stride 16); decoder: DeepLabV3+ decoder output before the segmentation head (stride 4)."""

    encoder: list[Tensor]
    aspp: Tensor | None
    decoder: Tensor | None


def deeplab_features(model: DeepLabV3Plus, x: Tensor, *, aspp: bool = True, decoder: bool = True) -> DeepLabFeatures:
    """Run an smp DeepLabV3Plus up to the requested depth and return the intermediate features.

    smp's decoder computes the ASPP internally and returns only its final output; this replays
    ``DeepLabV3PlusDecoder.forward`` step by step (aspp -> up -> concat with block1(features[2]) ->
    block2) so the ASPP output is available without a second pass. The segmentation head is skipped.
    """
    features = model.encoder(x)
    if not (aspp or decoder):
        return DeepLabFeatures(features, None, None)
    dec = model.decoder
    aspp_out = dec.aspp(features[-1])
    if not decoder:
        return DeepLabFeatures(features, aspp_out, None)
    high_res = dec.block1(features[2])
    fused = dec.block2(torch.cat((dec.up(aspp_out), high_res), dim=1))
    return DeepLabFeatures(features, aspp_out, fused)


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """SimCLR/GLCNet projection g(.): one hidden layer with ReLU, no normalisation (paper eq. 2)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def logs_to_floats(**values: Tensor) -> dict[str, float]:
    """Detach scalar tensors (all on one device) and convert them with a single device sync."""
    if not values:
        return {}
    stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()])
    return dict(zip(values, stacked.tolist(), strict=True))


class PretrainMethod(nn.Module):
    """Base class of self-supervised methods.

    Subclasses set ``name`` and implement :meth:`default_options` and :meth:`forward`. Options are
    validated against the defaults so a typo in a config or checkpoint fails loudly.
    """

    name: ClassVar[str] = ""
    # True for methods whose two views may come from different bands or a paired raster (geossl.views):
    # their constructor then takes ``views=``.
    supports_views: ClassVar[bool] = False

    def __init__(self, model: DeepLabV3Plus, view_size: int, **options: Any) -> None:
        super().__init__()
        if view_size < 32 or view_size % 16:
            raise ValueError(f"view_size must be a multiple of 16 and at least 32 (DeepLabV3+ output stride 16), got {view_size}")
        defaults = self.default_options()
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown options {unknown}; known: {sorted(defaults)}")
        self.model = model
        self.view_size = view_size
        self.options: dict[str, Any] = {**defaults, **options}

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        """Default hyper-parameters as a plain JSON-serialisable dict (stored in checkpoints)."""
        raise NotImplementedError

    @classmethod
    def check_options(cls, options: dict[str, Any], batch: int) -> None:
        """ValueError for options that cannot work with this batch (job schemas call it at submit time)."""

    @classmethod
    def resolve_options(cls, options: dict[str, Any], *, batch: int, total_steps: int, windows: int,
                        lr_schedule: str = "cosine") -> dict[str, Any]:
        """Options with data-dependent defaults filled in (``windows``: distinct tiles in the rasters;
        ``lr_schedule``: the loop's, for methods whose own schedules should follow it)."""
        return dict(options)

    def after_step(self, step: int, total: int) -> None:
        """Called by the loop after optimiser step ``step`` (0-based) of ``total``: momentum encoders
        update here, from the online weights just stepped. State must live in buffers/parameters so
        that the resume state holds it."""

    def forward(self, batch: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """Augment the standardised tile batch (B, C, H, W) and return (loss, logs)."""
        raise NotImplementedError
