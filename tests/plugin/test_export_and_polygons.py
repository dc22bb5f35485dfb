"""Issue #11 parts 1–2 in QGIS: "Export to ONNX (Deepness)" and "Also write polygons" in the Segment
section, and the matching Processing algorithms, against the real backend (fixtures of test_flow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geossl_plugin.layers import GROUP_NAME
from geossl_plugin.panel import GeoSSLDock
from qgis.core import Qgis, QgsCategorizedSymbolRenderer, QgsProject, QgsVectorLayer

from . import test_flow as flow
from .test_layers import COLOURS

JOB_MS = flow.JOB_MS
pytestmark = flow.pytestmark
# The real service, its data folder, the scene, a dock connected to it and a tiny model (see test_flow).
service, data_dir, scene, layers, dock, tiny_model = (flow.service, flow.data_dir, flow.scene, flow.layers,
                                                      flow.dock, flow.tiny_model)
qgis_processing = flow.qgis_processing  # Processing with the GeoSSL provider registered


def _critical(iface: Any) -> list[str]:
    return iface.messageBar().get_messages(Qgis.Critical)


def test_segment_with_polygons_adds_a_styled_vector_layer(tiny_model: str, dock: GeoSSLDock, layers: Any,
                                                          qtbot: Any, iface: Any, tmp_path: Path) -> None:
    raster, _polygons = layers  # the model exists before the dock connects: it is in the list
    segment = dock.segment_section
    qtbot.waitUntil(lambda: segment.select_model(tiny_model), timeout=10_000)
    segment.raster.setLayer(raster)
    segment.output.setFilePath(str(tmp_path / "map.tif"))
    segment.polygons.setChecked(True)
    with qtbot.waitSignal(dock.jobs_section.job_finished, timeout=JOB_MS) as finished:
        segment.run_button.click()
    job = finished.args[0]
    assert job["state"] == "succeeded", job.get("error")
    assert job["params"]["vector"] == str(tmp_path / "map_polygons.gpkg")
    group = QgsProject.instance().layerTreeRoot().findGroup(GROUP_NAME)
    polygons = group.findLayers()[0].layer()  # on top of the map
    assert isinstance(polygons, QgsVectorLayer) and polygons.isValid()
    assert polygons.source().startswith(str(tmp_path / "map_polygons.gpkg"))
    assert polygons.crs().authid() == "EPSG:32633" and polygons.featureCount() >= 1
    assert {f.name() for f in polygons.fields()} >= {"class_id", "class_name", "confidence", "area"}
    renderer = polygons.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer) and renderer.classAttribute() == "class_id"
    styled = {c.label(): c.symbol().color().name() for c in renderer.categories()}
    assert styled == COLOURS, "the model's class colours"
    total = sum(f["area"] for f in polygons.getFeatures())
    assert abs(total - raster.extent().area()) < 1e-6 * raster.extent().area()  # the whole scene, no gaps
    assert _critical(iface) == []


def test_export_to_onnx_from_the_model_list(tiny_model: str, dock: GeoSSLDock, qtbot: Any, iface: Any) -> None:
    segment = dock.segment_section
    qtbot.waitUntil(lambda: segment.select_model(tiny_model), timeout=10_000)
    assert segment.export_button.isEnabled()
    with qtbot.waitSignal(dock.jobs_section.job_finished, timeout=JOB_MS) as finished:
        segment.export_button.click()
    job = finished.args[0]
    assert job["type"] == "export" and job["state"] == "succeeded", job.get("error")
    onnx = Path(tiny_model).with_suffix(".onnx")
    assert job["result"]["onnx"] == str(onnx) and onnx.stat().st_size > 1_000_000
    qtbot.waitUntil(lambda: any(str(onnx) in m for m in iface.messageBar().get_messages(Qgis.Info)), timeout=5_000)
    assert _critical(iface) == []


def test_processing_export_and_segment_polygons(data_dir: Path, tiny_model: str, scene: tuple[str, str],
                                                tmp_path: Path, qgis_processing: Any) -> None:
    import processing

    out = processing.run("geossl:export_onnx", {"MODEL": tiny_model, "TILE": 64, "OUTPUT": str(tmp_path / "m.onnx")})
    assert out["OUTPUT"] == str(tmp_path / "m.onnx") and (tmp_path / "m.onnx").stat().st_size > 1_000_000
    out = processing.run("geossl:segment", {"MODEL": tiny_model, "INPUT": scene[0], "OUTPUT": str(tmp_path / "p.tif"),
                                            "POLYGONS": str(tmp_path / "p_polygons.gpkg"), "MIN_AREA": 500.0})
    assert out["POLYGONS"] == str(tmp_path / "p_polygons.gpkg")
    layer = QgsVectorLayer(out["POLYGONS"], "p", "ogr")
    assert layer.isValid() and layer.featureCount() >= 1
    assert min(f["area"] for f in layer.getFeatures()) >= 500.0  # sieved
