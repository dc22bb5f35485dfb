"""New label layers, per-class counts and the optional extent: real QGIS layers and widgets, no backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from geossl_plugin.client import ApiClient
from geossl_plugin.layers import categorized_field, class_counts, create_label_layer, polygon_source
from geossl_plugin.panel.common import extent_params
from geossl_plugin.panel.finetune_section import WARN, FinetuneSection, counts_html
from geossl_plugin.panel.pretrain_section import PretrainSection
from geossl_plugin.panel.segment_section import SegmentSection
from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
    QgsWkbTypes,
)

from .conftest import dispose
from .gdal_data import ORIGIN, PIXEL, class_polygons, two_class_raster

UTM = QgsCoordinateReferenceSystem("EPSG:32633")


@pytest.fixture
def raster(tmp_path: Path, project: QgsProject) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(two_class_raster(tmp_path / "scene.tif")), "scene", "gdal")
    project.addMapLayer(layer)
    return layer


def _square(x: float, y: float, side: float) -> QgsGeometry:
    return QgsGeometry.fromRect(QgsRectangle(x, y, x + side, y + side))


def _add(layer: QgsVectorLayer, value: Any, geometry: QgsGeometry) -> None:
    feature = QgsFeature(layer.fields())
    feature["class"] = value
    feature.setGeometry(geometry)
    assert layer.addFeature(feature)


# --- create_label_layer / class_counts ------------------------------------------------------------

def test_create_label_layer_is_a_styled_polygon_geopackage(tmp_path: Path) -> None:
    layer = create_label_layer(str(tmp_path / "my labels"), crs=UTM, classes=["water", " forest", "water", ""])
    try:
        assert layer.isValid() and layer.providerType() == "ogr"
        assert layer.geometryType() == QgsWkbTypes.PolygonGeometry and layer.crs() == UTM
        assert (tmp_path / "my labels.gpkg").is_file() and layer.name() == "my labels"
        assert layer.fields().names()[-1] == "class" and layer.featureCount() == 0
        assert isinstance(layer.renderer(), QgsCategorizedSymbolRenderer)
        assert categorized_field(layer) == "class"
        assert [c.value() for c in layer.renderer().categories()] == ["water", "forest"]
        assert polygon_source(layer) == (str(tmp_path / "my labels.gpkg"), "my labels"), "the backend can read it"
    finally:
        dispose(layer)


def test_create_label_layer_without_classes_has_an_empty_categorized_renderer(tmp_path: Path) -> None:
    layer = create_label_layer(str(tmp_path / "l.gpkg"), field="label", crs=UTM)
    try:
        assert categorized_field(layer) == "label" and layer.renderer().categories() == []
    finally:
        dispose(layer)


def test_class_counts_include_unsaved_edits(tmp_path: Path) -> None:
    layer = QgsVectorLayer(f"{class_polygons(tmp_path / 'labels.gpkg')}|layername=polygons", "labels", "ogr")
    try:
        counts = class_counts(layer, "class")
        assert set(counts) == {"dark", "bright"} and counts["dark"][0] == 2 and counts["bright"][0] == 2
        # Boxes of 12×24 pixels of 10 m: 28,800 m² each (the bright ones are as large).
        assert counts["dark"][1] == pytest.approx(2 * 12 * 24 * PIXEL**2, rel=1e-6)
        assert class_counts(layer, "code") == {1: counts["dark"], 2: counts["bright"]}
        layer.startEditing()
        _add(layer, "water", _square(*ORIGIN, 50))
        _add(layer, None, _square(*ORIGIN, 10))
        counts = class_counts(layer, "class")
        assert counts["water"] == (1, pytest.approx(2500.0)) and counts[None][0] == 1
        assert class_counts(layer, "no such field") == {}
        layer.rollBack()
    finally:
        dispose(layer)


def test_counts_html_warns_in_orange() -> None:
    text = counts_html({"a": (3, 1000.0), "b": (1, 400.0)}, pixel_area=100.0)
    assert "10 px" in text and "4 px" in text
    assert "'b' has 1 polygon: it cannot be validated" in text and WARN in text
    assert "Fewer than 2 classes" not in text
    single = counts_html({"a": (2, 5.0)}, unit="m²")
    assert "Fewer than 2 classes" in single and "5 m²" in single and "cannot be validated" not in single
    assert "No polygons yet" in counts_html({})
    assert "have no class" in counts_html({"a": (2, 1.0), "b": (2, 1.0), None: (1, 1.0)})


# --- fine-tune section ----------------------------------------------------------------------------

@pytest.fixture
def finetune(qtbot: Any, project: QgsProject) -> FinetuneSection:
    section = FinetuneSection(ApiClient(), jobs=None, project=project)
    qtbot.addWidget(section)
    return section


def test_new_label_layer_is_picked_and_editable(finetune: FinetuneSection, raster: QgsRasterLayer,
                                                 project: QgsProject, tmp_path: Path) -> None:
    activated: list[Any] = []
    finetune.activate_layer = activated.append
    finetune.rasters.set_checked([raster])
    layer = finetune.new_label_layer(str(tmp_path / "labels.gpkg"))
    assert layer is not None and project.mapLayer(layer.id()) is layer
    assert layer.crs() == raster.crs(), "drawn on the raster, in its CRS"
    assert finetune.polygons.currentLayer() is layer and finetune.class_field.currentField() == "class"
    assert layer.isEditable() and activated == [layer]
    assert "No polygons yet" in finetune.counts_label.text()


def test_counts_follow_edits(finetune: FinetuneSection, raster: QgsRasterLayer, qtbot: Any,
                             tmp_path: Path) -> None:
    finetune.rasters.set_checked([raster])
    layer = finetune.new_label_layer(str(tmp_path / "labels.gpkg"))
    _add(layer, "water", _square(*ORIGIN, 50))  # 25 pixels of 10 m × 10 m
    qtbot.waitUntil(lambda: "water" in finetune.counts_label.text(), timeout=2000)
    text = finetune.counts_label.text()
    assert "25 px" in text and "cannot be validated" in text and "Fewer than 2 classes" in text
    for x in (100, 200, 300):
        _add(layer, "forest" if x > 100 else "water", _square(ORIGIN[0] + x, ORIGIN[1] - 100, 20))
    qtbot.waitUntil(lambda: "forest" in finetune.counts_label.text(), timeout=2000)
    assert "cannot be validated" not in finetune.counts_label.text()
    assert "Fewer than 2 classes" not in finetune.counts_label.text()
    layer.rollBack()
    qtbot.waitUntil(lambda: "No polygons yet" in finetune.counts_label.text(), timeout=2000)


def test_counts_in_map_units_without_a_raster(finetune: FinetuneSection, project: QgsProject,
                                              tmp_path: Path) -> None:
    layer = QgsVectorLayer(f"{class_polygons(tmp_path / 'labels.gpkg')}|layername=polygons", "labels", "ogr")
    project.addMapLayer(layer)
    finetune.polygons.setLayer(layer)
    finetune.class_field.setField("class")
    assert "57,600 m²" in finetune.counts_label.text()
    finetune.class_field.setField("code")
    assert "<td>1</td>" in finetune.counts_label.text()


# --- extent ---------------------------------------------------------------------------------------

HALF = QgsRectangle(ORIGIN[0], ORIGIN[1] - 640, ORIGIN[0] + 320, ORIGIN[1])  # the left half of the scene


def test_segment_params_carry_the_extent_only_when_ticked(qtbot: Any, raster: QgsRasterLayer,
                                                          project: QgsProject) -> None:
    section = SegmentSection(ApiClient(), jobs=None, project=project)
    qtbot.addWidget(section)
    section._on_models([{"path": "/m.pt", "name": "m", "kind": "segmentation"}])
    section.raster.setLayer(raster)
    assert not section.extent.isChecked() and section.extent.outputCrs() == raster.crs()
    params = section.params()
    assert params is not None and "extent" not in params and "extent_crs" not in params
    section.extent.setChecked(True)
    section.extent.setOutputExtentFromUser(HALF, raster.crs())
    params = section.params()
    assert params["extent"] == pytest.approx([HALF.xMinimum(), HALF.yMinimum(), HALF.xMaximum(), HALF.yMaximum()])
    assert params["extent_crs"] == "EPSG:32633"


def test_an_extent_drawn_in_another_crs_is_sent_in_the_rasters(qtbot: Any, raster: QgsRasterLayer,
                                                               project: QgsProject) -> None:
    section = PretrainSection(ApiClient(), jobs=None, project=project)
    qtbot.addWidget(section)
    section.rasters.set_checked([raster])
    section.extent.setChecked(True)
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    section.extent.setOutputExtentFromUser(QgsRectangle(12.5, 52.5, 12.51, 52.51), wgs84)
    section.method.addItem("glcnet")
    params = section.params()
    assert params is not None and params["extent_crs"] == "EPSG:32633"
    xmin, ymin, xmax, ymax = params["extent"]
    assert 300_000 < xmin < xmax < 400_000 and 5_800_000 < ymin < ymax < 5_830_000, "metres in UTM 33N"


def test_a_ticked_but_empty_extent_is_reported(qtbot: Any, raster: QgsRasterLayer, project: QgsProject) -> None:
    section = PretrainSection(ApiClient(), jobs=None, project=project)
    qtbot.addWidget(section)
    errors: list[Any] = []
    section.error.connect(errors.append)
    section.method.addItem("glcnet")
    section.rasters.set_checked([raster])
    section.extent.setOutputExtentFromUser(QgsRectangle(), raster.crs())
    section.extent.setChecked(True)
    assert extent_params(section.extent) is None
    assert section.params() is None and "extent is ticked but empty" in str(errors[0])
    section.extent.setChecked(False)
    assert extent_params(section.extent) == {}
