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


def build_model(encoder: str, in_channels: int, num_classes: int) -> smp.DeepLabV3Plus:
    """A randomly initialised DeepLabV3+ with ``in_channels`` input bands and ``num_classes`` outputs."""
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, not {encoder!r}")
    return smp.DeepLabV3Plus(
        encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes
    )


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
