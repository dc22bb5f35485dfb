"""resources/install_plugin.sh against throw-away QGIS profiles."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from qgis.PyQt.QtCore import QSettings

from .conftest import REPO

SCRIPT = REPO / "resources" / "install_plugin.sh"
EXISTING_INI = """[General]
lastUsedDir=/data/rasters
geometry=@ByteArray(\\x1\\xd9\\xd0\\xcb)

[PythonPlugins]
processing=true
geossl_plugin=false

[qgis]
checkVersion=false
"""


def _install(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if home is not None:
        env["HOME"] = str(home)
        env.pop("XDG_DATA_HOME", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30, env=env,
                          check=False)


def _enabled(ini: Path) -> str | None:
    return QSettings(str(ini), QSettings.IniFormat).value("PythonPlugins/geossl_plugin")


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    root = tmp_path / "profiles" / "default"
    (root / "QGIS").mkdir(parents=True)
    (root / "QGIS" / "QGIS3.ini").write_text(EXISTING_INI)
    return root


def test_links_the_checkout_and_enables_the_plugin_keeping_other_settings(profile: Path) -> None:
    result = _install(str(profile))
    assert result.returncode == 0, result.stderr
    link = profile / "python" / "plugins" / "geossl_plugin"
    assert link.is_symlink() and link.resolve() == REPO / "plugin"
    assert (link / "metadata.txt").is_file() and (link / "icon.svg").is_file()

    ini = profile / "QGIS" / "QGIS3.ini"
    assert _enabled(ini) == "true"
    text = ini.read_text()
    assert text.count("geossl_plugin=") == 1
    for line in EXISTING_INI.splitlines():
        if "geossl_plugin" not in line:
            assert line in text.splitlines()
    settings = QSettings(str(ini), QSettings.IniFormat)
    assert settings.value("PythonPlugins/processing") == "true"
    assert settings.value("lastUsedDir") == "/data/rasters"


def test_running_twice_changes_nothing(profile: Path) -> None:
    assert _install(str(profile)).returncode == 0
    ini = profile / "QGIS" / "QGIS3.ini"
    first = ini.read_text()
    assert _install(str(profile)).returncode == 0
    assert ini.read_text() == first


def test_replaces_an_old_link(profile: Path, tmp_path: Path) -> None:
    link = profile / "python" / "plugins" / "geossl_plugin"
    link.parent.mkdir(parents=True)
    link.symlink_to(tmp_path / "old-checkout" / "plugin")
    assert _install(str(profile)).returncode == 0
    assert link.resolve() == REPO / "plugin"


def test_refuses_to_delete_a_real_folder(profile: Path) -> None:
    installed = profile / "python" / "plugins" / "geossl_plugin"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("# installed from the plugin repository\n")
    result = _install(str(profile))
    assert result.returncode == 1
    assert "not a link" in result.stderr
    assert (installed / "__init__.py").read_text() == "# installed from the plugin repository\n"
    assert _enabled(profile / "QGIS" / "QGIS3.ini") == "false", "nothing else was changed either"


def test_creates_a_missing_ini_and_section(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh-profile"
    assert _install(str(fresh)).returncode == 0
    assert (fresh / "QGIS" / "QGIS3.ini").read_text() == "[PythonPlugins]\ngeossl_plugin=true\n"

    other = tmp_path / "no-section"
    (other / "QGIS").mkdir(parents=True)
    (other / "QGIS" / "QGIS3.ini").write_text("[qgis]\nx=1\n")
    assert _install(str(other)).returncode == 0
    assert (other / "QGIS" / "QGIS3.ini").read_text() == "[qgis]\nx=1\n\n[PythonPlugins]\ngeossl_plugin=true\n"


def test_default_profile_is_the_users_default(tmp_path: Path) -> None:
    result = _install(home=tmp_path)
    assert result.returncode == 0, result.stderr
    default = tmp_path / ".local" / "share" / "QGIS" / "QGIS3" / "profiles" / "default"
    assert (default / "python" / "plugins" / "geossl_plugin").resolve() == REPO / "plugin"
    assert _enabled(default / "QGIS" / "QGIS3.ini") == "true"
