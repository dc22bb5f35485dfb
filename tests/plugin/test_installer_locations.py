"""Venv folder, Python discovery and programs in the venv, on simulated Windows/macOS/Linux layouts.

Windows and macOS are simulated (folders in tmp_path, the OS name passed in): nothing here runs there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest
from geossl_plugin.installer.locations import (
    PYTHON_PROBE,
    PythonFound,
    backend_source,
    default_venv_root,
    is_inside,
    python_candidates,
    read_python_probe,
    venv_dir,
    venv_geossl,
    venv_python,
    venv_root,
)


def _file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


def _no_which(_name: str) -> None:
    return None


def test_default_roots_per_os() -> None:
    win = default_venv_root("windows", {"LOCALAPPDATA": r"C:\Users\ana\AppData\Local"}, r"C:\Users\ana")
    assert win == PureWindowsPath(r"C:\Users\ana\AppData\Local\geossl")
    assert default_venv_root("windows", {}, r"C:\Users\ana") == PureWindowsPath(r"C:\Users\ana\AppData\Local\geossl")
    mac = default_venv_root("darwin", {}, "/Users/ana")
    assert mac == PurePosixPath("/Users/ana/Library/Application Support/geossl")
    assert default_venv_root("linux", {}, "/home/ana") == Path("/home/ana/.local/share/geossl")
    assert default_venv_root("linux", {"XDG_DATA_HOME": "/data/ana"}, "/home/ana") == Path("/data/ana/geossl")


def test_one_venv_per_minor_version_and_the_programs_inside() -> None:
    root = PureWindowsPath(r"D:\geossl")
    venv = venv_dir(root, (3, 12, 7))
    assert venv == PureWindowsPath(r"D:\geossl\venv-py3.12")
    assert venv_python(venv, "windows") == PureWindowsPath(r"D:\geossl\venv-py3.12\Scripts\python.exe")
    assert venv_geossl(venv, "windows") == PureWindowsPath(r"D:\geossl\venv-py3.12\Scripts\geossl.exe")
    posix = venv_dir(PurePosixPath("/Users/ana/Library/Application Support/geossl"), (3, 11))
    assert str(venv_geossl(posix, "darwin")) == "/Users/ana/Library/Application Support/geossl/venv-py3.11/bin/geossl"
    assert str(venv_python(posix, "linux")).endswith("venv-py3.11/bin/python")


def test_saved_root_wins_and_expands_the_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert venv_root("  ~/big-disk/geossl ", "linux") == tmp_path / "big-disk" / "geossl"
    assert venv_root("", "linux", {}, "/home/u") == Path("/home/u/.local/share/geossl")


def test_osgeo4w_prefers_qgis_own_python_then_the_newest_in_apps(tmp_path: Path) -> None:
    root = tmp_path / "OSGeo4W"
    qgis_python = _file(root / "apps" / "Python312" / "python.exe")
    older = _file(root / "apps" / "Python39" / "python.exe")
    newer = _file(root / "apps" / "Python313" / "python.exe")
    _file(root / "bin" / "qgis-bin.exe")
    found = python_candidates("windows", str(root / "bin" / "qgis-bin.exe"), str(root / "apps" / "Python312"),
                              {}, which=_no_which)
    assert found == [qgis_python, newer, older], "qgis-bin.exe is not a Python; 3.9 is kept for the probe to refuse"


def test_standalone_windows_install_found_through_osgeo4w_root_and_store_stub_skipped(tmp_path: Path) -> None:
    root = tmp_path / "Program Files" / "QGIS 3.40.1"
    python = _file(root / "apps" / "Python312" / "python.exe")
    stub = _file(tmp_path / "Microsoft" / "WindowsApps" / "python.exe")
    user_python = _file(tmp_path / "Local" / "Programs" / "Python" / "Python311" / "python.exe")
    found = python_candidates("windows", str(root / "bin" / "qgis-bin.exe"), str(tmp_path / "elsewhere"),
                              {"OSGEO4W_ROOT": str(root), "LOCALAPPDATA": str(tmp_path / "Local")},
                              which=lambda name: str(stub))
    assert found == [python, user_python]


def test_macos_bundle_python(tmp_path: Path) -> None:
    app = tmp_path / "Applications" / "QGIS-LTR.app"
    bundled = _file(app / "Contents" / "MacOS" / "bin" / "python3")
    framework = _file(app / "Contents" / "Frameworks" / "Python.framework" / "Versions" / "3.12" / "bin" / "python3")
    brew = _file(tmp_path / "homebrew" / "python3")
    found = python_candidates("darwin", str(app / "Contents" / "MacOS" / "QGIS"),
                              str(app / "Contents" / "Frameworks" / "Python.framework" / "Versions" / "3.12"),
                              {}, which=lambda name: str(brew))
    assert found[:3] == [bundled, framework, brew]


def test_linux_qgis_python_then_system(tmp_path: Path) -> None:
    prefix = tmp_path / "usr"
    python = _file(prefix / "bin" / "python3")
    other = _file(tmp_path / "opt" / "python3")
    found = python_candidates("linux", "/usr/bin/qgis", str(prefix), {}, which=lambda name: str(other))
    assert found[0] == python and other in found
    assert Path("/usr/bin/qgis") not in found


def test_probe_accepts_this_python_and_says_why_others_are_refused(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", PYTHON_PROBE], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    found, why = read_python_probe(Path(sys.executable), out)
    assert found == PythonFound(Path(sys.executable), tuple(sys.version_info[:3])) and why == ""
    old = json.dumps({"version": [3, 9, 18], "bits": 64, "venv": True})
    assert "older than 3.10" in read_python_probe(tmp_path / "py", old)[1]
    no_venv = json.dumps({"version": [3, 12, 3], "bits": 64, "venv": False})
    assert "cannot create virtual environments" in read_python_probe(tmp_path / "py", no_venv)[1]
    bits32 = json.dumps({"version": [3, 12, 3], "bits": 32, "venv": True})
    assert "32-bit" in read_python_probe(tmp_path / "py", bits32)[1]
    assert read_python_probe(tmp_path / "py", "Traceback…")[0] is None


def test_backend_source_in_the_zip_or_the_checkout(tmp_path: Path) -> None:
    plugin = tmp_path / "profile" / "geossl_plugin"
    assert backend_source(plugin) is None
    _file(tmp_path / "profile" / "backend" / "pyproject.toml")  # incomplete: no requirements
    assert backend_source(plugin) is None
    shipped = plugin / "backend_src"
    _file(shipped / "pyproject.toml")
    _file(shipped / "requirements.txt")
    assert backend_source(plugin) == (shipped, shipped / "requirements.txt")


def test_the_checkout_backend_is_found_through_the_plugin_link() -> None:
    import geossl_plugin

    from .conftest import REPO

    found = backend_source(Path(geossl_plugin.__file__).parent)
    assert found == (REPO / "backend", REPO / "backend" / "requirements.txt")


def test_inside_check_resolves_links(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    link = tmp_path / "link"
    link.symlink_to(plugin, target_is_directory=True)
    assert is_inside(link / "venv", plugin) and is_inside(plugin, plugin)
    assert not is_inside(tmp_path / "venv", plugin)


def test_a_finished_setup_is_found_again_newest_python_first(tmp_path: Path) -> None:
    from geossl_plugin.installer.locations import READY_MARKER, installed_backend

    assert installed_backend(tmp_path / "nothing", "linux") is None
    for minor in (11, 12):
        _file(tmp_path / f"venv-py3.{minor}" / "bin" / "geossl")
    assert installed_backend(tmp_path, "linux") is None, "no marker: the set-up did not finish"
    _file(tmp_path / "venv-py3.11" / READY_MARKER)
    assert installed_backend(tmp_path, "linux") == tmp_path / "venv-py3.11" / "bin" / "geossl"
    _file(tmp_path / "venv-py3.12" / READY_MARKER)
    assert installed_backend(tmp_path, "linux") == tmp_path / "venv-py3.12" / "bin" / "geossl"
    _file(tmp_path / "venv-py3.13" / "Scripts" / "geossl.exe")
    _file(tmp_path / "venv-py3.13" / READY_MARKER)
    assert installed_backend(tmp_path, "windows") == tmp_path / "venv-py3.13" / "Scripts" / "geossl.exe"


def test_discovery_finds_the_set_up_venv_after_the_checkout(geossl_venv_root: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import stat

    from geossl_plugin.backend import default_backend_path
    from geossl_plugin.installer.locations import READY_MARKER

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    plugin = tmp_path / "profile" / "geossl_plugin"  # no checkout around it
    plugin.mkdir(parents=True)
    assert default_backend_path(plugin) is None
    geossl = _file(geossl_venv_root / "venv-py3.11" / "bin" / "geossl")
    geossl.chmod(geossl.stat().st_mode | stat.S_IXUSR)
    _file(geossl_venv_root / "venv-py3.11" / READY_MARKER)
    assert default_backend_path(plugin) == str(geossl)
