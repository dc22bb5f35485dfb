import itertools
import tracemalloc

import numpy as np
import pytest
import rasterio
from geossl.raster_io import BandStats, open_raster
from geossl.tiling import (
    RowBuffer,
    TilePlan,
    batch_sizes,
    blend_window,
    computed_pixels,
    predict_stripes,
    stripe_bounds,
    stripe_columns,
    tile_plan,
    tile_starts,
)

from tests.data import write_raster

IDENTITY = BandStats(low=[-1e9] * 2, high=[1e9] * 2, mean=[0.0] * 2, std=[1.0] * 2)


def pointwise(tiles: np.ndarray) -> np.ndarray:
    """A per-pixel 'model': softmax over the two bands. Any tiling must reproduce it exactly."""
    e = np.exp(tiles - tiles.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def run(path, tile=32, overlap=8, stripe=4096, predict=pointwise):
    h, w = rasterio.open(path).shape
    classes = np.full((h, w), -2, np.int16)
    conf = np.full((h, w), -2.0, np.float32)

    def write(win, c, p):
        sl = (slice(win.row_off, win.row_off + win.height), slice(win.col_off, win.col_off + win.width))
        assert (classes[sl] == -2).all(), "a pixel was written twice"
        classes[sl], conf[sl] = c, p

    buf = RowBuffer(write, block=16)
    with open_raster(path) as src:
        for block in predict_stripes(src, IDENTITY, predict, tile, overlap, batch_size=3, stripe=stripe):
            buf.add(block)
    buf.flush()
    return classes, conf


@pytest.mark.parametrize("length,tile,stride", [(100, 32, 24), (32, 32, 24), (20, 32, 24), (33, 32, 32)])
def test_tile_starts_cover_exactly(length, tile, stride):
    starts = tile_starts(length, tile, stride)
    covered = np.zeros(max(length, tile), bool)
    for s in starts:
        covered[s:s + tile] = True
        assert s >= 0 and (s + tile <= length or length <= tile)
    assert covered[:length].all()


def test_blend_window_tapers_but_never_zero():
    w = blend_window(32, 8)
    assert w.min() > 0 and w[16, 16] == 1.0 and w[0, 0] < 0.01
    np.testing.assert_allclose(w, w.T)


@pytest.mark.parametrize("shape,stripe", [((70, 90), 4096), ((70, 90), 40), ((20, 13), 4096), ((1, 1), 4096)])
def test_blending_is_seamless_and_complete(tmp_path, shape, stripe):
    rng = np.random.default_rng(0)
    data = rng.normal(0, 1, (2,) + shape).astype("float32")
    classes, conf = run(write_raster(tmp_path / "r.tif", data), stripe=stripe)
    expected = pointwise(data[None])[0]
    np.testing.assert_array_equal(classes, expected.argmax(0))  # every pixel written, no seams
    np.testing.assert_allclose(conf, expected.max(0), rtol=1e-5)


def test_constant_model_gives_constant_output(tmp_path):
    data = np.random.default_rng(1).normal(0, 1, (2, 64, 80)).astype("float32")

    def constant(tiles):
        out = np.zeros((len(tiles), 3) + tiles.shape[2:], np.float32)
        out[:, 0], out[:, 1], out[:, 2] = 0.2, 0.7, 0.1
        return out

    classes, conf = run(write_raster(tmp_path / "r.tif", data), predict=constant)
    assert (classes == 1).all()
    np.testing.assert_allclose(conf, 0.7, rtol=1e-6)


def test_nodata_is_preserved(tmp_path):
    data = np.ones((2, 40, 40), "float32")
    data[:, 10:20, 5:15] = -1
    classes, conf = run(write_raster(tmp_path / "r.tif", data, nodata=-1))
    assert (classes[10:20, 5:15] == -1).all() and np.isnan(conf[10:20, 5:15]).all()
    assert (classes >= 0).sum() == 40 * 40 - 100


def _peak_bytes(path, stripe):
    tracemalloc.start()
    with open_raster(path) as src:
        for _ in predict_stripes(src, IDENTITY, pointwise, 32, 8, batch_size=4, stripe=stripe):
            pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_does_not_grow_with_raster_size(tmp_path):
    small = write_raster(tmp_path / "s.tif", np.ones((2, 128, 128), "float32"), tiled=True)
    large = write_raster(tmp_path / "l.tif", np.ones((2, 1024, 1024), "float32"), tiled=True)  # 64× the pixels
    p_small, p_large = _peak_bytes(small, 128), _peak_bytes(large, 128)
    assert p_large < 1.5 * p_small + 256 * 1024, (p_small, p_large)


@pytest.mark.parametrize("shape,stripe", [((70, 90), 4096), ((70, 90), 40), ((20, 13), 4096)])
def test_batch_sizes_are_the_batches_predict_makes(tmp_path, shape, stripe):
    """The benchmark's forward-only baseline replays ``batch_sizes``: it must match predict exactly."""
    seen = []

    def recording(tiles):
        seen.append(len(tiles))
        return pointwise(tiles)

    data = np.random.default_rng(1).normal(0, 1, (2,) + shape).astype("float32")
    path = write_raster(tmp_path / "r.tif", data)
    with open_raster(path) as src:
        for _ in predict_stripes(src, IDENTITY, recording, 32, 8, batch_size=3, stripe=stripe):
            pass
    assert seen == batch_sizes(*shape, 32, 8, 3, stripe=stripe)


@pytest.mark.parametrize("stripe", [4096, 40])
def test_tiles_without_valid_pixels_skip_the_model(tmp_path, stripe):
    """A sparse raster: the model never sees an all-nodata tile, the valid pixels get exactly what
    they get without skipping, and nodata stays nodata (also rows before any valid pixel)."""
    rng = np.random.default_rng(2)
    data = rng.normal(0, 1, (2, 100, 90)).astype("float32")
    data[:, :50, :] = -9999  # top half empty: whole stripes rows start with no valid pixel
    data[:, 60:, 60:] = -9999
    path = write_raster(tmp_path / "sparse.tif", data, nodata=-9999)
    calls = []

    def counting(tiles):
        calls.append(len(tiles))
        assert (tiles != 0).any(axis=(1, 2, 3)).all(), "an all-nodata tile reached the model"
        return pointwise(tiles)

    classes, conf = run(path, stripe=stripe, predict=counting)
    valid = data[0] != -9999
    expected = pointwise(np.where(valid, data, 0)[None])[0].argmax(0)
    np.testing.assert_array_equal(classes[valid], expected[valid])
    assert (classes[~valid] == -1).all() and np.isnan(conf[~valid]).all()
    assert sum(calls) < sum(batch_sizes(100, 90, 32, 8, 3, stripe=stripe))


@pytest.mark.parametrize(("train_tile", "shape", "device", "expected"), [
    (128, (8192, 8192), "cpu", TilePlan(768, 16, 1)),  # big raster: 1.06× its pixels
    (128, (8192, 8192), "cuda", TilePlan(768, 16, 8)),
    (128, (4096, 4096), "cpu", TilePlan(704, 16, 1)),
    (128, (1024, 1024), "cpu", TilePlan(528, 16, 2)),  # two tiles a side fit; 768 would compute 2.25× the raster
    (1024, (8192, 8192), "cpu", TilePlan(1024, 16, 1)),  # never smaller than the training tile
    (128, (300, 5000), "cpu", TilePlan(304, 16, 6)),  # a thin raster is not padded to 768 rows
    (128, (100, 5000), "cpu", TilePlan(128, 16, 36)),  # ... nor cut below the training tile
    (32, (40, 40), "cpu", TilePlan(48, 12, 256)),  # small tiles: a quarter of the tile at most
])
def test_tile_plan_defaults(train_tile, shape, device, expected):
    assert tile_plan(train_tile, *shape, device=device) == expected


@pytest.mark.parametrize("size", [700, 1000, 2048, 3000, 4096, 8192, 10_000])
def test_the_default_tile_computes_the_fewest_pixels_of_the_allowed_sizes(size):
    plan, fit = tile_plan(128, size, size), -(-size // 16) * 16  # no more padding than to a multiple of 16
    best = min(computed_pixels(size, size, t, 16) for t in range(512, min(768, fit) + 1, 16))
    assert computed_pixels(size, size, plan.tile, plan.overlap) == best and plan.tile <= fit


def test_computed_pixels_counts_each_tile_once():
    assert computed_pixels(100, 100, 100, 10) == 100 * 100
    assert computed_pixels(190, 100, 100, 10) == 2 * 100 * 100  # starts 0 and 90
    assert computed_pixels(200, 100, 100, 10) == 3 * 100 * 100  # 0, 90, then 100 shifted inside
    # 56 tiles a row, and none twice: the tile after a stripe's last one starts the next stripe
    assert computed_pixels(100, 5000, 100, 10) == 56 * 100 * 100


def test_tile_plan_keeps_what_the_user_set():
    assert tile_plan(128, 8192, 8192, tile=256, overlap=64, batch=3) == TilePlan(256, 64, 3)
    assert tile_plan(128, 8192, 8192, tile=256) == TilePlan(256, 16, 9)
    assert tile_plan(128, 8192, 8192, overlap=0).overlap == 0
    assert tile_plan(128, 8192, 8192, tile=768).batch == 1


@pytest.mark.parametrize(("width", "tile", "stride", "stripe"), [
    (5000, 100, 90, 4096), (90, 32, 24, 40), (70, 32, 24, 40), (1000, 64, 48, 64), (37, 32, 24, 40), (20, 32, 24, 40)])
def test_each_tile_is_in_one_stripe_and_the_stripes_tile_the_width(width, tile, stride, stripe):
    columns, bounds = stripe_columns(width, tile, stride, stripe), stripe_bounds(width, tile, stride, stripe)
    assert [x for xs in columns for x in xs] == tile_starts(width, tile, stride), "every tile once, in order"
    assert bounds[0][0] == 0 and bounds[-1][1] == width
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    for xs, (start, end) in zip(columns, bounds, strict=True):
        assert start == xs[0] and end <= min(xs[-1] + tile, width)
        assert xs[-1] + tile - xs[0] <= max(stripe, tile) or xs[-1] == width - tile  # the edge tile joins
    # the overlap carried to the next stripe is never more than a tile's overlap, edge tile included
    assert all(min(xs[-1] + tile, width) - end <= tile - stride
               for xs, (_s, end) in zip(columns, bounds, strict=True))


@pytest.mark.parametrize("stripe", [32, 40, 56, 4096])
def test_stripes_change_nothing_even_for_a_model_that_sees_context(tmp_path, stripe):
    """The carried overlap makes a narrow-striped prediction equal to a single-stripe one."""
    rng = np.random.default_rng(3)
    path = write_raster(tmp_path / "r.tif", rng.normal(0, 1, (2, 70, 130)).astype("float32"))

    def contextual(tiles):  # depends on the whole tile: blending matters at every border
        mean = tiles.mean(axis=(2, 3), keepdims=True)
        logits = np.concatenate([tiles + mean, -tiles], axis=1)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    one_classes, one_conf = run(path, stripe=10_000, predict=contextual)
    classes, conf = run(path, stripe=stripe, predict=contextual)
    np.testing.assert_array_equal(classes, one_classes)
    np.testing.assert_allclose(conf, one_conf, rtol=1e-5)
