"""SQLite job store: jobs, their log lines and loss history outlive the service process.

The service may be killed at any moment (QGIS closes, the machine reboots), so every state change
is committed at once and a restart finds what was queued or running; :meth:`JobStore.recover`
marks those jobs ``interrupted`` so they can be resumed. One connection behind a lock: the job
thread and the request threads share it, and SQLite serialises writers anyway.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "succeeded", "failed", "cancelled", "interrupted")
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
ACTIVE = frozenset({QUEUED, RUNNING})
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED, INTERRUPTED})
RESUMABLE = frozenset({INTERRUPTED, FAILED})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    params TEXT NOT NULL,
    progress TEXT,
    result TEXT,
    error TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempt INTEGER NOT NULL DEFAULT 1,
    resume_mode TEXT,
    worker_pid INTEGER,
    depends_on TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS job_logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    time REAL NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_logs_job ON job_logs(job_id, seq);
CREATE TABLE IF NOT EXISTS job_losses (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    loss REAL NOT NULL,
    PRIMARY KEY (job_id, step)
);
"""

_JSON_COLUMNS = ("params", "progress", "result", "depends_on")
_COLUMNS = ("type", "state", "params", "progress", "result", "error", "created", "started", "finished",
            "attempt", "resume_mode", "worker_pid", "depends_on")


def iso(t: float | None) -> str | None:
    """Epoch seconds → ISO 8601 UTC with milliseconds (what the API shows)."""
    if t is None:
        return None
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="milliseconds")


def plain(value: Any) -> Any:
    """JSON-safe copy: NaN/inf → None (strict JSON has no NaN), numpy scalars → Python, rest → str."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):
        return plain(value.item())
    return str(value)


class JobStore:
    """Jobs and their history in ``<data-dir>/jobs.sqlite``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- jobs ------------------------------------------------------------------------------------

    def create(self, job_type: str, params: dict[str, Any], depends_on: Sequence[str] = ()) -> str:
        job_id = uuid.uuid4().hex[:12]
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, type, state, params, created, depends_on) VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, job_type, QUEUED, json.dumps(plain(params)), time.time(), json.dumps(list(depends_on))),
            )
        return job_id

    def update(self, job_id: str, **fields: Any) -> None:
        """Set columns of a job; dict/list values are stored as JSON."""
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job column(s) {unknown}")
        values = [json.dumps(plain(v)) if k in _JSON_COLUMNS and v is not None else v for k, v in fields.items()]
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*values, job_id))

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._row(row) if row else None

    def list(self, states: Iterable[str] | None = None, types: Iterable[str] | None = None,
             limit: int = 200) -> list[dict[str, Any]]:
        """Newest first."""
        where, args = [], []
        for column, values in (("state", states), ("type", types)):
            if values is not None:
                values = list(values)
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                args.extend(values)
        sql = "SELECT * FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY created DESC, rowid DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [self._row(r) for r in rows]

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def recover(self, message_running: str, message_queued: str) -> list[str]:
        """After a crash or restart: every queued/running job becomes ``interrupted``; returns their ids."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            ids = [r["id"] for r in self._db.execute(
                "SELECT id FROM jobs WHERE state IN (?, ?) ORDER BY created", (QUEUED, RUNNING))]
            self._db.execute("UPDATE jobs SET state = ?, error = ?, finished = ?, worker_pid = NULL WHERE state = ?",
                             (INTERRUPTED, message_running, now, RUNNING))
            self._db.execute("UPDATE jobs SET state = ?, error = ?, finished = ? WHERE state = ?",
                             (INTERRUPTED, message_queued, now, QUEUED))
        return ids

    # --- logs and losses ---------------------------------------------------------------------------

    def add_logs(self, job_id: str, lines: Sequence[tuple[float, str]]) -> None:
        if not lines:
            return
        with self._lock:
            self._db.executemany("INSERT INTO job_logs (job_id, time, line) VALUES (?, ?, ?)",
                                 [(job_id, t, line) for t, line in lines])

    def logs(self, job_id: str, since: int = 0, limit: int = 10_000) -> list[dict[str, Any]]:
        """Lines after sequence number ``since`` (oldest first)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, time, line FROM job_logs WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (job_id, since, limit)).fetchall()
        return [{"seq": r["seq"], "time": iso(r["time"]), "line": r["line"]} for r in rows]

    def log_tail(self, job_id: str, n: int) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT line FROM job_logs WHERE job_id = ? ORDER BY seq DESC LIMIT ?",
                                    (job_id, n)).fetchall()
        return [r["line"] for r in reversed(rows)]

    def add_losses(self, job_id: str, points: Sequence[tuple[int, float]]) -> None:
        """(step, loss) pairs; a step written again (a re-run) replaces the old value."""
        points = [(job_id, int(s), float(v)) for s, v in points if v is not None and math.isfinite(v)]
        if not points:
            return
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO job_losses (job_id, step, loss) VALUES (?, ?, ?)", points)

    def losses(self, job_id: str) -> list[list[float]]:
        with self._lock:
            rows = self._db.execute("SELECT step, loss FROM job_losses WHERE job_id = ? ORDER BY step",
                                    (job_id,)).fetchall()
        return [[r["step"], r["loss"]] for r in rows]

    def clear_losses(self, job_id: str, after_step: int = -1) -> None:
        with self._lock:
            self._db.execute("DELETE FROM job_losses WHERE job_id = ? AND step > ?", (job_id, after_step))

    # --- rows -----------------------------------------------------------------------------------

    @staticmethod
    def _row(row: sqlite3.Row) -> dict[str, Any]:
        job = dict(row)
        for k in _JSON_COLUMNS:
            job[k] = json.loads(job[k]) if job[k] is not None else None
        return job
