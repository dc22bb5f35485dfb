"""From the plugin zip to a styled map with nothing but QGIS: the set-up from the real package index.

The packaged zip (resources/package_plugin.py, as ``make package`` builds it) is unpacked into a
fresh QGIS profile; a real QGIS desktop under Xvfb runs e2e_scene.py, which clicks through the dock
as a new user would: "Set up backend…" into an empty folder (CPU torch from PyPI, or the pip's
configured index: download.pytorch.org is not reachable from CI), the panel starts that backend,
fine-tunes a tiny model and segments the raster; the styled result must be in the project and on
screen. Minutes, most of them pip; it needs the network to the package index, like ``make install``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from geossl_plugin.installer.locations import READY_MARKER
from qgis.PyQt.QtGui import QImage

from .conftest import REPO
from .desktop import clean_environ, needs_desktop, run_scene
from .gdal_data import class_polygons, two_class_raster

LIMIT_S = 1800  # pip unpacking torch on 2 busy cores dominates; the timings are printed
COLOURS = {"bright": "#ffd92f", "dark": "#1b7837"}

pytestmark = needs_desktop


def _fresh_profile_from_zip(tmp_path: Path) -> tuple[Path, Path]:
    """The zip a user downloads, unpacked where QGIS's plugin manager puts it, and enabled."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, str(REPO / "resources" / "package_plugin.py"), "--out-dir", str(dist)],
                   check=True, capture_output=True, timeout=120)
    (archive,) = dist.glob("geossl_plugin-*.zip")
    profiles = tmp_path / "qgis"
    plugins = profiles / "profiles" / "default" / "python" / "plugins"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(plugins)
    ini = profiles / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\ngeossl_plugin=true\n")
    return profiles, plugins / "geossl_plugin"


def test_from_the_plugin_zip_to_a_styled_map_with_a_backend_set_up_inside_qgis(tmp_path: Path) -> None:
    profiles, plugin = _fresh_profile_from_zip(tmp_path)
    assert (plugin / "backend_src" / "pyproject.toml").is_file() and not (plugin / "backend_src" / ".venv").exists()
    root = tmp_path / "GeoSSL backend"  # a space in the path, as on Windows user folders
    raster = two_class_raster(tmp_path / "scene.tif", size=96)
    labels = class_polygons(tmp_path / "labels.gpkg", size=96)
    report_path, shot, map_path = tmp_path / "report.json", tmp_path / "screenshot.png", tmp_path / "map.tif"
    env = clean_environ()
    env.update(GEOSSL_E2E_ROOT=str(root), GEOSSL_E2E_DATA_DIR=str(tmp_path / "geossl-data"),
               GEOSSL_E2E_RASTER=str(raster), GEOSSL_E2E_LABELS=str(labels), GEOSSL_E2E_MAP=str(map_path),
               GEOSSL_E2E_COLOURS=json.dumps(COLOURS), GEOSSL_E2E_REPORT=str(report_path),
               GEOSSL_E2E_QUIT=str(tmp_path / "quit"), GEOSSL_E2E_TIMEOUT_S=str(LIMIT_S - 30))
    try:
        run_scene(profiles, REPO / "tests" / "plugin" / "e2e_scene.py", env, report_path, tmp_path / "quit", shot,
                  tmp_path / "qgis.log", LIMIT_S)
        _check(tmp_path, root, report_path, shot, map_path)
    finally:  # the environment is gigabytes: pytest keeps its last three temporary folders
        shutil.rmtree(root / next((p.name for p in root.glob("venv-*")), "none"), ignore_errors=True)


def _check(tmp_path: Path, root: Path, report_path: Path, shot: Path, map_path: Path) -> None:
    print(f"screenshot: {shot}")
    log = (tmp_path / "qgis.log").read_text(errors="replace")[-3000:]
    assert report_path.is_file(), f"the scene never finished; QGIS said:\n{log}"
    report = json.loads(report_path.read_text())
    print("timings (s):", report["times"])
    assert report["setup_offered"], "a fresh profile with no backend is offered the set-up"
    assert report["errors"] == [] and report["stage"] == "segmented", json.dumps(report, indent=1)[-6000:]

    venv = Path(report["installed"]).parent.parent
    assert venv.parent == root and venv.name.startswith("venv-py3."), venv
    ready = json.loads((venv / READY_MARKER).read_text())
    assert (ready["torch"], ready["device"]) == ("pypi", "cpu")
    assert "CPU" in report["device"] and "Kappa" in report["metrics"]
    assert Path(report["model"]).parent == tmp_path / "geossl-data" / "models"

    classified = next(r for r in report["results"] if r["source"] == str(map_path))
    assert classified["renderer"] == "QgsPalettedRasterRenderer"
    assert {name: colour for name, colour in classified["palette"].values()} == COLOURS, "the polygons' colours"
    image = QImage(str(shot))
    map_colours = {image.pixelColor(x, y).name() for x in range(300, 1100, 8) for y in range(150, 900, 8)}
    assert set(COLOURS.values()) <= map_colours, "the classified map is on screen in the polygons' colours"
