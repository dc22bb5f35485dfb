"""Polygons without pyogrio (the lent GPU machine has none): GeoJSON is read with json + shapely into
what the pyogrio path gives, any other format is refused with the action to take, and the GPU
benchmark's modules import without it."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
from geossl.errors import GeoSSLError
from geossl.labels import load_label_polygons, read_vector
from geossl.raster_io import raster_info

from tests.bench import dubai
from tests.data import UTM33, pixel_box, two_class_raster, write_polygons

ROOT = Path(__file__).resolve().parents[2]
BLOCK = "import sys; sys.modules['pyogrio'] = sys.modules['pyogrio.raw'] = None; "


@pytest.fixture
def no_pyogrio(monkeypatch):
    """``import pyogrio`` fails as where it is not installed (labels imports it per call)."""
    monkeypatch.setitem(sys.modules, "pyogrio", None)
    monkeypatch.setitem(sys.modules, "pyogrio.raw", None)


def read_both(path, field: str, monkeypatch):
    with_ogr = read_vector(path, field)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "pyogrio", None)
        m.setitem(sys.modules, "pyogrio.raw", None)
        without = read_vector(path, field)
    return with_ogr, without


def assert_same(a, b):
    assert a.path == b.path and a.crs == b.crs and a.warnings == b.warnings
    assert len(a.values) == len(b.values) and all(
        type(x) is type(y) and (x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)))
        for x, y in zip(a.values, b.values, strict=True))
    assert len(a.geoms) == len(b.geoms)
    for g, h in zip(a.geoms, b.geoms, strict=True):
        assert g.geom_type == h.geom_type and g.equals_exact(h, 0), (g.wkt, h.wkt)


def test_projected_geojson_reads_the_same_without_pyogrio(tmp_path, monkeypatch):
    geoms = [pixel_box(2, 3, 10, 7), pixel_box(20, 20, 30, 40).union(pixel_box(40, 40, 44, 44)),
             pixel_box(50, 0, 60, 5), pixel_box(0, 50, 5, 60)]
    path = write_polygons(tmp_path / "l.geojson", geoms, ["road", "water", None, "road"], crs=UTM33,
                          extra={"area": [1.5, 2.0, 3.0, 4.0]})  # GDAL writes the CRS in the 'crs' member
    a, b = read_both(path, "class", monkeypatch)
    assert a.crs == "EPSG:32633" and a.values == ["road", "water", "road"]
    assert_same(a, b)
    assert any("empty 'class'" in w for w in b.warnings)
    codes = write_polygons(tmp_path / "codes.geojson", geoms, [3, 5, 3, 7], crs=UTM33)  # integer codes
    a, b = read_both(codes, "class", monkeypatch)
    assert a.values == [3, 5, 3, 7] and type(b.values[0]) is int
    assert_same(a, b)
    # and all the way to the labels of a raster: the same pixels
    raster = raster_info(two_class_raster(tmp_path / "r.tif", h=64, w=64))
    (polys,), table, _ = load_label_polygons(path, "class", [raster])
    monkeypatch.setitem(sys.modules, "pyogrio", None)
    (again,), table2, _ = load_label_polygons(path, "class", [raster])
    assert table2 == table and again.pixel_count.tolist() == polys.pixel_count.tolist()


def test_hand_written_geojson_reads_the_same(tmp_path, monkeypatch):
    """The benchmark's own GeoJSON (plain json), and RFC 7946 files: no 'crs' member is EPSG:4326."""
    boxes = [shapely.box(200_000 + i, 2_800_000, 200_010 + i, 2_800_010) for i in (0, 20, 40)]
    path = dubai.write_geojson(tmp_path / "labels_0.geojson", boxes, ["land", "road", "land"])
    a, b = read_both(path, "class", monkeypatch)
    assert a.crs == b.crs == "EPSG:32640"
    assert_same(a, b)
    square = {"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.1, 52.0], [13.1, 52.1], [13.0, 52.0]]]}
    feats = [{"type": "Feature", "properties": {"class": v, "note": "x"}, "geometry": square}
             for v in (1, None, 2)]
    feats.append({"type": "Feature", "properties": {"class": 4}, "geometry": {"type": "Point", "coordinates": [1, 2]}})
    feats.append({"type": "Feature", "properties": {"class": 5}, "geometry": None})
    wgs = tmp_path / "wgs.json"
    wgs.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    a, b = read_both(wgs, "class", monkeypatch)
    assert a.crs == b.crs == "EPSG:4326" and a.values == [1.0, 2.0]  # an integer field with a null: floats
    assert_same(a, b)
    assert any("without a polygon" in w for w in b.warnings)


def test_other_formats_and_bad_geojson_say_what_to_do(tmp_path, no_pyogrio):
    gpkg = tmp_path / "l.gpkg"
    gpkg.write_bytes(b"SQLite format 3\0")  # what is in it does not matter: it is not read
    with pytest.raises(GeoSSLError, match="pyogrio.*not installed") as err:
        read_vector(gpkg, "class")
    assert "install pyogrio, or give the polygons as GeoJSON" in str(err.value)
    with pytest.raises(GeoSSLError, match="does not exist"):
        read_vector(tmp_path / "none.geojson", "class")
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(GeoSSLError, match="not valid JSON"):
        read_vector(bad, "class")
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(GeoSSLError, match="no field 'class' \\(fields: none\\)"):
        read_vector(bad, "class")
    feature = {"type": "Feature", "properties": {"kind": "a"},
               "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}}
    bad.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "nowhere"}},
                               "features": [feature]}))
    with pytest.raises(GeoSSLError, match="no field 'class' \\(fields: kind\\)"):
        read_vector(bad, "class")
    with pytest.raises(GeoSSLError, match="CRS 'nowhere' is not known"):
        read_vector(bad, "kind")
    with pytest.raises(GeoSSLError, match="no layer 'other'"):
        read_vector(bad, "kind", layer="other")


def test_the_gpu_runs_modules_import_without_pyogrio():
    """What ``tests/bench/gpu_run.py``'s steps import (the tiny run in test_bench_tools runs them
    with pyogrio blocked too, where ../shared/data is present)."""
    code = BLOCK + ("import geossl.cli, geossl.finetune, geossl.pretrain, geossl.predict, geossl.suggest_run; "
                    "import tests.bench.bench_pretrain, tests.bench.bench_predict, tests.bench.pretrain_curve, "
                    "tests.bench.fewlabel; print('imported')")
    env_path = f"{ROOT / 'backend'}:{ROOT}"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": env_path})
    assert proc.returncode == 0 and "imported" in proc.stdout, proc.stderr[-3000:]


def test_write_geojson_needs_no_pyogrio(tmp_path, no_pyogrio):
    boxes = [shapely.box(0, 0, 1, 1), shapely.box(2, 2, 3, 3)]
    path = dubai.write_geojson(tmp_path / "x.geojson", boxes, ["a", "b"])
    vec = read_vector(path, "class")
    assert vec.values == ["a", "b"] and vec.crs == dubai.CRS
    assert np.all(shapely.equals(vec.geoms, np.array(boxes, dtype=object)))
