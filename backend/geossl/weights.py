"""Weights users already have, turned into the encoder weights of GeoSSL's DeepLabV3+.

Two sources besides GeoSSL's own checkpoints: ImageNet weights that torchvision or
segmentation-models-pytorch once downloaded into the local caches (looked up by path only:
nothing is ever downloaded at run time), and plain state-dict files of torchvision, timm or
torchgeo ResNets (e.g. the SSL4EO-S12 Sentinel-2 weights). smp's ResNet encoders are torchvision
ResNets without ``fc``, and timm's ResNets use the same names (``conv1``, ``bn1``, ``layerN.M.…``),
so after unwrapping and prefix stripping a file loads key for key; only the first convolution is
adapted to the raster's band count.

Files are read with ``torch.load(weights_only=True)`` (or safetensors): a weight file from the
internet can never run code here.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import FORMAT, check_payload
from .errors import GeoSSLError
from .schemas import ENCODERS

__all__ = ["EncoderWeights", "adapt_first_conv", "encoder_start", "imagenet_state", "load_state_dict_file",
           "open_start"]

FIRST_CONV = "conv1.weight"
# Where trainers put the model's state dict inside a checkpoint (Lightning, DINO, MoCo, torchgeo…), in the
# order tried: DINO's teacher is the copy meant for downstream use.
WRAPPERS = ("state_dict", "model_state_dict", "model", "teacher", "student", "net", "network", "encoder",
            "backbone", "module")
# Prefix words of the momentum copy when a file holds two encoders (MoCo's key, BYOL's target): never preferred.
MOMENTUM_WORDS = ("encoder_k", "target", "momentum", "key")
# ResNet depth from (bottleneck blocks?, blocks per stage); 101/152 are named only to say what a file holds.
_RESNETS = {(False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34",
            (True, (3, 4, 6, 3)): "resnet50", (True, (3, 4, 23, 3)): "resnet101", (True, (3, 8, 36, 3)): "resnet152"}


@dataclass
class EncoderWeights:
    """ResNet encoder weights from outside this run, under torchvision's names, ready to load.

    ``fixed_bands``: the weights come from a GeoSSL checkpoint, which knows its bands (and their
    statistics), so a raster with other bands is refused instead of adapted.
    """

    state: dict[str, torch.Tensor]
    source: str  # "imagenet", "file" or "geossl"
    path: str
    origin: str  # in words: which cache, or how the file was unwrapped
    fixed_bands: bool = False
    ignored: list[str] = field(default_factory=list)  # keys of the file that are not encoder weights

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def architecture(self) -> str | None:
        return guess_resnet(self.state)

    @property
    def bands(self) -> int | None:
        conv = self.state.get(FIRST_CONV)
        return int(conv.shape[1]) if conv is not None and conv.ndim == 4 else None

    def load_into(self, model: nn.Module, encoder: str, aspp: bool = False) -> dict[str, Any]:
        """Copy the weights into ``model.encoder``; returns what was loaded (kept in the model file).

        Strict about the encoder's weights: every one must be in the file with its shape, except
        the first convolution's band dimension (adapted) and BatchNorm's step counters.
        """
        if aspp:
            raise GeoSSLError(f"'{self.name}' holds encoder weights only, no ASPP module.",
                              "leave out --init-aspp (it applies to `geossl pretrain` checkpoints).")
        arch = self.architecture
        if arch is None:
            raise GeoSSLError(
                f"'{self.name}' does not hold a torchvision/timm ResNet encoder (no {FIRST_CONV} and layer1–4 "
                f"blocks under one prefix; its first keys: {', '.join(list(self.state)[:4]) or 'none'}).",
                "use a state dict of a torchvision, timm or torchgeo resnet18/34/50.")
        if arch != encoder:
            fix = f"use --encoder {arch} (encoder '{arch}' in the panel and the API)." if arch in ENCODERS else \
                f"use a {'/'.join(ENCODERS)} file: GeoSSL has no {arch} encoder."
            raise GeoSSLError(f"'{self.name}' holds a {arch} encoder, but the encoder to train is {encoder}.", fix)
        target = model.encoder.state_dict()
        missing = [k for k in target if k not in self.state and not k.endswith("num_batches_tracked")]
        if missing:
            raise GeoSSLError(f"'{self.name}' lacks {len(missing)} of the {encoder} encoder's weights "
                              f"(e.g. {', '.join(missing[:3])}).",
                              "use the state dict of a whole torchvision/timm ResNet encoder.")
        bands, file_bands = int(target[FIRST_CONV].shape[1]), self.bands
        if self.fixed_bands and bands != file_bands:
            raise GeoSSLError(f"'{self.name}' was trained on {file_bands} bands, the raster has {bands}.",
                              "train on rasters with the bands of that GeoSSL checkpoint (e.g. gdal_translate -b …).")
        state = {k: self.state[k] for k in target if k in self.state}
        state[FIRST_CONV] = adapt_first_conv(state[FIRST_CONV], bands)
        for k, v in state.items():
            if v.shape != target[k].shape:
                raise GeoSSLError(f"'{self.name}': {k} has shape {tuple(v.shape)}, the {encoder} encoder's is "
                                  f"{tuple(target[k].shape)}.", "use a standard torchvision/timm ResNet file.")
        model.encoder.load_state_dict(state, strict=False)  # only step counters can be missing
        adapted = None if file_bands == bands else (
            f"conv1 from {file_bands} to {bands} bands (" + (
                "the file's channels summed" if bands == 1 else
                f"the file's channels repeated cyclically, scaled by {file_bands}/{bands}") + ")")
        what = {"imagenet": "ImageNet weights", "file": "weights", "geossl": "encoder"}[self.source]
        return {
            "source": self.source, "path": self.path, "origin": self.origin, "architecture": arch,
            "loaded": len(state), "ignored": len(self.ignored), "bands_in_file": file_bands, "bands": bands,
            "adapted": adapted,
            "summary": f"Starting from the {what} of {self.name} ({self.origin}): {len(state)} encoder tensors"
                       + (f"; {adapted}" if adapted else "") + ".",
        }

    def check(self, encoder: str, bands: int | None = None, aspp: bool = False) -> dict[str, Any]:
        """``load_into`` a throwaway model: the same refusals before a job is queued."""
        from .models import build_model

        return self.load_into(build_model(encoder, bands or self.bands or 3, 1), encoder, aspp)


def adapt_first_conv(weight: torch.Tensor, bands: int) -> torch.Tensor:
    """The first convolution's ``(out, C_file, k, k)`` weights for ``bands`` input bands (smp's rule).

    Same count: unchanged. One band: the file's channels summed (a grey image through RGB filters).
    Otherwise channel ``i`` gets the file's channel ``i % C_file`` (cyclic repeat) and everything is
    scaled by ``C_file / bands``: every band reuses a pretrained filter, and the filters' sum over
    the bands — the response to a pixel whose bands are alike, as standardised imagery roughly is —
    stays at the magnitude the BatchNorm after it was trained with (exactly when ``bands`` is a
    multiple of ``C_file``, on average otherwise). Band *meaning* is not matched: RGB filters land
    on the raster's first bands in order.
    """
    file_bands = int(weight.shape[1])
    if bands == file_bands:
        return weight
    if bands == 1:
        return weight.sum(1, keepdim=True)
    return weight[:, torch.arange(bands) % file_bands] * (file_bands / bands)


def guess_resnet(state: dict[str, torch.Tensor]) -> str | None:
    """Which torchvision ResNet a state dict (torchvision names) is, from its block layout; None if none."""
    if FIRST_CONV not in state or not all(f"layer{i}.0.conv1.weight" in state for i in range(1, 5)):
        return None
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    return _RESNETS.get(("layer1.0.conv3.weight" in state, blocks))


# --- reading files --------------------------------------------------------------------------------


def read_weight_file(path: Path) -> Any:
    """What a weight file holds, read without running any code from it."""
    if not path.is_file():
        raise GeoSSLError(f"Weight file '{path}' does not exist.", "check the path to the .pth/.pt/.ckpt file.")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as exc:
            raise GeoSSLError(f"'{path.name}' cannot be read as safetensors: {_first_line(exc)}",
                              "download the file again (it may be truncated).") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:  # torch's text here is about weights_only, not about this file
            raise _unreadable(path) from exc
        raise GeoSSLError(
            f"'{path.name}' holds Python objects besides weights (a {found.group(1)}); loading it could run "
            "code, so GeoSSL refuses it.",
            "save only the weights, where the file came from: torch.save(model.state_dict(), 'weights.pth').",
        ) from exc
    except Exception as exc:
        raise _unreadable(path, exc) from exc


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _unreadable(path: Path, exc: Exception | None = None) -> GeoSSLError:
    detail = f": {_first_line(exc)}" if exc is not None else "."
    return GeoSSLError(f"'{path.name}' cannot be read as PyTorch weights (corrupt, truncated or another "
                       f"format){detail}", "download or copy the file again.")


def plain_weights(payload: Any, path: Path, source: str = "file", origin: str = "") -> EncoderWeights:
    """The encoder weights in a state dict, or in a dict wrapping one (``state_dict``, ``teacher``…).

    Prefixes (``module.``, ``backbone.``, ``encoder.``, ``model.``, ``module.encoder_q.``…) are found,
    not listed: the prefix is whatever stands before ``layer1.0.conv1.weight`` where ``conv1.weight``
    sits under it too.
    """
    obj, unwrapped = payload, []
    while isinstance(obj, dict) and not _has_tensors(obj):
        key = next((k for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        obj, unwrapped = obj[key], [*unwrapped, key]
    if not isinstance(obj, dict) or not _has_tensors(obj):
        keys = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, dict) else type(obj).__name__
        raise GeoSSLError(f"'{path.name}' holds no state dict of weights (it holds: {keys}).",
                          "save the model's weights with torch.save(model.state_dict(), 'weights.pth').")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    prefix = _encoder_prefix(tensors, path)
    state = {k[len(prefix):]: v for k, v in tensors.items()
             if k.startswith(prefix) and not k[len(prefix):].startswith("fc.")}  # the classifier is not reused
    ignored = sorted(set(tensors) - {prefix + k for k in state})
    how = [f"under '{'/'.join(unwrapped)}'" if unwrapped else "", f"prefix '{prefix}'" if prefix else ""]
    origin = origin or " ".join(["state dict", ", ".join(h for h in how if h) or "(plain)"])
    return EncoderWeights(state, source, os.path.abspath(path), origin, ignored=ignored)


def _has_tensors(obj: dict) -> bool:
    return any(isinstance(v, torch.Tensor) for v in obj.values())


def _encoder_prefix(tensors: dict[str, torch.Tensor], path: Path) -> str:
    """The key prefix of the ResNet encoder in a flat state dict ("" when it has none)."""
    tail = "layer1.0.conv1.weight"
    found = sorted({k[: -len(tail)] for k in tensors if k.endswith(tail)} & {
        k[: -len(FIRST_CONV)] for k in tensors if k.endswith(FIRST_CONV)}, key=len)
    found = [p for p in found if p == "" or p.endswith(".")]
    online = [p for p in found if not any(w in p.lower() for w in MOMENTUM_WORDS)] or found
    if len(online) > 1 and len(online[0]) == len(online[1]):
        raise GeoSSLError(f"'{path.name}' holds several ResNet encoders ({', '.join(repr(p) for p in online)}).",
                          "save the one to start from alone: torch.save({k[len(p):]: v for k, v in sd.items() "
                          "if k.startswith(p)}, 'encoder.pth').")
    return online[0] if online else ""


def load_state_dict_file(path: str | os.PathLike) -> EncoderWeights:
    """The encoder weights of a plain (non-GeoSSL) weight file: .pth/.pt/.ckpt or .safetensors."""
    p = Path(path)
    payload = read_weight_file(p)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        raise GeoSSLError(f"'{p.name}' is a GeoSSL checkpoint, not a plain weight file.",
                          "pass it where GeoSSL checkpoints are taken (--init).")
    return plain_weights(payload, p)


def from_checkpoint(ck: dict[str, Any], path: Path) -> EncoderWeights:
    """The encoder of a GeoSSL pretrained or fine-tuned checkpoint (its bands are fixed)."""
    state = {k.removeprefix("encoder."): v for k, v in ck["state_dict"].items() if k.startswith("encoder.")}
    what = ck.get("method") or ck.get("kind")
    return EncoderWeights(state, "geossl", os.path.abspath(path), f"GeoSSL {ck.get('kind')} checkpoint, {what}",
                          fixed_bands=True)


# --- ImageNet weights in the local caches -----------------------------------------------------------


def torch_checkpoints_dir() -> Path:
    """torchvision's download folder: $TORCH_HOME/hub/checkpoints (TORCH_HOME defaults to ~/.cache/torch)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, resolved now (huggingface_hub fixes it at import time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "huggingface" / "hub"


def imagenet_files(encoder: str) -> list[tuple[str, str, Path]]:
    """Where ImageNet weights of ``encoder`` would be if they were ever downloaded: (what, URL, path).

    torchvision's files first (the installed torchvision's IMAGENET1K URLs), then what
    segmentation-models-pytorch itself fetches for ``encoder_weights="imagenet"`` (a pinned
    revision of a Hugging Face repo, e.g. smp-hub/resnet18.imagenet).
    """
    import torchvision.models as tvm
    from segmentation_models_pytorch.encoders import encoders

    enum = getattr(tvm, f"ResNet{encoder.removeprefix('resnet')}_Weights")
    out = [(f"torchvision {w.name}", w.url, torch_checkpoints_dir() / w.url.rsplit("/", 1)[-1])
           for w in enum if w.name.startswith("IMAGENET1K")]
    hub = encoders[encoder]["pretrained_settings"].get("imagenet")
    if hub:
        repo, rev = hub["repo_id"], hub["revision"]
        snapshot = hf_hub_cache() / f"models--{repo.replace('/', '--')}" / "snapshots" / rev / "model.safetensors"
        out.append((f"segmentation-models-pytorch {repo}", f"https://huggingface.co/{repo}/resolve/{rev}/"
                    "model.safetensors", snapshot))
    return out


def imagenet_state(encoder: str) -> EncoderWeights:
    """ImageNet weights of ``encoder`` from the local caches; never downloads (clear error instead)."""
    if encoder not in ENCODERS:
        raise GeoSSLError(f"No ImageNet weights for encoder {encoder!r}.", f"use one of {', '.join(ENCODERS)}.")
    files = imagenet_files(encoder)
    for what, _url, path in files:
        if path.is_file():
            return plain_weights(read_weight_file(path), path, "imagenet", f"{what}, local cache")
    _what, url, path = files[0]
    looked = "; ".join(str(p) for _w, _u, p in files)
    raise GeoSSLError(
        f"ImageNet weights for {encoder} are not in the local caches, and GeoSSL never downloads at run time "
        f"(looked for: {looked}).",
        f"on a machine with internet, download {url} and copy it to {path} (TORCH_HOME moves that folder); "
        "or start from a weight file you have (--init FILE; *Weight file…* in the panel).",
    )


# --- what a run starts from -------------------------------------------------------------------------


def open_start(init: str | None, encoder_weights: str | None, encoder: str,
               kinds: tuple[str, ...] = ("pretrained",)) -> dict[str, Any] | EncoderWeights | None:
    """What a run starts from: a GeoSSL checkpoint of ``kinds`` (as loaded), outside weights, or None.

    ``init`` is told apart by its content, not its name: a GeoSSL checkpoint, else a state dict.
    """
    if encoder_weights == "imagenet":
        return imagenet_state(encoder)
    if not init:
        return None
    p = Path(init)
    payload = read_weight_file(p)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return check_payload(payload, p, kinds)
    return plain_weights(payload, p)


def encoder_start(init: str | None, encoder_weights: str | None, encoder: str) -> EncoderWeights | None:
    """Encoder weights to start pretraining from: outside weights, or a GeoSSL checkpoint's encoder."""
    start = open_start(init, encoder_weights, encoder, kinds=("pretrained", "segmentation"))
    return from_checkpoint(start, Path(init)) if isinstance(start, dict) else start
