"""Running one backend job to the end from a Processing algorithm (a worker thread: waiting is allowed).

The connection is the panel's: the saved remote URL + token, or the local service found through
its discovery file. With no local service running, one is started for the algorithm and stopped
afterwards, so ``qgis_process run geossl:segment …`` works without QGIS's desktop.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qgis.core import QgsFeedback, QgsProcessingException

from .. import connection as conn
from .. import jobs as J
from ..backend import BackendError, backend_environ, check_executable, resolve_backend_path
from ..client import ApiError, BlockingClient, Connection
from ..launcher import START_TIMEOUT_S, STDERR_LOG, launch_commands, unknown_subcommand

POLL_S = 1.0


def _healthy(connection: Connection, feedback: QgsFeedback | None) -> bool:
    try:
        BlockingClient(connection, feedback).get("health")
    except ApiError:
        return False
    return True


def _wait(seconds: float, feedback: QgsFeedback | None) -> bool:
    """Sleep in small slices; False as soon as the user cancels."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if feedback is not None and feedback.isCanceled():
            return False
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))
    return not (feedback is not None and feedback.isCanceled())


def _start_local(directory: Path, feedback: QgsFeedback | None,
                 timeout_s: float) -> tuple[subprocess.Popen, Connection]:
    try:
        executable = check_executable(resolve_backend_path())
    except BackendError as exc:
        raise QgsProcessingException(exc.message) from exc
    directory.mkdir(parents=True, exist_ok=True)
    path = conn.discovery_path(directory)
    conn.remove_stale_discovery(path)
    if feedback is not None:
        feedback.pushInfo(f"Starting the GeoSSL backend ({executable} serve)…")
    log_path = directory / STDERR_LOG  # a file, not a pipe: a full pipe would stall the service
    log_path.parent.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for program, arguments in launch_commands(executable, directory):
        with open(log_path, "w", encoding="utf-8") as log:
            process = subprocess.Popen([program, *arguments], env=backend_environ(), stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = conn.read_discovery(path)
            if found is not None and found.pid == process.pid and _healthy(found.connection, feedback):
                return process, found.connection
            if process.poll() is not None:
                break
            if not _wait(0.2, feedback):
                _terminate(process)
                raise QgsProcessingException("Cancelled while the GeoSSL backend was starting.")
        else:
            _terminate(process)
            raise QgsProcessingException(f"The GeoSSL backend did not start within {timeout_s:g} s "
                                         f"(log: {log_path}).")
        last_error = log_path.read_text(encoding="utf-8", errors="replace").strip()
        if not unknown_subcommand(last_error):
            break
    last_line = last_error.splitlines()[-1] if last_error else f"exit status {process.returncode}"
    raise QgsProcessingException(f"The GeoSSL backend could not start: {last_line} (log: {log_path})")


def _terminate(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def backend_connection(feedback: QgsFeedback | None = None,
                       start_timeout_s: float = START_TIMEOUT_S) -> Iterator[Connection]:
    """The backend to use for one algorithm run; a service started here is stopped at the end."""
    if conn.mode() == conn.REMOTE:
        remote = conn.remote_connection()
        if not remote.url:
            raise QgsProcessingException("GeoSSL is set to a remote backend but no URL is saved: set it in "
                                         "the GeoSSL panel's Backend section.")
        yield remote
        return
    directory = conn.data_dir()
    found = conn.read_discovery(conn.discovery_path(directory))
    if found is not None and conn.pid_alive(found.pid) and _healthy(found.connection, feedback):
        yield found.connection
        return
    process, connection = _start_local(directory, feedback, start_timeout_s)
    try:
        yield connection
    finally:
        _terminate(process)


def run_job(client: BlockingClient, kind: str, params: dict[str, Any], feedback: QgsFeedback | None,
            poll_s: float = POLL_S) -> dict[str, Any]:
    """Submit a job and follow it to the end, mirroring progress into ``feedback``; returns the job.

    Cancelling in Processing cancels the job in the backend, so no half-written output is left.
    """
    try:
        job = client.post(f"jobs/{kind}", params)
    except ApiError as exc:
        raise QgsProcessingException(exc.message) from exc
    identifier = J.job_id(job)
    if feedback is not None:
        feedback.pushInfo(f"GeoSSL {J.KIND_LABELS.get(kind, kind)} job {identifier} submitted.")
    last_line = ""
    failures = 0
    while not J.is_terminal(job):
        if not _wait(poll_s, feedback):
            with contextlib.suppress(ApiError):
                client.post(f"jobs/{identifier}/cancel")
            raise QgsProcessingException(f"Cancelled: GeoSSL job {identifier} was cancelled.")
        try:
            job = client.get(f"jobs/{identifier}")
            failures = 0
        except ApiError as exc:
            failures += 1
            if exc.status == 404 or failures >= 10:
                raise QgsProcessingException(exc.message) from exc
            continue
        progress = J.job_progress(job)
        if feedback is not None:
            if progress.fraction is not None:
                feedback.setProgress(100.0 * progress.fraction)
            if hasattr(feedback, "setProgressText"):  # Processing's feedback: stage, step/total, time left
                feedback.setProgressText(J.progress_text(job))
            line = progress.message or (f"{progress.stage}" if progress.stage and progress.total == 0 else "")
            if line and line != last_line:
                feedback.pushInfo(line)
                last_line = line
    if J.job_state(job) in J.CANCELLED:
        raise QgsProcessingException(f"GeoSSL job {identifier} was cancelled.")
    if not J.succeeded(job):
        raise QgsProcessingException(f"GeoSSL job failed: {J.job_error(job) or J.job_state(job)}")
    if feedback is not None:
        feedback.setProgress(100.0)
    return job
