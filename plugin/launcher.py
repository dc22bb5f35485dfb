"""Starting and stopping the local backend service as a child process, without ever waiting for it.

``geossl serve --host 127.0.0.1 --port 0 --data-dir D`` picks a free port and writes the discovery
file once it listens; this object polls for that file on a timer and reports through signals. An
older backend without the ``serve`` subcommand is started as ``python -m geossl.service`` instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qgis.PyQt.QtCore import QIODevice, QObject, QProcess, QTimer, pyqtSignal

from .backend import BackendError, _tail, backend_environment, check_executable, release_process
from .connection import Discovery, discovery_path, read_discovery, remove_stale_discovery

START_TIMEOUT_S = 180.0  # first start: importing torch from a cold disk cache is slow
POLL_MS = 200
STOP_GRACE_MS = 5000
STDERR_LOG = Path("logs") / "service-stderr.log"  # inside the data folder
_TAIL_CHARS = 8000


def serve_arguments(directory: Path, host: str = "127.0.0.1", port: int = 0) -> list[str]:
    return ["--host", host, "--port", str(port), "--data-dir", str(directory)]


def launch_commands(executable: str, directory: Path) -> list[tuple[str, list[str]]]:
    """What to try, in order: the CLI subcommand, then the module next to it in the same venv."""
    args = serve_arguments(directory)
    commands = [(executable, ["serve", *args])]
    python = Path(executable).with_name("python.exe" if sys.platform == "win32" else "python")
    if python.exists():
        commands.append((str(python), ["-m", "geossl.service", *args]))
    return commands


def unknown_subcommand(stderr: str) -> bool:
    """argparse's answer of a ``geossl`` that predates ``serve``."""
    return "invalid choice: 'serve'" in stderr or ("unrecognized arguments" in stderr and "serve" in stderr)


class LocalService(QObject):
    """One local service process: ``start`` → ``ready(Discovery)`` or ``failed(BackendError)``.

    After ``ready``, an unexpected exit emits ``exited(BackendError)``; ``stop`` ends it quietly.
    The child's stderr goes to a file, not a pipe: a service that outlives QGIS (a crash) must not
    write into a broken pipe, and the file is there for bug reports.
    """

    ready = pyqtSignal(object)  # Discovery
    failed = pyqtSignal(object)  # BackendError
    exited = pyqtSignal(object)  # BackendError

    def __init__(self, executable: str | None, directory: Path, timeout_s: float = START_TIMEOUT_S,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._executable = executable
        self._directory = directory
        self._timeout_s = timeout_s
        self._process: QProcess | None = None
        self._commands: list[tuple[str, list[str]]] = []
        self._previous: tuple[float, int | None] | None = None
        self._discovery: Discovery | None = None
        self._poll = QTimer(self)
        self._poll.setInterval(POLL_MS)
        self._poll.timeout.connect(self._look_for_discovery)
        self._deadline = QTimer(self)
        self._deadline.setSingleShot(True)
        self._deadline.timeout.connect(self._on_timeout)
        self._deferred_error: BackendError | None = None
        self._deferred = QTimer(self)
        self._deferred.setSingleShot(True)
        self._deferred.setInterval(0)
        self._deferred.timeout.connect(lambda: self.failed.emit(self._deferred_error))

    @property
    def discovery(self) -> Discovery | None:
        return self._discovery

    def pid(self) -> int | None:
        return int(self._process.processId()) if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None

    def log_path(self) -> Path:
        return self._directory / STDERR_LOG

    def log_tail(self) -> str:
        """The end of what the service printed (its last words when it fails)."""
        try:
            with open(self.log_path(), "rb") as log:
                log.seek(0, 2)
                log.seek(max(0, log.tell() - _TAIL_CHARS))
                return _tail(log.read().decode("utf-8", errors="replace"))
        except OSError:
            return ""

    def start(self) -> None:
        """Start the child; the outcome always arrives later through a signal."""
        try:
            executable = check_executable(self._executable)
            self.log_path().parent.mkdir(parents=True, exist_ok=True)
        except (BackendError, OSError) as exc:
            error = exc if isinstance(exc, BackendError) else BackendError(
                f"Cannot create the backend's data folder {self._directory}: {exc.strerror}")
            self._deferred_error = error
            self._deferred.start()  # a child timer: it dies with this object, unlike singleShot(lambda)
            return
        path = discovery_path(self._directory)
        remove_stale_discovery(path)
        self._previous = self._stamp(path)
        self._commands = launch_commands(executable, self._directory)
        self._deadline.start(int(self._timeout_s * 1000))
        self._launch_next()

    def stop(self) -> None:
        """End the service (SIGTERM, then kill after a grace period); nothing is emitted."""
        self._poll.stop()
        self._deadline.stop()
        process, self._process = self._process, None
        self._discovery = None
        if process is None:
            return
        release_process(process, STOP_GRACE_MS)  # SIGTERM lets the service remove its discovery file

    # -- internals --------------------------------------------------------------------------------

    @staticmethod
    def _stamp(path: Path) -> tuple[float, int | None] | None:
        found = read_discovery(path)
        try:
            return (path.stat().st_mtime, found.pid if found else None)
        except OSError:
            return None

    def _launch_next(self) -> None:
        program, arguments = self._commands.pop(0)
        process = QProcess(self)
        process.setProgram(program)
        process.setArguments(arguments)
        process.setProcessEnvironment(backend_environment())
        process.setStandardInputFile(QProcess.nullDevice())
        process.setStandardOutputFile(QProcess.nullDevice())
        process.setStandardErrorFile(str(self.log_path()), QIODevice.Truncate)
        process.finished.connect(self._on_finished)
        process.errorOccurred.connect(self._on_error)
        self._process = process
        process.start()
        self._poll.start()

    def _look_for_discovery(self) -> None:
        if self._process is None:
            return
        path = discovery_path(self._directory)
        found = read_discovery(path)
        # Ours: it names our child, or it was (re)written after we started (a wrapper script may run
        # the server under another pid). Stale files of dead services were removed before starting.
        if found is None or (found.pid != self.pid() and self._stamp(path) == self._previous):
            return
        self._poll.stop()
        self._deadline.stop()
        self._discovery = found
        self.ready.emit(found)

    def _on_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        process = self._process
        if process is None:
            return
        stderr = self.log_tail()
        self._process = None
        process.deleteLater()
        self._poll.stop()
        crashed = exit_status != QProcess.NormalExit
        if self._discovery is None and not crashed and self._commands and unknown_subcommand(stderr):
            self._launch_next()
            return
        self._deadline.stop()
        last = stderr.strip().splitlines()[-1].strip() if stderr.strip() else ""
        what = "crashed" if crashed else f"exited with status {exit_code}"
        error = BackendError(f"The GeoSSL backend {what}" + (f": {last}" if last else "."),
                             details=f"{stderr}\n\n(log: {self.log_path()})".strip())
        if self._discovery is None:
            self.failed.emit(error)
        else:
            self._discovery = None
            self.exited.emit(error)

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error != QProcess.FailedToStart or self._process is None:
            return
        reason = self._process.errorString()
        self._process.deleteLater()
        self._process = None
        self._poll.stop()
        self._deadline.stop()
        self.failed.emit(BackendError(f"The GeoSSL backend could not be started: {reason}"))

    def _on_timeout(self) -> None:
        if self._process is None:
            return
        stderr = self.log_tail()
        self.stop()
        self.failed.emit(BackendError(
            f"The GeoSSL backend did not start within {self._timeout_s:g} s; it was stopped.",
            details=f"{stderr}\n\n(log: {self.log_path()})".strip()))

