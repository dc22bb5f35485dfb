"""One recipe: the panel and Processing send only what the user chose, the backend's defaults do the rest;
the class field is guessed, never ``fid``; the dock fits its default width. Real widgets, a stub backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from geossl_plugin.backend import BackendInfo
from geossl_plugin.layers import FieldStats, class_field_of, guess_class_field
from geossl_plugin.panel import GeoSSLDock
from geossl_plugin.panel.finetune_section import BUDGET_HINT, FinetuneSection
from geossl_plugin.panel.segment_section import TTA_TEXT, SegmentSection
from geossl_plugin.processing.algorithms import FinetuneAlgorithm, SegmentAlgorithm
from osgeo import ogr
from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)

from .gdal_data import _box, _srs, class_polygons, two_class_raster
from .test_layers import COLOURS, categorize

# What the real service's /info says (FinetuneParams / PredictParams defaults), trimmed to what is read.
FINETUNE_DEFAULTS = {"minutes": 8.0, "steps": None, "epochs": None, "max_steps": None, "tile": 256, "batch": 8,
                     "encoder": "resnet18", "lr": 0.001, "ema": 0.0, "class_balance": 1.0}
RECIPE_ONLY = set(FINETUNE_DEFAULTS) - {"minutes", "steps", "tile", "batch", "encoder"}


def info(defaults: dict[str, Any] | None = None, tta: bool = False) -> BackendInfo:
    return BackendInfo(path="http://127.0.0.1:1", version="0.1.0", device="cpu", device_name="CPU",
                       raw={"finetune_defaults": FINETUNE_DEFAULTS if defaults is None else defaults,
                            "job_types": {"predict": {"schema": {"properties": {"tta": {"default": tta}}}}}})


MODELS = [{"path": "/m.pt", "name": "m", "kind": "segmentation"}]


class StubClient:
    """Answers the model list at once (one model); the sections ask for nothing else here."""

    def get(self, path: str, on_ok: Any = None, on_error: Any = None, connection: Any = None) -> None:
        on_ok(MODELS if path == "models" else {})


@pytest.fixture
def layers(tmp_path: Path, project: QgsProject) -> tuple[QgsRasterLayer, QgsVectorLayer]:
    raster = QgsRasterLayer(str(two_class_raster(tmp_path / "scene.tif")), "scene", "gdal")
    polygons = QgsVectorLayer(f"{class_polygons(tmp_path / 'labels.gpkg')}|layername=polygons", "labels", "ogr")
    categorize(polygons, "class", COLOURS)
    project.addMapLayers([raster, polygons])
    return raster, polygons


@pytest.fixture
def finetune(qtbot: Any, project: QgsProject, layers: Any) -> FinetuneSection:
    section = FinetuneSection(StubClient(), jobs=None, project=project)  # type: ignore[arg-type]
    qtbot.addWidget(section)
    section.rasters.set_checked([layers[0]])
    section.polygons.setLayer(layers[1])
    return section


def choose(section: FinetuneSection, text: str) -> None:
    index = section.duration.findText(text)
    assert index >= 0, [section.duration.itemText(i) for i in range(section.duration.count())]
    section.duration.setCurrentIndex(index)


# --- fine-tune: budget, tile, batch -------------------------------------------------------------------

def test_the_budget_combo_sends_only_what_was_chosen(finetune: FinetuneSection) -> None:
    assert finetune.duration.currentText() == "Default (the backend's)", "nothing is promised before connecting"
    finetune.set_backend(info())
    texts = [finetune.duration.itemText(i) for i in range(finetune.duration.count())]
    assert texts == ["Default (≈ 8 min)", "2 min (quick look)", "15 min", "30 min", "1 h", "Steps…"]
    params = finetune.params(out="/m.pt")
    assert params is not None and not {"minutes", "steps", "epochs", "max_steps"} & set(params)
    assert finetune.budget_hint.isVisibleTo(finetune) and not finetune.budget.isVisibleTo(finetune)
    assert BUDGET_HINT in finetune.budget_hint.text()

    choose(finetune, "15 min")
    params = finetune.params()
    assert params["minutes"] == 15.0 and not {"steps", "epochs"} & set(params)
    choose(finetune, "1 h")
    assert finetune.params()["minutes"] == 60.0
    choose(finetune, "Steps…")
    assert finetune.budget.isVisibleTo(finetune) and not finetune.budget_hint.isVisibleTo(finetune)
    params = finetune.params()
    assert params["steps"] == 300 and "minutes" not in params
    finetune.use_steps(7, "epochs")
    params = finetune.params()
    assert params["epochs"] == 7 and not {"steps", "minutes"} & set(params)
    finetune.set_backend(info({"minutes": 90.0, "tile": 256, "batch": 8}))
    assert finetune.duration.itemText(0) == "Default (≈ 1 h 30 min)", "the label follows the backend"


def test_tile_and_batch_follow_the_backend_and_are_sent_only_when_changed(finetune: FinetuneSection) -> None:
    assert (finetune.tile.value(), finetune.batch.value()) == (128, 8), "today's numbers until a backend says"
    unconnected = finetune.params()
    assert (unconnected["tile"], unconnected["batch"]) == (128, 8), "no backend default known: sent as shown"
    finetune.set_backend(info())
    assert (finetune.tile.value(), finetune.batch.value()) == (256, 8)
    params = finetune.params()
    assert not {"tile", "batch"} & set(params), "the backend's own defaults are not sent back"
    assert not RECIPE_ONLY & set(params), "nothing else of the recipe is ever sent"
    finetune.tile.setValue(64)
    params = finetune.params()
    assert params["tile"] == 64 and "batch" not in params
    # A backend with a re-tuned recipe: the untouched batch follows it, the tile the user set stays.
    finetune.set_backend(info({"minutes": 8.0, "tile": 192, "batch": 16}))
    assert (finetune.tile.value(), finetune.batch.value()) == (64, 16)
    params = finetune.params()
    assert params["tile"] == 64 and "batch" not in params
    finetune.batch.setValue(8)
    assert finetune.params()["batch"] == 8, "the old default is a change now"
    finetune.set_backend(info({}))  # a backend too old to state its defaults: what is shown is sent
    params = finetune.params()
    assert (params["tile"], params["batch"]) == (64, 8) and finetune.duration.itemText(0) == "Default (the backend's)"


def test_the_dock_fits_its_default_width(finetune: FinetuneSection, iface: Any, qtbot: Any) -> None:
    """Nothing cut off at the right edge: every section's minimum width fits a 360-px dock (layers loaded,
    a backend connected, every section unfolded), and a 380-px dock needs no horizontal scrolling."""
    finetune.set_backend(info())
    for choice in ("Default (≈ 8 min)", "Steps…"):
        choose(finetune, choice)
        assert finetune.minimumSizeHint().width() <= 360, (choice, finetune.minimumSizeHint())
    dock = GeoSSLDock(iface.messageBar(), iface.mainWindow())
    qtbot.addWidget(dock)
    try:
        for section in dock.job_sections():
            section.client = StubClient()
            section.set_backend(info())
            getattr(section, "setCollapsed", lambda _c: None)(False)
        dock.finetune_section.polygons.setLayer(finetune.polygons.currentLayer())
        dock.finetune_section.use_steps(300)
        content = dock.widget().widget()
        widths = {type(s).__name__: s.minimumSizeHint().width() for s in (dock.backend_section, *dock.job_sections())}
        assert max(widths.values()) <= 360 and content.minimumSizeHint().width() <= 360, widths
        dock.resize(380, 900)
        dock.show()
        qtbot.waitUntil(lambda: dock.widget().viewport().width() > 0)
        assert dock.widget().horizontalScrollBar().maximum() == 0, "nothing hidden beyond the right edge"
    finally:
        dock.shutdown()


# --- segment: TTA ---------------------------------------------------------------------------------------

@pytest.fixture
def segment(qtbot: Any, project: QgsProject, layers: Any) -> SegmentSection:
    section = SegmentSection(StubClient(), jobs=None, project=project)  # type: ignore[arg-type]
    qtbot.addWidget(section)
    section._on_models(MODELS)
    section.raster.setLayer(layers[0])
    return section


def test_smoother_map_sends_tta_only_when_it_differs_from_the_backend(segment: SegmentSection) -> None:
    assert segment.tta.text() == TTA_TEXT and not segment.tta.isChecked()
    segment.set_backend(info(tta=False))
    assert not segment.tta.isChecked() and "tta" not in segment.params()
    segment.tta.setChecked(True)
    assert segment.params()["tta"] is True
    segment.tta.setChecked(False)
    segment.set_backend(info(tta=True))  # a backend whose default is TTA: the box follows, nothing is sent
    assert segment.tta.isChecked() and "tta" not in segment.params()
    segment.tta.setChecked(False)
    assert segment.params()["tta"] is False
    segment.set_backend(None)
    segment.set_backend(info(tta=True))
    assert not segment.tta.isChecked(), "the user's choice survives a reconnection"


def test_clicking_the_wrapped_text_toggles_the_box(segment: SegmentSection, qtbot: Any) -> None:
    from qgis.PyQt.QtCore import Qt

    segment.show()
    qtbot.mouseClick(segment.tta.label, Qt.LeftButton)
    assert segment.tta.isChecked()
    qtbot.mouseClick(segment.tta.label, Qt.LeftButton)
    assert not segment.tta.isChecked()


# --- Processing -----------------------------------------------------------------------------------------

def test_processing_finetune_leaves_the_recipe_to_the_backend(layers: Any, tmp_path: Path) -> None:
    raster, polygons = layers
    algorithm = FinetuneAlgorithm()
    algorithm.initAlgorithm()
    for name in ("MINUTES", "STEPS", "TILE", "BATCH"):
        assert algorithm.parameterDefinition(name).defaultValue() == 0, name
    assert "0 minutes and 0 steps" in algorithm.shortHelpString()
    context = QgsProcessingContext()
    base = {"RASTERS": [raster.source()], "POLYGONS": polygons, "CLASS_FIELD": "class", "ENCODER": 0,
            "ENCODER_WEIGHTS": 0, "OUTPUT": str(tmp_path / "m.pt")}
    params = algorithm.job_params(base | {"MINUTES": 0, "STEPS": 0, "TILE": 0, "BATCH": 0}, context)
    assert not {"minutes", "steps", "epochs", "tile", "batch"} & set(params)
    assert params["class_field"] == "class" and params["colours"] == COLOURS
    assert not {"minutes", "steps", "tile", "batch"} & set(algorithm.job_params(base, context)), "omitted = 0"
    params = algorithm.job_params(base | {"MINUTES": 15.0, "TILE": 64}, context)
    assert params["minutes"] == 15.0 and params["tile"] == 64 and not {"steps", "batch"} & set(params)
    params = algorithm.job_params(base | {"STEPS": 40, "BATCH": 2}, context)
    assert params["steps"] == 40 and params["batch"] == 2 and "minutes" not in params
    with pytest.raises(QgsProcessingException, match="either in minutes or in steps"):
        algorithm.job_params(base | {"MINUTES": 5.0, "STEPS": 40}, context)


def test_processing_segment_sends_tta_only_when_ticked(layers: Any, tmp_path: Path) -> None:
    algorithm = SegmentAlgorithm()
    algorithm.initAlgorithm()
    assert algorithm.parameterDefinition("TTA").defaultValue() is False
    base = {"MODEL": "/m.pt", "INPUT": layers[0], "OUTPUT": str(tmp_path / "c.tif")}
    context = QgsProcessingContext()
    assert "tta" not in algorithm.job_params(base, context)
    assert "tta" not in algorithm.job_params(base | {"TTA": False}, context)
    assert algorithm.job_params(base | {"TTA": True}, context)["tta"] is True


# --- the class field ---------------------------------------------------------------------------------

def stats(*fields: tuple) -> list[FieldStats]:
    return [FieldStats(*f) for f in fields]


def test_class_like_names_win_and_class_first() -> None:
    osm = stats(("fid", False, 423, True), ("osm_id", True, 423), ("code", False, 8), ("fclass", True, 8),
                ("name", True, 97))
    assert guess_class_field(osm, 423) == "fclass"
    assert guess_class_field(stats(("Label", True, 5), ("CLASS", True, 3)), 40) == "CLASS", "exact 'class' first"
    assert guess_class_field(stats(("landuse", True, 4), ("Type", True, 3)), 40) == "landuse"
    assert guess_class_field(stats(("type", True, 3), ("landuse", True, 4)), 40) == "landuse", "by name rank"
    assert guess_class_field(stats(("lc", False, 6)), 40) == "lc", "an integer class code is a class field"
    assert guess_class_field(stats(("class", True, 0)), 0) == "class", "a new, empty label layer"
    assert guess_class_field(osm, 423, styled="code") == "code", "the user's categorized style comes first"
    assert guess_class_field(osm, 423, styled="gone") == "fclass"


def test_identifiers_are_never_the_class_field() -> None:
    assert guess_class_field(stats(("fid", False, 423, True), ("id", False, 423)), 423) is None
    # A class-like name with a value per polygon is an identifier too ("name" of OSM features).
    assert guess_class_field(stats(("fid", False, 50, True), ("name", True, 50)), 50) is None
    assert guess_class_field(stats(("name", True, 300)), 423) is None, "more classes than half the polygons"
    assert guess_class_field(stats(("class", True, 4)), 4) == "class", "a few polygons may each be a class"
    assert guess_class_field(stats(("ref", False, 9, True), ("class", True, 3)), 30) == "class"


def test_without_a_class_like_name_a_text_field_with_few_values() -> None:
    fields = stats(("fid", False, 200, True), ("descr", True, 200), ("area", False, 150), ("cover", True, 3),
                   ("zone", True, 7))
    assert guess_class_field(fields, 200) == "cover", "the first text field with 2..50 distinct values"
    assert guess_class_field(stats(("one", True, 1), ("many", True, 60), ("ok", True, 2)), 200) == "ok"
    assert guess_class_field(stats(("cover", True, 3)), 4) is None, "3 values on 4 polygons: at most half"
    assert guess_class_field(stats(("number", False, 3)), 100) is None, "by values alone: text fields only"


def osm_like_labels(path: Path) -> Path:
    """``labels_train.gpkg`` in small: fid (the key), osm_id (unique), code, fclass, name — 12 polygons."""
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    lyr = ds.CreateLayer("labels_train", _srs(), ogr.wkbPolygon)
    for name, kind in (("osm_id", ogr.OFTString), ("code", ogr.OFTInteger), ("fclass", ogr.OFTString),
                       ("name", ogr.OFTString)):
        lyr.CreateField(ogr.FieldDefn(name, kind))
    classes = ("forest", "farmland", "residential")
    for i in range(12):
        feature = ogr.Feature(lyr.GetLayerDefn())
        feature.SetField("osm_id", str(1000 + i))
        feature.SetField("code", 7200 + i % 3)
        feature.SetField("fclass", classes[i % 3])
        if i % 4:
            feature.SetField("name", f"place {i}")
        feature.SetGeometry(_box(i * 4, 0, i * 4 + 3, 8))
        lyr.CreateFeature(feature)
    ds = None
    return path


def test_the_section_picks_fclass_not_fid(qtbot: Any, project: QgsProject, tmp_path: Path) -> None:
    layer = QgsVectorLayer(f"{osm_like_labels(tmp_path / 'labels_train.gpkg')}|layername=labels_train",
                           "labels_train", "ogr")
    assert layer.isValid() and layer.fields().names()[0] == "fid" and layer.primaryKeyAttributes() == [0]
    assert class_field_of(layer) == "fclass"
    project.addMapLayer(layer)
    section = FinetuneSection(StubClient(), jobs=None, project=project)  # type: ignore[arg-type]
    qtbot.addWidget(section)
    section.polygons.setLayer(layer)
    assert section.class_field.currentField() == "fclass"
    assert "forest" in section.counts_label.text() and "1000" not in section.counts_label.text()
    categorize(layer, "code", {"7200": "#ff0000", "7201": "#00ff00", "7202": "#0000ff"})
    section.polygons.setLayer(None)
    section.polygons.setLayer(layer)
    assert section.class_field.currentField() == "code", "a categorized style still decides"


def test_no_guess_leaves_the_field_to_the_user(qtbot: Any, project: QgsProject, tmp_path: Path) -> None:
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp_path / "ids.gpkg"))
    lyr = ds.CreateLayer("ids", _srs(), ogr.wkbPolygon)
    lyr.CreateField(ogr.FieldDefn("ref", ogr.OFTString))
    for i in range(8):
        feature = ogr.Feature(lyr.GetLayerDefn())
        feature.SetField("ref", f"r{i}")
        feature.SetGeometry(_box(i * 4, 0, i * 4 + 3, 8))
        lyr.CreateFeature(feature)
    ds = None
    layer = QgsVectorLayer(f"{tmp_path / 'ids.gpkg'}|layername=ids", "ids", "ogr")
    project.addMapLayer(layer)
    section = FinetuneSection(StubClient(), jobs=None, project=project)  # type: ignore[arg-type]
    qtbot.addWidget(section)
    errors: list[Any] = []
    section.error.connect(errors.append)
    section.polygons.setLayer(layer)
    assert section.class_field.currentField() == "", "neither fid nor the unique 'ref'"
    raster = QgsRasterLayer(str(two_class_raster(tmp_path / "scene.tif")), "scene", "gdal")
    project.addMapLayer(raster)
    section.rasters.set_checked([raster])
    assert section.params() is None and "holds each polygon's class" in str(errors[-1])
