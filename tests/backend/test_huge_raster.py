"""A 40 000 × 40 000 sparse COG: made in seconds, inspected and checked at once, predicted over
an extent with bounded memory, and tiled lazily (the whole raster is ``make fuzz``'s job).

Any whole-raster array would be ≥ 1.6 GB (one uint8 band; the input is 9.6 GB as uint16), so a
peak RSS far below that shows memory is bounded by the tile and stripe, not the raster.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
import rasterio
from geossl.raster_io import BandStats, open_raster, raster_info
from geossl.schemas import PredictParams
from geossl.service.checks import OutputPolicy, check_job
from geossl.tiling import predict_stripes, stripe_bounds, stripe_columns, tile_starts

from tests.backend.service_helpers import segmentation_model
from tests.data import ORIGIN, PEAK_RSS_MB_CODE, PIXEL
from tests.huge_raster import HUGE, patches, write_sparse_cog

RSS_LIMIT_MB = 1500


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    d = tmp_path_factory.mktemp("huge")
    t0 = time.perf_counter()
    path = write_sparse_cog(d / "huge.tif", patch=512)
    return {"path": path, "dir": d, "seconds": time.perf_counter() - t0, "model": segmentation_model(d / "m.pt")}


def test_generation_info_and_checks_are_fast(huge):
    path = huge["path"]
    assert huge["seconds"] < 60 and path.stat().st_size < 10 * 2**20  # 1.6 G pixels × 3 bands in a few MB
    t0 = time.perf_counter()
    info = raster_info(path)
    assert (info.width, info.height, info.count) == (HUGE, HUGE, 3) and info.nodata == 0
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    params = PredictParams(model=str(huge["model"]), raster=str(path), out=str(huge["dir"] / "c.tif"), tile=256)
    check_job("predict", params, OutputPolicy(huge["dir"] / "data"), {})  # what the service does at submit
    assert time.perf_counter() - t0 < 5


def test_predict_an_extent_of_it_with_bounded_memory(huge):
    col, row = patches(HUGE, 512)[0]  # the centre patch, plus nodata around it
    x0, y1 = ORIGIN[0] + (col - 128) * PIXEL, ORIGIN[1] - (row - 128) * PIXEL
    extent = [x0, y1 - 768 * PIXEL, x0 + 768 * PIXEL, y1]
    out = huge["dir"] / "extent.tif"
    code = ("import sys; from geossl.cli import main; rc = main(sys.argv[1:]); "
            f"print('PEAK_RSS_MB', {PEAK_RSS_MB_CODE}); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, "predict", "--model", str(huge["model"]), "--raster",
                        str(huge["path"]), "--out", str(out), "--tile", "256", "--overlap", "32", "--extent",
                        *map(str, extent)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    peak = float(p.stdout.split("PEAK_RSS_MB")[1].split()[0])
    assert peak < RSS_LIMIT_MB, peak
    with rasterio.open(out) as dst:
        assert (dst.width, dst.height) == (768, 768)
        classes = dst.read(1)
        nodata = dst.nodata
    inside = classes[128:640, 128:640]
    assert (inside != nodata).all() and (classes[:128] == nodata).all() and (classes[:, 640:] == nodata).all()


def test_the_tile_grid_over_40k_is_lazy(huge):
    """Planning the 40k² grid and producing its first rows costs tiles and stripes, not pixels."""
    stats = BandStats(low=[0.0] * 3, high=[1000.0] * 3, mean=[500.0] * 3, std=[200.0] * 3)
    totals, batches = [], []

    def predict(tiles: np.ndarray) -> np.ndarray:
        batches.append(tiles.shape)
        return np.full((len(tiles), 2, *tiles.shape[2:]), 0.5, np.float32)

    tracemalloc.start()
    t0 = time.perf_counter()
    with open_raster(huge["path"]) as src:
        blocks = predict_stripes(src, stats, predict, tile=256, overlap=64, batch_size=8,
                                 on_tiles=lambda done, total: totals.append(total))
        first = [next(blocks) for _ in range(3)]
        blocks.close()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    columns = stripe_columns(HUGE, 256, 192, 4096)
    assert totals[0] == sum(map(len, columns)) * len(tile_starts(HUGE, 256, 192)) == 208 * 208  # each tile once
    first_width = stripe_bounds(HUGE, 256, 192, 4096)[0][1]
    assert first_width == 4032, "the first stripe ends where the second one's first tile starts"
    assert [(int(b.window.row_off), int(b.window.width)) for b in first] == [(0, 4032), (192, 4032), (384, 4032)]
    assert (first[0].classes == -1).all()  # nodata stays nodata
    # at most three rows of the first stripe, and only its tiles holding data (nodata tiles skip the model)
    assert len(batches) < 3 * math.ceil(len(columns[0]) / 8)
    assert peak < 200 * 2**20, peak / 2**20  # tens of MB; one band of the whole raster would be 1.6 GB
    assert time.perf_counter() - t0 < 30


def test_huge_raster_is_accepted_by_open_raster(huge):
    with open_raster(huge["path"]) as src:
        assert src.width == HUGE
