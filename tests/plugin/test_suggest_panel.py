"""Where to label next in the panel and in Processing, against the real backend: suggestions come back as a
styled, rank-labelled layer with a zoom button per row, and "Continue training" warm-starts the same model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geossl_plugin import connection as conn
from geossl_plugin.layers import GROUP_NAME
from geossl_plugin.panel import GeoSSLDock
from qgis.core import (
    Qgis,
    QgsProcessingContext,
    QgsProject,
    QgsRectangle,
    QgsSingleSymbolRenderer,
    QgsVectorLayer,
)
from qgis.gui import QgsMapCanvas

from . import test_flow as flow
from .test_flow import JOB_MS, TINY, _critical, _run_job
from .test_layers import COLOURS

# One real service for this module, the scene, its layers and the dock: the fixtures of test_flow.
service, data_dir, scene, layers, dock = flow.service, flow.data_dir, flow.scene, flow.layers, flow.dock
qgis_processing = flow.qgis_processing  # with the GeoSSL provider registered
pytestmark = flow.pytestmark

_model: dict[str, str] = {}


def _trained(service: conn.Discovery, scene: tuple[str, str]) -> str:
    if "path" not in _model:
        out = str(service.path.parent / "models" / "suggest_fixture.pt")
        _run_job(service, "finetune", {"rasters": [scene[0]], "labels": scene[1], "class_field": "class",
                                       "out": out, "colours": COLOURS, **TINY})
        _model["path"] = out
    return _model["path"]


def test_suggest_then_continue_training_through_the_panel(dock: GeoSSLDock, layers: Any, service: conn.Discovery,
                                                           scene: tuple[str, str], qtbot: Any, iface: Any) -> None:
    raster, polygons = layers
    model = _trained(service, scene)
    section = dock.suggest_section
    canvas = QgsMapCanvas()
    canvas.setDestinationCrs(raster.crs())
    section.set_map_canvas(canvas)
    section.refresh_models()
    qtbot.waitUntil(lambda: section.select_model(model), timeout=10_000)
    section.raster.setLayer(raster)
    section.polygons.setLayer(polygons)
    section.class_field.setField("class")
    section.count.setValue(3)
    section.window.setValue(16)
    assert section.score.currentData() == "drawable"  # the backend's default, first in the combo
    section.score.setCurrentIndex(section.score.findData("uncertainty"))
    with qtbot.waitSignal(dock.jobs_section.job_finished, timeout=JOB_MS) as finished:
        section.run_button.click()
    job = finished.args[0]
    assert job["state"] == "succeeded", job.get("error")
    assert job["params"]["labels"] == scene[1] and job["params"]["window"] == 16
    assert job["params"]["score"] == "uncertainty" and job["result"]["score"] == "uncertainty"
    assert _critical(iface) == []
    assert section.table.rowCount() == 2, "a 64-px scene with four polygons has room for two 16-px squares"
    assert any("Only 2 of 3" in m for m in iface.messageBar().get_messages(Qgis.Warning))

    layer = section.result_layer
    group = QgsProject.instance().layerTreeRoot().findGroup(GROUP_NAME)
    assert isinstance(layer, QgsVectorLayer) and group.findLayer(layer.id()) is not None
    assert layer.featureCount() == 2 and layer.crs().authid() == "EPSG:32633"
    assert isinstance(layer.renderer(), QgsSingleSymbolRenderer) and layer.labelsEnabled()
    assert layer.labeling().settings().fieldName == "rank"
    assert " vs " in section.table.item(0, 1).text() and "margin" in section.table.item(0, 1).text()
    assert "drawable as" in section.table.item(0, 1).text()
    assert section.table.item(0, 0).text() == "1"

    button = section.table.cellWidget(1, 2)
    button.click()  # zoom to the second suggestion
    square = QgsRectangle(*job["result"]["items"][1]["bounds"])
    assert canvas.extent().contains(square) and canvas.extent().width() < 3 * square.width()
    assert section.table.currentRow() == 1

    section.steps.setValue(2)
    with qtbot.waitSignal(dock.jobs_section.job_finished, timeout=JOB_MS) as finished:
        section.continue_button.click()
    cont = finished.args[0]
    assert cont["state"] == "succeeded", cont.get("error")
    assert cont["params"]["init_model"] == model and cont["params"]["steps"] == 2
    assert cont["params"]["encoder"] == "resnet18" and cont["params"]["tile"] == TINY["tile"]
    new = cont["result"]["model"]
    assert Path(new).name.startswith("suggest_fixture-continued") and Path(new).is_file()
    qtbot.waitUntil(lambda: section.model.currentData() == new, timeout=10_000)  # ready for the next round
    assert _critical(iface) == []


def test_processing_suggest(service: conn.Discovery, data_dir: Path, scene: tuple[str, str], tmp_path: Path,
                            qgis_processing: Any) -> None:
    import processing
    from geossl_plugin.processing.algorithms import SUGGEST_SCORES, SuggestAlgorithm

    algorithm = SuggestAlgorithm()
    algorithm.initAlgorithm()
    assert [v for _, v in SUGGEST_SCORES] == ["drawable", "uncertainty"]  # SuggestParams.score, default first
    model = _trained(service, scene)
    plain = {"MODEL": model, "INPUT": scene[0], "K": 2, "WINDOW": 16, "OUTPUT": str(tmp_path / "x.gpkg")}
    assert algorithm.job_params(plain, QgsProcessingContext())["score"] == "drawable"
    assert algorithm.job_params(plain | {"SCORE": 1}, QgsProcessingContext())["score"] == "uncertainty"
    out = processing.run("geossl:suggest", {"MODEL": model, "INPUT": scene[0],
                                            "POLYGONS": f"{scene[1]}|layername=polygons", "CLASS_FIELD": "class",
                                            "K": 2, "WINDOW": 16, "OUTPUT": str(tmp_path / "next.gpkg")})
    assert out["OUTPUT"] == str(tmp_path / "next.gpkg") and out["COUNT"] == 2
    layer = QgsVectorLayer(f"{out['OUTPUT']}|layername=label here next", "s", "ogr")
    assert layer.isValid() and layer.featureCount() == 2
    assert {f["rank"] for f in layer.getFeatures()} == {1, 2}
    assert all(f["drawable_m2"] == 100.0 * f["drawable_px"] > 0 for f in layer.getFeatures())  # 10-m pixels
    assert all(f"drawable as {f['drawable_class']}" in f["reason"] for f in layer.getFeatures())
