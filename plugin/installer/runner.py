"""Running the set-up from QGIS: every command a QProcess, every answer a signal; the GUI never waits.

``StepRunner`` executes a list of ``plan.Step`` (progress, log, retries of network steps, Cancel).
``BackendSetup`` does the whole "Set up backend…": asks ``nvidia-smi``, probes the candidate
Pythons, chooses the torch build and the venv folder, checks the disk, takes the lock, then runs
the plan. Children get the cleaned environment, no stdin and a neutral working folder. The only
module of ``installer`` that uses Qt.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from qgis.PyQt.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, pyqtSignal

from ..backend import release_process
from . import logfile
from .environment import installer_environ
from .errors import Problem, classify
from .locations import (
    PYTHON_PROBE,
    READY_MARKER,
    WINDOWS,
    PythonFound,
    backend_source,
    current_os,
    is_inside,
    python_candidates,
    read_python_probe,
    venv_dir,
)
from .lock import InstallLock, LockBusy
from .plan import Plan, Step, build_plan, free_space_problem
from .torch_choice import AUTO, NVIDIA_SMI_QUERY, TorchChoice, choose_torch, detect_gpus

_OUTPUT_TAIL = 20_000  # characters of a step's output kept to classify a failure
STEP_TIMEOUT_S = 900.0  # local steps (venv, copy, probes); downloads are bounded by pip's own timeouts


def _qenv(env: dict[str, str]) -> QProcessEnvironment:
    qenv = QProcessEnvironment()
    for name, value in env.items():
        qenv.insert(name, value)
    return qenv


def _process(parent: QObject, argv: Sequence[str], env: dict[str, str], workdir: Path) -> QProcess:
    process = QProcess(parent)
    process.setProgram(argv[0])
    process.setArguments(list(argv[1:]))
    process.setProcessEnvironment(_qenv(env))
    process.setProcessChannelMode(QProcess.MergedChannels)
    process.setStandardInputFile(QProcess.nullDevice())  # pip must never wait for an answer
    process.setWorkingDirectory(str(workdir))
    return process


class StepRunner(QObject):
    """Runs steps one after another; emits exactly one of succeeded / failed / cancelled."""

    step_started = pyqtSignal(int, int, str)  # index, total, label
    output = pyqtSignal(str)  # text as it arrives (scrubbed)
    succeeded = pyqtSignal()
    failed = pyqtSignal(object, str)  # Problem, the failed step's label
    cancelled = pyqtSignal()

    def __init__(self, steps: Sequence[Step], env: dict[str, str], workdir: Path, log_path: Path,
                 retries: int = 2, retry_delay_ms: int = 5000, step_timeout_s: float = STEP_TIMEOUT_S,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._steps = list(steps)
        self._env = env
        self._workdir = workdir
        self.log_path = log_path
        self._retries = retries
        self._index = -1
        self._attempt = 0
        self._buffer = ""
        self._process: QProcess | None = None
        self._retry_timer = QTimer(self)
        self._retry_timer.setSingleShot(True)
        self._retry_timer.setInterval(retry_delay_ms)
        self._retry_timer.timeout.connect(self._run_current)
        self._timeout = QTimer(self)
        self._timeout.setSingleShot(True)
        self._timeout.setInterval(int(step_timeout_s * 1000))
        self._timeout.timeout.connect(self._on_timeout)
        self._done = False

    def is_running(self) -> bool:
        return self._index >= 0 and not self._done

    def start(self) -> None:
        self._index = -1
        self._next()

    def cancel(self) -> None:
        if not self.is_running():
            return
        self._finish()
        logfile.append(self.log_path, logfile.header("Cancelled by the user"))
        self.cancelled.emit()

    # -- steps --------------------------------------------------------------------------------

    def _next(self) -> None:
        self._index += 1
        self._attempt = 0
        if self._index >= len(self._steps):
            self._finish()
            logfile.append(self.log_path, logfile.header("Done"))
            self.succeeded.emit()
            return
        self._run_current()

    def _run_current(self) -> None:
        step = self._steps[self._index]
        self._attempt += 1
        self._buffer = ""
        again = f" (try {self._attempt})" if self._attempt > 1 else ""
        self.step_started.emit(self._index, len(self._steps), step.label + again)
        logfile.append(self.log_path, logfile.header(step.label + again) + "$ " + " ".join(step.argv) + "\n")
        process = _process(self, step.argv, self._env, self._workdir)
        process.readyReadStandardOutput.connect(self._on_output)
        process.finished.connect(self._on_finished)
        process.errorOccurred.connect(self._on_error)
        self._process = process
        if not step.network:
            self._timeout.start()
        process.start()

    def _on_output(self) -> None:
        if self._process is None:
            return
        text = bytes(self._process.readAllStandardOutput()).decode("utf-8", errors="replace")
        self._buffer = (self._buffer + text)[-_OUTPUT_TAIL:]
        logfile.append(self.log_path, text)
        self.output.emit(logfile.scrub(text))

    def _on_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        if self._process is None:
            return
        self._on_output()
        self._timeout.stop()
        process, self._process = self._process, None
        process.deleteLater()
        if exit_status == QProcess.NormalExit and exit_code == 0:
            self._next()
            return
        logfile.append(self.log_path, f"\n[exit status {exit_code}]\n")
        self._fail(classify(self._buffer, self._steps[self._index].label))

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error != QProcess.FailedToStart or self._process is None:
            return  # crashes also arrive through finished()
        reason = self._process.errorString()
        self._timeout.stop()
        process, self._process = self._process, None
        process.deleteLater()
        step = self._steps[self._index]
        logfile.append(self.log_path, f"[could not start {step.argv[0]}: {reason}]\n")
        problem = classify(reason, step.label)
        if problem.code == "unknown":
            problem = Problem("start", f"{step.argv[0]} could not be started: {reason}.",
                              "An antivirus may have blocked it, or the folder was removed: Reinstall.")
        self._fail(problem)

    def _on_timeout(self) -> None:
        if self._process is None:
            return
        release_process(self._process)
        self._process = None
        label = self._steps[self._index].label
        self._fail(Problem("timeout", f"'{label}' did not finish in time and was stopped.",
                           "An antivirus scanning every new file can make this very slow: allow the install "
                           "folder, then Retry."))

    def _fail(self, problem: Problem) -> None:
        step = self._steps[self._index]
        if step.network and problem.retry and self._attempt <= self._retries:
            logfile.append(self.log_path, f"[{problem.message} Trying again.]\n")
            self._retry_timer.start()
            return
        self._finish()
        logfile.append(self.log_path, f"[{problem.message} {problem.action}]\n")
        self.failed.emit(problem, step.label)

    def _finish(self) -> None:
        self._done = True
        self._retry_timer.stop()
        self._timeout.stop()
        if self._process is not None:
            release_process(self._process, grace_ms=3000)
            self._process = None


class Capture(QObject):
    """One short command, its whole output: ``done(exit_code, text)``; -1 if it could not start."""

    done = pyqtSignal(int, str)

    def __init__(self, argv: Sequence[str], env: dict[str, str], workdir: Path, timeout_s: float = 60.0,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._process: QProcess | None = _process(self, argv, env, workdir)
        self._process.finished.connect(self._on_finished)
        self._process.errorOccurred.connect(self._on_error)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(timeout_s * 1000))
        self._timer.timeout.connect(lambda: self._end(-1, "(timed out)"))

    def start(self) -> None:
        self._timer.start()
        if self._process is not None:
            self._process.start()

    def cancel(self) -> None:
        self._timer.stop()
        if self._process is not None:
            process, self._process = self._process, None
            release_process(process)

    def _on_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        if self._process is None:
            return
        text = bytes(self._process.readAllStandardOutput()).decode("utf-8", errors="replace")
        self._end(exit_code if exit_status == QProcess.NormalExit else -1, text)

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.FailedToStart and self._process is not None:
            self._end(-1, self._process.errorString())

    def _end(self, code: int, text: str) -> None:
        self._timer.stop()
        if self._process is None:
            return
        process, self._process = self._process, None
        release_process(process)
        self.done.emit(code, text)


def nvidia_smi_path(os_name: str, which: Callable[[str], str | None] = shutil.which) -> str | None:
    found = which("nvidia-smi")
    if found or os_name != WINDOWS:
        return found
    system_root = os.environ.get("SYSTEMROOT", r"C:\Windows")  # Windows names are case-insensitive
    default = Path(system_root) / "System32" / "nvidia-smi.exe"
    return str(default) if default.is_file() else None


class BackendSetup(QObject):
    """The whole "Set up backend…", from nothing to a backend path the plugin can save."""

    status = pyqtSignal(str)  # what is happening, one line
    planned = pyqtSignal(object)  # Plan: folder, torch build and download size, before the downloads
    step_started = pyqtSignal(int, int, str)
    output = pyqtSignal(str)
    succeeded = pyqtSignal(str)  # the backend executable (geossl) in the new venv
    failed = pyqtSignal(object)  # Problem
    cancelled = pyqtSignal()

    def __init__(self, plugin_dir: Path, root: Path, override: str = AUTO, proxy: str = "", fresh: bool = False,
                 *, os_name: str | None = None, machine: str | None = None, executable: str = sys.executable,
                 prefix: str = sys.prefix, which: Callable[[str], str | None] = shutil.which,
                 candidates: Sequence[Path] | None = None, retry_delay_ms: int = 5000,
                 disk_usage: Callable[[Path], tuple[int, int, int]] = shutil.disk_usage,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.plugin_dir = Path(plugin_dir)
        self.root = Path(root)
        self.log_path = self.root / logfile.LOG_NAME
        self._override = override
        self._fresh = fresh
        self._os = os_name or current_os()
        self._machine = machine or platform.machine()
        self._env = installer_environ(proxy=proxy)
        self._which = which
        self._candidates = list(candidates) if candidates is not None else \
            python_candidates(self._os, executable, prefix, which=which)
        self._retry_delay_ms = retry_delay_ms
        self._disk_usage = disk_usage
        self._capture: Capture | None = None
        self._runner: StepRunner | None = None
        self._lock: InstallLock | None = None
        self._refusals: list[str] = []
        self.nvidia_smi = ""
        self.choice: TorchChoice | None = None
        self.python: PythonFound | None = None
        self.plan: Plan | None = None
        self._active = False

    def is_running(self) -> bool:
        return self._active

    def start(self) -> None:
        self._active = True
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._fail(Problem("folder", f"The install folder {self.root} cannot be created: {exc.strerror}.",
                               "Choose another install folder."))
            return
        logfile.append(self.log_path, logfile.header(f"Set up backend in {self.root}"))
        smi = nvidia_smi_path(self._os, self._which)
        if smi is None or self._override == "cpu" or self._os == "darwin":
            self._on_query(-1, "")
            return
        self.status.emit("Looking for an NVIDIA GPU…")
        self._capture_run([smi, *NVIDIA_SMI_QUERY], lambda code, text: self._on_query(code, text, smi))

    def cancel(self) -> None:
        if not self._active:
            return
        if self._runner is not None and self._runner.is_running():
            self._runner.cancel()  # emits cancelled → _on_cancelled
            return
        if self._capture is not None:
            self._capture.cancel()
        self._on_cancelled()

    # -- preflight ----------------------------------------------------------------------------

    def _capture_run(self, argv: Sequence[str], then: Callable[[int, str], None], timeout_s: float = 60) -> None:
        self._capture = Capture(argv, self._env, self.root, timeout_s, parent=self)
        self._capture.done.connect(then)
        self._capture.start()

    def _on_query(self, code: int, text: str, smi: str | None = None) -> None:
        if code == 0 and detect_gpus(text):
            self._choose(text)
        elif smi is not None:  # old drivers: no compute_cap field; read the plain table
            self._capture_run([smi], lambda _c, table: self._choose(text, table))
        else:
            self._choose("")

    def _choose(self, query: str, table: str = "") -> None:
        self.nvidia_smi = (query.strip() + "\n" + table.strip()).strip()
        logfile.append(self.log_path, f"nvidia-smi:\n{self.nvidia_smi or '(none)'}\n")
        self.choice = choose_torch(self._os, self._machine, detect_gpus(query, table), self._override)
        logfile.append(self.log_path, f"torch build: {self.choice.label} — {self.choice.reason}\n")
        if not self.choice.supported:
            self._fail(Problem("platform", self.choice.reason, "Use a backend on another computer (Remote server)."))
            return
        self.status.emit("Looking for a Python to build the environment…")
        self._probe_next()

    def _probe_next(self) -> None:
        if not self._candidates:
            self._fail(Problem("python", "No Python 3.10 or newer that can create virtual environments was found"
                               + (": " + "; ".join(self._refusals) if self._refusals else "."),
                               "Install Python 3.12 (python.org; on Debian/Ubuntu also python3-venv), then Retry."))
            return
        candidate = self._candidates.pop(0)
        self._capture_run([str(candidate), "-c", PYTHON_PROBE],
                          lambda _code, text: self._on_probe(candidate, text), timeout_s=60)

    def _on_probe(self, candidate: Path, text: str) -> None:
        found, why = read_python_probe(candidate, text)
        if found is None:
            self._refusals.append(why)
            logfile.append(self.log_path, f"refused {why}\n")
            self._probe_next()
            return
        self.python = found
        self._plan_and_run()

    def _plan_and_run(self) -> None:
        assert self.python is not None and self.choice is not None
        venv = Path(venv_dir(self.root, self.python.version))
        if is_inside(venv, self.plugin_dir):
            self._fail(Problem("folder", f"{venv} is inside the plugin folder, which a plugin update deletes.",
                               "Choose an install folder outside the plugin."))
            return
        source = backend_source(self.plugin_dir)
        if source is None:
            self._fail(Problem("source", "The backend source is missing from the plugin (backend_src/).",
                               "Reinstall the plugin from the QGIS plugin repository."))
            return
        short = free_space_problem(venv, self.choice.free_disk_gb, self._disk_usage)
        if short:
            self._fail(Problem("disk", short, "Free some space or choose another install folder, then Retry."))
            return
        self._lock = InstallLock(self.root)
        try:
            self._lock.acquire()
        except (LockBusy, OSError) as exc:
            self._lock = None
            self._fail(Problem("busy", str(exc), "Wait for the other set-up to finish, then Retry."))
            return
        self.plan = build_plan(self.python.path, venv, self._os, self.choice, source[0], source[1], self._fresh)
        with contextlib.suppress(OSError):  # "ready" again only once this run has passed its device test
            (venv / READY_MARKER).unlink()
        logfile.append(self.log_path, f"Python: {self.python.path} {'.'.join(map(str, self.python.version))}\n")
        self.planned.emit(self.plan)
        self._runner = StepRunner(self.plan.steps, self._env, self.root, self.log_path,
                                  retry_delay_ms=self._retry_delay_ms, parent=self)
        self._runner.step_started.connect(self.step_started)
        self._runner.output.connect(self.output)
        self._runner.succeeded.connect(self._on_succeeded)
        self._runner.failed.connect(lambda problem, _label: self._fail(problem))
        self._runner.cancelled.connect(self._on_cancelled)
        self._runner.start()

    # -- endings ------------------------------------------------------------------------------

    def _release(self) -> None:
        self._active = False
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _on_succeeded(self) -> None:
        self._release()
        assert self.plan is not None
        marker = {"torch": self.plan.choice.tag, "device": self.plan.choice.device, "reason": self.plan.choice.reason,
                  "python": str(self.python.path if self.python else ""), "geossl": str(self.plan.geossl)}
        try:
            (self.plan.venv / READY_MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
        except OSError as exc:
            logfile.append(self.log_path, f"[could not write {READY_MARKER}: {exc}]\n")
        self.succeeded.emit(str(self.plan.geossl))

    def _fail(self, problem: Problem) -> None:
        logfile.append(self.log_path, f"FAILED: {problem.message} {problem.action}\n")
        self._release()
        self.failed.emit(problem)

    def _on_cancelled(self) -> None:
        self._release()
        self.cancelled.emit()
