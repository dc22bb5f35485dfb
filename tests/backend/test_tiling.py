import tracemalloc

import numpy as np
import pytest
import rasterio
from geossl.raster_io import BandStats, open_raster
from geossl.tiling import RowBuffer, batch_sizes, blend_window, predict_stripes, tile_starts

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
