"""The models the panel can pick from: files written by jobs plus any ``.pt`` in ``<data-dir>/models``.

Metadata comes from the model files themselves (``checkpoint.load_checkpoint``, weights-only), so
what the panel shows is what predict and finetune will use. Loading a file takes a moment, so
summaries are cached per (path, modification time, size).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import GeoSSLError
from .jobs import Conflict, NotFound
from .store import SUCCEEDED, JobStore, iso, plain

MODEL_JOBS = ("finetune", "pretrain")
# Checkpoint metadata worth showing; weights, band statistics and per-epoch history stay out.
SUMMARY_KEYS = ("kind", "created", "method", "method_options", "arch", "encoder", "in_channels", "num_classes",
                "classes", "tile", "view_size", "steps", "seed", "best_epoch", "validation", "final_loss", "init",
                "rasters", "config", "versions", "snapshot", "plan", "schedule")


def model_id(path: Path) -> str:
    """A stable id from the resolved path (the same file keeps its id across restarts)."""
    return hashlib.sha256(str(path).encode()).hexdigest()[:16]


class ModelRegistry:
    """Model files the service knows, with their metadata (cached per file version)."""

    def __init__(self, store: JobStore, models_dir: Path) -> None:
        self.store = store
        self.models_dir = models_dir
        self._cache: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def _files(self) -> dict[Path, str | None]:
        """Existing model files → id of the job that wrote them (None for files dropped in models/)."""
        found: dict[Path, str | None] = {}
        for job in self.store.list(states=[SUCCEEDED], types=MODEL_JOBS, limit=100_000):
            result = job["result"] or {}
            snapshots = [s.get("path") for s in result.get("snapshots") or [] if isinstance(s, dict)]
            for path in (result.get("model"), *snapshots):  # a pretraining's snapshots are encoders too
                if path and Path(path).is_file():
                    found.setdefault(Path(path).resolve(), job["id"])
        if self.models_dir.is_dir():
            for p in sorted(self.models_dir.glob("*.pt")):
                if p.is_file() and not p.name.endswith(".state.pt"):  # resume states are not models
                    found.setdefault(p.resolve(), None)
        return found

    def list(self) -> list[dict[str, Any]]:
        return [self._describe(p, job) for p, job in self._files().items()]

    def find(self, mid: str) -> dict[str, Any]:
        for path, job in self._files().items():
            if model_id(path) == mid:
                return self._describe(path, job)
        raise NotFound(f"No model '{mid}' (GET /models lists them).")

    def delete(self, mid: str, in_use: Callable[[Path], str | None]) -> None:
        """Delete a model file, unless a queued or running job (``in_use`` → its id) needs it."""
        path = Path(self.find(mid)["path"])
        user = in_use(path)
        if user is not None:
            raise Conflict(f"Job {user} uses '{path.name}'; cancel it or wait for it to finish first.")
        path.unlink(missing_ok=True)
        with self._lock:
            self._cache.pop(path, None)

    def _describe(self, path: Path, job_id: str | None) -> dict[str, Any]:
        st = path.stat()
        key = (st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._cache.get(path)
        if cached is None or cached[0] != key:
            cached = (key, self._summary(path))
            with self._lock:
                self._cache[path] = cached
        onnx = path.with_suffix(".onnx")  # where the panel's "Export to ONNX" writes it
        return {"id": model_id(path), "name": path.name, "path": str(path), "size_bytes": st.st_size,
                "modified": iso(st.st_mtime), "job_id": job_id, "onnx": str(onnx) if onnx.is_file() else None,
                **cached[1]}

    @staticmethod
    def _summary(path: Path) -> dict[str, Any]:
        from ..checkpoint import load_checkpoint

        try:
            ck = load_checkpoint(path, ("segmentation", "pretrained"))
        except GeoSSLError as exc:  # listed with the reason, so the user sees why it cannot be used
            return {"kind": None, "error": str(exc)}
        summary = {k: ck[k] for k in SUMMARY_KEYS if k in ck}
        summary["bands"] = ck.get("in_channels")
        return plain(summary)
