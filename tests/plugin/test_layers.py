"""layers.py and the layer pickers against real QGIS layers (no backend, no network)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from geossl_plugin.layers import (
    GROUP_NAME,
    ClassInfo,
    LayerError,
    UnsavedEditsError,
    add_result_layers,
    categorized_field,
    class_colours,
    palette_of,
    polygon_source,
    raster_path,
)
from geossl_plugin.panel import GeoSSLDock
from osgeo import gdal
from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFeature,
    QgsFillSymbol,
    QgsGeometry,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsRendererCategory,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

from .conftest import dispose
from .gdal_data import class_polygons, two_class_raster

COLOURS = {"dark": "#112233", "bright": "#ddeeff"}


def categorize(layer: QgsVectorLayer, field: str, colours: dict[Any, str], other: bool = True) -> None:
    """Style ``layer`` Categorized by ``field``, as a user does in Layer Properties ▸ Symbology."""
    categories = []
    for value, colour in colours.items():
        symbol = QgsFillSymbol.createSimple({"color": colour})
        categories.append(QgsRendererCategory(value, symbol, str(value)))
    if other:  # the "all other values" category QGIS adds
        categories.append(QgsRendererCategory(None, QgsFillSymbol.createSimple({"color": "#999999"}), ""))
    layer.setRenderer(QgsCategorizedSymbolRenderer(field, categories))


@pytest.fixture
def raster(tmp_path: Path) -> Iterator[QgsRasterLayer]:
    layer = QgsRasterLayer(str(two_class_raster(tmp_path / "scene.tif")), "scene", "gdal")
    assert layer.isValid()
    yield layer
    dispose(layer)


@pytest.fixture
def polygons(tmp_path: Path) -> Iterator[QgsVectorLayer]:
    layer = QgsVectorLayer(f"{class_polygons(tmp_path / 'labels.gpkg')}|layername=polygons", "labels", "ogr")
    assert layer.isValid()
    yield layer
    dispose(layer)


# --- class colours --------------------------------------------------------------------------------

def test_colours_come_from_the_categorized_renderer(polygons: QgsVectorLayer) -> None:
    categorize(polygons, "class", COLOURS)
    assert categorized_field(polygons) == "class"
    assert class_colours(polygons, "class") == COLOURS, "'all other values' is not a class"


def test_a_quoted_field_expression_counts_as_the_field(polygons: QgsVectorLayer) -> None:
    categorize(polygons, '"class"', COLOURS)
    assert class_colours(polygons, "class") == COLOURS


def test_integer_codes_are_named_like_the_backend_names_them(polygons: QgsVectorLayer) -> None:
    categorize(polygons, "code", {1: "#ff0000", 2.0: "#00ff00"}, other=False)
    assert class_colours(polygons, "code") == {"1": "#ff0000", "2": "#00ff00"}


def test_no_colours_for_another_field_or_renderer(polygons: QgsVectorLayer) -> None:
    assert class_colours(polygons, "class") == {}, "single symbol: no class colours"
    categorize(polygons, "code", {1: "#ff0000"})
    assert class_colours(polygons, "class") == {}
    assert categorized_field(polygons) == "code"


# --- file paths ------------------------------------------------------------------------------------

def test_file_layers_give_their_paths(raster: QgsRasterLayer, polygons: QgsVectorLayer, tmp_path: Path) -> None:
    assert raster_path(raster) == str(tmp_path / "scene.tif")
    assert polygon_source(polygons) == (str(tmp_path / "labels.gpkg"), "polygons")


def test_a_scratch_layer_must_be_saved_first() -> None:
    scratch = QgsVectorLayer("Polygon?crs=EPSG:32633&field=class:string", "my drawing", "memory")
    with pytest.raises(LayerError, match="temporary scratch layer: save it to a file first"):
        polygon_source(scratch)


def test_unsaved_edits_are_refused(polygons: QgsVectorLayer) -> None:
    polygons.startEditing()
    feature = QgsFeature(polygons.fields())
    feature.setAttribute("class", "dark")
    feature.setGeometry(QgsGeometry.fromWkt("POLYGON((330050 5821900, 330100 5821900, 330100 5821850, 330050 5821900))"))
    polygons.addFeature(feature)
    with pytest.raises(UnsavedEditsError, match="unsaved edits"):
        polygon_source(polygons)
    polygons.rollBack()
    assert polygon_source(polygons)[1] == "polygons"


def test_a_filtered_layer_is_refused(polygons: QgsVectorLayer) -> None:
    polygons.setSubsetString("\"class\" = 'dark'")
    with pytest.raises(LayerError, match="has a filter"):
        polygon_source(polygons)


def test_a_raster_that_is_not_a_file_is_refused(tmp_path: Path) -> None:
    vrt = gdal.Translate("/vsimem/in-memory.tif", str(two_class_raster(tmp_path / "x.tif")))
    vrt = None  # noqa: F841
    layer = QgsRasterLayer("/vsimem/in-memory.tif", "in memory", "gdal")
    assert layer.isValid()
    with pytest.raises(LayerError, match="not a local file"):
        raster_path(layer)


# --- result layers ---------------------------------------------------------------------------------

def _classified(tmp_path: Path) -> tuple[str, str]:
    """A small uint8 class map and a float confidence raster, as the backend writes them."""
    src = str(two_class_raster(tmp_path / "scene.tif"))
    classes = gdal.Translate(str(tmp_path / "classes.tif"), src, bandList=[1], outputType=gdal.GDT_Byte,
                             scaleParams=[[0, 1000, 1, 2]])
    classes = None  # noqa: F841
    confidence = gdal.Translate(str(tmp_path / "confidence.tif"), src, bandList=[1], outputType=gdal.GDT_Float32,
                                scaleParams=[[0, 1000, 0, 1]])
    confidence = None  # noqa: F841
    return str(tmp_path / "classes.tif"), str(tmp_path / "confidence.tif")


def test_result_layers_are_styled_and_grouped(project: QgsProject, tmp_path: Path) -> None:
    classes_path, confidence_path = _classified(tmp_path)
    info = ClassInfo(("bright", "dark"), (1, 2), ("#ddeeff", "#112233"))
    layer, confidence = add_result_layers(classes_path, info, confidence_path, name="map", project=project)
    assert isinstance(layer.renderer(), QgsPalettedRasterRenderer)
    assert palette_of(layer) == {1: ("bright", "#ddeeff"), 2: ("dark", "#112233")}
    assert isinstance(confidence.renderer(), QgsSingleBandPseudoColorRenderer)
    shader = confidence.renderer().shader().rasterShaderFunction()
    assert (shader.minimumValue(), shader.maximumValue()) == (0.0, 1.0)
    assert shader.colorRampItemList()[0].color != shader.colorRampItemList()[-1].color
    group = project.layerTreeRoot().findGroup(GROUP_NAME)
    assert group is not None and [n.layerId() for n in group.findLayers()] == [layer.id(), confidence.id()]
    assert group.findLayer(layer.id()).isVisible()
    assert not group.findLayer(confidence.id()).itemVisibilityChecked(), "confidence is off by default"

    again, _ = add_result_layers(classes_path, info, None, name="map 2", project=project)
    assert len(project.layerTreeRoot().findGroups()) == 1, "one GeoSSL group, reused"
    assert group.findLayers()[0].layerId() == again.id(), "the newest result on top"


def test_an_unreadable_result_is_a_layer_error(project: QgsProject, tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="cannot open"):
        add_result_layers(str(tmp_path / "missing.tif"), None, project=project)


def test_class_info_from_the_backends_table() -> None:
    info = ClassInfo.from_dict({"names": ["a", "b"], "values": [3, 7], "colors": ["#000000", "#ffffff"]})
    assert info == ClassInfo(("a", "b"), (3, 7), ("#000000", "#ffffff"))
    with pytest.raises(ValueError):
        ClassInfo.from_dict({"names": ["a", "b"], "values": [1], "colors": ["#000000", "#ffffff"]})


# --- the panel's pickers ----------------------------------------------------------------------------

def test_pickers_offer_rasters_and_polygons_where_each_belongs(project: QgsProject, iface: Any, qtbot: Any,
                                                                raster: QgsRasterLayer, polygons: QgsVectorLayer,
                                                                tmp_path: Path) -> None:
    points = QgsVectorLayer("Point?crs=EPSG:32633", "points", "memory")
    lines = QgsVectorLayer("LineString?crs=EPSG:32633", "lines", "memory")
    categorize(polygons, "class", COLOURS)
    project.addMapLayers([raster, polygons, points, lines])
    dock = GeoSSLDock(iface.messageBar(), iface.mainWindow())
    qtbot.addWidget(dock)
    try:
        finetune = dock.finetune_section
        assert finetune.rasters.layer_ids() == [raster.id()]
        assert dock.pretrain_section.rasters.layer_ids() == [raster.id()]
        polygon_choices = [finetune.polygons.layer(i) for i in range(finetune.polygons.count())]
        assert [layer.id() for layer in polygon_choices if layer] == [polygons.id()]
        raster_choices = [dock.segment_section.raster.layer(i) for i in range(dock.segment_section.raster.count())]
        assert [layer.id() for layer in raster_choices if layer] == [raster.id()]

        finetune.polygons.setLayer(polygons)
        assert finetune.class_field.currentField() == "class", "the styled field is preselected"
        assert finetune.colours() == COLOURS
        assert "#112233" in finetune.colours_label.text()

        second = QgsRasterLayer(raster.source(), "second", "gdal")
        project.addMapLayer(second)
        assert finetune.rasters.layer_ids() == [raster.id(), second.id()], "the checklist follows the project"
    finally:
        dock.shutdown()


def test_finetune_parameters_are_exactly_the_schema_fields(project: QgsProject, iface: Any, qtbot: Any,
                                                            raster: QgsRasterLayer, polygons: QgsVectorLayer,
                                                            tmp_path: Path) -> None:
    categorize(polygons, "class", COLOURS)
    project.addMapLayers([raster, polygons])
    dock = GeoSSLDock(iface.messageBar(), iface.mainWindow())
    qtbot.addWidget(dock)
    try:
        section = dock.finetune_section
        section.rasters.set_checked([raster])
        section.polygons.setLayer(polygons)
        section.use_steps(4)
        section.tile.setValue(32)
        section.batch.setValue(2)
        params = section.params(out=str(tmp_path / "m.pt"))
        assert params == {"rasters": [str(tmp_path / "scene.tif")], "labels": str(tmp_path / "labels.gpkg"),
                          "layer": "polygons", "class_field": "class", "encoder": "resnet18", "tile": 32,
                          "batch": 2, "steps": 4, "colours": COLOURS, "out": str(tmp_path / "m.pt")}
    finally:
        dock.shutdown()


def test_a_scratch_polygon_layer_is_reported_in_the_message_bar(project: QgsProject, iface: Any, qtbot: Any,
                                                                 raster: QgsRasterLayer) -> None:
    scratch = QgsVectorLayer("Polygon?crs=EPSG:32633&field=class:string", "my drawing", "memory")
    project.addMapLayers([raster, scratch])
    dock = GeoSSLDock(iface.messageBar(), iface.mainWindow())
    qtbot.addWidget(dock)
    try:
        section = dock.finetune_section
        section.rasters.set_checked([raster])
        section.polygons.setLayer(scratch)
        assert section.params() is None
        from qgis.core import Qgis

        messages = iface.messageBar().get_messages(Qgis.Critical)
        assert len(messages) == 1 and "'my drawing' is a temporary scratch layer" in messages[0]
        assert "Make Permanent" in messages[0]
    finally:
        dock.shutdown()


@pytest.mark.parametrize("save", [True, False])
def test_unsaved_edits_are_saved_only_if_the_user_agrees(project: QgsProject, iface: Any, qtbot: Any,
                                                         raster: QgsRasterLayer, polygons: QgsVectorLayer,
                                                         save: bool) -> None:
    project.addMapLayers([raster, polygons])
    dock = GeoSSLDock(iface.messageBar(), iface.mainWindow())
    qtbot.addWidget(dock)
    try:
        section = dock.finetune_section
        asked: list[str] = []
        section.save_question = lambda layer: asked.append(layer.name()) or save
        section.rasters.set_checked([raster])
        section.polygons.setLayer(polygons)
        polygons.startEditing()
        polygons.changeAttributeValue(next(polygons.getFeatures()).id(), polygons.fields().indexOf("class"),
                                      "bright")
        params = section.params(out="/tmp/unused.pt")
        assert asked == ["labels"]
        if save:
            assert params is not None and params["labels"].endswith("labels.gpkg")
            assert not polygons.isModified() and polygons.isEditable(), "saved, still in edit mode"
        else:
            assert params is None and polygons.isModified()
            from qgis.core import Qgis

            assert "unsaved edits" in iface.messageBar().get_messages(Qgis.Critical)[0]
        polygons.rollBack()
    finally:
        dock.shutdown()


def test_colour_of_a_renderer_category_is_read_not_guessed(polygons: QgsVectorLayer) -> None:
    categorize(polygons, "class", COLOURS)
    renderer = polygons.renderer()
    renderer.updateCategorySymbol(0, QgsFillSymbol.createSimple({"color": "#abcdef"}))
    assert class_colours(polygons, "class")["dark"] == QColor("#abcdef").name()
