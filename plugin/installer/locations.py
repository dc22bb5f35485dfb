"""Where things are: the venv folder, a Python to build it from, the programs inside it, the backend source.

The venv lives outside the plugin folder (a plugin update deletes that folder) in a per-user data
folder the user may move (the caller stores the choice in QgsSettings under ``VENV_ROOT_KEY``), one
venv per Python minor version, since a venv only works with the minor version that made it.
Everything takes the OS name as a parameter, so the Windows and macOS layouts are tested on
simulated folders (they are not run on those systems). Stdlib only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath

LINUX, WINDOWS, DARWIN = "linux", "windows", "darwin"
VENV_ROOT_KEY = "geossl/venv_root"
MIN_PYTHON = (3, 10)
BACKEND_SOURCE_DIR = "backend_src"  # inside the packaged plugin: the backend's pyproject.toml + geossl/
REQUIREMENTS_FILE = "requirements.txt"
READY_MARKER = "geossl-setup.json"  # in the venv, written when the set-up has passed its device test


def current_os() -> str:
    if sys.platform == "win32":
        return WINDOWS
    return DARWIN if sys.platform == "darwin" else LINUX


def _pure(os_name: str) -> type[PurePath]:
    """Real paths for this OS; pure ones to compute another OS's defaults in tests."""
    if os_name == current_os():
        return Path
    return PureWindowsPath if os_name == WINDOWS else PurePosixPath


def default_venv_root(os_name: str, environ: Mapping[str, str], home: str) -> PurePath:
    """Linux ``$XDG_DATA_HOME/geossl`` (``~/.local/share``), macOS ``~/Library/Application Support/geossl``,
    Windows ``%LOCALAPPDATA%\\geossl`` (local, not roaming: gigabytes must not sync to a server)."""
    path = _pure(os_name)
    if os_name == WINDOWS:
        local = environ.get("LOCALAPPDATA") or str(path(home) / "AppData" / "Local")
        return path(local) / "geossl"
    if os_name == DARWIN:
        return path(home) / "Library" / "Application Support" / "geossl"
    data = environ.get("XDG_DATA_HOME") or str(path(home) / ".local" / "share")
    return path(data) / "geossl"


def venv_root(saved: str, os_name: str | None = None, environ: Mapping[str, str] | None = None,
              home: str | None = None) -> PurePath:
    """The saved folder (``~`` expanded) or the default one."""
    os_name = os_name or current_os()
    if saved.strip():
        return _pure(os_name)(os.path.expanduser(saved.strip()))
    return default_venv_root(os_name, os.environ if environ is None else environ,
                             home if home is not None else str(Path.home()))


def venv_dir(root: PurePath, version: tuple[int, ...]) -> PurePath:
    return root / f"venv-py{version[0]}.{version[1]}"


def venv_python(venv: PurePath, os_name: str) -> PurePath:
    return venv / "Scripts" / "python.exe" if os_name == WINDOWS else venv / "bin" / "python"


def venv_geossl(venv: PurePath, os_name: str) -> PurePath:
    """The backend's command inside the venv: what the plugin then saves as its backend path."""
    return venv / "Scripts" / "geossl.exe" if os_name == WINDOWS else venv / "bin" / "geossl"


def installed_backend(root: Path, os_name: str) -> Path | None:
    """The ``geossl`` of the newest venv under ``root`` that a set-up finished (its marker file is
    written only after the device test passed): found again even if the saved path is cleared."""
    def minor(venv: Path) -> int:
        match = re.search(r"venv-py3\.(\d+)$", venv.name)
        return int(match.group(1)) if match else -1

    for venv in sorted(Path(root).glob("venv-py3.*"), key=minor, reverse=True):
        geossl = Path(venv_geossl(venv, os_name))
        if (venv / READY_MARKER).is_file() and geossl.is_file():
            return geossl
    return None


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or below it (links resolved): the venv must not be in the plugin."""
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


# --- the backend source shipped with the plugin -----------------------------------------------------

def backend_source(plugin_dir: Path) -> tuple[Path, Path] | None:
    """(source folder, pinned requirements): ``<plugin>/backend_src`` in the zip, ``<repo>/backend`` in a
    checkout (the plugin folder is a link to ``<repo>/plugin``); None if neither is complete."""
    plugin = Path(os.path.realpath(plugin_dir))
    for folder in (plugin / BACKEND_SOURCE_DIR, plugin.parent / "backend"):
        if (folder / "pyproject.toml").is_file() and (folder / REQUIREMENTS_FILE).is_file():
            return folder, folder / REQUIREMENTS_FILE
    return None


# --- a Python to build the venv from -----------------------------------------------------------------

def _version_key(path: Path) -> tuple[int, ...]:
    """``Python312`` → (3, 12): newest OSGeo4W Python first."""
    match = re.search(r"Python(\d)(\d+)$", path.parent.name)
    return (int(match.group(1)), int(match.group(2))) if match else (0,)


def _windows_candidates(executable: Path, prefix: Path, environ: Mapping[str, str]) -> list[Path]:
    # Inside QGIS sys.executable is qgis-bin.exe; sys.prefix is <root>\apps\Python3XX (OSGeo4W and the
    # standalone installer share this layout).
    found = [prefix / "python.exe"]
    roots = [Path(environ["OSGEO4W_ROOT"])] if environ.get("OSGEO4W_ROOT") else []
    roots.append(prefix.parent.parent)
    for root in roots:
        apps = root / "apps"
        if apps.is_dir():
            found += sorted(apps.glob("Python3*/python.exe"), key=_version_key, reverse=True)
    if executable.name.lower().startswith("python"):
        found.append(executable)
    local = environ.get("LOCALAPPDATA")
    if local and (Path(local) / "Programs" / "Python").is_dir():  # python.org's per-user installs
        found += sorted((Path(local) / "Programs" / "Python").glob("Python3*/python.exe"),
                        key=_version_key, reverse=True)
    return found


def _macos_candidates(executable: Path, prefix: Path) -> list[Path]:
    found = []
    for path in (executable, prefix):
        bundle = next((p for p in (path, *path.parents) if p.suffix == ".app"), None)
        if bundle is not None:
            found += [bundle / "Contents" / "MacOS" / "bin" / "python3",
                      *sorted((bundle / "Contents" / "Frameworks" / "Python.framework" / "Versions")
                              .glob("3.*/bin/python3"), reverse=True)]
    if executable.name.startswith("python"):
        found.append(executable)
    return found + [Path("/opt/homebrew/bin/python3"), Path("/usr/local/bin/python3")]


def python_candidates(os_name: str, executable: str, prefix: str, environ: Mapping[str, str] | None = None,
                      which: Callable[[str], str | None] = shutil.which) -> list[Path]:
    """Pythons that may build the venv, best first: QGIS's own interpreter, then the system's.

    ``executable``/``prefix`` are QGIS's ``sys.executable``/``sys.prefix``. Only existing files are
    returned; whether one really works (version, ``venv``) is the probe's job (:data:`PYTHON_PROBE`).
    """
    environ = os.environ if environ is None else environ
    exe, pre = Path(executable), Path(prefix)
    if os_name == WINDOWS:
        found = _windows_candidates(exe, pre, environ)
        system = [which("python3"), which("python")]
    elif os_name == DARWIN:
        found = _macos_candidates(exe, pre)
        system = [which("python3")]
    else:
        found = [exe] if exe.name.startswith("python") else []
        found += [pre / "bin" / "python3", Path("/usr/bin/python3")]
        system = [which("python3")]
    # The Microsoft Store stub opens the Store instead of running anything.
    found += [Path(p) for p in system if p and "WindowsApps" not in p]
    if os_name == DARWIN:
        found.append(Path("/usr/bin/python3"))  # last: without the Command Line Tools it asks to install them
    unique: list[Path] = []
    seen: set[str] = set()
    for path in found:
        key = os.path.normcase(str(path))
        if key not in seen and path.is_file():
            seen.add(key)
            unique.append(path)
    return unique


# Run with each candidate (``python -c PYTHON_PROBE``): one JSON line, whatever the Python.
PYTHON_PROBE = (
    "import json, struct, sys\n"
    "d = {'version': list(sys.version_info[:3]), 'executable': sys.executable, 'bits': struct.calcsize('P') * 8}\n"
    "try:\n"
    "    import ensurepip, venv  # noqa\n"
    "    d['venv'] = True\n"
    "except Exception as e:\n"
    "    d['venv'] = False; d['venv_error'] = repr(e)\n"
    "print(json.dumps(d))\n"
)


@dataclass(frozen=True)
class PythonFound:
    path: Path
    version: tuple[int, int, int]


def read_python_probe(path: Path, stdout: str) -> tuple[PythonFound | None, str]:
    """(the Python, "") if it can build the venv, else (None, why not)."""
    try:
        data = json.loads(stdout.strip().splitlines()[-1])
        version = tuple(int(v) for v in data["version"][:3])
    except (ValueError, IndexError, KeyError, TypeError):
        return None, f"{path}: did not run the probe"
    dotted = ".".join(map(str, version))
    if version[:2] < MIN_PYTHON:
        return None, f"{path}: Python {dotted} is older than 3.10"
    if data.get("bits") != 64:
        return None, f"{path}: a 32-bit Python; torch needs a 64-bit one"
    if not data.get("venv"):
        return None, f"{path}: Python {dotted} cannot create virtual environments (no venv/ensurepip)"
    return PythonFound(path, version), ""  # type: ignore[arg-type]
