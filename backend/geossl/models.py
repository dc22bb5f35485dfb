"""Model factory: DeepLabV3+ (segmentation-models-pytorch) for any band count.

Models are built with random weights; nothing is fetched at run time. Starting points are loaded
into the encoder afterwards: GeoSSL's own pretraining (:func:`geossl.finetune.load_pretrained`) or
weights users have, ImageNet from the local caches or a ResNet state dict (:mod:`geossl.weights`).
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

from .schemas import ENCODERS

__all__ = ["ENCODERS", "autocast", "build_model", "pick_device", "prepare"]


class PixelPath(nn.Sequential):
    """Per-pixel class scores from the bands alone (three 1×1 convolutions).

    A DeepLabV3+ sees a pixel through hundreds of metres of context and, trained on a few hundred
    polygons, learns their surroundings as much as their spectra: on new ground it can miss a lake
    that any per-pixel classifier finds. This path adds to the context logits what the pixel's own
    bands say, so the spectral evidence is always one step from the output.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 64) -> None:
        super().__init__(nn.Conv2d(in_channels, width, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                         nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                         nn.Conv2d(width, num_classes, 1))


class GeoDeepLab(smp.DeepLabV3Plus):
    """smp's DeepLabV3+ with an optional :class:`PixelPath` whose logits add to the head's."""

    def __init__(self, *args, pixel_path: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pixel_head = PixelPath(kwargs["in_channels"], kwargs["classes"]) if pixel_path else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context, pixel = self.parts(x)
        return context if pixel is None else context + pixel

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(context logits, pixel-path logits or None): their sum is the model's output."""
        return super().forward(x), None if self.pixel_head is None else self.pixel_head(x)


def build_model(encoder: str, in_channels: int, num_classes: int, pixel_path: bool = False) -> smp.DeepLabV3Plus:
    """A randomly initialised DeepLabV3+ with ``in_channels`` input bands and ``num_classes`` outputs."""
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, not {encoder!r}")
    return GeoDeepLab(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes,
                      pixel_path=pixel_path)


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """Mixed precision on CUDA (bf16 where supported, else fp16); a no-op context on CPU."""
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to ``device``; channels_last on CUDA, where convolutions run faster in that layout."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model
