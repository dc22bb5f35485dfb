"""Jobs in worker processes: FIFO queue, one GPU job at a time, cancel, crash isolation, progress.

Each job runs in its own process started with the ``spawn`` method: a CUDA crash, an
out-of-memory kill or a segfault in GDAL takes the job down, never the service, and a cancel is
a plain SIGTERM. The worker turns SIGTERM into an exception so the pipeline's atomic writers
remove their temporary files; after a grace period it is killed and the service sweeps what is
left. Importing torch takes seconds, so one spare worker is kept ready (imports done, waiting
for a job); it is used by one job only and replaced.

A single thread owns the workers: it reads their pipes (progress, result, error), notices when
one ends (end of file on its pipe), writes to the store and publishes events for the SSE streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import importlib
import importlib.util
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..errors import GeoSSLError
from .checks import OutputPolicy, check_job, job_inputs, job_outputs
from .store import (
    ACTIVE,
    CANCELLED,
    FAILED,
    INTERRUPTED,
    QUEUED,
    RESUMABLE,
    RUNNING,
    SUCCEEDED,
    JobStore,
    iso,
    plain,
)

log = logging.getLogger("geossl.service")

PRELOAD = ("geossl.finetune", "geossl.predict", "geossl.evaluate", "geossl.pretrain")
FLUSH_S = 0.5  # progress snapshots go to SQLite at most this often per job (SSE gets every event)
RESUME_TEXT = {
    "checkpoint": "continues from its last saved resume state (steps already done are not repeated)",
    "restart": "re-runs from the start: this job type keeps no intermediate state, so its progress is lost",
}


class Conflict(Exception):
    """The request does not fit the job's state (cancel a finished job, resume a running one): HTTP 409."""


class NotFound(KeyError):
    """No such job: HTTP 404."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


@dataclass(frozen=True)
class JobType:
    """How the service runs one kind of job."""

    name: str
    params: type[BaseModel]
    runner: str  # "module:function" of the pipeline, the same one the CLI calls
    gpu: bool  # counts against --max-jobs (the GPU queue); False: a small CPU job that may run beside
    progress: bool  # the runner takes a progress callback
    resume: str  # "checkpoint" or "restart"


def job_types() -> dict[str, JobType]:
    """The job types the service offers, with how each resumes after an interruption."""
    from .. import schemas

    return {
        "pretrain": JobType("pretrain", schemas.PretrainParams, "geossl.pretrain:run_pretrain", True, True,
                            "checkpoint"),
        "finetune": JobType("finetune", schemas.FinetuneParams, "geossl.finetune:run_finetune", True, True,
                            "checkpoint"),
        "predict": JobType("predict", schemas.PredictParams, "geossl.predict:run_predict", True, True, "restart"),
        "evaluate": JobType("evaluate", schemas.EvaluateParams, "geossl.evaluate:run_evaluate", False, False,
                            "restart"),
        "export": JobType("export", schemas.ExportParams, "geossl.export:run_export", False, True, "restart"),
        "suggest": JobType("suggest", schemas.SuggestParams, "geossl.suggest_run:run_suggest", True, True,
                           "restart"),
    }


# --- the worker process -----------------------------------------------------------------------------


class _Terminated(BaseException):
    """Raised in a worker on SIGTERM: ``finally`` blocks and atomic writers clean up on the way out."""


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise _Terminated()


def _watch_parent() -> None:
    """End this worker when the service dies (kill -9): an orphan must not keep the GPU or write files."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the main thread may be stuck in C code; do not linger forever
        os._exit(1)

    threading.Thread(target=watch, name="geossl-parent-watch", daemon=True).start()


def worker_main(conn: Connection, preload: tuple[str, ...], log_dir: str) -> None:
    """Entry point of a worker process: import the pipeline, wait for one job, run it, report, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in the service's terminal is the service's business
    signal.signal(signal.SIGTERM, _on_sigterm)
    boot_log = Path(log_dir) / f"worker-{os.getpid()}.log"
    _redirect_output(boot_log)  # the service's console may be gone (QGIS closed): never write there
    _watch_parent()
    import_error = None
    try:
        for name in preload:
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
    except _Terminated:
        _discard(boot_log)
        os._exit(0)
    except Exception:
        import_error = traceback.format_exc()
    try:
        spec = conn.recv()
    except (_Terminated, EOFError, OSError):
        _discard(boot_log)
        os._exit(0)
    _redirect_output(Path(spec["log_file"]), earlier=boot_log)
    _run_job(conn, spec, import_error)
    # Outputs are closed and the result is sent: skip the interpreter's teardown (seconds with torch
    # loaded), so the job's slot and its GPU memory are free at once.
    os._exit(0)


def _redirect_output(path: Path, earlier: Path | None = None) -> None:
    """Send this process's stdout/stderr (Python and C level) to ``path``, after ``earlier``'s content."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    with open(path, "a", encoding="utf-8") as fh:
        if earlier is not None and earlier.exists():
            fh.write(earlier.read_text(encoding="utf-8", errors="replace"))
            earlier.unlink(missing_ok=True)
        fh.flush()
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)


def _discard(path: Path) -> None:
    """A spare that ends without a job (service stopping) leaves no log behind."""
    with contextlib.suppress(OSError):
        path.unlink()


def _send(conn: Connection, message: tuple[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.send(message)


def _run_job(conn: Connection, spec: dict[str, Any], import_error: str | None) -> None:
    print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} job {spec['job_id']} ({spec['type']}), pid {os.getpid()}",
          file=sys.stderr, flush=True)
    try:
        if import_error:
            print(import_error, file=sys.stderr, flush=True)
            raise RuntimeError("the backend's pipeline cannot be imported in the worker")
        params_module, params_name = spec["params_class"].split(":")
        params = getattr(importlib.import_module(params_module), params_name).model_validate(spec["params"])
        module, name = spec["runner"].split(":")
        run = getattr(importlib.import_module(module), name)
        if spec.get("processes", 1) > 1:  # one job of several local processes (predict)
            from ..distributed import run_local_group

            result = run_local_group(spec["runner"], params, lambda ev: conn.send(("progress", ev.to_dict())),
                                     spec["processes"])
        elif spec["progress"]:
            result = run(params, lambda ev: conn.send(("progress", ev.to_dict())))
        else:
            result = run(params)
        _send(conn, ("result", result))
    except _Terminated:
        print("terminated (cancel or service shutdown)", file=sys.stderr, flush=True)
    except GeoSSLError as exc:
        _send(conn, ("error", {"message": str(exc), "internal": False}))
    except Exception as exc:
        traceback.print_exc()
        _send(conn, ("error", {"message": _internal_message(exc, spec["log_file"]), "internal": True}))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        with contextlib.suppress(OSError):
            conn.close()


def _internal_message(exc: BaseException, log_file: str) -> str:
    text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    if "out of memory" in text.lower():
        return (f"The {'GPU' if 'cuda' in text.lower() else 'computer'} ran out of memory ({text}). "
                "Fix: lower the batch size or the tile size.")
    return f"Internal error ({type(exc).__name__}: {text}). The traceback is in {log_file}."


# --- the service side -------------------------------------------------------------------------------


@dataclass
class _Worker:
    """A worker process as the service sees it (the spare has no job yet)."""

    proc: Any
    conn: Connection
    job_id: str | None = None
    job_type: JobType | None = None
    outcome: tuple[str, Any] | None = None
    stop_reason: str | None = None  # "cancel" | "shutdown"
    kill_at: float | None = None
    progress: dict[str, Any] | None = None
    last_loss_step: int = 0
    flushed: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)


class EventHub:
    """Fan-out of job events from the job thread to the asyncio SSE streams."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = {}

    def subscribe(self, job_id: str) -> asyncio.Queue:
        """A queue of ``(event, data)`` for ``job_id``; call from the event loop that will read it."""
        q: asyncio.Queue = asyncio.Queue(maxsize=2000)
        with self._lock:
            self._subs.setdefault(job_id, set()).add((asyncio.get_running_loop(), q))
        return q

    def unsubscribe(self, job_id: str, q: asyncio.Queue) -> None:
        with self._lock:
            subs = self._subs.get(job_id, set())
            subs.difference_update({s for s in subs if s[1] is q})
            if not subs:
                self._subs.pop(job_id, None)

    def publish(self, job_id: str, event: str, data: Any) -> None:
        with self._lock:
            subs = list(self._subs.get(job_id, ()))
        for loop, q in subs:
            with contextlib.suppress(RuntimeError):  # that stream's loop is closed
                loop.call_soon_threadsafe(_offer, q, (event, data))


def _offer(q: asyncio.Queue, item: tuple[str, Any]) -> None:
    """Put without blocking; a client too slow to read loses the oldest events, never the service."""
    if q.full():
        q.get_nowait()
    q.put_nowait(item)


def remove_partials(outputs: Iterable[Path]) -> list[Path]:
    """Temporary files of the atomic writers (``.<name>.XXXX.partial``) beside ``outputs``."""
    removed = []
    for out in outputs:
        for tmp in out.parent.glob(glob.escape(f".{out.name}.") + "*.partial*"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def remove_outputs(outputs: Iterable[Path], since: float) -> list[Path]:
    """Partials plus every output written after ``since``: a cancelled job leaves nothing behind."""
    outputs = list(outputs)
    removed = remove_partials(outputs)
    for out in outputs:
        with contextlib.suppress(OSError):
            if out.is_file() and out.stat().st_mtime >= since:
                out.unlink()
                removed.append(out)
    return removed


class JobManager:
    """The queue and the workers; every public method is safe to call from request threads."""

    def __init__(self, store: JobStore, data_dir: Path, max_jobs: int = 1, max_cpu_jobs: int = 2,
                 prewarm: bool = True, grace_s: float = 10.0, predict_processes: int = 1) -> None:
        if max_jobs < 1 or max_cpu_jobs < 1 or predict_processes < 1:
            raise GeoSSLError("--max-jobs, --max-cpu-jobs and --predict-processes must be at least 1.")
        self.predict_processes = predict_processes
        self.types = job_types()
        self.store = store
        self.policy = OutputPolicy(data_dir)
        self.log_dir = data_dir / "logs" / "jobs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.max_jobs, self.max_cpu_jobs, self.prewarm, self.grace_s = max_jobs, max_cpu_jobs, prewarm, grace_s
        self.hub = EventHub()
        self.closing = False  # shutdown() has begun: no new work
        self.draining = False  # a stop signal arrived: event streams end so the HTTP server can stop
        self._ctx = mp.get_context("spawn")
        self._lock = threading.RLock()  # queue, workers and job state transitions
        self._submit_lock = threading.Lock()  # one submission/resume checked at a time (output conflicts)
        self._queue: deque[str] = deque()
        self._running: dict[str, _Worker] = {}
        self._spare: _Worker | None = None
        self._spare_failures = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._loop, name="geossl-jobs", daemon=True)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Mark jobs a crash left behind as interrupted, clean their temporary files, start the thread."""
        ids = self.store.recover(
            "The service stopped while this job was running (crash, kill or reboot). Resume it to run it again.",
            "The service stopped before this job started. Resume it to run it.")
        for job_id in ids:
            job = self.store.get(job_id)
            if job is not None:
                remove_partials(job_outputs(job["type"], job["params"]))
                self._log(job_id, f"Interrupted: the service stopped; POST /jobs/{job_id}/resume runs it again.")
        if ids:
            log.info("marked %d job(s) interrupted: %s", len(ids), ", ".join(ids))
        self._thread.start()
        with self._lock:
            if self.prewarm:
                self._spare = self._spawn()

    def shutdown(self) -> None:
        """Stop every worker (running jobs become ``interrupted``, resumable) and the job thread.

        Idempotent: called by the app's shutdown and again by ``serve`` in case that was skipped
        (a second Ctrl+C makes uvicorn skip it, and our non-daemon workers would outlive us).
        """
        with self._lock:
            if self.closing and not self._thread.is_alive():
                return
            self.closing = True
            self.draining = True
            now = time.time()
            for w in self._running.values():
                w.stop_reason = w.stop_reason or "shutdown"
                self._terminate(w)
            for job_id in list(self._queue):
                self._finish_queued(job_id, INTERRUPTED, "The service stopped before this job started. "
                                    "Resume it to run it.", now)
            self._queue.clear()
            if self._spare is not None:
                self._spare.proc.terminate()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout=self.grace_s + 10)

    # --- requests ------------------------------------------------------------------------------

    def submit(self, job_type: str, params: BaseModel) -> dict[str, Any]:
        """Check and queue a job; GeoSSLError (→ 422) if it cannot run."""
        jt = self.types[job_type]
        with self._submit_lock:
            self._refuse_when_closing()
            plan = check_job(jt.name, params, self.policy, self._pending_outputs())
            with self._lock:
                self._refuse_when_closing()
                job_id = self.store.create(jt.name, params.model_dump(mode="json"), plan.depends_on)
                waits = f", after job(s) {', '.join(plan.depends_on)}" if plan.depends_on else ""
                self._log(job_id, f"Queued{waits}.")
                self._queue.append(job_id)
        log.info("job %s (%s) queued", job_id, jt.name)
        self._wake()
        return self.view(job_id)

    def resume(self, job_id: str) -> dict[str, Any]:
        """Queue an interrupted or failed job again (same id): pretrain from its resume state, others anew."""
        with self._submit_lock:
            self._refuse_when_closing()
            job = self._job(job_id)
            if job["state"] not in RESUMABLE:
                raise Conflict(f"Job {job_id} is {job['state']}; only interrupted or failed jobs can be resumed.")
            jt = self.types.get(job["type"])
            if jt is None:
                raise Conflict(f"Job {job_id} is a {job['type']} job, which this backend cannot run.")
            params = jt.params.model_validate(job["params"])
            plan = check_job(jt.name, params, self.policy, self._pending_outputs(), own_id=job_id)
            with self._lock:
                self._refuse_when_closing()
                if jt.resume == "restart":
                    self.store.clear_losses(job_id)
                self.store.update(job_id, state=QUEUED, error=None, result=None, progress=None, started=None,
                                  finished=None, worker_pid=None, attempt=job["attempt"] + 1, resume_mode=jt.resume,
                                  depends_on=plan.depends_on)
                self._log(job_id, f"Resumed (attempt {job['attempt'] + 1}): it {RESUME_TEXT[jt.resume]}.")
                self._queue.append(job_id)
        log.info("job %s resumed (%s)", job_id, jt.resume)
        self._wake()
        return self.view(job_id) | {"resume": {"mode": jt.resume, "detail": RESUME_TEXT[jt.resume]}}

    def cancel(self, job_id: str, wait_s: float | None = None) -> dict[str, Any]:
        """Cancel a queued or running job; waits (bounded) until the worker is gone and outputs removed."""
        with self._lock:
            job = self._job(job_id)
            if job["state"] == QUEUED:
                self._finish_queued(job_id, CANCELLED, "Cancelled before it started.", time.time())
                return self.view(job_id)
            if job["state"] != RUNNING or job_id not in self._running:
                raise Conflict(f"Job {job_id} is {job['state']}; only queued or running jobs can be cancelled.")
            w = self._running[job_id]
            if w.stop_reason is None:
                w.stop_reason = "cancel"
                self._log(job_id, "Cancelling: stopping the worker process…")
                self._terminate(w)
        self._wake()
        w.done.wait(self.grace_s + 10 if wait_s is None else wait_s)
        return self.view(job_id)

    def delete(self, job_id: str) -> None:
        with self._lock:
            job = self._job(job_id)
            if job["state"] in ACTIVE:
                raise Conflict(f"Job {job_id} is {job['state']}: cancel it first.")
            self.store.delete(job_id)

    def view(self, job_id: str, log_tail: int = 20) -> dict[str, Any]:
        """The job as the API shows it (times in ISO 8601 UTC, live progress while it runs)."""
        return self.present(self._job(job_id), log_tail)

    def present(self, job: dict[str, Any], log_tail: int = 0) -> dict[str, Any]:
        w = self._running.get(job["id"])
        progress = w.progress if w is not None and w.progress is not None else job["progress"]
        view = {
            "id": job["id"], "type": job["type"], "state": job["state"], "params": job["params"],
            "progress": progress, "result": job["result"], "error": job["error"],
            "created": iso(job["created"]), "started": iso(job["started"]), "finished": iso(job["finished"]),
            "attempt": job["attempt"], "resume_mode": job["resume_mode"],
            "resumable": job["state"] in RESUMABLE, "depends_on": job["depends_on"],
            "worker_pid": job["worker_pid"], "worker_log": str(self.log_dir / f"{job['id']}.log"),
        }
        if log_tail:
            view["log_tail"] = self.store.log_tail(job["id"], log_tail)
        return view

    def model_in_use(self, path: Path) -> str | None:
        """Id of an active job that reads or writes ``path`` (a model must not vanish under it)."""
        for job in self.store.list(states=ACTIVE, limit=100_000):
            if path in job_inputs(job["type"], job["params"]) or path in job_outputs(job["type"], job["params"]):
                return job["id"]
        return None

    # --- internals: bookkeeping ---------------------------------------------------------------------

    def _job(self, job_id: str) -> dict[str, Any]:
        job = self.store.get(job_id)
        if job is None:
            raise NotFound(f"No job '{job_id}'.")
        return job

    def _refuse_when_closing(self) -> None:
        if self.closing:
            raise Conflict("The service is shutting down; submit the job again once it is back.")

    def _pending_outputs(self) -> dict[Path, str]:
        return {p: job["id"] for job in self.store.list(states=ACTIVE, limit=100_000)
                for p in job_outputs(job["type"], job["params"])}

    def _log(self, job_id: str, line: str) -> None:
        now = time.time()
        self.store.add_logs(job_id, [(now, line)])
        self.hub.publish(job_id, "log", {"time": iso(now), "line": line})

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _finish_queued(self, job_id: str, state: str, error: str, now: float) -> None:
        with contextlib.suppress(ValueError):
            self._queue.remove(job_id)
        self.store.update(job_id, state=state, error=error, finished=now)
        self._log(job_id, error)
        self._publish_end(job_id)

    def _publish_end(self, job_id: str) -> None:
        view = self.view(job_id)
        self.hub.publish(job_id, "state", {"state": view["state"], "error": view["error"]})
        self.hub.publish(job_id, "end", view)

    # --- internals: workers (job thread) ---------------------------------------------------------

    def _spawn(self) -> _Worker:
        _silence_broken_std_streams()
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=worker_main, args=(child, PRELOAD, str(self.log_dir)), name="geossl-worker")
        proc.start()  # not a daemon: DataLoader workers are its children
        child.close()
        return _Worker(proc=proc, conn=parent)

    def _terminate(self, w: _Worker) -> None:
        with contextlib.suppress(OSError):
            w.proc.terminate()
        w.kill_at = time.monotonic() + self.grace_s

    def _loop(self) -> None:
        while True:
            try:
                if self._tick():
                    break
            except Exception:  # a bug here must not silently stop every job: log it and go on
                log.exception("job thread error")
                time.sleep(1.0)
        log.info("job thread stopped")

    def _tick(self) -> bool:
        """One round: start what can start, read the workers' pipes, enforce kill deadlines; True: stop."""
        with self._lock:
            if self.closing and not self._running and self._spare is None:
                return True
            if not self.closing:
                self._schedule()
            workers = {w.conn: w for w in self._running.values()}
            if self._spare is not None:
                workers[self._spare.conn] = self._spare
        try:
            ready = wait([*workers, self._wake_r], timeout=0.25)
        except OSError:
            ready = []
        for conn in ready:
            if conn is self._wake_r:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
                continue
            self._read(workers[conn])
        with self._lock:
            now = time.monotonic()
            for w in list(self._running.values()):
                if w.kill_at is not None and now > w.kill_at and w.proc.is_alive():
                    log.warning("job %s: worker %s ignored SIGTERM; killing it", w.job_id, w.proc.pid)
                    w.proc.kill()
                    w.kill_at = None
                self._flush(w)
        return False

    def _read(self, w: _Worker) -> None:
        while True:
            try:
                if not w.conn.poll():
                    return
                message = w.conn.recv()
            except Exception:  # EOF, or a message cut short by a kill: the worker is gone
                with self._lock:
                    self._on_exit(w)
                return
            with self._lock:
                self._on_message(w, message)

    def _schedule(self) -> None:
        gpu = sum(1 for w in self._running.values() if w.job_type.gpu)
        cpu = len(self._running) - gpu
        for job_id in list(self._queue):
            job = self.store.get(job_id)
            if job is None or job["state"] != QUEUED:
                self._queue.remove(job_id)
                continue
            jt = self.types[job["type"]]
            if jt.gpu and gpu >= self.max_jobs or not jt.gpu and cpu >= self.max_cpu_jobs:
                continue
            if not self._dependencies_met(job):
                continue
            self._start(job, jt)
            gpu, cpu = gpu + jt.gpu, cpu + (not jt.gpu)

    def _dependencies_met(self, job: dict[str, Any]) -> bool:
        for dep_id in job["depends_on"] or []:
            dep = self.store.get(dep_id)
            if dep is not None and dep["state"] in ACTIVE:
                return False
            if dep is not None and dep["state"] != SUCCEEDED:
                self._finish_queued(job["id"], FAILED, f"Job {dep_id}, which writes one of this job's inputs, "
                                    f"ended {dep['state']}; this job did not run. Fix that job, then resume this one.",
                                    time.time())
                return False
        return True

    def _start(self, job: dict[str, Any], jt: JobType) -> None:
        job_id = job["id"]
        w, self._spare = (self._spare, None) if self._spare is not None else (self._spawn(), None)
        params = dict(job["params"])
        if job["resume_mode"] == "checkpoint" and "resume" in jt.params.model_fields:
            params["resume"] = True
        spec = {"job_id": job_id, "type": jt.name, "params": params, "runner": jt.runner, "progress": jt.progress,
                "params_class": f"{jt.params.__module__}:{jt.params.__name__}",
                "log_file": str(self.log_dir / f"{job_id}.log")}
        if jt.name == "predict" and self.predict_processes > 1:
            spec["processes"] = self.predict_processes
        try:
            w.conn.send(spec)
        except OSError:  # the spare died while waiting: start a fresh one
            w.conn.close()
            w = self._spawn()
            w.conn.send(spec)
        w.job_id, w.job_type, w.flushed = job_id, jt, time.monotonic()
        self._queue.remove(job_id)
        self._running[job_id] = w
        self.store.update(job_id, state=RUNNING, started=time.time(), worker_pid=w.proc.pid, progress=None)
        self._log(job_id, f"Started in worker process {w.proc.pid} (attempt {job['attempt']}).")
        self.hub.publish(job_id, "state", {"state": RUNNING, "error": None})
        log.info("job %s (%s) started in worker %s", job_id, jt.name, w.proc.pid)
        if self.prewarm and self._spare_failures < 3:
            try:
                self._spare = self._spawn()
            except OSError:  # the job runs anyway; the next one starts a worker of its own
                self._spare_failures += 1
                log.exception("cannot start a spare worker")

    def _on_message(self, w: _Worker, message: tuple[str, Any]) -> None:
        kind, payload = message
        if w.job_id is None:
            return
        if kind == "progress":
            # Log lines and losses are stored at once (a kill -9 must not lose the curve's last
            # points); the progress snapshot, rewritten at every step, at most every FLUSH_S.
            ev = plain(payload)
            if ev.get("message"):
                self._log(w.job_id, ev["message"])
            step, loss = ev.get("step") or 0, ev.get("loss")
            if loss is not None and step > w.last_loss_step and ev.get("total", 0) > 0:
                if w.last_loss_step == 0:  # first point of this attempt: later points are a lost tail
                    self.store.clear_losses(w.job_id, after_step=step - 1)
                self.store.add_losses(w.job_id, [(step, loss)])
                w.last_loss_step = step
            w.progress = ev
            self.hub.publish(w.job_id, "progress", ev)
        elif kind in ("result", "error"):
            w.outcome = (kind, plain(payload))

    def _flush(self, w: _Worker, force: bool = False) -> None:
        """Store the latest progress snapshot (throttled)."""
        if w.job_id is None or w.progress is None or not force and time.monotonic() - w.flushed < FLUSH_S:
            return
        self.store.update(w.job_id, progress=w.progress)
        w.flushed = time.monotonic()

    def _on_exit(self, w: _Worker) -> None:
        w.proc.join(timeout=5)
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join(timeout=5)
        with contextlib.suppress(OSError):
            w.conn.close()
        if w.job_id is None:  # the spare
            if self._spare is w:
                self._spare = None
                if not self.closing:
                    self._spare_failures += 1
                    log.warning("spare worker %s exited (%s); see %s", w.proc.pid, _exit_text(w.proc.exitcode),
                                self.log_dir / f"worker-{w.proc.pid}.log")
            return
        job_id = w.job_id
        self._running.pop(job_id, None)
        try:
            self._finish(w, job_id)
        except Exception:  # never leave a job 'running' without a worker
            log.exception("job %s: error while recording its end", job_id)
            self.store.update(job_id, state=FAILED, finished=time.time(), worker_pid=None,
                              error="Internal error in the service while recording the end of this job; "
                                    "see the service log. Resume the job to run it again.")
        finally:
            w.done.set()
        self._publish_end(job_id)

    def _finish(self, w: _Worker, job_id: str) -> None:
        """Record how a job's worker ended and clean up after it."""
        self._flush(w, force=True)
        job = self._job(job_id)
        outputs = job_outputs(job["type"], job["params"])
        kind, payload = w.outcome or (None, None)
        result, error = None, None
        if kind == "result":
            state, result = SUCCEEDED, payload
        elif kind == "error":
            state, error = FAILED, payload["message"]
        elif w.stop_reason == "cancel":
            state, error = CANCELLED, "Cancelled by the user; its output files were removed."
        elif w.stop_reason == "shutdown":
            state, error = INTERRUPTED, "The service was stopped while this job ran. Resume it to run it again."
        else:
            state, error = FAILED, (f"The worker process stopped unexpectedly ({_exit_text(w.proc.exitcode)}); "
                                    f"see {self.log_dir / (job_id + '.log')}. Resume the job to try again.")
        if state == CANCELLED:
            removed = remove_outputs(outputs, since=job["created"])
        else:
            removed = remove_partials(outputs)
        if removed:
            log.info("job %s: removed %s", job_id, ", ".join(str(p) for p in removed))
        self.store.update(job_id, state=state, result=result, error=error, finished=time.time(), worker_pid=None)
        self._log(job_id, f"{state.capitalize()}." + (f" {error}" if error else ""))
        log.info("job %s %s%s", job_id, state, f": {error}" if error else "")


def _silence_broken_std_streams() -> None:
    """Swap stdout/stderr for /dev/null once their reader is gone.

    multiprocessing flushes both before starting a process and raises if that fails, so a service
    whose console went away (QGIS closed, terminal hung up) could not start workers any more.
    """
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 - replaces a process-wide stream


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = ": perhaps out of memory" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit status {code}"
