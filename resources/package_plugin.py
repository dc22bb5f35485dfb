#!/usr/bin/env python3
"""Build ``dist/geossl_plugin-<version>.zip``, the file uploaded to plugins.qgis.org.

Why a script: the checkout links ``plugin/metadata.txt`` and ``plugin/icon.svg`` to shared files, and
the repository's validator wants real files, a LICENSE, and no ``__pycache__``/``.pyc``. The zip also
carries the backend's source and pinned requirements under ``geossl_plugin/backend_src/``: "Set up
backend…" installs the backend from there, so plugin and backend versions always match. Stdlib only,
so it runs with any Python 3.10+:  python3 resources/package_plugin.py [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import configparser
import os
import sys
import zipfile
from pathlib import Path

PACKAGE = "geossl_plugin"
REPO = Path(__file__).resolve().parent.parent
SKIP_DIRS = {"__pycache__", ".git", "__MACOSX", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo", ".orig", ".rej", ".swp"}
BACKEND_DIR = "backend_src"  # plugin/installer/locations.py looks for it under this name
BACKEND_FILES = ("pyproject.toml", "requirements.txt")
BACKEND_PACKAGE = "geossl"
FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # reproducible zips: same sources, same bytes


class PackagingError(Exception):
    pass


def read_metadata(repo: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys such as qgisMinimumVersion are case-sensitive
    if not parser.read(repo / "metadata.txt", encoding="utf-8"):
        raise PackagingError(f"{repo / 'metadata.txt'} is missing")
    return parser["general"]


def plugin_files(plugin_dir: Path) -> list[tuple[Path, str]]:
    """(source, path inside the package) for every file to ship; links are followed, not stored."""
    found: list[tuple[Path, str]] = []
    for root, dirs, files in os.walk(plugin_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            source = Path(root) / name
            if name.startswith(".") or source.suffix in SKIP_SUFFIXES or name.endswith("~"):
                continue
            if not source.exists():
                raise PackagingError(f"{source} is a broken link")
            found.append((source, source.relative_to(plugin_dir).as_posix()))
    return found


def backend_files(backend_dir: Path) -> list[tuple[Path, str]]:
    """The backend's pyproject, pinned requirements and ``geossl`` package (never its .venv or build output)."""
    found = []
    for name in BACKEND_FILES:
        if not (backend_dir / name).is_file():
            raise PackagingError(f"{backend_dir / name} is missing; the set-up installs the backend from it")
        found.append((backend_dir / name, f"{BACKEND_DIR}/{name}"))
    package = backend_dir / BACKEND_PACKAGE
    if not (package / "__init__.py").is_file():
        raise PackagingError(f"{package} is not a Python package")
    for source, arc in plugin_files(package):
        found.append((source, f"{BACKEND_DIR}/{BACKEND_PACKAGE}/{arc}"))
    return found


def build(repo: Path = REPO, out_dir: Path | None = None) -> Path:
    meta = read_metadata(repo)
    version = meta.get("version", "").strip()
    if not version:
        raise PackagingError("metadata.txt has no version")
    files = plugin_files(repo / "plugin")
    names = {arc for _, arc in files}
    if any(arc.startswith(f"{BACKEND_DIR}/") for arc in names):
        raise PackagingError(f"plugin/{BACKEND_DIR} must not exist in the checkout; it is built from backend/")
    files += backend_files(repo / "backend")
    for required in ("__init__.py", "metadata.txt", meta.get("icon", "icon.svg")):
        if required not in names:
            raise PackagingError(f"plugin/{required} is missing")
    if "LICENSE" not in names:
        license_file = repo / "LICENSE"
        if not license_file.is_file():
            raise PackagingError("no LICENSE at the top of the repository; plugins.qgis.org rejects "
                                 "packages without geossl_plugin/LICENSE")
        files.append((license_file, "LICENSE"))

    out_dir = (out_dir or repo / "dist").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PACKAGE}-{version}.zip"
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for source, arc in sorted(files, key=lambda item: item[1]):
            entry = zipfile.ZipInfo(f"{PACKAGE}/{arc}", date_time=FIXED_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o100644 << 16  # a regular file, never a symlink
            zf.writestr(entry, source.read_bytes())
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, help="where to write the zip (default: <repo>/dist)")
    args = parser.parse_args(argv)
    try:
        target = build(out_dir=args.out_dir)
    except PackagingError as exc:
        print(f"package_plugin: error: {exc}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
