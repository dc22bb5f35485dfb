"""Where the plugin looks for ``geossl``, what it strips from the child's environment, how it reads JSON."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
from geossl_plugin.backend import (
    BackendError,
    backend_environment,
    default_backend_path,
    parse_info,
    repo_backend_path,
    resolve_backend_path,
    save_backend_path,
)
from qgis.PyQt.QtCore import QProcessEnvironment

from .conftest import CUDA_INFO, REPO


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def checkout_behind_profile_link(tmp_path: Path) -> tuple[Path, Path]:
    """A checkout with plugin/ and backend/.venv, reached through a profile's plugins/ link."""
    checkout = tmp_path / "checkout"
    (checkout / "plugin").mkdir(parents=True)
    link = tmp_path / "profile" / "python" / "plugins" / "geossl_plugin"
    link.parent.mkdir(parents=True)
    link.symlink_to(checkout / "plugin", target_is_directory=True)
    return checkout, link


def test_the_real_plugin_folder_points_at_this_checkouts_backend() -> None:
    import geossl_plugin

    plugin_dir = Path(geossl_plugin.__file__).parent  # .../geossl-test-plugins-*/geossl_plugin (a link)
    assert plugin_dir.is_symlink() or plugin_dir.resolve() == REPO / "plugin"
    assert repo_backend_path(plugin_dir) == REPO / "backend" / ".venv" / "bin" / "geossl"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX venv layout")
def test_default_is_the_checkouts_venv_resolved_through_the_profile_link(
        checkout_behind_profile_link: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkout, link = checkout_behind_profile_link
    on_path = _executable(tmp_path / "elsewhere" / "geossl")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert default_backend_path(link) == str(on_path), "no venv yet: fall back to PATH"

    venv_geossl = _executable(checkout / "backend" / ".venv" / "bin" / "geossl")
    assert default_backend_path(link) == str(venv_geossl), "the checkout's venv wins over PATH"


def test_nothing_anywhere_gives_none(checkout_behind_profile_link: tuple[Path, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert default_backend_path(checkout_behind_profile_link[1]) is None


def test_saved_path_wins_over_discovery(checkout_behind_profile_link: tuple[Path, Path]) -> None:
    checkout, link = checkout_behind_profile_link
    _executable(checkout / "backend" / ".venv" / "bin" / "geossl")
    save_backend_path("/opt/geossl/bin/geossl")
    assert resolve_backend_path(link) == "/opt/geossl/bin/geossl"
    save_backend_path("  ")
    assert resolve_backend_path(link) == str(checkout / "backend" / ".venv" / "bin" / "geossl")


def test_environment_keeps_user_variables_and_drops_qgis_ones() -> None:
    base = QProcessEnvironment()
    for name, value in {"PATH": "/usr/bin", "HOME": "/home/u", "CUDA_VISIBLE_DEVICES": "0",
                        "GDAL_HTTP_TIMEOUT": "30", "PYTHONPATH": "/usr/share/qgis/python",
                        "PYTHONHOME": "/qgis", "PROJ_LIB": "/p", "PROJ_DATA": "/p", "GDAL_DATA": "/g",
                        "GDAL_DRIVER_PATH": "/g/plugins", "QT_PLUGIN_PATH": "/q",
                        "QT_QPA_PLATFORM_PLUGIN_PATH": "/q", "QGIS_PREFIX_PATH": "/qgis",
                        "PYQGIS_STARTUP": "/s.py", "OSGEO4W_ROOT": "C:/OSGeo4W"}.items():
        base.insert(name, value)
    env = backend_environment(base)
    assert sorted(env.keys()) == sorted(["PATH", "HOME", "CUDA_VISIBLE_DEVICES", "GDAL_HTTP_TIMEOUT",
                                         "PYTHONIOENCODING"])
    assert env.value("PYTHONIOENCODING") == "utf-8"
    assert base.contains("PYTHONPATH"), "the caller's environment object is not modified"


def test_environment_defaults_to_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOSSL_PROBE_VAR", "1")
    monkeypatch.setenv("PROJ_DATA", "/qgis/proj")
    env = backend_environment()
    assert env.value("GEOSSL_PROBE_VAR") == "1" and not env.contains("PROJ_DATA")
    assert env.value("PATH") == os.environ["PATH"]


def test_parse_info_tolerates_stray_lines_before_the_json() -> None:
    import json

    info = parse_info("Warning: something chatty\n" + json.dumps(CUDA_INFO) + "\n", "/x/geossl")
    assert info.device_label == "CUDA: NVIDIA H100 80GB HBM3"
    assert info.version == "0.1.0" and info.torch_version == "2.14.1+cu130"


def test_parse_info_rejects_a_non_object() -> None:
    with pytest.raises(BackendError, match="with JSON"):
        parse_info("[1, 2, 3]", "/x/geossl")
