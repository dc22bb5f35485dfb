"""Run inside a real QGIS desktop (``qgis --code desktop_scene.py``): build a GeoSSL scene, then say so.

Used by test_desktop_screenshot.py (CI, under Xvfb) and to make the README screenshot. Configured
through environment variables, because ``--code`` passes no arguments:

    GEOSSL_SCENE_RASTER      imagery to show (RGB from GEOSSL_SCENE_BANDS, default "1,2,3")
    GEOSSL_SCENE_LABELS      polygon file; styled Categorized by GEOSSL_SCENE_FIELD (default "class"),
                             named GEOSSL_SCENE_LABELS_NAME (default "training polygons")
    GEOSSL_SCENE_CLASSES     classified map (+ GEOSSL_SCENE_CONFIDENCE) added as the panel adds results
    GEOSSL_SCENE_COLOURS     JSON {class: "#rrggbb"} for the polygons' categories
    GEOSSL_SCENE_BACKEND     the geossl executable the panel starts; GEOSSL_SCENE_DATA_DIR its data folder
    GEOSSL_SCENE_FINETUNE    JSON of fine-tune settings {"steps", "tile", "batch", "name"}: run one
                             through the panel and wait for it (the Jobs section then shows its curve)
    GEOSSL_SCENE_EVALUATE    "1": check the classified map against GEOSSL_SCENE_LABELS through the
                             panel's Accuracy section and wait for it (the Jobs section shows the metrics)
    GEOSSL_SCENE_DONE        file written (JSON: what is on screen) when the scene is ready to capture
    GEOSSL_SCENE_QUIT        when this file appears (after the capture), QGIS quits normally
    GEOSSL_SCENE_TIMEOUT_S   give up waiting for the backend/job after this long (default 600)
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsContrastEnhancement,
    QgsMultiBandColorRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsSettings,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface, plugins

ENV = os.environ
state: dict = {"errors": []}


def done(**extra: object) -> None:
    if state.get("stage"):  # only the first outcome counts (a late timeout must not overwrite it)
        return
    state.update(extra)
    dock = state.pop("_dock", None)
    state.pop("_map", None)
    if dock is not None:
        service = dock.backend_section.service()
        state.update(backend_pid=service.pid() if service is not None else None)
        state.update(dock_visible=dock.isVisible(), backend=dock.backend_section.status.text(),
                     device=dock.backend_section.device_label.text(),
                     layers=[layer.name() for layer in QgsProject.instance().mapLayers().values()])
    Path(ENV["GEOSSL_SCENE_DONE"]).write_text(json.dumps(state, indent=1))
    if ENV.get("GEOSSL_SCENE_QUIT"):
        quit_timer.start(250)


def quit_when_asked() -> None:
    """Quit like a user closing QGIS (aboutToQuit fires: the plugin stops its backend)."""
    if Path(ENV["GEOSSL_SCENE_QUIT"]).exists():
        quit_timer.stop()
        QgsApplication.instance().quit()


quit_timer = QTimer()
quit_timer.timeout.connect(quit_when_asked)


def rgb(layer: QgsRasterLayer, bands: list[int]) -> None:
    """True-colour rendering stretched on each band's 2–98 % cumulative cut, as QGIS's default does."""
    renderer = QgsMultiBandColorRenderer(layer.dataProvider(), *bands)
    for band, setter in zip(bands, (renderer.setRedContrastEnhancement, renderer.setGreenContrastEnhancement,
                                    renderer.setBlueContrastEnhancement), strict=True):
        low, high = layer.dataProvider().cumulativeCut(band, 0.02, 0.98, layer.extent(), 250_000)
        enhancement = QgsContrastEnhancement(layer.dataProvider().dataType(band))
        enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
        enhancement.setMinimumValue(low)
        enhancement.setMaximumValue(high)
        setter(enhancement)
    layer.setRenderer(renderer)


def build() -> None:
    from geossl_plugin import connection
    from geossl_plugin.backend import save_backend_path
    from geossl_plugin.layers import ClassInfo, add_result_layers

    from_env = ENV.get
    if from_env("GEOSSL_SCENE_BACKEND"):
        save_backend_path(ENV["GEOSSL_SCENE_BACKEND"])
    if from_env("GEOSSL_SCENE_DATA_DIR"):
        QgsSettings().setValue(connection.DATA_DIR_KEY, ENV["GEOSSL_SCENE_DATA_DIR"])
    connection.set_mode(connection.LOCAL)
    connection.set_autostart(True)

    window = iface.mainWindow()
    window.setGeometry(0, 0, 1600, 1000)  # Xvfb has no window manager to maximise it
    project = QgsProject.instance()
    raster = QgsRasterLayer(ENV["GEOSSL_SCENE_RASTER"], Path(ENV["GEOSSL_SCENE_RASTER"]).stem, "gdal")
    rgb(raster, [int(b) for b in from_env("GEOSSL_SCENE_BANDS", "1,2,3").split(",")])
    project.addMapLayer(raster)
    field = from_env("GEOSSL_SCENE_FIELD", "class")
    colours = json.loads(from_env("GEOSSL_SCENE_COLOURS", "{}"))
    labels = QgsVectorLayer(ENV["GEOSSL_SCENE_LABELS"], from_env("GEOSSL_SCENE_LABELS_NAME", "training polygons"),
                            "ogr")
    if colours:
        from qgis.core import QgsCategorizedSymbolRenderer, QgsFillSymbol, QgsRendererCategory

        categories = [QgsRendererCategory(name, QgsFillSymbol.createSimple(
            {"color": colour, "outline_color": "#ffffff", "outline_width": "0.4"}), name)
            for name, colour in colours.items()]
        labels.setRenderer(QgsCategorizedSymbolRenderer(field, categories))
    project.addMapLayer(labels)
    if from_env("GEOSSL_SCENE_CLASSES"):
        names = sorted(colours)
        classes = ClassInfo(tuple(names), tuple(range(1, len(names) + 1)), tuple(colours[n] for n in names)) \
            if colours else None
        state["_map"], _ = add_result_layers(ENV["GEOSSL_SCENE_CLASSES"], classes,
                                             from_env("GEOSSL_SCENE_CONFIDENCE") or None,
                                             name="land cover (GeoSSL)", project=project)
        labels_node = project.layerTreeRoot().findLayer(labels.id())
        labels_node.setItemVisibilityChecked(False)  # the map is the point; the polygons are in the legend
    from qgis.PyQt.QtWidgets import QDockWidget

    browser = window.findChild(QDockWidget, "Browser")
    if browser is not None:
        browser.hide()  # room for the map

    def zoom() -> None:  # once the window has its final size
        iface.mapCanvas().setExtent(raster.extent())
        iface.mapCanvas().refresh()

    QTimer.singleShot(500, zoom)

    plugin = plugins["geossl_plugin"]
    dock = plugin.show_dock()  # autostart: the backend starts now
    dock.setMinimumWidth(430)
    state["_dock"] = dock
    dock.finetune_section.rasters.set_checked([raster])
    dock.finetune_section.polygons.setLayer(labels)
    dock.segment_section.raster.setLayer(raster)

    timeout_ms = int(float(from_env("GEOSSL_SCENE_TIMEOUT_S", "600")) * 1000)
    finetune = json.loads(from_env("GEOSSL_SCENE_FINETUNE", "null"))

    def on_connected(_info: object) -> None:
        if from_env("GEOSSL_SCENE_EVALUATE") == "1":
            section = dock.evaluate_section
            section.prediction.setLayer(state.pop("_map"))
            section.polygons.setLayer(labels)
            section.class_field.setField(field)
            section.setCollapsed(False)
            dock.segment_section.setCollapsed(True)

            def evaluated(job: dict) -> None:
                state["metrics"] = dock.jobs_section.metrics_label.text()
                dock.finetune_section.setCollapsed(True)
                dock.pretrain_section.setCollapsed(True)
                QTimer.singleShot(3000, lambda: done(stage="job " + job.get("state", "?")))

            dock.jobs_section.job_finished.connect(evaluated)
            section.run_button.click()
            return
        if not finetune:
            QTimer.singleShot(1500, lambda: done(stage="connected"))
            return
        section = dock.finetune_section
        section.use_steps(int(finetune.get("steps", 20)))
        section.tile.setValue(int(finetune.get("tile", 64)))
        section.batch.setValue(int(finetune.get("batch", 8)))
        section.model_name.setText(str(finetune.get("name", "demo")))
        def finished(job: dict) -> None:
            # Fold the filled-in form away so the status, Segment and the job's curve + metrics all show.
            dock.pretrain_section.setCollapsed(True)
            dock.finetune_section.setCollapsed(True)
            dock.widget().verticalScrollBar().setValue(0)
            QTimer.singleShot(4000, lambda: done(stage="job " + job.get("state", "?")))

        dock.jobs_section.job_finished.connect(finished)
        section.run_button.click()

    dock.backend_section.connected.connect(on_connected)
    dock.backend_section.connection_failed.connect(lambda e: done(stage="backend failed", error=e.message))
    QTimer.singleShot(timeout_ms, lambda: done(stage="timeout"))


def start() -> None:
    try:
        build()
    except Exception:  # noqa: BLE001 — report it to the test instead of hanging until its timeout
        state["errors"].append(traceback.format_exc())
        done(stage="error")


QTimer.singleShot(1000, start)
