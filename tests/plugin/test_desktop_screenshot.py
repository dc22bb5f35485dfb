"""The plugin in a real QGIS desktop under Xvfb: the dock opens, starts its backend, styles results.

Runs ``qgis`` with a throw-away profile holding the plugin (resources/install_plugin.sh), builds a
scene with desktop_scene.py, captures the screen with ImageMagick's ``import`` and checks the
picture is not blank. The backend is the tests' fake service, so this takes seconds, not minutes; QGIS then quits the
way a user closes it, which must stop that backend. The screenshot stays in pytest's temporary
folder as an artifact (the path is printed; see it with ``pytest -s``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from osgeo import gdal
from qgis.PyQt.QtGui import QImage

from .conftest import CPU_INFO, REPO
from .desktop import clean_environ, needs_desktop, run_scene
from .gdal_data import class_polygons, two_class_raster
from .procs import running

SCENE_TIMEOUT_S = 45

pytestmark = needs_desktop


def _classified(folder: Path, source: Path) -> tuple[Path, Path]:
    """A class map (values 1/2 by brightness) and a confidence raster, written with GDAL."""
    ds = gdal.Open(str(source))
    band = ds.GetRasterBand(1).ReadAsArray().astype(float)
    classes = gdal.GetDriverByName("GTiff").Create(str(folder / "classes.tif"), ds.RasterXSize, ds.RasterYSize, 1,
                                                    gdal.GDT_Byte)
    confidence = gdal.GetDriverByName("GTiff").Create(str(folder / "confidence.tif"), ds.RasterXSize,
                                                       ds.RasterYSize, 1, gdal.GDT_Float32)
    for out in (classes, confidence):
        out.SetGeoTransform(ds.GetGeoTransform())
        out.SetProjection(ds.GetProjection())
    classes.GetRasterBand(1).WriteArray(np.where(band > 500, 1, 2).astype(np.uint8))
    classes.GetRasterBand(1).SetNoDataValue(0)
    confidence.GetRasterBand(1).WriteArray((np.abs(band - 500) / 400).clip(0, 1).astype(np.float32))
    classes = confidence = ds = None
    return folder / "classes.tif", folder / "confidence.tif"


def test_the_dock_in_a_real_qgis_desktop(tmp_path: Path, fake_backend: Any) -> None:
    profiles = tmp_path / "qgis"
    subprocess.run(["bash", str(REPO / "resources" / "install_plugin.sh"), str(profiles / "profiles" / "default")],
                   check=True, capture_output=True, timeout=30)
    raster = two_class_raster(tmp_path / "scene.tif", size=256)
    labels = class_polygons(tmp_path / "labels.gpkg", size=256)
    classes, confidence = _classified(tmp_path, raster)
    done, shot = tmp_path / "done.json", tmp_path / "screenshot.png"
    env = clean_environ()
    env.update(
        GEOSSL_SCENE_DONE=str(done), GEOSSL_SCENE_QUIT=str(tmp_path / "quit"),
        GEOSSL_SCENE_TIMEOUT_S=str(SCENE_TIMEOUT_S - 5),
        GEOSSL_SCENE_RASTER=str(raster), GEOSSL_SCENE_LABELS=str(labels), GEOSSL_SCENE_FIELD="class",
        GEOSSL_SCENE_CLASSES=str(classes), GEOSSL_SCENE_CONFIDENCE=str(confidence),
        GEOSSL_SCENE_COLOURS=json.dumps({"bright": "#ffd92f", "dark": "#1b7837"}),
        GEOSSL_SCENE_BACKEND=str(fake_backend(CPU_INFO)), GEOSSL_SCENE_DATA_DIR=str(tmp_path / "geossl-data"),
    )
    run_scene(profiles, REPO / "tests" / "plugin" / "desktop_scene.py", env, done, tmp_path / "quit", shot,
              tmp_path / "qgis.log", SCENE_TIMEOUT_S)
    print(f"screenshot: {shot}")

    assert done.is_file(), f"the scene never finished; QGIS said:\n{(tmp_path / 'qgis.log').read_text()[-3000:]}"
    report = json.loads(done.read_text())
    assert report["errors"] == [] and report["stage"] == "connected", report
    assert report["dock_visible"] and report["backend"] == "connected" and report["device"] == "CPU"
    assert {"land cover (GeoSSL)", "scene", "training polygons"} <= set(report["layers"])

    pid = report["backend_pid"]
    assert pid, "the panel started its own backend"
    deadline = time.monotonic() + 10
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if running(pid):
        os.kill(pid, signal.SIGKILL)  # leave nothing behind, then fail
        pytest.fail("the backend the panel started outlived QGIS")

    image = QImage(str(shot))
    assert (image.width(), image.height()) == (1600, 1000)
    colours = {image.pixel(x, y) for x in range(0, 1600, 10) for y in range(0, 1000, 10)}
    assert len(colours) > 50, "the screenshot is (nearly) blank"
    map_colours = {image.pixelColor(x, y).name() for x in range(300, 1100, 8) for y in range(150, 900, 8)}
    assert {"#ffd92f", "#1b7837"} <= map_colours, "the classified map is drawn in the polygons' colours"
