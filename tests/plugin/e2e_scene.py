"""Run inside a real QGIS desktop (``qgis --code e2e_scene.py``): from "no backend" to a styled map.

What a new user does after installing the plugin zip, driven through the dock's own widgets:
the Backend section offers "Set up backend…"; the set-up dialog installs into an empty folder
(CPU torch, from PyPI or the pip's configured index); the panel starts the new backend, fine-tunes
a tiny model on the polygons, segments the raster and adds the styled result. Used by
test_e2e_from_zip.py; configured through environment variables (``--code`` passes no arguments):

    GEOSSL_E2E_ROOT        the empty install folder chosen in the set-up dialog
    GEOSSL_E2E_DATA_DIR    the backend's data folder (models, discovery file)
    GEOSSL_E2E_RASTER      imagery; GEOSSL_E2E_LABELS polygons with a "class" field
    GEOSSL_E2E_COLOURS     JSON {class: "#rrggbb"}: the polygons' categorized style (the map's colours)
    GEOSSL_E2E_MAP         where the segment job writes its GeoTIFF
    GEOSSL_E2E_REPORT      JSON written when the run ends (stage, layers, renderer, palette, timings)
    GEOSSL_E2E_QUIT        when this file appears (after the screenshot), QGIS quits normally
    GEOSSL_E2E_TIMEOUT_S   give up after this long
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsProject,
    QgsRasterLayer,
    QgsRendererCategory,
    QgsSettings,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface, plugins

ENV = os.environ
TINY = {"steps": 4, "tile": 32, "batch": 2}
state: dict = {"errors": [], "times": {}}
_start = time.monotonic()
_timers: list[QTimer] = []  # kept alive until they fire


def mark(name: str) -> None:
    state["times"][name] = round(time.monotonic() - _start, 1)


def done(stage: str, **extra: object) -> None:
    if state.get("stage"):  # only the first outcome counts
        return
    state.update(stage=stage, **extra)
    mark("end")
    dock = state.pop("_dock", None)
    state.pop("_raster", None)
    state.pop("_labels", None)
    if dock is not None:
        dialog = dock.backend_section.setup_dialog
        if dialog is not None:
            state.update(setup_step=dialog.step_label.text(), setup_summary=dialog.summary_label.text())
            if stage != "segmented":
                state["diagnostics"] = dialog.diagnostics()
        state.update(backend=dock.backend_section.status.text(), device=dock.backend_section.device_label.text(),
                     layers=[layer.name() for layer in QgsProject.instance().mapLayers().values()])
    Path(ENV["GEOSSL_E2E_REPORT"]).write_text(json.dumps(state, indent=1))
    poll(250, quit_when_asked)


def poll(ms: int, callback: object) -> None:
    timer = QTimer()
    timer.timeout.connect(callback)
    timer.start(ms)
    _timers.append(timer)


def quit_when_asked() -> None:
    if Path(ENV["GEOSSL_E2E_QUIT"]).exists():
        QgsApplication.instance().quit()  # as when a user closes QGIS: the plugin stops its backend


def guarded(function: object) -> object:
    def run(*args: object) -> None:
        try:
            function(*args)
        except Exception:  # noqa: BLE001 — report it to the test instead of hanging until its timeout
            state["errors"].append(traceback.format_exc())
            done("error")
    return run


@guarded
def build() -> None:
    from geossl_plugin import connection
    from geossl_plugin.installer.torch_choice import CPU, PYPI_SOURCE

    QgsSettings().setValue(connection.DATA_DIR_KEY, ENV["GEOSSL_E2E_DATA_DIR"])
    iface.mainWindow().setGeometry(0, 0, 1600, 1000)  # Xvfb has no window manager to maximise it
    project = QgsProject.instance()
    raster = QgsRasterLayer(ENV["GEOSSL_E2E_RASTER"], "scene", "gdal")
    labels = QgsVectorLayer(ENV["GEOSSL_E2E_LABELS"], "training polygons", "ogr")
    categories = [QgsRendererCategory(name, QgsFillSymbol.createSimple({"color": colour}), name)
                  for name, colour in json.loads(ENV["GEOSSL_E2E_COLOURS"]).items()]
    labels.setRenderer(QgsCategorizedSymbolRenderer("class", categories))
    project.addMapLayers([raster, labels])
    state["_raster"], state["_labels"] = raster, labels

    dock = plugins["geossl_plugin"].show_dock()
    state["_dock"] = dock
    section = dock.backend_section
    state["setup_offered"] = section.setup_button.isVisible()
    if not state["setup_offered"]:
        done("no set-up offered", path=section.path_widget.filePath())
        return
    dialog = section.open_setup()
    dialog.folder_widget.setFilePath(ENV["GEOSSL_E2E_ROOT"])
    dialog.torch_combo.setCurrentIndex(dialog.torch_combo.findData(CPU))
    dialog.source_combo.setCurrentIndex(dialog.source_combo.findData(PYPI_SOURCE))
    dialog.installed.connect(lambda path: (mark("installed"), state.update(installed=path)))
    section.connected.connect(guarded(finetune))
    def failed(error: object) -> None:  # before the set-up, "no backend" is the expected answer
        if "installed" in state["times"]:
            done("backend failed", error=getattr(error, "message", str(error)))
    section.connection_failed.connect(failed)
    dialog.install_button.click()
    mark("install clicked")

    def watch_setup() -> None:
        if dialog.install_button.text() == "Retry" and not state.get("stage"):
            done("set-up failed")
    poll(1000, watch_setup)


@guarded
def finetune(_info: object) -> None:
    if "connected" in state["times"]:
        return
    mark("connected")
    dock = state["_dock"]
    dock.backend_section.setup_dialog.close()  # "Ready": the user closes the dialog and goes on
    section = dock.finetune_section
    section.rasters.set_checked([state["_raster"]])
    section.polygons.setLayer(state["_labels"])
    section.class_field.setField("class")
    section.use_steps(TINY["steps"])
    section.tile.setValue(TINY["tile"])
    section.batch.setValue(TINY["batch"])
    section.model_name.setText("first map")
    dock.jobs_section.job_finished.connect(guarded(job_finished))
    section.run_button.click()


@guarded
def job_finished(job: dict) -> None:
    dock = state["_dock"]
    if job.get("state") != "succeeded":
        done(f"{job.get('type', 'job')} {job.get('state')}", error=job.get('error'))
        return
    if "model" in (job.get("result") or {}) and "finetuned" not in state["times"]:
        mark("finetuned")
        state["model"] = job["result"]["model"]
        state["metrics"] = dock.jobs_section.metrics_label.text()
        segment = dock.segment_section

        def when_listed() -> None:  # the model list refreshes by itself
            if "segment clicked" in state["times"] or not segment.select_model(state["model"]):
                return
            segment.raster.setLayer(state["_raster"])
            segment.output.setFilePath(ENV["GEOSSL_E2E_MAP"])
            segment.run_button.click()
            mark("segment clicked")
        poll(500, guarded(when_listed))
        return
    if "segment clicked" in state["times"]:
        from geossl_plugin.layers import GROUP_NAME, palette_of

        mark("segmented")
        group = QgsProject.instance().layerTreeRoot().findGroup(GROUP_NAME)
        found = [node.layer() for node in group.findLayers()] if group is not None else []
        state["results"] = [{"name": layer.name(), "source": layer.source(),
                             "renderer": type(layer.renderer()).__name__,
                             "palette": {str(k): list(v) for k, v in palette_of(layer).items()}
                             if type(layer.renderer()).__name__ == "QgsPalettedRasterRenderer" else {}}
                            for layer in found]
        dock.finetune_section.setCollapsed(True)
        labels_node = QgsProject.instance().layerTreeRoot().findLayer(state["_labels"].id())
        labels_node.setItemVisibilityChecked(False)  # the map is the point
        iface.mapCanvas().setExtent(state["_raster"].extent())
        iface.mapCanvas().refresh()
        QTimer.singleShot(3000, lambda: done("segmented"))


QTimer.singleShot(1000, build)
QTimer.singleShot(int(float(ENV.get("GEOSSL_E2E_TIMEOUT_S", "1500")) * 1000), lambda: done("timeout"))
