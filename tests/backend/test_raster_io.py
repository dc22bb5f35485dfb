from pathlib import Path

import numpy as np
import pytest
import rasterio
from geossl.errors import GeoSSLError
from geossl.raster_io import (
    BandStats,
    check_output_path,
    check_training_rasters,
    compute_band_stats,
    geotiff_writer,
    open_raster,
    raster_info,
    read_window,
)
from rasterio.windows import Window

from tests.data import UTM33, write_raster


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_writer_round_trip_keeps_dtype_crs_transform_nodata(tmp_path, dtype):
    src = write_raster(tmp_path / "src.tif", np.arange(2 * 300 * 280).reshape(2, 300, 280).astype(dtype) % 100,
                       nodata=0)
    info = raster_info(src)
    data = np.arange(300 * 280, dtype=dtype).reshape(1, 300, 280) % 50
    cmap = {0: (0, 0, 0, 0), 1: (255, 0, 0, 255)}
    with geotiff_writer(tmp_path / "out.tif", info, 1, dtype, 7,
                        colormap=cmap if dtype == "uint8" else None,
                        descriptions=["class"], tags={"K": "v"}) as dst:
        dst.write(data)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.dtypes[0] == dtype
        assert out.crs.to_epsg() == 32633
        assert out.transform == info.affine
        assert out.nodata == 7
        assert out.descriptions == ("class",)
        assert out.tags()["K"] == "v"
        assert out.profile["tiled"] and out.profile["compress"] == "deflate"
        np.testing.assert_array_equal(out.read(), data)
        if dtype == "uint8":
            assert out.colormap(1)[1] == (255, 0, 0, 255)


def test_writer_is_atomic_on_failure(tmp_path):
    info = raster_info(write_raster(tmp_path / "src.tif", np.ones((1, 16, 16), "uint8")))
    with pytest.raises(RuntimeError), geotiff_writer(tmp_path / "out.tif", info, 1, "uint8", 0) as dst:
        dst.write(np.ones((1, 16, 16), "uint8"))
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == [tmp_path / "src.tif"]  # no output, no temp file


def test_read_window_nodata_and_boundless(tmp_path):
    data = np.full((2, 10, 10), 5, "int16")
    data[:, 0, 0] = -9999  # nodata in every band
    data[0, 1, 1] = -9999  # nodata in one band only: still invalid (all bands must be valid)
    path = write_raster(tmp_path / "r.tif", data, nodata=-9999)
    with open_raster(path) as src:
        x, valid = read_window(src, Window(-2, -2, 8, 8))
    assert x.shape == (2, 8, 8) and x.dtype == np.float32
    assert not valid[:2].any() and not valid[:, :2].any()  # outside the raster
    assert not valid[2, 2] and not valid[3, 3] and valid[4, 4]
    assert (x[:, ~valid] == 0).all()


def test_read_window_inside_matches_the_raster_with_and_without_nodata(tmp_path):
    """Windows inside the raster take the plain (non-VRT) read, and rasters without nodata skip the
    mask read: values and validity must be exactly what the raster holds either way."""
    data = np.arange(2 * 12 * 12, dtype="int16").reshape(2, 12, 12)
    plain = write_raster(tmp_path / "plain.tif", data)
    data_nd = data.copy()
    data_nd[:, 5, 6] = -9999
    with_nd = write_raster(tmp_path / "nd.tif", data_nd, nodata=-9999)
    with open_raster(plain) as src:
        x, valid = read_window(src, Window(3, 4, 6, 5))
        edge_x, edge_valid = read_window(src, Window(8, 8, 6, 6))  # passes the right and bottom edges
    assert valid.all() and (x == data[:, 4:9, 3:9]).all()
    assert edge_valid[:4, :4].all() and not edge_valid[4:].any() and not edge_valid[:, 4:].any()
    assert (edge_x[:, :4, :4] == data[:, 8:, 8:]).all()
    with open_raster(with_nd) as src:
        x, valid = read_window(src, Window(3, 4, 6, 5))
    assert valid.sum() == 29 and not valid[1, 3] and x[0, 1, 3] == 0


def test_float_nan_is_invalid(tmp_path):
    data = np.ones((1, 4, 4), "float32")
    data[0, 2, 2] = np.nan
    with open_raster(write_raster(tmp_path / "r.tif", data)) as src:
        _, valid = read_window(src, Window(0, 0, 4, 4))
    assert valid.sum() == 15 and not valid[2, 2]


def test_band_stats_are_robust_and_ignore_nodata(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.uniform(100, 200, (2, 200, 200)).astype("float32")
    data[:, :50] = -1  # nodata block
    data[0, 100, 100] = 1e9  # a single outlier must not move the statistics
    path = write_raster(tmp_path / "r.tif", data, nodata=-1)
    stats = compute_band_stats([path], n_windows=16, window=128, seed=1)
    assert 100 <= stats.low[0] < 105 and 195 < stats.high[0] <= 200
    assert 140 < stats.mean[0] < 160 and 20 < stats.std[0] < 35
    z = stats.normalise(np.array([[[1e9]], [[150.0]]], np.float32))
    assert z[0, 0, 0] == pytest.approx((stats.high[0] - stats.mean[0]) / stats.std[0], rel=1e-5)
    assert BandStats.from_dict(stats.to_dict()) == stats


def test_all_nodata_raster_is_refused(tmp_path):
    path = write_raster(tmp_path / "r.tif", np.zeros((1, 32, 32), "uint8"), nodata=0)
    with pytest.raises(GeoSSLError, match="entirely nodata"):
        compute_band_stats([path])


def test_bad_rasters_give_clear_errors(tmp_path):
    with pytest.raises(GeoSSLError, match="does not exist"):
        raster_info(tmp_path / "missing.tif")
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(GeoSSLError, match="cannot be read"):
        raster_info(tmp_path / "junk.tif")
    cplx = write_raster(tmp_path / "c.tif", np.ones((1, 4, 4), "complex64"))
    with pytest.raises(GeoSSLError, match="complex64"):
        raster_info(cplx)
    a = write_raster(tmp_path / "a.tif", np.ones((3, 4, 4), "uint8"))
    b = write_raster(tmp_path / "b.tif", np.ones((4, 4, 4), "uint8"))
    with pytest.raises(GeoSSLError, match="different band counts"):
        check_training_rasters([a, b])
    nocrs = write_raster(tmp_path / "n.tif", np.ones((3, 4, 4), "uint8"), crs=None)
    with pytest.raises(GeoSSLError, match="no coordinate reference system"):
        check_training_rasters([nocrs])
    assert [i.count for i in check_training_rasters([a, a])] == [3, 3]
    assert raster_info(a).crs is not None and UTM33


def test_output_path_checked_before_work(tmp_path):
    with pytest.raises(GeoSSLError, match="does not exist"):
        check_output_path(tmp_path / "nope" / "out.tif")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        if os.geteuid() != 0:  # root can write anywhere; the check is for users
            with pytest.raises(GeoSSLError, match="No file can be created in the output folder"):
                check_output_path(ro / "out.tif")
    finally:
        ro.chmod(0o700)
    with pytest.raises(GeoSSLError, match="is a folder"):
        check_output_path(ro)
    assert check_output_path(ro / "out.tif") == ro / "out.tif" and list(ro.iterdir()) == []  # the probe is gone


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_that_says_writable_but_takes_no_file_is_refused():
    """``/proc`` passes permission checks (always for root) but no file can be created there."""
    with pytest.raises(GeoSSLError, match="No file can be created in the output folder '/proc'"):
        check_output_path("/proc/x.tif")
