"""End to end against the real backend: ``geossl serve`` from backend/.venv, tiny data, the real panel.

One service for the module (starting one imports torch: seconds on 2 cores); each test's panel
finds it through the discovery file in the shared data folder, exactly as a second QGIS window or
a Processing run would. Budgets are tiny (4 steps, 32-px tiles, batch 2): this checks the
plumbing — parameters, jobs, progress, cancel, result layers — not accuracy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from geossl_plugin import connection as conn
from geossl_plugin.backend import default_backend_path
from geossl_plugin.client import BlockingClient
from geossl_plugin.jobs import job_progress
from geossl_plugin.launcher import launch_commands
from geossl_plugin.layers import GROUP_NAME, palette_of
from geossl_plugin.panel import GeoSSLDock
from qgis.core import (
    Qgis,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsSettings,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)

from .conftest import REPO
from .gdal_data import class_polygons, two_class_raster
from .test_layers import COLOURS, categorize

JOB_MS = 180_000  # a fine-tune job on 2 busy cores, with margin
TINY = {"steps": 4, "tile": 32, "batch": 2}

BACKEND = default_backend_path()
pytestmark = pytest.mark.skipif(BACKEND is None, reason="the backend venv (backend/.venv) is not installed")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[conn.Discovery]:
    """The real service, started like the panel starts it (CLI subcommand, else ``python -m``)."""
    folder = tmp_path_factory.mktemp("service")
    log = open(folder / "service-stderr.log", "w")  # noqa: SIM115 - closed below
    from geossl_plugin.backend import backend_environ

    process = None
    for program, arguments in launch_commands(str(BACKEND), folder):
        process = subprocess.Popen([program, *arguments], stdout=subprocess.DEVNULL, stderr=log,
                                   env=backend_environ())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            found = conn.read_discovery(folder / conn.DISCOVERY_FILE)
            if found is not None and found.pid == process.pid:
                break
            time.sleep(0.1)
        if process.poll() is None:
            break
    assert process is not None and process.poll() is None, (folder / "service-stderr.log").read_text()
    found = conn.read_discovery(folder / conn.DISCOVERY_FILE)
    yield found
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture
def data_dir(service: conn.Discovery, geossl_data_dir: Path) -> Path:
    """Point the plugin at the module's service folder (after the per-test default was set)."""
    QgsSettings().setValue(conn.DATA_DIR_KEY, str(service.path.parent))
    return service.path.parent


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("scene")
    return str(two_class_raster(folder / "scene.tif")), str(class_polygons(folder / "labels.gpkg"))


@pytest.fixture
def layers(scene: tuple[str, str]) -> Iterator[tuple[QgsRasterLayer, QgsVectorLayer]]:
    project = QgsProject.instance()
    project.clear()
    raster = QgsRasterLayer(scene[0], "scene", "gdal")
    polygons = QgsVectorLayer(f"{scene[1]}|layername=polygons", "training polygons", "ogr")
    categorize(polygons, "class", COLOURS)
    project.addMapLayers([raster, polygons])
    yield raster, polygons
    project.clear()


@pytest.fixture
def dock(iface: Any, qtbot: Any, data_dir: Path) -> Iterator[GeoSSLDock]:
    widget = GeoSSLDock(iface.messageBar(), iface.mainWindow())
    qtbot.addWidget(widget)
    widget.show()
    with qtbot.waitSignal(widget.backend_section.connected, timeout=30_000):
        widget.backend_section.connect_button.click()
    assert widget.backend_section.service() is None, "the running service is adopted, not duplicated"
    yield widget
    widget.shutdown()


# Results later tests reuse instead of computing again (each backend job costs seconds here).
_made: dict[str, str] = {}


def _run_job(service: conn.Discovery, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    client = BlockingClient(service.connection)
    job = client.post(f"jobs/{kind}", params)
    deadline = time.monotonic() + JOB_MS / 1000
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
        job = client.get(f"jobs/{job['id']}")
    assert job["state"] == "succeeded", job
    return job


@pytest.fixture
def tiny_model(service: conn.Discovery, scene: tuple[str, str]) -> str:
    """The model the panel test trained, or (when run alone) one trained through the HTTP API."""
    if "model" not in _made:
        out = str(service.path.parent / "models" / "fixture.pt")
        _run_job(service, "finetune", {"rasters": [scene[0]], "labels": scene[1], "class_field": "class",
                                       "out": out, "colours": COLOURS, **TINY})
        _made["model"] = out
    return _made["model"]


@pytest.fixture
def prediction(service: conn.Discovery, tiny_model: str, scene: tuple[str, str],
               tmp_path_factory: pytest.TempPathFactory) -> str:
    """A classified map of the scene (from an earlier test when there is one)."""
    if "map" not in _made:
        out = str(tmp_path_factory.mktemp("map") / "map.tif")
        _run_job(service, "predict", {"model": tiny_model, "raster": scene[0], "out": out})
        _made["map"] = out
    return _made["map"]


def _critical(iface: Any) -> list[str]:
    return iface.messageBar().get_messages(Qgis.Critical)


def _fill_finetune(dock: GeoSSLDock, raster: QgsRasterLayer, polygons: QgsVectorLayer, steps: int) -> None:
    section = dock.finetune_section
    section.rasters.set_checked([raster])
    section.polygons.setLayer(polygons)
    section.use_steps(steps)
    section.tile.setValue(TINY["tile"])
    section.batch.setValue(TINY["batch"])


def test_the_panel_shows_the_backends_recipe(dock: GeoSSLDock) -> None:
    """The real /info: its default budget in the Training combo, FinetuneParams' tile and batch, TTA off."""
    section = dock.finetune_section
    assert section.duration.itemText(0) == "Default (≈ 8 min)" and section.duration.currentIndex() == 0
    assert (section.tile.value(), section.batch.value()) == (128, 8)
    assert not dock.segment_section.tta.isChecked() and dock.segment_section._tta_default is False


def test_finetune_then_segment_through_the_panel(dock: GeoSSLDock, layers: Any, qtbot: Any, iface: Any,
                                                 data_dir: Path, tmp_path: Path) -> None:
    raster, polygons = layers
    _fill_finetune(dock, raster, polygons, TINY["steps"])
    dock.finetune_section.model_name.setText("panel model")
    assert dock.finetune_section.class_field.currentField() == "class"
    jobs = dock.jobs_section
    with qtbot.waitSignal(jobs.job_finished, timeout=JOB_MS) as finished:
        dock.finetune_section.run_button.click()
    job = finished.args[0]
    assert job["state"] == "succeeded", job.get("error")
    model = Path(job["result"]["model"])
    _made["model"] = str(model)
    assert model.parent == data_dir / "models" and model.name.startswith("panel_model"), model
    assert job["params"]["colours"] == COLOURS and job["params"]["steps"] == 4
    assert "OA" in jobs.metrics_label.text() and "Kappa" in jobs.metrics_label.text()
    assert "bright" in jobs.metrics_label.text(), "per-class F1 is shown"
    qtbot.waitUntil(lambda: len(jobs.loss_plot.points()) == 4, timeout=10_000)
    assert jobs.progress.value() == jobs.progress.maximum()
    assert _critical(iface) == []

    segment = dock.segment_section
    qtbot.waitUntil(lambda: segment.select_model(str(model)), timeout=10_000)  # the list refreshes by itself
    assert segment.selected_model().classes.colors == ("#ddeeff", "#112233")
    segment.raster.setLayer(raster)
    segment.output.setFilePath(str(tmp_path / "map.tif"))
    with qtbot.waitSignal(jobs.job_finished, timeout=JOB_MS) as finished:
        segment.run_button.click()
    assert finished.args[0]["state"] == "succeeded", finished.args[0].get("error")

    group = QgsProject.instance().layerTreeRoot().findGroup(GROUP_NAME)
    assert group is not None
    result, confidence = (node.layer() for node in group.findLayers())
    assert result.source() == str(tmp_path / "map.tif") and result.name() == "scene – panel_model"
    assert result.crs().authid() == "EPSG:32633"
    assert result.extent() == raster.extent() and (result.width(), result.height()) == (64, 64)
    assert isinstance(result.renderer(), QgsPalettedRasterRenderer)
    assert palette_of(result) == {1: ("bright", "#ddeeff"), 2: ("dark", "#112233")}, "the polygons' colours"
    block = result.dataProvider().block(1, result.extent(), 64, 64)
    assert {block.value(r, c) for r in range(0, 64, 8) for c in range(0, 64, 8)} <= {1.0, 2.0}
    assert confidence.source() == str(tmp_path / "map_confidence.tif")
    assert isinstance(confidence.renderer(), QgsSingleBandPseudoColorRenderer)
    assert not group.findLayer(confidence.id()).itemVisibilityChecked()
    assert (tmp_path / "map.qml").is_file(), "the backend's style file is there for plain QGIS users"
    _made["map"] = str(tmp_path / "map.tif")
    assert _critical(iface) == []


def test_cancel_stops_a_running_job(dock: GeoSSLDock, layers: Any, qtbot: Any, iface: Any) -> None:
    raster, polygons = layers
    _fill_finetune(dock, raster, polygons, 100_000)
    dock.finetune_section.model_name.setText("never")
    jobs = dock.jobs_section
    dock.finetune_section.run_button.click()
    qtbot.waitUntil(lambda: jobs.selected_id() is not None and jobs.cancel_button.isEnabled(), timeout=30_000)
    identifier = jobs.selected_id()
    # Cancel once the worker is computing (its first progress event), not while queued.
    qtbot.waitUntil(lambda: bool(job_progress(jobs.job(identifier)).stage), timeout=60_000)
    with qtbot.waitSignal(jobs.job_finished, timeout=60_000) as finished:
        jobs.cancel_button.click()
    job = finished.args[0]
    assert job["state"] == "cancelled"
    assert not Path(job["params"]["out"]).exists(), "a cancelled job leaves no model behind"
    assert not jobs.cancel_button.isEnabled()
    assert any("cancelled" in m for m in iface.messageBar().get_messages(Qgis.Info))
    assert _critical(iface) == []


def test_the_backends_422_explanation_reaches_the_message_bar(dock: GeoSSLDock, layers: Any, qtbot: Any,
                                                               iface: Any) -> None:
    raster, polygons = layers
    _fill_finetune(dock, raster, polygons, 4)
    dock.finetune_section.tile.setValue(40)  # typed in: not a multiple of 16
    dock.finetune_section.run_button.click()
    qtbot.waitUntil(lambda: bool(_critical(iface)), timeout=10_000)
    message = _critical(iface)[0]
    assert message.startswith("GeoSSL:Fine-tune not started: The backend rejected the parameters: tile: ")
    assert "multiple of 16" in message
    assert dock.finetune_section.run_button.isEnabled(), "the user can fix it and try again"


def test_accuracy_through_the_panel(dock: GeoSSLDock, layers: Any, prediction: str, qtbot: Any,
                                    iface: Any) -> None:
    _raster, polygons = layers
    result = QgsRasterLayer(prediction, "result", "gdal")
    QgsProject.instance().addMapLayer(result)
    section = dock.evaluate_section
    section.prediction.setLayer(result)
    section.polygons.setLayer(polygons)
    assert section.class_field.currentField() == "class", "the styled field is preselected"
    with qtbot.waitSignal(dock.jobs_section.job_finished, timeout=JOB_MS) as finished:
        section.run_button.click()
    job = finished.args[0]
    assert job["state"] == "succeeded", job.get("error")
    assert Path(job["result"]["metrics_file"]) == Path(prediction).with_name("map_metrics.json")
    text = dock.jobs_section.metrics_label.text()
    assert "<b>OA</b>" in text and "<b>mIoU</b>" in text and "dark" in text and "bright" in text
    assert _critical(iface) == []


def test_segment_an_extent_through_the_panel(dock: GeoSSLDock, layers: Any, tiny_model: str, qtbot: Any,
                                            iface: Any, tmp_path: Path) -> None:
    """The left half of the scene, drawn in another CRS: the backend gets it in the raster's and maps only that."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsRectangle

    raster, _polygons = layers
    segment = dock.segment_section
    qtbot.waitUntil(lambda: segment.select_model(tiny_model), timeout=10_000)
    segment.raster.setLayer(raster)
    segment.output.setFilePath(str(tmp_path / "half.tif"))
    full = raster.extent()
    half = QgsRectangle(full.xMinimum(), full.yMinimum(), full.center().x(), full.yMaximum())
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    drawn = QgsCoordinateTransform(raster.crs(), wgs84, QgsProject.instance()).transformBoundingBox(half)
    segment.extent.setChecked(True)
    segment.extent.setOutputExtentFromUser(drawn, wgs84)
    with qtbot.waitSignal(dock.jobs_section.job_finished, timeout=JOB_MS) as finished:
        segment.run_button.click()
    job = finished.args[0]
    assert _critical(iface) == []
    assert job["state"] == "succeeded", job.get("error")
    assert job["params"]["extent_crs"] == "EPSG:32633"
    result = QgsRasterLayer(str(tmp_path / "half.tif"), "half", "gdal")
    assert result.isValid() and result.crs().authid() == "EPSG:32633"
    # WGS84 and back, each a bounding box of a rotated rectangle (grid convergence ~2° here), grows the
    # half by some 30 m a side: "about half" is up to 5 pixels more; the clip to the raster is exact.
    assert QgsRectangle(*job["params"]["extent"]).contains(half)
    assert result.extent().xMinimum() == full.xMinimum() and result.extent().yMaximum() == full.yMaximum()
    assert 0 <= result.extent().xMaximum() - half.xMaximum() <= 50
    assert 32 <= result.width() <= 37 and result.height() == 64


def test_processing_segment(service: conn.Discovery, data_dir: Path, tiny_model: str, scene: tuple[str, str],
                            tmp_path: Path, qgis_processing: Any) -> None:
    import processing
    from qgis.core import QgsProcessingFeedback

    feedback = QgsProcessingFeedback()
    progress: list[float] = []
    feedback.progressChanged.connect(progress.append)
    out = processing.run("geossl:segment", {"MODEL": tiny_model, "INPUT": scene[0], "OUTPUT": str(tmp_path / "p.tif"),
                                            "CONFIDENCE": str(tmp_path / "c.tif")}, feedback=feedback)
    assert out["OUTPUT"] == str(tmp_path / "p.tif") and out["CONFIDENCE"] == str(tmp_path / "c.tif")
    layer = QgsRasterLayer(out["OUTPUT"], "p", "gdal")
    assert layer.isValid() and layer.crs().authid() == "EPSG:32633" and layer.width() == 64
    assert palette_of(layer) == {1: ("bright", "#ddeeff"), 2: ("dark", "#112233")}, "styled by the .qml"
    assert progress and progress[-1] == 100.0


def test_processing_evaluate_reports_metrics(data_dir: Path, prediction: str, scene: tuple[str, str],
                                             tmp_path: Path, qgis_processing: Any) -> None:
    import processing

    out = processing.run("geossl:evaluate", {"PREDICTION": prediction, "POLYGONS": f"{scene[1]}|layername=polygons",
                                             "CLASS_FIELD": "class", "OUTPUT": str(tmp_path / "m.json")})
    assert 0.0 <= out["OA"] <= 1.0 and -1.0 <= out["KAPPA"] <= 1.0 and 0.0 <= out["MIOU"] <= 1.0
    assert out["OUTPUT"] == str(tmp_path / "m.json") and (tmp_path / "m.json").is_file()


def test_processing_reports_a_user_mistake_without_a_traceback(data_dir: Path, tiny_model: str,
                                                               tmp_path: Path, qgis_processing: Any) -> None:
    import processing
    from qgis.core import QgsProcessingException

    four_bands = tmp_path / "four.tif"
    two_class_raster(four_bands, bands=4)
    with pytest.raises(QgsProcessingException, match="The model expects 3 bands"):
        processing.run("geossl:segment", {"MODEL": tiny_model, "INPUT": str(four_bands),
                                          "OUTPUT": str(tmp_path / "x.tif")})


@pytest.fixture(scope="module")
def qgis_processing(qgis_app: Any) -> Any:
    """Processing initialised (as in QGIS) with the GeoSSL provider registered."""
    sys.path.append("/usr/share/qgis/python/plugins")
    from geossl_plugin.processing import GeoSSLProvider
    from processing.core.Processing import Processing
    from qgis.core import QgsApplication

    Processing.initialize()
    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("geossl")
    if provider is None:
        provider = GeoSSLProvider()
        registry.addProvider(provider)
    yield provider
    if registry.providerById("geossl") is provider:
        registry.removeProvider(provider)


@pytest.mark.skipif(shutil.which("qgis_process.bin") is None, reason="qgis_process.bin is not installed")
def test_qgis_process_runs_segment(service: conn.Discovery, tiny_model: str, scene: tuple[str, str],
                                   tmp_path: Path) -> None:
    """``qgis_process.bin run geossl:segment`` (no GUI, no panel) with the plugin from a profile."""
    profile = tmp_path / "profiles" / "default"
    subprocess.run(["bash", str(REPO / "resources" / "install_plugin.sh"), str(profile)], check=True,
                   capture_output=True, timeout=30)
    with open(profile / "QGIS" / "QGIS3.ini", "a") as ini:  # the settings the panel would have saved
        ini.write(f"[geossl]\nconnection\\data_dir={service.path.parent}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QGIS_", "PYTEST"))}
    env.update(QGIS_CUSTOM_CONFIG_PATH=str(tmp_path), QT_QPA_PLATFORM="offscreen")
    out = tmp_path / "map.tif"
    run = subprocess.run(["qgis_process.bin", "run", "geossl:segment", "--", f"MODEL={tiny_model}",
                          f"INPUT={scene[0]}", f"OUTPUT={out}"], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"OUTPUT:\t{out}" in run.stdout and out.is_file() and out.with_suffix(".qml").is_file()
