"""Finding the GeoSSL backend executable and asking it what it can do, without ever blocking QGIS.

The backend lives in its own virtual environment (torch must never be imported into QGIS's Python),
so the plugin only talks to it through a child process: here ``geossl info --json``, run with
QProcess and answered through Qt signals.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgis.core import QgsSettings
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, pyqtSignal

from .installer.environment import backend_environ as backend_environ  # re-exported: processing, tests
from .installer.environment import is_qgis_only
from .installer.locations import VENV_ROOT_KEY, current_os, installed_backend, venv_root

BACKEND_PATH_KEY = "geossl/backend_path"
INFO_ARGS = ("info", "--json")
DEFAULT_TIMEOUT_S = 120.0  # a cold first `import torch` plus CUDA start-up can take a minute on Windows

_STDERR_TAIL_CHARS = 2000


class BackendError(Exception):
    """A problem with the backend, phrased for the person in front of QGIS."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details


@dataclass(frozen=True)
class BackendInfo:
    """What ``geossl info --json`` reported: enough to show the status and pick options."""

    path: str
    version: str
    device: str
    device_name: str
    torch_version: str = ""
    methods: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def device_label(self) -> str:
        """"CPU" or "CUDA: NVIDIA H100 …": the GPU-or-not answer users look for first."""
        if self.device.lower() == "cpu":
            return "CPU"
        return f"{self.device.upper()}: {self.device_name}" if self.device_name else self.device.upper()

    @property
    def version_label(self) -> str:
        return f"geossl {self.version}" + (f" · torch {self.torch_version}" if self.torch_version else "")


# --- locating the executable -------------------------------------------------------------------

def _executable_name() -> str:
    return "geossl.exe" if sys.platform == "win32" else "geossl"


def repo_backend_path(plugin_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<repo>/backend/.venv/bin/geossl`` for a plugin folder that is (a link to) ``<repo>/plugin``.

    The profile folder is a symlink to the checkout, so the real path is resolved first.
    """
    plugin = Path(plugin_dir if plugin_dir is not None else Path(__file__).parent).resolve()
    bin_dir = "Scripts" if sys.platform == "win32" else "bin"
    return plugin.parent / "backend" / ".venv" / bin_dir / _executable_name()


def default_backend_path(plugin_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The checkout's backend venv if present, else the one "Set up backend…" made, else ``geossl``
    on PATH, else None."""
    candidate = repo_backend_path(plugin_dir)
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    saved_root = str(QgsSettings().value(VENV_ROOT_KEY, "", type=str) or "")
    installed = installed_backend(Path(venv_root(saved_root)), current_os())
    if installed is not None and os.access(installed, os.X_OK):
        return str(installed)
    return shutil.which("geossl")


def saved_backend_path() -> str:
    """The path the user chose, or "" for automatic discovery."""
    return str(QgsSettings().value(BACKEND_PATH_KEY, "", type=str) or "").strip()


def save_backend_path(path: str) -> None:
    settings = QgsSettings()
    if path.strip():
        settings.setValue(BACKEND_PATH_KEY, path.strip())
    else:
        settings.remove(BACKEND_PATH_KEY)


def resolve_backend_path(plugin_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The executable to run: the saved choice wins, automatic discovery otherwise."""
    return saved_backend_path() or default_backend_path(plugin_dir)


def check_executable(path: str | None) -> str:
    """Return ``path`` if it can be run, else raise a BackendError that says what to do."""
    if not path:
        raise BackendError(
            "Backend not found: no 'geossl' in the plugin's backend/.venv or on PATH. "
            "Press 'Set up backend…' in the Backend section, or choose its 'geossl' executable there.")
    p = Path(path).expanduser()
    if not p.exists():
        raise BackendError(f"Backend not found at {p}. Choose the 'geossl' executable of the "
                           "backend's virtual environment (…/.venv/bin/geossl).")
    if p.is_dir() or not os.access(p, os.X_OK):
        raise BackendError(f"{p} is not an executable file; choose the 'geossl' executable of the "
                           "backend's virtual environment.")
    return str(p)


# --- the child environment -----------------------------------------------------------------------

def backend_environment(base: QProcessEnvironment | None = None) -> QProcessEnvironment:
    """The current environment minus everything that points into QGIS's own installation.

    What is removed is defined once, in ``installer.environment`` (``backend_environ`` is the same
    cleaning for ``subprocess``, re-exported here for the Processing algorithms).
    """
    env = QProcessEnvironment(base) if base is not None else QProcessEnvironment.systemEnvironment()
    names = env.keys()  # QProcessEnvironment is not iterable itself
    for name in names:
        if is_qgis_only(name):
            env.remove(name)
    env.insert("PYTHONIOENCODING", "utf-8")  # JSON on stdout must not depend on the Windows code page
    return env


# --- reading the answer --------------------------------------------------------------------------

def _tail(text: str, limit: int = _STDERR_TAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def _json_object(stdout: str) -> dict[str, Any] | None:
    """The JSON object on stdout; tolerates stray lines printed before it by libraries."""
    text = stdout.strip()
    candidates = [text] + [line for line in reversed(text.splitlines()) if line.strip().startswith("{")]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def parse_info(stdout: str, path: str) -> BackendInfo:
    """Turn ``geossl info --json`` output into BackendInfo, or raise BackendError."""
    data = _json_object(stdout)
    if data is None:
        raise BackendError(f"{path} did not answer 'info --json' with JSON; is it really the GeoSSL backend?",
                           details=_tail(stdout) or "(no output)")
    return info_from_dict(data, path, details=_tail(stdout))


def info_from_dict(data: dict[str, Any], path: str, details: str = "") -> BackendInfo:
    """BackendInfo from the info object (``geossl info --json`` or the service's ``GET /info``)."""
    if "error" in data and "device" not in data:
        raise BackendError(f"Backend error: {data['error']}")
    versions = data.get("versions")
    if not isinstance(versions, dict) or "geossl" not in versions or "device" not in data:
        raise BackendError(f"{path} answered without the 'versions.geossl' and 'device' fields; "
                           "the backend may be too old or not GeoSSL.", details=details)
    methods = data.get("methods") or ()
    # `geossl info` puts the device fields at the top level; the service's /info nests them.
    device = data["device"] if isinstance(data["device"], dict) else data
    return BackendInfo(
        path=path, version=str(versions["geossl"]), device=str(device.get("device") or "?"),
        device_name=str(device.get("name") or ""), torch_version=str(versions.get("torch") or ""),
        methods=tuple(str(m) for m in methods) if isinstance(methods, list) else (), raw=data,
    )


def _failure_message(path: str, exit_code: int, crashed: bool, stdout: str, stderr: str) -> BackendError:
    """Say why the backend failed, quoting its own last words (stderr) rather than ours."""
    data = _json_object(stdout)
    reason = str(data["error"]) if data and "error" in data else ""
    stderr_tail = _tail(stderr)
    last_line = stderr_tail.splitlines()[-1].strip() if stderr_tail else ""
    what = "crashed" if crashed else f"exited with status {exit_code}"
    summary = reason or last_line or "no error message"
    return BackendError(f"Backend {what}: {summary}", details=f"{path}\n\n{stderr_tail}".strip())


# --- running `geossl info --json` ------------------------------------------------------------------

_orphans: set[QProcess] = set()


def release_process(process: QProcess, grace_ms: int | None = None) -> None:
    """End a child we no longer care about without waiting for it, and free it once it has exited.

    ``grace_ms=None`` kills at once; otherwise SIGTERM first (so it can clean up) and a kill after
    ``grace_ms``. The process is unparented and kept referenced until it exits, so neither its
    owner's destruction nor garbage collection ends it half-way.
    """
    for signal in (process.finished, process.errorOccurred):
        with contextlib.suppress(TypeError):  # nothing was connected
            signal.disconnect()
    if process.state() == QProcess.NotRunning:
        process.deleteLater()
        return
    _orphans.add(process)
    process.setParent(None)

    def _reap(*_: object) -> None:
        _orphans.discard(process)
        if not sip.isdeleted(process):  # at interpreter exit Qt may have destroyed it already
            process.deleteLater()

    process.finished.connect(_reap)
    if grace_ms is None:
        process.kill()
        return
    process.terminate()
    QTimer.singleShot(grace_ms, lambda: process.kill() if process in _orphans else None)


class InfoProbe(QObject):
    """Runs ``geossl info --json`` once, asynchronously; emits exactly one of its two signals."""

    succeeded = pyqtSignal(object)  # BackendInfo
    failed = pyqtSignal(object)  # BackendError

    def __init__(self, path: str | None, timeout_s: float = DEFAULT_TIMEOUT_S, parent: QObject | None = None):
        super().__init__(parent)
        self._path = path
        self._process: QProcess | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(timeout_s * 1000))
        self._timer.timeout.connect(self._on_timeout)
        self._timeout_s = timeout_s
        # A child timer rather than QTimer.singleShot(lambda): it dies with the probe.
        self._deferred = QTimer(self)
        self._deferred.setSingleShot(True)
        self._deferred.setInterval(0)
        self._deferred.timeout.connect(self._emit_deferred)
        self._deferred_error: BackendError | None = None

    @property
    def path(self) -> str | None:
        return self._path

    def is_running(self) -> bool:
        """True until one of the signals has been emitted (or the probe was cancelled)."""
        return self._process is not None or self._deferred_error is not None

    def start(self) -> None:
        """Start the child; the answer always arrives later, from the event loop."""
        try:
            program = check_executable(self._path)
        except BackendError as exc:
            self._deferred_error = exc
            self._deferred.start()
            return
        process = QProcess(self)
        process.setProgram(program)
        process.setArguments(list(INFO_ARGS))
        process.setProcessEnvironment(backend_environment())
        process.finished.connect(self._on_finished)
        process.errorOccurred.connect(self._on_error)
        self._process = process
        self._timer.start()
        process.start()

    def cancel(self) -> None:
        """Stop waiting; the child is killed and nothing is emitted."""
        self._timer.stop()
        self._deferred.stop()
        self._deferred_error = None
        if self._process is not None:
            release_process(self._process)
            self._process = None

    def _emit_deferred(self) -> None:
        error, self._deferred_error = self._deferred_error, None
        if error is not None:
            self.failed.emit(error)

    def _finish(self) -> QProcess | None:
        self._timer.stop()
        process, self._process = self._process, None
        return process

    def _on_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        process = self._finish()
        if process is None:
            return
        stdout = bytes(process.readAllStandardOutput()).decode("utf-8", errors="replace")
        stderr = bytes(process.readAllStandardError()).decode("utf-8", errors="replace")
        process.deleteLater()
        path = str(self._path)
        if exit_status != QProcess.NormalExit or exit_code != 0:
            self.failed.emit(_failure_message(path, exit_code, exit_status != QProcess.NormalExit, stdout, stderr))
            return
        try:
            info = parse_info(stdout, path)
        except BackendError as exc:
            self.failed.emit(exc)
            return
        self.succeeded.emit(info)

    def _on_error(self, error: QProcess.ProcessError) -> None:
        # Crashes and exits also arrive through finished(); only failing to start is final here.
        if error != QProcess.FailedToStart:
            return
        process = self._finish()
        if process is None:
            return
        reason = process.errorString()
        process.deleteLater()
        self.failed.emit(BackendError(f"Backend could not be started ({self._path}): {reason}"))

    def _on_timeout(self) -> None:
        process = self._finish()
        if process is None:
            return
        stderr = bytes(process.readAllStandardError()).decode("utf-8", errors="replace")
        release_process(process)
        self.failed.emit(BackendError(
            f"Backend did not answer within {self._timeout_s:g} s; it was stopped. "
            "Try 'geossl info' in a terminal to see what it is doing.", details=_tail(stderr)))
