"""``geossl export``: a fine-tuned model as an ONNX graph that the Deepness QGIS plugin runs as is.

Deepness reads one float32 NCHW input with a *fixed* height/width (its dock takes the tile size
from the input's last dimension), feeds the first C bands divided by 255 whatever their dtype,
standardises them with ``standardization_mean``/``standardization_std`` from the model's
``metadata_props`` and argmaxes the output per pixel. GeoSSL normalises with
``clip(x, low, high)`` then ``(x − m) / s`` per band (``raster_io.BandStats``), so:

* the linear part is exactly Deepness's standardisation with mean = m/255, std = s/255
  (``(x/255 − m/255) / (s/255) = (x − m)/s``, also for uint16 or float bands);
* the clipping, which is not linear, goes into the graph: standardisation is increasing, so
  clipping raw values to [low, high] equals clamping the standardised input to
  [(low − m)/s, (high − m)/s] — that clamp is the graph's first operation;
* the graph ends with a softmax: Deepness shows class probabilities.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .checkpoint import load_checkpoint
from .classes import ClassTable
from .errors import GeoSSLError
from .models import from_checkpoint
from .progress import Clock, ProgressCallback, null_progress
from .raster_io import BandStats, atomic_path, check_output_path
from .schemas import ExportParams

DEEPNESS_KEYS = ("model_type", "class_names", "resolution", "tile_size", "tiles_size", "tiles_overlap",
                 "standardization_mean", "standardization_std")


class DeepnessModel(nn.Module):
    """GeoSSL's clip + model + softmax, for an input already standardised as Deepness does; made
    for graph export, so a per-pixel forest inside walks its trees in one pass (any batch size)."""

    def __init__(self, model: nn.Module, stats: BandStats) -> None:
        super().__init__()
        if getattr(model, "forest", None) is not None:
            model.forest.single_pass = True
        self.model = model
        low, high = clamp_bounds(stats)
        self.register_buffer("low", torch.tensor(low).view(1, -1, 1, 1))
        self.register_buffer("high", torch.tensor(high).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.maximum(torch.minimum(x, self.high), self.low)
        return torch.softmax(self.model(x), dim=1)


def clamp_bounds(stats: BandStats) -> tuple[np.ndarray, np.ndarray]:
    """GeoSSL's percentile clip expressed on standardised values: ((low − m)/s, (high − m)/s) per band."""
    mean, std = np.asarray(stats.mean, np.float32), np.asarray(stats.std, np.float32)
    return ((np.asarray(stats.low, np.float32) - mean) / std, (np.asarray(stats.high, np.float32) - mean) / std)


def deepness_standardisation(stats: BandStats) -> tuple[list[float], list[float]]:
    """Deepness's per-band mean/std (applied after its ÷255) that reproduce (x − m)/s."""
    return [m / 255.0 for m in stats.mean], [s / 255.0 for s in stats.std]


def deepness_feed(raw: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """(B, C, H, W) raw band values → the tensor Deepness gives the model (for tests and checks)."""
    shape = (1, -1, 1, 1)
    x = np.float32(raw * (1.0 / 255.0))
    return ((x - np.asarray(mean, np.float32).reshape(shape)) / np.asarray(std, np.float32).reshape(shape)).astype(
        np.float32)


def onnx_metadata(ckpt: dict[str, Any], tile: int, overlap_pct: int, resolution_cm: float | None) -> dict[str, str]:
    """``metadata_props`` as JSON strings: Deepness's keys, then GeoSSL's own (``geossl_*``)."""
    stats = BandStats.from_dict(ckpt["band_stats"])
    table = ClassTable.from_dict(ckpt["classes"])
    mean, std = deepness_standardisation(stats)
    meta: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(i): name for i, name in enumerate(table.names)},
        "tile_size": tile,
        "tiles_size": tile,  # the name in Deepness's documentation; its code reads tile_size
        "tiles_overlap": overlap_pct,
        "standardization_mean": mean,
        "standardization_std": std,
    }
    if resolution_cm is not None:
        meta["resolution"] = round(resolution_cm, 4)
    init = ckpt.get("init") or {}
    meta.update({
        "geossl_version": __version__,
        "geossl_bands": int(ckpt["in_channels"]),
        "geossl_classes": table.to_dict(),
        "geossl_colours": dict(zip(table.names, table.colors, strict=True)),
        "geossl_method": init.get("method") or "supervised (random init)",
        "geossl_metrics": ckpt.get("validation"),
        "geossl_encoder": ckpt.get("encoder"),
        "geossl_arch": ckpt.get("arch", "DeepLabV3Plus"),
        "geossl_band_stats": stats.to_dict(),
        "geossl_training_tile": ckpt.get("tile"),
        "geossl_created": ckpt.get("created"),
    })
    return {k: json.dumps(v) for k, v in meta.items()}


def resolution_cm(ckpt: dict[str, Any]) -> float | None:
    """Ground pixel size in cm: recorded at fine-tune time, else read from the first training raster."""
    if ckpt.get("resolution_m"):
        return float(ckpt["resolution_m"]) * 100.0
    for path in ckpt.get("rasters") or []:  # models written before the resolution was recorded
        if Path(path).is_file():
            from .raster_io import pixel_size_m, raster_info

            size = pixel_size_m(raster_info(path))
            return None if size is None else size * 100.0
    return None


def _export_graph(module: nn.Module, example: torch.Tensor, opset: int) -> Any:
    """The ONNX ModelProto of ``module`` (dynamo exporter: the maintained path; no download)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):  # it prints; stdout is the CLI's
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset, input_names=["input"],
                                    output_names=["output"], dynamic_shapes={"x": {0: batch}}, verbose=False)
    return program.model_proto


def run_export(params: ExportParams, progress: ProgressCallback = null_progress) -> dict[str, Any]:
    """Write ``params.out`` (.onnx) atomically and check it against torch on one tile."""
    import onnx
    import onnxruntime as ort

    t0 = time.monotonic()
    out = check_output_path(params.out)
    ckpt = load_checkpoint(params.model, "segmentation")
    tile = params.tile or int(ckpt.get("tile", 256))
    stats = BandStats.from_dict(ckpt["band_stats"])
    module = DeepnessModel(from_checkpoint(ckpt), stats).eval()
    clock = Clock()
    progress(clock.event("export", 0, 2, message=f"Exporting {Path(params.model).name} to ONNX ({tile}×{tile} tiles)…"))
    # two tiles: an example batch of 1 lets the exporter fix the batch size through a reshape
    example = torch.from_numpy(np.random.default_rng(0).normal(0, 1.5, (2, int(ckpt["in_channels"]), tile, tile))
                               .astype(np.float32))
    try:
        proto = _export_graph(module, example, params.opset)
    except Exception as exc:  # e.g. an opset the exporter cannot target
        raise GeoSSLError(f"The model cannot be exported to ONNX opset {params.opset}: {str(exc).splitlines()[0]}",
                          "use the default opset (18) or another between 18 and 21.") from exc
    res_cm = resolution_cm(ckpt)
    for key, value in onnx_metadata(ckpt, tile, params.overlap, res_cm).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "geossl", __version__
    proto.doc_string = (f"GeoSSL DeepLabV3+ ({ckpt['encoder']}), {ckpt['in_channels']} bands, "
                        f"classes {', '.join(ClassTable.from_dict(ckpt['classes']).names)}; from {Path(params.model).name}")
    onnx.checker.check_model(proto)
    progress(clock.event("export", 1, 2, message="Checking the ONNX graph against torch…"))
    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
    with torch.inference_mode():
        want = module(example).numpy()
    progress(clock.event("export", 2, 2))
    warnings_out = [] if res_cm is not None else [
        "The model does not record its pixel size and its training raster is gone: 'resolution' was left out "
        "(Deepness then uses the resolution you set in its dock)."]
    return {
        "onnx": str(out.resolve()),
        "tile": tile,
        "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "input_shape": ["batch", int(ckpt["in_channels"]), tile, tile],
        "classes": list(ClassTable.from_dict(ckpt["classes"]).names),
        "resolution_cm": res_cm,
        "max_abs_diff": float(np.abs(got - want).max()),
        "size_bytes": out.stat().st_size,
        "warnings": warnings_out,
        "seconds": round(time.monotonic() - t0, 2),
    }
