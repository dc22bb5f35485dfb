"""The whole "Set up backend…", from nothing to a backend path the plugin can save.

Asks ``nvidia-smi``, probes the candidate Pythons, chooses the torch build and the venv folder,
checks the disk, takes the lock, then runs the plan with ``runner.StepRunner``; all asynchronous.
A finished run marks its venv ready (``READY_MARKER``) so discovery finds it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from qgis.PyQt.QtCore import QObject, pyqtSignal

from . import logfile
from .environment import installer_environ
from .errors import Problem
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
from .plan import Plan, build_plan, free_space_problem
from .runner import Capture, StepRunner
from .torch_choice import AUTO, NVIDIA_SMI_QUERY, PYTORCH_SOURCE, TorchChoice, choose_torch, detect_gpus


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
                 cert: str = "", source: str = PYTORCH_SOURCE,
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
        self._source = source
        self._fresh = fresh
        self._os = os_name or current_os()
        self._machine = machine or platform.machine()
        self._env = installer_environ(proxy=proxy, cert=cert)
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
        self.choice = choose_torch(self._os, self._machine, detect_gpus(query, table), self._override, self._source)
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
        self._runner.failed.connect(self._on_step_failed)
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

    def _on_step_failed(self, problem: Problem, label: str) -> None:
        """A network failure while fetching torch from download.pytorch.org: offer PyPI, which many
        company networks allow (or mirror) where they block PyTorch's own index."""
        torch_step = self.plan is not None and any(s.key == "torch" and s.label == label for s in self.plan.steps)
        if problem.code == "network" and torch_step and self.choice is not None and self.choice.index_url:
            problem = dataclasses.replace(problem, action=problem.action + " If your network blocks "
                                          "download.pytorch.org, set 'torch from' to PyPI (or your pip's index) "
                                          "and Retry.")
        self._fail(problem)

    def _fail(self, problem: Problem) -> None:
        logfile.append(self.log_path, f"FAILED: {problem.message} {problem.action}\n")
        self._release()
        self.failed.emit(problem)

    def _on_cancelled(self) -> None:
        self._release()
        self.cancelled.emit()
