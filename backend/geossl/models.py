"""Model factory: DeepLabV3+ (segmentation-models-pytorch) for any band count.

Models are built with random weights; nothing is fetched at run time. Starting points are loaded
into the encoder afterwards: GeoSSL's own pretraining (:func:`geossl.finetune.load_pretrained`) or
weights users have, ImageNet from the local caches or a ResNet state dict (:mod:`geossl.weights`).
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from .forest import ForestHead, Ratios, forest_probs
from .schemas import ENCODERS, check_smooth

__all__ = ["ENCODERS", "SMOOTH_SIZES", "autocast", "build_model", "from_checkpoint", "pick_device", "prepare", "smooth_probs"]


class GeoDeepLab(smp.DeepLabV3Plus):
    """smp's DeepLabV3+, optionally blended with a per-pixel forest (:mod:`geossl.forest`).

    With a forest the output is log((1 − w)·softmax(context) + w·forest), so every consumer that
    takes a softmax of the output (prediction, suggestions, the ONNX export) gets the blended
    probabilities; training uses :meth:`context` alone (the forest is fitted, not trained by SGD).
    ``smooth`` (odd, pixels) then averages those probabilities over a square window
    (:func:`smooth_probs`): the majority filter of classic classification, chosen on validation.
    """

    def __init__(self, *args, forest: dict | None = None, smooth: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.smooth = int(check_smooth(smooth))  # in the model file's ``smooth`` entry, not the state dict
        self.forest: ForestHead | None = None
        self.texture: tuple[int, ...] = ()
        self.ratios: Ratios | None = None
        self.forest_weight = 0.0  # in the model file's ``forest`` entry, not the state dict (old files load)
        if forest:
            self.attach_forest(ForestHead(forest["features"], kwargs["classes"], forest["trees"], forest["nodes"],
                                          forest["depth"]), forest["texture"], forest["weight"],
                               Ratios.from_dict(forest.get("ratios")))

    def attach_forest(self, head: ForestHead, texture: tuple[int, ...], weight: float,
                      ratios: Ratios | None = None) -> None:
        self.forest, self.texture, self.forest_weight, self.ratios = head, tuple(texture), float(weight), ratios

    def forest_meta(self) -> dict | None:
        """What :func:`build_model` needs to rebuild the forest's buffers before loading a state dict."""
        if self.forest is None:
            return None
        t, n = self.forest.feature.shape
        return {"trees": t, "nodes": n, "depth": self.forest.depth, "features": self.forest.num_features,
                "texture": list(self.texture), "weight": self.forest_weight,
                "ratios": self.ratios.to_dict() if self.ratios else None}

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The DeepLabV3+ logits alone."""
        return super().forward(x)

    def forest_probs(self, x: torch.Tensor) -> torch.Tensor:
        return forest_probs(self.forest, x, self.texture, self.ratios)

    def blend(self, context_probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(1 − w)·``context_probs`` + w·forest probabilities of ``x`` (the context's alone without a forest)."""
        w = self.forest_weight
        if self.forest is None or w == 0:  # no trees walked for a share of 0
            return context_probs
        return (1 - w) * context_probs + w * self.forest_probs(x.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.context(x)
        plain = self.forest is None or self.forest_weight == 0
        if plain and self.smooth == 1:
            return logits
        probs = torch.softmax(logits.float(), dim=1) if plain else self.blend(torch.softmax(logits.float(), dim=1), x)
        return torch.log(smooth_probs(probs, self.smooth).clamp_min(1e-8))


SMOOTH_SIZES = (1, 3, 5, 9, 15)  # the windows fine-tuning chooses from on its validation polygons


def smooth_probs(probs: torch.Tensor, size: int) -> torch.Tensor:
    """Class probabilities averaged over a ``size``² window (1: unchanged).

    At a tile's edge only the pixels inside count, so the tile border is not pulled towards zero;
    prediction's overlap blending then hides the rest. Averaging probabilities before the argmax is
    the soft form of the majority filter analysts run on a classified map.
    """
    if size == 1:
        return probs
    return F.avg_pool2d(probs, size, stride=1, padding=size // 2, count_include_pad=False)


def build_model(encoder: str, in_channels: int, num_classes: int, forest: dict | None = None,
                smooth: int = 1) -> GeoDeepLab:
    """A randomly initialised DeepLabV3+ with ``in_channels`` input bands and ``num_classes`` outputs;
    ``forest``: the ``forest`` entry of a model file (empty buffers of that shape, to load into);
    ``smooth``: its ``smooth`` entry."""
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, not {encoder!r}")
    return GeoDeepLab(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes,
                      forest=forest, smooth=smooth)


def from_checkpoint(ckpt: dict, forest_weight: float | None = None, smooth: int | None = None) -> GeoDeepLab:
    """The model of a loaded segmentation checkpoint, its weights in; ``forest_weight`` and ``smooth``
    override its forest's share and its smoothing window."""
    forest = ckpt.get("forest")
    if forest and forest_weight is not None:
        forest = forest | {"weight": forest_weight}
    model = build_model(ckpt["encoder"], int(ckpt["in_channels"]), int(ckpt["num_classes"]), forest,
                        int(ckpt.get("smooth") or 1) if smooth is None else smooth)
    model.load_state_dict(ckpt["state_dict"])
    return model


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


def prepare(model: nn.Module, device: torch.device, inference: bool = False) -> nn.Module:
    """Move to ``device``; channels_last on CUDA, and on CPU for inference, where convolutions run
    faster in that layout (measured on 2 cores: 1.46 against 1.25 Mpx/s at 768² tiles)."""
    model = model.to(device)
    if device.type == "cuda" or inference:
        model = model.to(memory_format=torch.channels_last)
    return model
