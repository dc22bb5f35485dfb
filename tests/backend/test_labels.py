import pytest
from geossl.classes import IGNORE_INDEX, ClassTable, write_qml
from geossl.errors import GeoSSLError
from geossl.labels import load_label_polygons, split_polygons
from geossl.raster_io import raster_info
from rasterio.windows import Window

from tests.data import pixel_box, two_class_polygons, two_class_raster, write_polygons


@pytest.fixture
def raster(tmp_path):
    return raster_info(two_class_raster(tmp_path / "r.tif", h=64, w=64))


def test_rasterize_exact_pixels_and_unlabeled_is_ignored(tmp_path, raster):
    path = write_polygons(tmp_path / "l.gpkg", [pixel_box(2, 3, 10, 7), pixel_box(20, 20, 30, 40)], ["a", "b"])
    (polys,), table, _ = load_label_polygons(path, "class", [raster])
    assert table.names == ("a", "b") and table.values == (1, 2)
    assert polys.pixel_count.tolist() == [8 * 4, 10 * 20]
    lab = polys.rasterize(Window(0, 0, 64, 64))
    assert (lab == 0).sum() == 32 and (lab == 1).sum() == 200
    assert lab[3:7, 2:10].min() == 0 and lab[3:7, 2:10].max() == 0
    assert (lab == IGNORE_INDEX).sum() == 64 * 64 - 232  # everything else unlabeled, not background
    # an offset window sees the same polygon at shifted pixel positions
    assert (polys.rasterize(Window(2, 3, 8, 4)) == 0).all()


def test_polygons_in_another_crs_are_reprojected(tmp_path, raster):
    utm = two_class_polygons(tmp_path / "utm.gpkg", w=64, h=64)
    wgs = two_class_polygons(tmp_path / "wgs.geojson", w=64, h=64, crs="EPSG:4326")
    (a,), _, _ = load_label_polygons(utm, "class", [raster])
    (b,), _, _ = load_label_polygons(wgs, "class", [raster])
    la, lb = a.rasterize(Window(0, 0, 64, 64)), b.rasterize(Window(0, 0, 64, 64))
    assert (la == lb).mean() > 0.99  # same pixels up to reprojection rounding at polygon edges


def test_clipping_and_no_overlap(tmp_path, raster):
    half_out = write_polygons(tmp_path / "h.gpkg", [pixel_box(-10, 0, 10, 10), pixel_box(30, 30, 40, 40)], [1, 2])
    (polys,), table, _ = load_label_polygons(half_out, "class", [raster])
    assert polys.pixel_count.tolist() == [100, 100]
    assert table.values == (1, 2) and table.names == ("1", "2")  # integer codes are kept as map values
    outside = write_polygons(tmp_path / "o.gpkg", [pixel_box(100, 100, 110, 110), pixel_box(200, 0, 210, 5)],
                             ["a", "b"])
    with pytest.raises(GeoSSLError, match="No polygon .* overlaps"):
        load_label_polygons(outside, "class", [raster])
    one_out = write_polygons(tmp_path / "c.gpkg", [pixel_box(0, 0, 5, 5), pixel_box(100, 100, 110, 110)], ["a", "b"])
    with pytest.raises(GeoSSLError, match="Class\\(es\\) b have no labelled pixel"):
        load_label_polygons(one_out, "class", [raster])


def test_field_errors_and_nulls(tmp_path, raster):
    path = write_polygons(tmp_path / "l.gpkg", [pixel_box(0, 0, 5, 5), pixel_box(10, 10, 15, 15),
                                                 pixel_box(20, 20, 25, 25)], ["a", None, "b"])
    with pytest.raises(GeoSSLError, match="no field 'landcover' \\(fields: class\\)"):
        load_label_polygons(path, "landcover", [raster])
    (polys,), table, warnings = load_label_polygons(path, "class", [raster])
    assert table.names == ("a", "b") and len(polys.geoms) == 2
    assert any("empty 'class'" in w for w in warnings)
    with pytest.raises(GeoSSLError, match="does not exist"):
        load_label_polygons(tmp_path / "none.gpkg", "class", [raster])
    single = write_polygons(tmp_path / "s.gpkg", [pixel_box(0, 0, 5, 5)], ["a"])
    with pytest.raises(GeoSSLError, match="at least two classes"):
        load_label_polygons(single, "class", [raster])


def test_split_holds_out_whole_polygons_per_class(tmp_path, raster):
    geoms = [pixel_box(i * 6, 0, i * 6 + 5, 5) for i in range(10)]
    path = write_polygons(tmp_path / "l.gpkg", geoms, ["a"] * 5 + ["b"] * 4 + ["c"])
    polys, _, _ = load_label_polygons(path, "class", [raster])
    train, val = split_polygons(polys, 0.4, seed=3)
    assert sorted(val[0].class_index.tolist()) == [0, 0, 1, 1]  # 40% of a and b; c has one polygon: kept
    assert len(train[0].geoms) + len(val[0].geoms) == 10
    assert not set(map(bytes, val[0].geoms.astype(object).tolist() and [g.wkb for g in val[0].geoms])) & {
        g.wkb for g in train[0].geoms}
    again = split_polygons(polys, 0.4, seed=3)[1][0]
    assert [g.wkb for g in again.geoms] == [g.wkb for g in val[0].geoms]  # deterministic


def test_class_table_colours_and_qml(tmp_path):
    t = ClassTable.from_field_values(["water", "forest", "water"], {"water": "#0000FF"})
    assert t.names == ("forest", "water") and t.colors[1] == "#0000ff"
    assert t.colormap()[2] == (0, 0, 255, 255) and t.colormap()[0] == (0, 0, 0, 0)
    assert ClassTable.from_dict(t.to_dict()) == t
    with pytest.raises(GeoSSLError, match="#rrggbb"):
        ClassTable.from_field_values(["a", "b"], {"a": "blue"})
    codes = ClassTable.from_field_values([0, 3, 3.0])
    assert codes.values == (0, 3) and codes.nodata_value == 255
    write_qml(tmp_path / "x.qml", t)
    qml = (tmp_path / "x.qml").read_text()
    assert 'value="2" color="#0000ff"' in qml and "label=\"water\"" in qml
