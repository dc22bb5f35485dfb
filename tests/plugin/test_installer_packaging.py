"""The plugin zip carries the backend source and pinned requirements that "Set up backend…" installs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from geossl_plugin.installer.locations import backend_source
from packaging.requirements import Requirement

from .conftest import REPO
from .test_packaging import PACKAGE, _run, checkout  # noqa: F401 (checkout is a fixture)


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier  # exactly one "==" per line
            assert spec.operator == "==", line
            pins[requirement.name.lower().replace("_", "-")] = spec.version
    return pins


def test_requirements_pin_every_backend_dependency_within_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "backend" / "pyproject.toml").read_text())["project"]
    pins = _pins((REPO / "backend" / "requirements.txt").read_text())
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in backend/requirements.txt"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} violates {requirement}"
    assert len(pins) == len(project["dependencies"]), "nothing pinned that the backend does not need"


def test_zip_carries_backend_source_and_requirements(checkout: Path, tmp_path: Path) -> None:  # noqa: F811
    (checkout / "backend" / "geossl" / "__pycache__").mkdir(exist_ok=True)
    (checkout / "backend" / "geossl" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"\0")
    (checkout / "backend" / ".venv" / "bin").mkdir(parents=True)
    (checkout / "backend" / ".venv" / "bin" / "python").write_text("")
    result = _run(checkout, tmp_path / "dist")
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "dist" / f"{PACKAGE}-0.1.0.zip") as zf:
        names = set(zf.namelist())
        prefix = f"{PACKAGE}/backend_src/"
        shipped = {n[len(prefix):] for n in names if n.startswith(prefix)}
        expected = {p.relative_to(REPO / "backend").as_posix()
                    for p in (REPO / "backend" / "geossl").rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
        assert shipped == expected | {"pyproject.toml", "requirements.txt"}
        assert "geossl/data/" in "".join(sorted(shipped)), "package data (the gain table) travels too"
        assert zf.read(prefix + "requirements.txt") == (REPO / "backend" / "requirements.txt").read_bytes()
        zf.extractall(tmp_path / "installed")
    plugin = tmp_path / "installed" / PACKAGE
    source, requirements = backend_source(plugin)
    assert source == plugin / "backend_src" and requirements.is_file(), "the set-up finds what the zip carries"


def test_missing_requirements_is_a_clear_error(checkout: Path, tmp_path: Path) -> None:  # noqa: F811
    (checkout / "backend" / "requirements.txt").unlink()
    result = _run(checkout, tmp_path / "dist")
    assert result.returncode == 1 and "requirements.txt is missing" in result.stderr
