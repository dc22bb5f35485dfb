"""The real service in a subprocess, talked to over HTTP on 127.0.0.1 only (httpx, bounded waits)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

FINISHED = ("succeeded", "failed", "cancelled", "interrupted")


def serve_command() -> list[str]:
    """``geossl serve`` once the CLI has it, ``python -m geossl.service`` until then."""
    from geossl.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    if "serve" in commands.choices:
        return [sys.executable, "-m", "geossl.cli", "serve"]
    return [sys.executable, "-m", "geossl.service"]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError, OSError):  # reap it if it is our zombie child
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return os.path.exists(f"/proc/{pid}") if os.path.isdir("/proc") else True


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@dataclass
class Service:
    proc: subprocess.Popen
    data_dir: Path
    url: str
    token: str
    output: Path

    def client(self, token: str | None = None, timeout: float = 60.0) -> httpx.Client:
        """A client for this service; ``token=""`` sends none."""
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout, trust_env=False)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        with self.client() as c:
            return c.get(path, **kw)

    def post(self, path: str, body: Any = None) -> httpx.Response:
        with self.client() as c:
            return c.post(path, json=body)

    def submit(self, job_type: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.post(f"/jobs/{job_type}", body)
        assert r.status_code == 201, r.text
        return r.json()

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_job(self, job_id: str, states: Iterable[str] = FINISHED, timeout: float = 120.0,
                 until: Any = None) -> dict[str, Any]:
        """Poll until the job is in one of ``states`` (and ``until(job)`` holds, if given)."""
        states = tuple(states)

        def ready() -> dict[str, Any] | None:
            job = self.job(job_id)
            if job["state"] in states and (until is None or until(job)):
                return job
            if job["state"] in FINISHED and job["state"] not in states:
                raise AssertionError(f"job {job_id} ended {job['state']}: {job['error']}\n{job.get('log_tail')}")
            return None

        return wait_until(ready, timeout, f"job {job_id} to be {'/'.join(states)}", interval=0.2)

    def log_text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"service did not stop within {timeout} s after signal {sig}") from None


def start_server(tmp_path: Path, *args: str, data_dir: Path | None = None, timeout: float = 90.0,
                 console_gone: bool = False, cwd: Path | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> Service:
    """Start ``geossl serve`` on a free port of 127.0.0.1 and wait for its discovery file.

    ``console_gone``: its stdout/stderr is a pipe closed once it listens, with buffered streams
    (no PYTHONUNBUFFERED), as when QGIS, which started it, has gone. ``cwd``: its working folder
    (relative paths in requests resolve there; fuzzing keeps them inside a temporary folder).
    ``preexec_fn``: run in the child before ``geossl serve`` starts (e.g. a small file-size limit).
    """
    data_dir = data_dir or tmp_path / "data"
    discovery = data_dir / "service.json"
    output = tmp_path / f"service-{time.monotonic_ns()}.log"
    env = {k: v for k, v in os.environ.items()
           if k != "GEOSSL_DATA_DIR" and not (console_gone and k == "PYTHONUNBUFFERED")}
    cmd = [*serve_command(), "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir), *args]
    with open(output, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if console_gone else out, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, preexec_fn=preexec_fn)

    def ready() -> dict[str, Any] | None:
        if proc.poll() is not None:
            raise AssertionError(f"service exited with {proc.returncode}:\n{output.read_text(errors='replace')}")
        try:
            found = json.loads(discovery.read_text())
        except (OSError, ValueError):
            return None
        return found if found.get("pid") == proc.pid else None

    try:
        found = wait_until(ready, timeout, "the service's discovery file")
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    assert found["url"].startswith("http://127.0.0.1:")
    if console_gone:
        proc.stdout.close()
    return Service(proc, data_dir, found["url"], found["token"], output)


def segmentation_model(path: Path, bands: int = 3, tile: int = 32) -> Path:
    """A real (untrained) model file, written directly: tests of predict need no training run."""
    from geossl.checkpoint import save_checkpoint
    from geossl.classes import ClassTable
    from geossl.models import build_model
    from geossl.raster_io import compute_band_stats

    from tests.data import two_class_raster

    raster = two_class_raster(path.with_suffix(".tif"), bands=bands)
    table = ClassTable.from_field_values(["bright", "dark"])
    save_checkpoint(path, "segmentation", build_model("resnet18", bands, 2).state_dict(), arch="DeepLabV3Plus",
                    encoder="resnet18", in_channels=bands, num_classes=2, classes=table.to_dict(),
                    band_stats=compute_band_stats([raster]).to_dict(), tile=tile, seed=0)
    return path
