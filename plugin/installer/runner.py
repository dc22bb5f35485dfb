"""Running commands from QGIS: every command a QProcess, every answer a signal; the GUI never waits.

``StepRunner`` executes a list of ``plan.Step`` (progress, scrubbed log, retries of network steps,
Cancel, a time limit for local steps); ``Capture`` runs one short command and returns its output.
Children get the given (cleaned) environment, no stdin and a neutral working folder. With
``backend_setup``, the only modules of ``installer`` that use Qt.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qgis.PyQt.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, pyqtSignal

from ..backend import release_process
from . import logfile
from .errors import Problem, classify
from .plan import Step

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
