"""Many clients watching one job: status pollers plus SSE streams, with per-request latency.

Shared by the CI test (``test_load.py``) and ``make fuzz`` (``tests/bench/fuzz.py``), which
reports the p99 status latency.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FINISHED = ("succeeded", "failed", "cancelled", "interrupted")


@dataclass
class LoadReport:
    clients: int
    streams: int
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stream_ends: int = 0
    stream_events: int = 0

    def percentile_ms(self, q: float) -> float:
        return round(float(np.percentile(self.latencies_s, q)) * 1000, 1) if self.latencies_s else float("nan")

    def summary(self) -> dict[str, Any]:
        return {"clients": self.clients, "pollers": self.clients - self.streams, "streams": self.streams,
                "status_requests": len(self.latencies_s), "errors": len(self.errors),
                "p50_ms": self.percentile_ms(50), "p99_ms": self.percentile_ms(99),
                "max_ms": round(max(self.latencies_s, default=0.0) * 1000, 1),
                "stream_ends": self.stream_ends, "stream_events": self.stream_events}


def watch_job(service: Any, job_id: str, clients: int = 50, streams: int = 10, interval_s: float = 0.05,
              timeout_s: float = 600.0) -> LoadReport:
    """``clients - streams`` threads poll ``GET /jobs/{id}`` and ``streams`` threads follow its
    event stream, all until the job ends; every status request's latency is recorded."""
    report = LoadReport(clients, streams)
    lock = threading.Lock()
    deadline = time.monotonic() + timeout_s
    start = threading.Barrier(clients)

    def poll() -> None:
        with service.client(timeout=120) as c:
            start.wait()
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    r = c.get(f"/jobs/{job_id}")
                except Exception as exc:  # noqa: BLE001 - every failure is counted, none may happen
                    with lock:
                        report.errors.append(repr(exc))
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    report.latencies_s.append(dt)
                    if r.status_code != 200:
                        report.errors.append(f"{r.status_code}: {r.text[:200]}")
                if r.status_code == 200 and r.json()["state"] in FINISHED:
                    return
                time.sleep(interval_s)

    def stream() -> None:
        events = 0
        try:
            with service.client(timeout=timeout_s) as c:
                start.wait()
                with c.stream("GET", f"/jobs/{job_id}/events") as r:
                    if r.status_code != 200:
                        raise RuntimeError(f"events: {r.status_code}")
                    for line in r.iter_lines():
                        if line.startswith("event: "):
                            events += 1
                            if line == "event: end":
                                with lock:
                                    report.stream_ends += 1
                                break
        except Exception as exc:  # noqa: BLE001
            with lock:
                report.errors.append(f"stream: {exc!r}")
        with lock:
            report.stream_events += events

    threads = [threading.Thread(target=poll if i >= streams else stream, daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 30)
    return report
