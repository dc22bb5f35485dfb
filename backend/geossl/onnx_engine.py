"""ONNX Runtime as prediction's engine on the CPU: the same model, faster there than torch.

Measured side by side on 2 cores (bench/results/predict.md): the forward alone 1.2–1.3 against
0.9–1.15 Mpx/s, `geossl predict` end to end +20 %. ONNX Runtime fuses each convolution with its
batch norm and activation. The model file's graph (its forest share included, softmax at the end)
is exported once per model file, tile and forest share into a cache folder and reused: exporting
costs about 8 s, so ``auto`` uses it on rasters large enough to win that back, or when the graph is
already cached. Torch stays the engine on CUDA and for TTA.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .schemas import ORT_MIN_PIXELS

Engine = Literal["auto", "torch", "onnxruntime"]
OPSET = 18


def cache_dir() -> Path:
    """Where exported graphs are kept: $GEOSSL_CACHE_DIR, else the user's cache folder."""
    if os.environ.get("GEOSSL_CACHE_DIR"):
        return Path(os.environ["GEOSSL_CACHE_DIR"]) / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or (os.environ.get("LOCALAPPDATA") if os.name == "nt" else None)
    return Path(base or Path.home() / ".cache") / "geossl" / "onnx"


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's content, read once per version of the file in this process."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def graph_path(model: str, tile: int, forest_weight: float | None, smooth: int | None = None) -> Path:
    """The cached graph of this model file's *content* (a retrained file under the same name differs),
    with the prediction's overrides of its forest share and smoothing window in the name."""
    stat = os.stat(model)
    share = "model" if forest_weight is None else f"{forest_weight:g}"
    window = "" if smooth is None else f"-smooth{smooth}"
    return cache_dir() / (f"{_digest(model, stat.st_size, stat.st_mtime_ns)[:20]}-tile{tile}-forest{share}{window}"
                          f"-opset{OPSET}.onnx")


def have_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def choose_engine(requested: Engine, device: torch.device, tta: bool, pixels: int,
                  cached: Callable[[], bool]) -> str:
    """The engine a prediction runs on: ``requested``, or for ``auto`` the faster one here.
    ``cached`` (is the graph already exported?) is only asked when the answer matters."""
    if requested != "auto":
        return requested
    if device.type != "cpu" or tta or not have_onnxruntime():
        return "torch"
    return "onnxruntime" if pixels >= ORT_MIN_PIXELS or cached() else "torch"


def exported_graph(model_path: str, model: torch.nn.Module, ckpt: dict, tile: int,
                   forest_weight: float | None, smooth: int | None = None) -> Path:
    """The ONNX graph of ``model`` (as :func:`geossl.predict.load_model` built it) for ``tile``² tiles,
    from the cache or exported now (atomically: two processes exporting at once both succeed)."""
    import onnx

    from .export import DeepnessModel, _export_graph
    from .raster_io import BandStats, atomic_path

    path = graph_path(model_path, tile, forest_weight, smooth)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = model.to("cpu", memory_format=torch.contiguous_format)
    module = DeepnessModel(cpu, BandStats.from_dict(ckpt["band_stats"])).eval()
    proto = _export_graph(module, torch.zeros(2, int(ckpt["in_channels"]), tile, tile), OPSET)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return path


def onnx_predictor(graph: Path, threads: int | None = None):
    """(B, C, t, t) normalised numpy → (B, K, t, t) probabilities, by ONNX Runtime on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(tiles: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(tiles, np.float32)})[0]

    return predict
