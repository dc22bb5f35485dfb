"""Polygons from a classified map: known shapes, areas and attributes; regions crossing processing
blocks stay whole; sieving and simplification behave; `geossl predict --vector` end to end."""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from geossl import vectorize as vz
from geossl.classes import ClassTable
from geossl.cli import main
from rasterio import features
from rasterio.crs import CRS

from tests.backend.service_helpers import segmentation_model
from tests.data import PIXEL, UTM33, pixel_box, write_raster

TABLE = ClassTable(("water", "field", "forest"), (1, 2, 3), ("#1f78b4", "#ffff99", "#33a02c"))
H, W = 200, 160
PX_AREA = PIXEL * PIXEL


@pytest.fixture
def scene(tmp_path, monkeypatch):
    """Field everywhere; a water rectangle across several blocks; a 3×3 and a 20×20 forest; nodata rows."""
    monkeypatch.setattr(vz, "BLOCK", 64)  # many internal blocks on a small raster
    classes = np.full((H, W), 2, np.uint8)
    classes[50:130, 40:120] = 1  # 80×80 px, crosses block edges at 64 and 128 both ways
    classes[10:13, 150:153] = 3  # 9 px
    classes[150:170, 10:30] = 3  # 400 px
    classes[190:, :] = 0  # nodata
    conf = np.full((H, W), 0.6, np.float32)
    conf[50:130, 40:80], conf[50:130, 80:120] = 0.8, 1.0  # water: mean 0.9
    conf[10:13, 150:153] = 0.5
    conf[150:170, 10:30] = 0.7
    conf[190:, :] = np.nan
    return {
        "classes": write_raster(tmp_path / "classes.tif", classes[None], nodata=0, tiled=True),
        "confidence": write_raster(tmp_path / "conf.tif", conf[None], nodata=float("nan")),
        "array": classes, "dir": tmp_path,
    }


def read_layer(path):
    info = pyogrio.read_info(path)
    meta, _, geometry, fields = pyogrio.raw.read(path)
    geoms = shapely.from_wkb(geometry)
    return info, dict(zip(meta["fields"], fields, strict=True)), geoms, meta


def test_known_polygons_with_attributes_areas_and_crs(scene):
    out = scene["dir"] / "polygons.gpkg"
    result = vz.vectorize(scene["classes"], out, TABLE, scene["confidence"])
    info, attrs, geoms, meta = read_layer(out)
    assert pyogrio.list_layers(out)[0][0] == "polygons"
    assert CRS.from_user_input(meta["crs"]) == CRS.from_user_input(UTM33)
    assert info["geometry_type"] == "Polygon"
    assert result["polygons"] == len(geoms) == 4
    assert result["class_polygons"] == {"water": 1, "field": 1, "forest": 2}
    by_area = sorted(zip(attrs["area"], attrs["class_id"], attrs["class_name"], attrs["confidence"], geoms,
                         strict=True), key=lambda t: t[0])
    (a_small, *small), (a_b, *b), (a_water, *water), (a_field, *field) = by_area
    assert small[:2] == [3, "forest"] and a_small == pytest.approx(9 * PX_AREA) and small[2] == pytest.approx(0.5)
    assert b[:2] == [3, "forest"] and a_b == pytest.approx(400 * PX_AREA) and b[2] == pytest.approx(0.7)
    assert water[:2] == [1, "water"] and a_water == pytest.approx(6400 * PX_AREA)
    assert water[2] == pytest.approx(0.9)  # mean over both halves: one polygon, not two pieces
    assert shapely.equals(water[3], pixel_box(40, 50, 120, 130))  # whole, exactly the box, across 4×4 blocks
    assert field[:2] == [2, "field"] and field[2] == pytest.approx(0.6)
    assert a_field == pytest.approx((190 * W - 6400 - 9 - 400) * PX_AREA)
    assert len(field[3].interiors) == 3  # holes where the other classes are; nodata rows left out
    assert np.all(np.asarray(shapely.area(geoms)) == attrs["area"])
    qml = out.with_suffix(".qml").read_text()
    assert 'attr="class_id"' in qml and 'label="water"' in qml and "31,120,180,255" in qml


def test_min_area_sieves_small_regions_into_their_neighbours(scene):
    keep = vz.vectorize(scene["classes"], scene["dir"] / "keep.gpkg", TABLE, scene["confidence"],
                        min_area=9 * PX_AREA)  # exactly the small square: kept
    assert keep["polygons"] == 4 and keep["min_area_pixels"] == 9
    out = scene["dir"] / "sieved.gpkg"
    result = vz.vectorize(scene["classes"], out, TABLE, scene["confidence"], min_area=10 * PX_AREA)
    _, attrs, geoms, _ = read_layer(out)
    assert result["polygons"] == 3 and result["class_polygons"] == {"water": 1, "field": 1, "forest": 1}
    field = attrs["class_name"] == "field"
    assert attrs["area"][field][0] == pytest.approx((190 * W - 6400 - 400) * PX_AREA)  # the 3×3 merged into field
    assert len(geoms[field][0].interiors) == 2
    assert sum(attrs["area"]) == pytest.approx(190 * W * PX_AREA)  # nothing lost, nodata not filled


def test_blockwise_sieve_matches_the_definition(tmp_path, monkeypatch):
    """Blocks with a halo: every region left has ≥ N pixels, and regions of ≥ N pixels are untouched."""
    monkeypatch.setattr(vz, "BLOCK", 48)
    rng = np.random.default_rng(3)
    noise = rng.random((150, 170))
    from numpy.lib.stride_tricks import sliding_window_view

    smooth = sliding_window_view(np.pad(noise, 2, mode="edge"), (5, 5)).mean(axis=(2, 3))
    classes = (1 + np.digitize(smooth, np.quantile(smooth, [0.33, 0.66]))).astype(np.uint8)
    classes[:6, :6] = 0
    path = write_raster(tmp_path / "blobs.tif", classes[None], nodata=0)
    size = 25
    with vz.working_copy(path, 0, size, tmp_path / "blobs.gpkg") as work, rasterio.open(work) as src:
        sieved, valid = src.read(1), src.read(2) > 0
    assert np.array_equal(valid, classes > 0)
    labels_in = features.rasterize(
        ((g, i + 1) for i, (g, _) in enumerate(features.shapes(classes, mask=classes > 0, connectivity=4))),
        out_shape=classes.shape)
    sizes_in = np.bincount(labels_in.ravel())
    big = (sizes_in[labels_in] >= size) & (classes > 0)
    assert (sizes_in[1:] < size).sum() > 5  # the test has small regions to remove
    assert np.array_equal(sieved[big], classes[big])
    for geom, _ in features.shapes(sieved, mask=valid, connectivity=4):
        assert shapely.geometry.shape(geom).area >= size  # in pixels (identity transform)


def test_simplify_keeps_a_gapless_coverage(tmp_path):
    yy, xx = np.mgrid[:120, :120]
    classes = np.where((yy - 60) ** 2 + (xx - 55) ** 2 < 40**2, 1, 2).astype(np.uint8)  # a staircase disc
    path = write_raster(tmp_path / "disc.tif", classes[None], nodata=0)
    plain = vz.vectorize(path, tmp_path / "plain.gpkg", TABLE, None)
    simple = vz.vectorize(path, tmp_path / "simple.gpkg", TABLE, None, simplify=2 * PIXEL)
    assert plain["polygons"] == simple["polygons"] == 2
    _, _, g0, _ = read_layer(tmp_path / "plain.gpkg")
    _, attrs, g1, _ = read_layer(tmp_path / "simple.gpkg")
    assert shapely.get_num_coordinates(g1).sum() < 0.5 * shapely.get_num_coordinates(g0).sum()
    disc0, disc1 = g0[np.argmin(shapely.area(g0))], g1[np.argmin(shapely.area(g1))]
    assert shapely.area(disc1) == pytest.approx(shapely.area(disc0), rel=0.03)
    assert shapely.hausdorff_distance(disc0, disc1) <= 2.5 * PIXEL
    total = 120 * 120 * PX_AREA
    assert shapely.area(shapely.union_all(g1)) == pytest.approx(total)  # no gap
    assert sum(shapely.area(g1)) == pytest.approx(total)  # no overlap
    assert np.isnan(attrs["confidence"]).all()  # no confidence raster given
    assert all(shapely.is_valid(g1))


def test_predict_vector_end_to_end_and_bad_options(tmp_path, capsys):
    model = segmentation_model(tmp_path / "m.pt", bands=3, tile=32)  # writes m.tif beside it
    raster = tmp_path / "m.tif"
    out, vec = tmp_path / "classes.tif", tmp_path / "classes_polygons.gpkg"
    code = main(["predict", "--model", str(model), "--raster", str(raster), "--out", str(out), "--vector", str(vec),
                 "--tile", "32", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["vector"] == str(vec.resolve()) and result["confidence_raster"] is None
    assert not list(tmp_path.glob(".*"))  # the scratch confidence raster is gone
    _, attrs, geoms, meta = read_layer(vec)
    with rasterio.open(out) as src:
        classes = src.read(1)
    # One polygon per 4-connected region of the map (tiles and stripes leave no seams), areas per class agree.
    assert len(geoms) == len(list(features.shapes(classes, connectivity=4)))
    for name, value in zip(("bright", "dark"), (1, 2), strict=True):
        mask = attrs["class_name"] == name
        assert attrs["area"][mask].sum() == pytest.approx((classes == value).sum() * PX_AREA)
        assert result["class_polygons"][name] == mask.sum()
    assert np.all((attrs["confidence"] >= 0.5) & (attrs["confidence"] <= 1.0))  # max of 2 probabilities
    assert CRS.from_user_input(meta["crs"]) == CRS.from_user_input(UTM33)
    assert vec.with_suffix(".qml").is_file() and out.with_suffix(".qml").is_file()
    base = ["predict", "--model", str(model), "--raster", str(raster), "--out", str(tmp_path / "b.tif")]
    for extra, text in ((["--min-area", "100"], "give vector too"),
                        (["--vector", str(tmp_path / "b.shp")], "GeoPackage"),
                        (["--vector", str(tmp_path / "b.gpkg")], "share the style file"),
                        (["--vector", str(tmp_path / "no" / "p.gpkg")], "does not exist")):
        assert main(base + extra) == 2
        assert text in capsys.readouterr().err
    assert not (tmp_path / "b.tif").exists()
