"""Batch augmentations for contrastive pretraining that remember where every view pixel came from.

GLCNet (Li et al., TGRS 2022) matches local regions between two augmented views of the same tile, so
each view carries a *position index*: for every view pixel, the (row, col) of the tile pixel it was
sampled from (nearest pixel). Geometry is a random resized crop followed by an optional flip and a
rotation by a multiple of 90 degrees; it is expressed as one sampling grid per sample, so the image
(bilinear) and the index (nearest) come from the same coordinates and stay consistent by
construction. Everything is vectorised over the batch with per-sample parameters and runs on any
device.

The photometric part is rewritten for standardised rasters with any number of bands: brightness is
an additive shift and contrast a gain around the per-band mean, both in standard-deviation units,
and nothing is ever clipped to [0, 1] (clipping destroys standardised multispectral data,
torchgeo #3997).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AugmentConfig",
    "View",
    "augment",
    "byol_augment",
    "crop_only",
    "device_generator",
    "full_augment",
    "moco_v2_augment",
    "random_erase",
]

_CROP_ATTEMPTS = 10


class View(NamedTuple):
    """One augmented view of a batch.

    image: (B, C, S, S), same dtype as the input.
    index: (B, 2, S, S) int64; ``index[b, :, i, j]`` is the (row, col) of the tile pixel that view
    pixel (i, j) shows (nearest pixel to the bilinear sampling point).
    """

    image: Tensor
    index: Tensor


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of one augmentation family. Probabilities are per sample.

    Magnitudes (``brightness``, ``contrast``, ``noise_std``) are in units of the data's standard
    deviation, since inputs are standardised per band.
    """

    size: int = 224
    scale: tuple[float, float] = (0.4, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.0
    rot90_p: float = 0.0
    jitter_p: float = 0.0
    brightness: float = 0.2
    contrast: float = 0.2
    noise_std: float = 0.1
    grey_p: float = 0.0
    blur_p: float = 0.0
    blur_kernels: tuple[int, ...] = (3, 5, 7)
    erase_p: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"view size must be positive, got {self.size}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must satisfy 0 < min <= max, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        if any(k < 1 or k % 2 == 0 for k in self.blur_kernels) or not self.blur_kernels:
            raise ValueError(f"blur kernels must be odd and positive, got {self.blur_kernels}")


def crop_only(size: int = 224) -> AugmentConfig:
    """GLCNet's t1: random resized crop (area 0.4-1.0, aspect 3/4-4/3) and nothing else."""
    return AugmentConfig(size=size)


def full_augment(size: int = 224) -> AugmentConfig:
    """GLCNet's t2 (also both SimCLR views): crop, flip, rot90, jitter+noise, grey, blur.

    Probabilities follow the authors' code: a flip with p 0.6 (horizontal, vertical or both, equally
    likely), a rotation with p 0.8 by k*90 degrees with k uniform in {0,1,2,3}, jitter+noise p 0.8,
    grey p 0.1, Gaussian blur p 0.5 with a 3/5/7 kernel.
    """
    return AugmentConfig(size=size, flip_p=0.6, rot90_p=0.8, jitter_p=0.8, grey_p=0.1, blur_p=0.5)


def byol_augment(size: int = 224) -> tuple[AugmentConfig, AugmentConfig]:
    """BYOL's two asymmetric views as RS-BYOL uses them: no colour jitter, plus random erasing.

    BYOL (Grill et al. 2020): crop, flip, blur with p 1.0 for view 1 and 0.1 for view 2, grey p 0.2;
    RS-BYOL drops colour jitter (different band groups or sensors are the photometric change) and
    adds random erasing (p 0.5, torchvision's area/aspect defaults) and rotations. Solarisation is
    left out: it assumes values in [0, 1], which standardised rasters are not.
    """
    common = {"size": size, "scale": (0.08, 1.0), "flip_p": 0.5, "rot90_p": 0.5, "grey_p": 0.2, "erase_p": 0.5}
    return AugmentConfig(blur_p=1.0, **common), AugmentConfig(blur_p=0.1, **common)


def moco_v2_augment(size: int = 224) -> AugmentConfig:
    """MoCo v2's augmentation (Chen et al. 2020) on any band count: crop 0.2-1, jitter p 0.8, grey p 0.2,
    blur p 0.5, flip; the per-band brightness/contrast jitter stands in for RGB colour jitter."""
    return AugmentConfig(size=size, scale=(0.2, 1.0), flip_p=0.5, jitter_p=0.8, grey_p=0.2, blur_p=0.5)


def device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """Return a generator that can draw directly on ``device``.

    A CPU generator driving CUDA tensors is re-seeded onto the device from one draw, so large random
    tensors (noise) are generated where they are used, and results stay reproducible per device.
    """
    if generator is None:
        return None
    gen_dev = generator.device
    if gen_dev.type == device.type and (gen_dev.index or 0) == (device.index or 0):
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=gen_dev).item())
    derived = torch.Generator(device=device)
    derived.manual_seed(seed)
    return derived


def augment(x: Tensor, config: AugmentConfig, generator: torch.Generator | None = None) -> View:
    """Produce one augmented view of a standardised batch ``x`` (B, C, H, W) with its position index.

    Geometric parameters are drawn before photometric ones, so with the same generator state the
    index does not depend on the photometric settings.
    """
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point batch, got {x.dtype}")
    gen = device_generator(generator, x.device)
    src_y, src_x = _source_coordinates(x.shape, config, gen, x.device)
    image, index = _sample(x, src_y, src_x)
    if config.jitter_p > 0:
        image = _jitter(image, config, gen)
    if config.grey_p > 0:
        image = _grey(image, config.grey_p, gen)
    if config.blur_p > 0:
        image = _blur(image, config, gen)
    if config.erase_p > 0:
        image = random_erase(image, config, gen)
    return View(image, index)


# --- geometry -------------------------------------------------------------------------------------


def _rand(shape: tuple[int, ...], gen: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(shape, generator=gen, device=device)


def _crop_boxes(
    batch: int, height: int, width: int, config: AugmentConfig, gen: torch.Generator | None,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Integer crop boxes (top, left, h, w) as float tensors, torchvision's RandomResizedCrop rule.

    Ten (area, aspect) attempts are drawn per sample at once and the first that fits is kept; if none
    fits the whole tile is used. Integer boxes keep scale-1 crops exact copies.
    """
    u = _rand((batch, _CROP_ATTEMPTS, 2), gen, device)
    area = height * width * (config.scale[0] + (config.scale[1] - config.scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(config.ratio[0]), math.log(config.ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    any_fit = fits.any(dim=1)
    w = torch.where(any_fit, w.gather(1, first).squeeze(1), torch.full_like(any_fit, width, dtype=w.dtype))
    h = torch.where(any_fit, h.gather(1, first).squeeze(1), torch.full_like(any_fit, height, dtype=h.dtype))
    pos = _rand((batch, 2), gen, device)
    top = torch.floor(pos[:, 0] * (height - h + 1))
    left = torch.floor(pos[:, 1] * (width - w + 1))
    return top, left, h, w


def _source_coordinates(
    shape: torch.Size, config: AugmentConfig, gen: torch.Generator | None, device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Continuous tile coordinates (pixel centres at integers) sampled by each view pixel, (B, S, S)."""
    batch, _, height, width = shape
    size = config.size
    top, left, h, w = _crop_boxes(batch, height, width, config, gen, device)

    # Output pixel (i, j) -> pixel (i', j') of the resized crop, undoing rot90 then the flip.
    i = torch.arange(size, device=device).view(1, size, 1).expand(batch, size, size)
    j = torch.arange(size, device=device).view(1, 1, size).expand(batch, size, size)
    last = size - 1
    if config.rot90_p > 0:
        u = _rand((batch, 2), gen, device)
        k = torch.where(u[:, 0] < config.rot90_p, torch.floor(u[:, 1] * 4).clamp_max(3), 0.0)
        k = k.view(batch, 1, 1)
        # torch.rot90 convention: out[i, j] = in[j, last - i] for one quarter turn.
        i, j = (
            torch.where(k == 0, i, torch.where(k == 1, j, torch.where(k == 2, last - i, last - j))),
            torch.where(k == 0, j, torch.where(k == 1, last - i, torch.where(k == 2, last - j, i))),
        )
    if config.flip_p > 0:
        u = _rand((batch, 2), gen, device)
        kind = torch.floor(u[:, 1] * 3).clamp_max(2)  # 0 horizontal, 1 vertical, 2 both
        flip = u[:, 0] < config.flip_p
        flip_h = (flip & (kind != 1)).view(batch, 1, 1)
        flip_v = (flip & (kind != 0)).view(batch, 1, 1)
        i = torch.where(flip_v, last - i, i)
        j = torch.where(flip_h, last - j, j)

    step_y = (h / size).view(batch, 1, 1)
    step_x = (w / size).view(batch, 1, 1)
    src_y = top.view(batch, 1, 1) + (i + 0.5) * step_y - 0.5
    src_x = left.view(batch, 1, 1) + (j + 0.5) * step_x - 0.5
    return src_y, src_x


def _sample(x: Tensor, src_y: Tensor, src_x: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear image and nearest-pixel index at the same continuous coordinates."""
    _, _, height, width = x.shape
    grid = torch.stack(((src_x + 0.5) / width * 2 - 1, (src_y + 0.5) / height * 2 - 1), dim=-1)
    image = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    row = torch.floor(src_y + 0.5).clamp_(0, height - 1).long()
    col = torch.floor(src_x + 0.5).clamp_(0, width - 1).long()
    return image, torch.stack((row, col), dim=1)


# --- photometry -----------------------------------------------------------------------------------


def _jitter(x: Tensor, config: AugmentConfig, gen: torch.Generator | None) -> Tensor:
    """Per-band brightness shift and contrast gain, plus Gaussian noise with a per-sample sigma.

    Independent factors per band generalise colour jitter (hue/saturation) to any band count.
    """
    batch, bands = x.shape[:2]
    u = _rand((batch, bands, 2), gen, x.device).to(x.dtype)
    v = _rand((batch, 2), gen, x.device).to(x.dtype)
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    shift = ((2 * u[..., 0] - 1) * config.brightness).view(batch, bands, 1, 1)
    gain = (1 + (2 * u[..., 1] - 1) * config.contrast).view(batch, bands, 1, 1)
    sigma = (v[:, 1] * config.noise_std).view(batch, 1, 1, 1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    out = (x - mean) * gain + mean + shift + sigma * noise
    apply = (v[:, 0] < config.jitter_p).view(batch, 1, 1, 1)
    return torch.where(apply, out, x)


def _grey(x: Tensor, p: float, gen: torch.Generator | None) -> Tensor:
    """Replace every band by the mean of all bands (the band-count-agnostic greyscale)."""
    apply = (_rand((x.shape[0],), gen, x.device) < p).view(-1, 1, 1, 1)
    return torch.where(apply, x.mean(dim=1, keepdim=True).expand_as(x), x)


def _blur(x: Tensor, config: AugmentConfig, gen: torch.Generator | None) -> Tensor:
    """Separable Gaussian blur with a per-sample kernel size, one grouped convolution for the batch.

    Sigma follows OpenCV's rule for ``sigma=0`` (what the authors' ``cv2.GaussianBlur(k, 0)`` used):
    0.3 * ((k - 1) / 2 - 1) + 0.8. Smaller kernels are zero-padded to the largest one; samples that
    are not blurred get a delta kernel. Borders are reflected (OpenCV's default).
    """
    batch, bands, height, width = x.shape
    u = _rand((batch, 2), gen, x.device)
    choices = torch.tensor(config.blur_kernels, device=x.device, dtype=torch.float32)
    ksize = choices[torch.floor(u[:, 1] * len(choices)).long().clamp_max(len(choices) - 1)]
    apply = u[:, 0] < config.blur_p
    kmax = max(config.blur_kernels)
    radius = kmax // 2
    if radius == 0:
        return x
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32).view(1, -1)
    sigma = (0.3 * ((ksize - 1) * 0.5 - 1) + 0.8).view(-1, 1)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2)) * (offsets.abs() <= (ksize.view(-1, 1) // 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    delta = (offsets == 0).to(kernel.dtype).expand_as(kernel)
    kernel = torch.where(apply.view(-1, 1), kernel, delta).to(x.dtype)
    kernel = kernel.repeat_interleave(bands, dim=0)  # (B*C, kmax)
    flat = x.reshape(1, batch * bands, height, width)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(-1, 1, kmax, 1), groups=batch * bands)
    flat = F.conv2d(flat, kernel.view(-1, 1, 1, kmax), groups=batch * bands)
    return flat.view(batch, bands, height, width)


def random_erase(x: Tensor, config: AugmentConfig, gen: torch.Generator | None) -> Tensor:
    """Random erasing (Zhong et al. 2020, as in RS-BYOL): one rectangle per sample set to 0, the band mean.

    torchvision's rule, vectorised: area share in ``erase_scale``, aspect (log-uniform) in
    ``erase_ratio``, ten attempts per sample and the first that fits is used (none: nothing erased).
    Zero is the per-band mean of standardised data, so the patch carries no spectral hint.
    """
    batch, _, height, width = x.shape
    u = _rand((batch, _CROP_ATTEMPTS, 2), gen, x.device)
    area = height * width * (config.erase_scale[0] + (config.erase_scale[1] - config.erase_scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(config.erase_ratio[0]), math.log(config.erase_ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    h = torch.round(torch.sqrt(area * aspect))
    w = torch.round(torch.sqrt(area / aspect))
    fits = (h >= 1) & (h < height) & (w >= 1) & (w < width)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    v = _rand((batch, 3), gen, x.device)
    apply = (v[:, 0] < config.erase_p) & fits.any(dim=1)
    top = torch.floor(v[:, 1] * (height - h + 1)).view(batch, 1, 1)
    left = torch.floor(v[:, 2] * (width - w + 1)).view(batch, 1, 1)
    rows = torch.arange(height, device=x.device).view(1, height, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, width)
    inside = (rows >= top) & (rows < top + h.view(batch, 1, 1)) & (cols >= left) & (cols < left + w.view(batch, 1, 1))
    mask = (inside & apply.view(batch, 1, 1)).unsqueeze(1)
    return x.masked_fill(mask, 0.0)
