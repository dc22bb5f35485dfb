"""resources/package_plugin.py: the zip that goes to plugins.qgis.org, built from a copy of the layout."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGE = "geossl_plugin"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The repository's packaging-relevant layout, links kept as links, plus junk that must not ship."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy2(REPO / "metadata.txt", root / "metadata.txt")
    (root / "LICENSE").write_text("GNU GENERAL PUBLIC LICENSE\nVersion 2, June 1991\n")
    shutil.copytree(REPO / "resources", root / "resources", symlinks=True)
    shutil.copytree(REPO / "plugin", root / "plugin", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(REPO / "backend", root / "backend", symlinks=True,  # shipped as backend_src/
                    ignore=shutil.ignore_patterns(".venv", "__pycache__", "*.pyc"))
    (root / "plugin" / "__pycache__").mkdir()
    (root / "plugin" / "__pycache__" / "backend.cpython-311.pyc").write_bytes(b"\0junk")
    (root / "plugin" / "panel" / "stale.pyc").write_bytes(b"\0junk")
    (root / "plugin" / ".DS_Store").write_bytes(b"junk")
    return root


def _run(checkout: Path, out_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(checkout / "resources" / "package_plugin.py"), "--out-dir",
                           str(out_dir)], capture_output=True, text=True, timeout=60, check=False)


def test_zip_has_the_plugin_folder_with_real_files_and_no_junk(checkout: Path, tmp_path: Path) -> None:
    result = _run(checkout, tmp_path / "dist")
    assert result.returncode == 0, result.stderr
    target = tmp_path / "dist" / f"{PACKAGE}-0.1.0.zip"
    assert result.stdout.strip() == str(target)

    with zipfile.ZipFile(target) as zf:
        assert zf.testzip() is None
        names = [n for n in zf.namelist() if not n.startswith(f"{PACKAGE}/backend_src/")]  # see test_installer_packaging
        expected_py = sorted(f"{PACKAGE}/{p.relative_to(REPO / 'plugin').as_posix()}"
                             for p in (REPO / "plugin").rglob("*.py") if "__pycache__" not in p.parts)
        assert sorted(n for n in names if n.endswith(".py")) == expected_py
        docs = [f"{PACKAGE}/{p.name}" for p in (REPO / "plugin").glob("*.md")]  # plugin/README.md, if kept
        assert sorted(n for n in names if not n.endswith(".py")) == sorted([
            f"{PACKAGE}/LICENSE", f"{PACKAGE}/icon.svg", f"{PACKAGE}/metadata.txt", *docs])
        assert zf.read(f"{PACKAGE}/metadata.txt") == (REPO / "metadata.txt").read_bytes()
        assert zf.read(f"{PACKAGE}/icon.svg") == (REPO / "resources" / "icon.svg").read_bytes()
        for entry in zf.infolist():
            mode = entry.external_attr >> 16
            assert stat.S_ISREG(mode), f"{entry.filename} is stored as a link or special file"

    again = tmp_path / "again"
    assert _run(checkout, again).returncode == 0
    assert (again / target.name).read_bytes() == target.read_bytes(), "builds are reproducible"


def test_the_packaged_plugin_imports_on_its_own(checkout: Path, tmp_path: Path) -> None:
    assert _run(checkout, tmp_path / "dist").returncode == 0
    plugins = tmp_path / "installed"
    with zipfile.ZipFile(tmp_path / "dist" / f"{PACKAGE}-0.1.0.zip") as zf:
        zf.extractall(plugins)
    code = (f"import sys; sys.path.insert(0, {str(plugins)!r}); "
            f"import {PACKAGE}.geossl_plugin as m, {PACKAGE}.panel; print(m.ICON_PATH.is_file())")
    result = subprocess.run([sys.executable, "-B", "-c", code], capture_output=True, text=True, timeout=60,
                            check=False, env={"PATH": "/usr/bin:/bin", "QT_QPA_PLATFORM": "offscreen"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_missing_license_is_a_clear_error(checkout: Path, tmp_path: Path) -> None:
    (checkout / "LICENSE").unlink()
    result = _run(checkout, tmp_path / "dist")
    assert result.returncode == 1
    assert "LICENSE" in result.stderr and "plugins.qgis.org" in result.stderr
    assert not (tmp_path / "dist" / f"{PACKAGE}-0.1.0.zip").exists()
