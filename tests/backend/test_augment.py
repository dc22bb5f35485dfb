"""Known-answer tests for geossl.augment: the position index must say exactly where each view pixel
came from, through crops, flips and quarter turns, for any band count and value range."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from geossl.augment import AugmentConfig, augment, crop_only, device_generator, full_augment


def coordinate_tiles(batch: int, size: int, extra_bands: int = 0, seed: int = 0) -> torch.Tensor:
    """Band 0 holds each pixel's row, band 1 its column; extra bands are random."""
    rows = torch.arange(size, dtype=torch.float32).view(1, 1, size, 1).expand(batch, 1, size, size)
    cols = torch.arange(size, dtype=torch.float32).view(1, 1, 1, size).expand(batch, 1, size, size)
    extra = torch.randn(batch, extra_bands, size, size, generator=torch.Generator().manual_seed(seed))
    return torch.cat((rows, cols, extra), dim=1)


def geometry_only(size: int, **kw) -> AugmentConfig:
    return AugmentConfig(size=size, flip_p=1.0, rot90_p=1.0, **kw)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def values_at_index(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) read at index (B, 2, S, S) -> (B, C, S, S)."""
    batch, bands, _, width = x.shape
    flat = (index[:, 0] * width + index[:, 1]).flatten(1)
    return x.flatten(2).gather(2, flat[:, None].expand(-1, bands, -1)).view(batch, bands, *index.shape[-2:])


@pytest.mark.parametrize("config", [crop_only(40), geometry_only(40), geometry_only(80)])
def test_index_matches_bilinear_coordinates(config: AugmentConfig) -> None:
    # Bilinear interpolation of a linear ramp returns the sampling coordinate itself, and the index
    # is that coordinate rounded to the nearest pixel.
    x = coordinate_tiles(16, 64)
    view = augment(x, config, gen(1))
    assert view.image.shape == (16, 2, config.size, config.size)
    assert view.index.shape == (16, 2, config.size, config.size)
    assert view.index.dtype == torch.int64
    assert int(view.index.min()) >= 0 and int(view.index.max()) <= 63
    assert (view.image - view.index.float()).abs().max() <= 0.5 + 1e-4


def test_scale_one_crops_are_exact_dihedral_copies() -> None:
    # Crops of exactly view size (no resampling): every band of every view pixel equals the tile at
    # the index, and each view is one of the 8 flips/rotations of the tile window.
    size, tile = 24, 32
    x = coordinate_tiles(32, tile, extra_bands=3)
    area = (size / tile) ** 2
    config = geometry_only(size, scale=(area, area), ratio=(1.0, 1.0))
    view = augment(x, config, gen(2))
    torch.testing.assert_close(view.image, values_at_index(x, view.index), atol=1e-4, rtol=0)
    seen = set()
    for b in range(x.shape[0]):
        top, left = (int(v) for v in view.index[b].flatten(1).amin(dim=1))
        window = x[b, :, top : top + size, left : left + size]
        candidates = [torch.rot90(w, k, dims=(1, 2)) for w in (window, window.flip(2)) for k in range(4)]
        matches = [k for k, c in enumerate(candidates) if torch.allclose(c, view.image[b], atol=1e-4)]
        assert matches, f"sample {b} is not a flip/rotation of its crop"
        seen.add(matches[0])
    assert len(seen) >= 5  # flips and all quarter turns actually occur


def test_crop_area_and_aspect_within_bounds() -> None:
    x = coordinate_tiles(64, 100)
    view = augment(x, crop_only(50), gen(3))
    lo = view.index.flatten(2).amin(dim=2).float()
    hi = view.index.flatten(2).amax(dim=2).float()
    h, w = (hi - lo + 1).unbind(dim=1)
    area = h * w / 100**2
    assert float(area.min()) >= 0.4 - 0.03 and float(area.max()) <= 1.0
    assert float((w / h).min()) >= 3 / 4 - 0.05 and float((w / h).max()) <= 4 / 3 + 0.05


def test_photometric_ops_do_not_change_geometry() -> None:
    x = coordinate_tiles(8, 64, extra_bands=2)
    photometric_off = replace(full_augment(48), jitter_p=0.0, grey_p=0.0, blur_p=0.0)
    full = augment(x, full_augment(48), gen(4))
    assert torch.equal(full.index, augment(x, photometric_off, gen(4)).index)
    assert not torch.allclose(full.image[:, 2:], augment(x, photometric_off, gen(4)).image[:, 2:])


@pytest.mark.parametrize("bands", [1, 3, 13])
def test_full_augment_any_band_count_and_range(bands: int) -> None:
    x = torch.randn(6, bands, 64, 64, generator=gen(5)) * 3  # standardised-like, far outside [0, 1]
    view = augment(x, full_augment(48), gen(6))
    assert view.image.shape == (6, bands, 48, 48)
    assert torch.isfinite(view.image).all()
    assert float(view.image.max()) > 1.5 and float(view.image.min()) < -1.5  # nothing clipped


def test_jitter_is_per_band_shift_and_gain() -> None:
    x = torch.randn(32, 5, 32, 32, generator=gen(7))
    base = AugmentConfig(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    jitter = AugmentConfig(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=1.0, noise_std=0.0,
                           brightness=0.3, contrast=0.25)
    before = augment(x, base, gen(8)).image
    after = augment(x, jitter, gen(8)).image
    shift = after.mean(dim=(2, 3)) - before.mean(dim=(2, 3))
    gain = after.std(dim=(2, 3)) / before.std(dim=(2, 3))
    assert float(shift.abs().max()) <= 0.3 + 1e-4
    assert float((gain - 1).abs().max()) <= 0.25 + 1e-4
    assert float(shift.std()) > 0.05  # bands/samples get different factors


def test_grey_replaces_bands_by_their_mean() -> None:
    x = torch.randn(4, 6, 40, 40, generator=gen(9))
    colour = augment(x, AugmentConfig(size=32), gen(10)).image
    grey = augment(x, AugmentConfig(size=32, grey_p=1.0), gen(10)).image
    torch.testing.assert_close(grey, colour.mean(dim=1, keepdim=True).expand_as(colour))


def test_blur_smooths_and_preserves_constants() -> None:
    config = AugmentConfig(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), blur_p=1.0)
    constant = torch.full((4, 3, 32, 32), -7.5)
    torch.testing.assert_close(augment(constant, config, gen(11)).image, constant)
    noise = torch.randn(4, 3, 32, 32, generator=gen(12))
    blurred = augment(noise, config, gen(11)).image
    assert float(blurred.std()) < 0.7 * float(noise.std())


def test_same_generator_same_views_and_different_seeds_differ() -> None:
    x = torch.randn(4, 4, 64, 64, generator=gen(13))
    a = augment(x, full_augment(48), gen(14))
    b = augment(x, full_augment(48), gen(14))
    c = augment(x, full_augment(48), gen(15))
    torch.testing.assert_close(a.image, b.image)
    assert torch.equal(a.index, b.index)
    assert not torch.equal(a.index, c.index)


def test_device_generator_reuses_matching_device() -> None:
    g = gen(16)
    assert device_generator(g, torch.device("cpu")) is g
    assert device_generator(None, torch.device("cpu")) is None


def test_rejects_non_batches() -> None:
    with pytest.raises(ValueError):
        augment(torch.zeros(3, 8, 8), crop_only(8))
    with pytest.raises(ValueError):
        AugmentConfig(blur_kernels=(4,))
