"""Start from weights users have: the panel's "Start from" choices and the Processing parameters build the
job parameters, and against the real backend (its torch and Hugging Face caches empty, as offline) a
weight file trains, continues pretraining, and missing ImageNet weights come back as the file to fetch.

The end-to-end tests reuse test_flow.py's panel fixtures with their own service; the weight file is
written by the backend's Python (the plugin's never imports torch).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from geossl_plugin import connection as conn
from geossl_plugin.backend import backend_environ
from geossl_plugin.client import ApiClient, BlockingClient
from geossl_plugin.launcher import launch_commands
from geossl_plugin.panel import GeoSSLDock
from geossl_plugin.panel.finetune_section import FinetuneSection
from geossl_plugin.panel.pretrain_section import PretrainSection
from geossl_plugin.panel.start_from import IMAGENET_TEXT, PICK_TEXT, RANDOM_TEXT, StartFrom
from geossl_plugin.processing.algorithms import FinetuneAlgorithm, PretrainAlgorithm
from qgis.core import Qgis, QgsProcessingContext, QgsProject, QgsRasterLayer, QgsVectorLayer

from . import test_flow
from .gdal_data import class_polygons, two_class_raster

needs_backend = test_flow.pytestmark
data_dir, scene, layers, dock = test_flow.data_dir, test_flow.scene, test_flow.layers, test_flow.dock
qgis_processing = test_flow.qgis_processing
TORCHVISION_R18 = "resnet18-f37072fd.pth"


def _texts(combo: StartFrom) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def _choose(combo: StartFrom, text: str) -> None:
    combo.setCurrentIndex(combo.findText(text))


@pytest.fixture
def finetune_layers(tmp_path: Path, project: QgsProject) -> tuple[QgsRasterLayer, QgsVectorLayer]:
    raster = QgsRasterLayer(str(two_class_raster(tmp_path / "scene.tif")), "scene", "gdal")
    polygons = QgsVectorLayer(f"{class_polygons(tmp_path / 'labels.gpkg')}|layername=polygons", "labels", "ogr")
    project.addMapLayers([raster, polygons])
    return raster, polygons


def test_finetune_start_from_offers_the_choices_and_builds_the_params(qtbot: Any, project: QgsProject,
                                                                       finetune_layers: Any) -> None:
    section = FinetuneSection(ApiClient(), jobs=None, project=project)
    qtbot.addWidget(section)
    raster, polygons = finetune_layers
    section.rasters.set_checked([raster])
    section.polygons.setLayer(polygons)
    combo = section.start_from
    assert _texts(combo) == [RANDOM_TEXT, IMAGENET_TEXT, PICK_TEXT]
    assert not {"init", "encoder_weights"} & set(section.params())

    _choose(combo, IMAGENET_TEXT)
    params = section.params()
    assert params["encoder_weights"] == "imagenet" and "init" not in params

    section._on_models([{"path": "/models/enc.pt", "name": "enc", "kind": "pretrained", "encoder": "resnet34"},
                        {"path": "/models/m.pt", "name": "m", "kind": "segmentation", "classes": None}])
    assert _texts(combo) == [RANDOM_TEXT, IMAGENET_TEXT, "enc (resnet34)", PICK_TEXT], "ImageNet kept"
    assert combo.currentText() == IMAGENET_TEXT
    _choose(combo, "enc (resnet34)")
    assert section.params()["init"] == "/models/enc.pt" and section.encoder.currentText() == "resnet34"

    picked: list[str] = []
    combo.pick_file = lambda: picked.append("asked") or ""  # cancelled: the choice before stays
    _choose(combo, PICK_TEXT)
    assert picked == ["asked"] and combo.currentText() == "enc (resnet34)"
    combo.pick_file = lambda: "/data/ssl4eo_resnet18_s2.pth"
    _choose(combo, PICK_TEXT)
    assert combo.currentText() == "Weight file: ssl4eo_resnet18_s2.pth"
    params = section.params()
    assert params["init"] == "/data/ssl4eo_resnet18_s2.pth" and "encoder_weights" not in params

    section._on_models([])  # the model list refreshes: a picked file stays offered and chosen
    assert _texts(combo) == [RANDOM_TEXT, IMAGENET_TEXT, "Weight file: ssl4eo_resnet18_s2.pth", PICK_TEXT]
    assert section.params()["init"] == "/data/ssl4eo_resnet18_s2.pth"
    _choose(combo, RANDOM_TEXT)
    assert not {"init", "encoder_weights"} & set(section.params())


def test_pretrain_start_from_random_imagenet_or_a_file(qtbot: Any, project: QgsProject,
                                                       finetune_layers: Any) -> None:
    section = PretrainSection(ApiClient(), jobs=None, project=project)
    qtbot.addWidget(section)
    section.rasters.set_checked([finetune_layers[0]])
    section.method.addItem("byol")
    combo = section.start_from
    assert _texts(combo) == ["random weights", IMAGENET_TEXT, PICK_TEXT]
    assert not {"init", "encoder_weights"} & set(section.params())
    _choose(combo, IMAGENET_TEXT)
    assert section.params()["encoder_weights"] == "imagenet"
    combo.pick_file = lambda: "/data/resnet18.pth"
    _choose(combo, PICK_TEXT)
    params = section.params()
    assert params["init"] == "/data/resnet18.pth" and "encoder_weights" not in params


def test_processing_algorithms_take_a_weight_file_or_imagenet(finetune_layers: Any, tmp_path: Path) -> None:
    raster, polygons = finetune_layers
    context = QgsProcessingContext()
    pretrain = PretrainAlgorithm()
    pretrain.initAlgorithm()
    finetune = FinetuneAlgorithm()
    finetune.initAlgorithm()
    for algorithm in (pretrain, finetune):
        init = algorithm.parameterDefinition("INIT")
        assert init is not None and init.flags() & init.FlagOptional
        assert all(ext in init.fileFilter() for ext in ("*.pt", "*.pth", "*.ckpt", "*.safetensors"))
        weights = algorithm.parameterDefinition("ENCODER_WEIGHTS")
        assert weights is not None and "ImageNet" in weights.options()[1]
        assert "torchgeo" in algorithm.shortHelpString()
    common = {"RASTERS": [raster.source()], "ENCODER": 0, "STEPS": 1, "BATCH": 2}
    params = pretrain.job_params(common | {"METHOD": "byol", "TILE": 64, "INIT": "/data/s2.pth", "ENCODER_WEIGHTS": 0,
                                           "RESUME": False, "OUTPUT": str(tmp_path / "e.pt")}, context)
    assert params["init"] == "/data/s2.pth" and "encoder_weights" not in params and params["method"] == "byol"
    params = finetune.job_params(common | {"POLYGONS": polygons, "CLASS_FIELD": "class", "TILE": 32,
                                           "ENCODER_WEIGHTS": 1, "OUTPUT": str(tmp_path / "m.pt")}, context)
    assert params["encoder_weights"] == "imagenet" and "init" not in params


# --- against the real backend -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[conn.Discovery]:
    """The real service, started like the panel starts it, with empty torch/Hugging Face caches."""
    if test_flow.BACKEND is None:
        pytest.skip("the backend venv (backend/.venv) is not installed")
    folder = tmp_path_factory.mktemp("service")
    env = backend_environ() | {"TORCH_HOME": str(folder / "torch"), "HF_HOME": str(folder / "hf"),
                               "HF_HUB_OFFLINE": "1"}
    log = open(folder / "service-stderr.log", "w")  # noqa: SIM115 - closed below
    program, arguments = launch_commands(str(test_flow.BACKEND), folder)[0]
    process = subprocess.Popen([program, *arguments], stdout=subprocess.DEVNULL, stderr=log, env=env)
    deadline = time.monotonic() + 120
    found = None
    while time.monotonic() < deadline and process.poll() is None:
        found = conn.read_discovery(folder / conn.DISCOVERY_FILE)
        if found is not None:
            break
        time.sleep(0.1)
    assert found is not None, (folder / "service-stderr.log").read_text()
    yield found
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def _backend_python(*args: str) -> str:
    """Run the backend's own Python (torch lives there, never in QGIS's)."""
    python = Path(test_flow.BACKEND).with_name("python")
    run = subprocess.run([str(python), *args], capture_output=True, text=True, timeout=120,
                         env=backend_environ(), check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A torchvision resnet18 state dict (random, seeded): what a user downloads, minus the download."""
    path = tmp_path_factory.mktemp("weights") / "resnet18_user.pth"
    _backend_python("-c", "import sys, torch, torchvision; torch.manual_seed(0); "
                          "torch.save(torchvision.models.resnet18(weights=None).state_dict(), sys.argv[1])", str(path))
    return str(path)


@needs_backend
def test_panel_fine_tunes_from_a_weight_file_and_names_the_missing_imagenet_file(
        dock: GeoSSLDock, layers: Any, weight_file: str, qtbot: Any, iface: Any, service: conn.Discovery) -> None:
    raster, polygons = layers
    test_flow._fill_finetune(dock, raster, polygons, 2)
    section = dock.finetune_section
    _choose(section.start_from, IMAGENET_TEXT)
    section.run_button.click()
    qtbot.waitUntil(lambda: bool(iface.messageBar().get_messages(Qgis.Critical)), timeout=30_000)
    message = iface.messageBar().get_messages(Qgis.Critical)[0]
    assert message.startswith("GeoSSL:Fine-tune not started: The backend rejected the parameters: ImageNet weights "
                              "for resnet18 are not in the local caches")
    assert f"https://download.pytorch.org/models/{TORCHVISION_R18}" in message
    assert f"{service.path.parent / 'torch' / 'hub' / 'checkpoints' / TORCHVISION_R18}" in message
    iface.messageBar().clear_messages()

    section.start_from.pick_file = lambda: weight_file
    _choose(section.start_from, PICK_TEXT)
    section.model_name.setText("from weights")
    with qtbot.waitSignal(dock.jobs_section.job_finished, timeout=test_flow.JOB_MS) as finished:
        section.run_button.click()
    job = finished.args[0]
    assert job["state"] == "succeeded", job.get("error")
    assert job["params"]["init"] == weight_file and job["params"].get("encoder_weights") is None
    models = BlockingClient(service.connection).get("models")
    entry = next(m for m in (models.get("models", models) if isinstance(models, dict) else models)
                 if m["path"] == job["result"]["model"])
    assert entry["init"]["source"] == "file" and entry["init"]["path"] == weight_file
    assert entry["init"]["architecture"] == "resnet18" and entry["init"]["loaded"] == 120
    assert iface.messageBar().get_messages(Qgis.Critical) == []


@needs_backend
def test_processing_pretrain_continues_from_a_weight_file(data_dir: Path, scene: tuple[str, str], weight_file: str,
                                                          tmp_path: Path, qgis_processing: Any) -> None:
    import processing

    out = processing.run("geossl:pretrain", {"RASTERS": [scene[0]], "METHOD": "simclr", "ENCODER": 0,
                                             "INIT": weight_file, "STEPS": 1, "TILE": 64, "BATCH": 2,
                                             "OUTPUT": str(tmp_path / "continued.pt")})
    assert out["OUTPUT"] == str(tmp_path / "continued.pt")
    info = json.loads(_backend_python("-m", "geossl.cli", "info", "--model", out["OUTPUT"], "--json"))
    assert info["kind"] == "pretrained" and info["config"]["init"] == weight_file
    assert info["init"]["source"] == "file" and info["init"]["bands"] == 3 and info["init"]["adapted"] is None
