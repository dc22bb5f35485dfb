"""GLCNet local-region selection and matching between two views, vectorised over the batch.

Centres are drawn in view 1 among pixels whose tile position (position index, see
:mod:`geossl.augment`) also appears in the interior of view 2, so every region has a match. Both
views' interiors exclude a border of ``region_size // 2`` pixels, as in the paper.

Two deliberate changes from the authors' code (GeoX-Lab/G-RSIM, ``get_index``):

* Spacing. The authors only drop candidate centres that fall *inside* earlier boxes, so about 22% of
  region pairs still overlap (up to 48% of their area). Here a candidate is dropped when its
  Chebyshev distance to an earlier centre is below ``region_size``; view-1 boxes then never overlap
  (Euclidean spacing would still let square corners overlap).
* Matching (``mode="mapped"``, the default). The paper puts a box of the same *pixel* size around the
  matched centre in view 2, but the views have different scales, so the two boxes cover the same
  ground with a median IoU of only about 0.71 (worst 0.45). Here the view-1 box is mapped through
  the position index to a ground rectangle (clipped to what view 2 shows), and each view's region is
  every pixel whose index falls in that rectangle: both regions show the same ground, up to nearest
  resampling. ``mode="same_size"`` keeps the paper's variant for the ablation.

Regions are returned as per-pixel boolean masks (crops, flips and rotations keep them axis-aligned
rectangles, but masks also handle the one-pixel fringes of nearest resampling) to be mean-pooled with
:func:`region_pool`. When two views share too little ground, some or all regions of a sample cannot
be placed; they come back with ``valid`` False and empty masks, never an error, and the loss drops
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from geossl.augment import device_generator

__all__ = ["RegionMatch", "default_region_size", "region_pool", "sample_regions"]

RegionMode = Literal["mapped", "same_size"]


@dataclass(frozen=True)
class RegionMatch:
    """Matched regions for a batch of view pairs.

    mask1, mask2: (B, n, S, S) bool, the pixels of each region in view 1 / view 2.
    valid: (B, n) bool; False where no admissible centre was left (masks are then empty).
    centre1, centre2: (B, n, 2) int64 (row, col) of each region centre in view 1 / view 2
    (0 where invalid); both show the same tile pixel.
    """

    mask1: Tensor
    mask2: Tensor
    valid: Tensor
    centre1: Tensor
    centre2: Tensor


def default_region_size(view_size: int) -> int:
    """The paper's s_p = 48 at 224-pixel views, scaled with the view size."""
    return max(2, round(48 * view_size / 224))


def sample_regions(
    index1: Tensor,
    index2: Tensor,
    tile_hw: tuple[int, int],
    n_regions: int = 4,
    region_size: int = 48,
    mode: RegionMode = "mapped",
    generator: torch.Generator | None = None,
) -> RegionMatch:
    """Choose ``n_regions`` regions of ``region_size`` pixels in view 1 and match them in view 2.

    index1, index2: (B, 2, S, S) position indices of the two views (rows/cols in a tile of
    ``tile_hw``). Views may differ in size.
    """
    if mode not in ("mapped", "same_size"):
        raise ValueError(f"unknown region mode {mode!r}; expected 'mapped' or 'same_size'")
    if n_regions < 1 or region_size < 1:
        raise ValueError("n_regions and region_size must be positive")
    batch, _, h1, w1 = index1.shape
    _, _, h2, w2 = index2.shape
    tile_h, tile_w = tile_hw
    device = index1.device
    flat1 = (index1[:, 0] * tile_w + index1[:, 1]).reshape(batch, -1)
    flat2 = (index2[:, 0] * tile_w + index2[:, 1]).reshape(batch, -1)
    inner1 = _interior(h1, w1, region_size, device).reshape(1, -1)
    inner2 = _interior(h2, w2, region_size, device).reshape(1, -1)

    # Lookup table tile pixel -> one view-2 interior pixel showing it (smallest flat position).
    missing = h2 * w2
    positions = torch.arange(h2 * w2, device=device).expand(batch, -1)
    lut = torch.full((batch, tile_h * tile_w), missing, dtype=torch.long, device=device)
    lut.scatter_reduce_(1, flat2, torch.where(inner2, positions, missing), reduce="amin")
    match2 = lut.gather(1, flat1)  # (B, h1*w1): view-2 position of each view-1 pixel's ground
    available = inner1 & (match2 < missing)

    gen = device_generator(generator, device)
    scores = torch.rand(available.shape, generator=gen, device=device)
    rows1 = torch.arange(h1, device=device)
    cols1 = torch.arange(w1, device=device)
    centres1, centres2, valid = [], [], []
    for _ in range(n_regions):
        pick = torch.where(available, scores, -1.0).argmax(dim=1, keepdim=True)
        ok = available.gather(1, pick).squeeze(1)
        p1 = pick.squeeze(1)
        p2 = match2.gather(1, pick).squeeze(1).clamp_max(missing - 1)
        zero = torch.zeros_like(p1)
        cy, cx = torch.where(ok, p1 // w1, zero), torch.where(ok, p1 % w1, zero)
        centres1.append(torch.stack((cy, cx), dim=-1))
        centres2.append(torch.stack((torch.where(ok, p2 // w2, zero), torch.where(ok, p2 % w2, zero)), dim=-1))
        valid.append(ok)
        # Drop candidates within Chebyshev distance < region_size: a (rows x cols) square, built
        # from two 1-D masks rather than a full distance map.
        near_rows = (rows1[None] - cy[:, None]).abs() < region_size
        near_cols = (cols1[None] - cx[:, None]).abs() < region_size
        near = (near_rows[:, :, None] & near_cols[:, None, :] & ok[:, None, None]).view(batch, -1)
        available = available & ~near
    centre1 = torch.stack(centres1, dim=1)
    centre2 = torch.stack(centres2, dim=1)
    valid_t = torch.stack(valid, dim=1)

    if mode == "same_size":
        box1 = _boxes(centre1, region_size, h1, w1) & valid_t[..., None, None]
        box2 = _boxes(centre2, region_size, h2, w2) & valid_t[..., None, None]
        return RegionMatch(box1, box2, valid_t, centre1, centre2)

    # Ground rectangle under each view-1 box, clipped to the ground that view 2 shows. Crops, flips
    # and quarter turns map view pixels to tile pixels monotonically along each axis, so the
    # rectangle's extremes sit at the box corners.
    start = centre1 - region_size // 2
    end = start + region_size - 1
    corner_rows = torch.stack((start[..., 0], start[..., 0], end[..., 0], end[..., 0]), dim=-1)
    corner_cols = torch.stack((start[..., 1], end[..., 1], start[..., 1], end[..., 1]), dim=-1)
    corners = corner_rows.clamp(0, h1 - 1) * w1 + corner_cols.clamp(0, w1 - 1)  # (B, n, 4)
    values = index1.flatten(2).gather(2, corners.reshape(batch, 1, -1).expand(-1, 2, -1))
    values = values.view(batch, 2, n_regions, 4).permute(0, 2, 1, 3)  # (B, n, 2, 4)
    big = max(tile_h, tile_w)
    lo = torch.where(valid_t[..., None], values.amin(dim=-1), big)
    hi = torch.where(valid_t[..., None], values.amax(dim=-1), -1)
    lo = torch.maximum(lo, index2.amin(dim=(-2, -1))[:, None])
    hi = torch.minimum(hi, index2.amax(dim=(-2, -1))[:, None])
    return RegionMatch(_inside(index1, lo, hi), _inside(index2, lo, hi), valid_t, centre1, centre2)


def region_pool(features: Tensor, masks: Tensor) -> Tensor:
    """Mean over each region mask (B, n, S, S) of ``features`` (B, C, h, w) -> (B, n, C).

    If the features are coarser than the masks, the result is the mean of the features *bilinearly
    upsampled to S×S* (``align_corners=False``), as in the paper, computed without materialising the
    upsampled map: bilinear upsampling is separable and linear, so the masks are pulled back to the
    feature grid with the transposed 1-D interpolation matrices instead (exact, and at 224-px views
    it avoids a (2B, 64, 224, 224) activation and its gradient). Empty masks give zeros.
    """
    height, width = features.shape[-2:]
    size_h, size_w = masks.shape[-2:]
    weights = masks.to(features.dtype)
    counts = masks.sum(dim=(-2, -1), dtype=torch.float32).clamp_min(1)  # exact even under fp16
    if (height, width) != (size_h, size_w):
        rows = _upsampling_matrix(height, size_h, features)
        cols = _upsampling_matrix(width, size_w, features)
        weights = torch.einsum("hs,bnst,wt->bnhw", rows, weights, cols)
    pooled = torch.einsum("bnhw,bchw->bnc", weights, features)
    return (pooled / counts[..., None]).to(features.dtype)


def _upsampling_matrix(n_in: int, n_out: int, like: Tensor) -> Tensor:
    """(n_in, n_out) matrix A with ``interpolate(x, n_out, 'linear') == x @ A`` (align_corners=False)."""
    eye = torch.eye(n_in, dtype=like.dtype, device=like.device)[None]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0]


def _interior(height: int, width: int, size: int, device: torch.device) -> Tensor:
    """Pixels that can centre a ``size`` box [c - size//2, c - size//2 + size) inside the view."""
    half = size // 2
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    row_ok = (rows >= half) & (rows - half + size <= height)
    col_ok = (cols >= half) & (cols - half + size <= width)
    return row_ok[:, None] & col_ok[None, :]


def _boxes(centres: Tensor, size: int, height: int, width: int) -> Tensor:
    """(B, n, 2) centres -> (B, n, H, W) masks of the boxes [c - size//2, c - size//2 + size)."""
    start = centres - size // 2
    rows = torch.arange(height, device=centres.device).view(1, 1, -1)
    cols = torch.arange(width, device=centres.device).view(1, 1, -1)
    in_rows = (rows >= start[..., :1]) & (rows < start[..., :1] + size)
    in_cols = (cols >= start[..., 1:]) & (cols < start[..., 1:] + size)
    return in_rows[..., :, None] & in_cols[..., None, :]


def _inside(index: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """(B, 2, S, S) index, (B, n, 2) inclusive rectangles -> (B, n, S, S) membership masks."""
    rows, cols = index[:, None, 0], index[:, None, 1]  # (B, 1, S, S)
    lo, hi = lo[..., None, None], hi[..., None, None]  # (B, n, 2, 1, 1)
    return (rows >= lo[:, :, 0]) & (rows <= hi[:, :, 0]) & (cols >= lo[:, :, 1]) & (cols <= hi[:, :, 1])
