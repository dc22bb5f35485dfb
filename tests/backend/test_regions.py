"""Known-answer tests for geossl.regions: matched regions show the same ground, centres are spaced,
and views that barely overlap degrade to invalid regions instead of errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from geossl.augment import AugmentConfig, View, augment, crop_only, full_augment
from geossl.regions import RegionMatch, default_region_size, region_pool, sample_regions

TILE = 64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def views(config1: AugmentConfig, config2: AugmentConfig, batch: int = 16, seed: int = 0) -> tuple[View, View]:
    x = torch.zeros(batch, 1, TILE, TILE)
    g = gen(seed)
    return augment(x, config1, g), augment(x, config2, g)


def ground(index: torch.Tensor, mask: torch.Tensor) -> set[tuple[int, int]]:
    """Tile pixels shown by the masked view pixels."""
    rows, cols = index[0][mask], index[1][mask]
    return set(zip(rows.tolist(), cols.tolist(), strict=True))


def ground_box_iou(index1: torch.Tensor, mask1: torch.Tensor, index2: torch.Tensor, mask2: torch.Tensor) -> torch.Tensor:
    """IoU of the tile-pixel bounding boxes of matched regions, (B, n)."""

    def bounds(index: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = index[:, None]  # (B, 1, 2, S, S)
        lo = torch.where(mask[:, :, None], idx, 10**6).amin(dim=(-2, -1))
        hi = torch.where(mask[:, :, None], idx, -1).amax(dim=(-2, -1))
        return lo, hi

    lo1, hi1 = bounds(index1, mask1)
    lo2, hi2 = bounds(index2, mask2)
    inter = (torch.minimum(hi1, hi2) - torch.maximum(lo1, lo2) + 1).clamp_min(0).prod(dim=-1)
    area1 = (hi1 - lo1 + 1).clamp_min(0).prod(dim=-1)
    area2 = (hi2 - lo2 + 1).clamp_min(0).prod(dim=-1)
    return inter / (area1 + area2 - inter).clamp_min(1)


@pytest.mark.parametrize("mode", ["mapped", "same_size"])
def test_centres_show_the_same_tile_pixel_and_fit_both_views(mode: str) -> None:
    v1, v2 = views(crop_only(48), full_augment(48))
    size = 10
    match = sample_regions(v1.index, v2.index, (TILE, TILE), 4, size, mode, gen(1))
    assert match.valid.shape == (16, 4) and match.mask1.shape == (16, 4, 48, 48)
    assert match.valid.float().mean() > 0.8
    for b, r in match.valid.nonzero().tolist():
        (y1, x1), (y2, x2) = match.centre1[b, r].tolist(), match.centre2[b, r].tolist()
        assert v1.index[b, :, y1, x1].tolist() == v2.index[b, :, y2, x2].tolist()
        for y, x in ((y1, x1), (y2, x2)):
            assert size // 2 <= y <= 48 - size + size // 2 and size // 2 <= x <= 48 - size + size // 2


@pytest.mark.parametrize("mode", ["mapped", "same_size"])
def test_centres_are_at_least_one_region_apart_and_regions_do_not_overlap(mode: str) -> None:
    v1, v2 = views(crop_only(64), full_augment(64), batch=32, seed=2)
    size = 12
    match = sample_regions(v1.index, v2.index, (TILE, TILE), 6, size, mode, gen(3))
    assert int(match.valid.sum()) > 64
    for b in range(32):
        centres = match.centre1[b][match.valid[b]]
        gaps = (centres[:, None] - centres[None]).abs().amax(dim=-1)
        gaps.fill_diagonal_(size)
        assert int(gaps.min()) >= size  # Chebyshev, hence also Euclidean
    if mode == "same_size":
        assert int(match.mask1.sum(dim=1).max()) <= 1  # view-1 boxes are disjoint
        assert (match.mask1.sum(dim=(-2, -1))[match.valid] == size * size).all()
    else:
        # Disjoint ground; only the one-pixel fringes of nearest upsampling may be shared.
        for mask in (match.mask1, match.mask2):
            shared = (mask.sum(dim=1) > 1).sum()
            assert int(shared) <= 0.05 * int(mask.sum())


def test_mapped_regions_cover_identical_ground_for_unresampled_crops() -> None:
    # Crops of exactly view size with flips and rotations: the two regions must show the same set
    # of tile pixels, pixel for pixel.
    area = (40 / TILE) ** 2
    exact = AugmentConfig(size=40, scale=(area, area), ratio=(1.0, 1.0))
    v1, v2 = views(exact, AugmentConfig(size=40, scale=(area, area), ratio=(1.0, 1.0), flip_p=1, rot90_p=1))
    match = sample_regions(v1.index, v2.index, (TILE, TILE), 4, 8, "mapped", gen(4))
    assert match.valid.any()
    for b, r in match.valid.nonzero().tolist():
        g1 = ground(v1.index[b], match.mask1[b, r])
        g2 = ground(v2.index[b], match.mask2[b, r])
        assert g1 == g2 and len(g1) > 0


def test_mapped_matching_beats_same_pixel_size_boxes() -> None:
    # Paper geometry: 224-px views of 256-px tiles, 48-px regions.
    x = torch.zeros(16, 1, 256, 256)
    g = gen(5)
    v1, v2 = augment(x, crop_only(224), g), augment(x, full_augment(224), g)
    ious = {}
    for mode in ("mapped", "same_size"):
        match = sample_regions(v1.index, v2.index, (256, 256), 4, 48, mode, gen(6))
        iou = ground_box_iou(v1.index, match.mask1, v2.index, match.mask2)
        ious[mode] = iou[match.valid]
    # Mapped regions differ only by one-pixel nearest-resampling fringes; same-size boxes drift with
    # the scale difference between the views (the authors' median IoU is about 0.71).
    assert float(ious["mapped"].min()) >= 0.85
    assert float(ious["same_size"].median()) < 0.85
    assert float(ious["mapped"].mean()) > float(ious["same_size"].mean()) + 0.1


def test_disjoint_views_give_invalid_regions_not_errors() -> None:
    rows = torch.arange(32).view(32, 1).expand(32, 32)
    cols = torch.arange(32).view(1, 32).expand(32, 32)
    left = torch.stack((rows, cols))[None].expand(2, -1, -1, -1)
    right = torch.stack((rows, cols + 32))[None].expand(2, -1, -1, -1)
    match = sample_regions(left, right, (32, 64), 4, 8, "mapped", gen(7))
    assert not match.valid.any()
    assert not match.mask1.any() and not match.mask2.any()
    pooled = region_pool(torch.randn(2, 5, 32, 32), match.mask1)
    assert pooled.shape == (2, 4, 5) and torch.equal(pooled, torch.zeros_like(pooled))


def test_small_overlap_gives_fewer_valid_regions() -> None:
    rows = torch.arange(32).view(32, 1).expand(32, 32)
    cols = torch.arange(32).view(1, 32).expand(32, 32)
    first = torch.stack((rows, cols))[None]
    shifted = torch.stack((rows, cols + 20))[None]  # shares a 12-column strip
    match = sample_regions(first, shifted, (32, 64), 4, 8, "mapped", gen(8))
    assert 1 <= int(match.valid.sum()) < 4
    region = _only_valid(match)
    assert ground(first[0], region.mask1[0, 0]) == ground(shifted[0], region.mask2[0, 0])


def test_region_larger_than_view_is_just_invalid() -> None:
    v1, v2 = views(crop_only(16), crop_only(16), batch=2)
    match = sample_regions(v1.index, v2.index, (TILE, TILE), 2, 20, "mapped", gen(9))
    assert not match.valid.any()


def test_region_pool_means_known_features() -> None:
    feats = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    masks = torch.zeros(2, 2, 6, 6, dtype=torch.bool)
    masks[0, 0, 1:3, 2:5] = True
    masks[1, 1, 5, 5] = True
    pooled = region_pool(feats, masks)
    torch.testing.assert_close(pooled[0, 0], feats[0, :, 1:3, 2:5].mean(dim=(1, 2)))
    torch.testing.assert_close(pooled[1, 1], feats[1, :, 5, 5])
    torch.testing.assert_close(pooled[0, 1], torch.zeros(3))


def test_region_pool_of_coarse_features_equals_pooling_the_bilinear_upsampling() -> None:
    g = gen(12)
    coarse = torch.randn(3, 5, 6, 7, generator=g, dtype=torch.float64)
    masks = torch.rand(3, 4, 24, 28, generator=g) > 0.6
    upsampled = F.interpolate(coarse, size=(24, 28), mode="bilinear", align_corners=False)
    torch.testing.assert_close(region_pool(coarse, masks), region_pool(upsampled, masks))


def test_same_generator_same_regions() -> None:
    v1, v2 = views(crop_only(48), full_augment(48), batch=8, seed=10)
    a = sample_regions(v1.index, v2.index, (TILE, TILE), 4, 10, "mapped", gen(11))
    b = sample_regions(v1.index, v2.index, (TILE, TILE), 4, 10, "mapped", gen(11))
    assert torch.equal(a.centre1, b.centre1) and torch.equal(a.mask2, b.mask2)


def test_default_region_size_scales_with_view() -> None:
    assert default_region_size(224) == 48
    assert default_region_size(112) == 24
    assert default_region_size(64) == 14


def test_unknown_mode_is_rejected() -> None:
    idx = torch.zeros(1, 2, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError):
        sample_regions(idx, idx, (8, 8), mode="nearest")  # type: ignore[arg-type]


def _only_valid(match: RegionMatch) -> RegionMatch:
    """The first valid region of sample 0, as a one-region match."""
    r = int(match.valid[0].nonzero()[0])
    return RegionMatch(match.mask1[:1, r : r + 1], match.mask2[:1, r : r + 1], match.valid[:1, r : r + 1],
                       match.centre1[:1, r : r + 1], match.centre2[:1, r : r + 1])
