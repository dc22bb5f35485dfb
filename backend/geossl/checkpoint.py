"""Self-describing model files: weights + everything needed to use and reproduce them.

One file holds the state dict, the config and seed of the run, the classes and colours, the band
normalisation, the metrics and the library versions. It is written atomically (temporary file
and rename) and loaded with ``torch.load(weights_only=True)``, which refuses pickled code: a model
file received from someone else cannot run anything.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .errors import GeoSSLError
from .raster_io import atomic_path

FORMAT = "geossl"
FORMAT_VERSION = 1
KINDS = ("segmentation", "pretrained", "pretrain-state", "finetune-state")


def versions() -> dict[str, str]:
    import numpy
    import segmentation_models_pytorch as smp

    return {
        "geossl": __version__,
        "torch": str(torch.__version__),
        "segmentation_models_pytorch": str(smp.__version__),
        "numpy": str(numpy.__version__),
        "python": platform.python_version(),
    }


def _plain(value: Any) -> Any:
    """Reduce metadata to the builtin types that ``weights_only`` loading accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def save_checkpoint(path: str | os.PathLike, kind: str, state_dict: dict[str, Any], **meta: Any) -> Path:
    """Write a checkpoint of ``kind`` atomically; ``meta`` must be plain data (dict/list/str/number)."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        **_plain(meta),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        writer = _WriteErrors(fh)
        try:
            torch.save(payload, writer)
        except RuntimeError as exc:  # torch hides a full disk behind "unexpected pos …"
            if writer.error is not None:
                raise writer.error from exc
            fh.flush()  # an error the buffer held back surfaces here
            raise
        fh.flush()
        os.fsync(fh.fileno())
    return target


class _WriteErrors:
    """A file for ``torch.save`` that remembers the OS error (disk full) of a failed write."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, None

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def load_checkpoint(path: str | os.PathLike, kind: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Load and check a GeoSSL checkpoint safely (no code execution, clear errors)."""
    p = Path(path)
    if not p.is_file():
        raise GeoSSLError(f"Model file '{p}' does not exist.", "check the path to the .pt file.")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise GeoSSLError(
            f"Model file '{p.name}' cannot be loaded (corrupt, truncated or not a GeoSSL model): "
            f"{str(exc).splitlines()[0][:200]}",
            "use a .pt file written by GeoSSL; re-run the training if the file was cut short.",
        ) from exc
    return check_payload(payload, p, kind)


def check_payload(payload: Any, p: Path, kind: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """``payload`` (what ``torch.load`` read from ``p``) as a GeoSSL checkpoint of ``kind``, or a clear error."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise GeoSSLError(f"'{p.name}' is not a GeoSSL model file.", "use a .pt file written by GeoSSL.")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise GeoSSLError(
            f"'{p.name}' was written by a newer GeoSSL (format {payload['format_version']}).",
            "update GeoSSL.",
        )
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and payload.get("kind") not in kinds:
        raise GeoSSLError(
            f"'{p.name}' is a {payload.get('kind')} checkpoint, but a {' or '.join(kinds)} one is needed here.",
            "pass a fine-tuned model to predict, a pretrained encoder to --init.",
        )
    return payload


# --- resume states: nested training state (optimizer, RNG) as plain data + flat tensors -------------


def rng_states() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) global RNG states as lists and tensors (weights_only-safe)."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def pack(obj: Any, tensors: dict[str, torch.Tensor], key: str = "") -> Any:
    """Split nested state (optimizer state dicts, RNG states) into plain data + a flat tensor dict.

    Checkpoint metadata must be plain data and ``state_dict`` flat tensors, so every tensor moves
    to ``tensors`` under its path and leaves a ``{"__tensor__": path}`` reference; dicts with
    non-string keys (optimizer state is keyed by parameter index) keep their keys as items.
    """
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: pack(v, tensors, f"{key}/{k}") for k, v in obj.items()}
        return {"__items__": [[k, pack(v, tensors, f"{key}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [pack(v, tensors, f"{key}/{i}") for i, v in enumerate(obj)]
    return obj


def unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`pack` (tuples come back as lists)."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: unpack(v, tensors) for k, v in obj["__items__"]}
        return {k: unpack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack(v, tensors) for v in obj]
    return obj
