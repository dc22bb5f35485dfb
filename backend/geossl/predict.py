"""``geossl predict``: a fine-tuned model over a whole raster → classified GeoTIFF + confidence.

The torch side (model, AMP, batches) lives here; tiling/blending/streaming live in ``tiling``.
Outputs keep the source CRS and transform, carry a colour table, class names (band metadata and a
QGIS ``.qml`` sidecar) and are written atomically: an interrupted run leaves no output file.

Started by ``torchrun`` (``--nproc_per_node N``, any ``--nnodes``), each process predicts one
block-aligned band of rows (:func:`geossl.tiling.row_shares`) into a hidden part file beside the
output, and rank 0 joins the parts into the one output, identical pixel for pixel to a single
process's. The output folder must be one that every node sees. If any process fails, every
process fails, the parts are removed and no output is written.
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window

from .checkpoint import load_checkpoint
from .classes import ClassTable, write_qml
from .distributed import Distributed, all_succeeded, joined
from .errors import GeoSSLError
from .models import autocast, from_checkpoint, pick_device, prepare
from .onnx_engine import choose_engine, exported_graph, graph_path, onnx_predictor
from .progress import Clock, ProgressCallback, null_progress
from .raster_io import (
    BandStats,
    RasterInfo,
    check_output_path,
    extent_window,
    geotiff_writer,
    open_raster,
    raster_info,
    window_info,
)
from .schemas import PredictParams
from .tiling import RowBuffer, computed_pixels, predict_stripes, row_shares, tile_plan
from .vectorize import check_vector_output, vectorize


def load_model(path: str, device: torch.device, forest_weight: float | None = None,
               smooth: int | None = None) -> tuple[torch.nn.Module, dict]:
    """The model of a file, ready for inference on tiles of any size; ``forest_weight`` and
    ``smooth`` override its forest's share and its smoothing window."""
    ckpt = load_checkpoint(path, "segmentation")
    return prepare(from_checkpoint(ckpt, forest_weight, smooth), device, inference=True).eval(), ckpt


def check_model_bands(ckpt: dict, info: RasterInfo, action: str) -> None:
    """Refuse a raster whose band count is not the model's, before any tile is read."""
    if info.count != int(ckpt["in_channels"]):
        raise GeoSSLError(
            f"The model expects {ckpt['in_channels']} bands but '{Path(info.path).name}' has {info.count}.",
            f"{action} on a raster with the same bands as the training rasters.",
        )


DIHEDRAL = [(k, flip) for flip in (False, True) for k in range(4)]  # the 8 flips/rotations of a square


def torch_predictor(model: torch.nn.Module, device: torch.device, amp: bool, tta: bool = False):
    """(B, C, t, t) normalised numpy → (B, K, t, t) softmax probabilities (float32 numpy).

    ``tta``: the mean of the probabilities over the 8 flips/rotations of each tile (each mapped
    back), 8× the compute: imagery seen from above has no "up".
    """

    blend = getattr(model, "blend", None)
    context = model.context if blend is not None else model

    def forward(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp):
            return torch.softmax(model(x).float(), dim=1)

    def forward_context(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp):
            return torch.softmax(context(x).float(), dim=1)

    @torch.inference_mode()
    def predict(tiles: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(tiles).to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if not tta:
            return forward(x).cpu().numpy()
        total = None
        for k, flip in DIHEDRAL:
            v = torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))
            p = torch.rot90(forward_context(v), -k, dims=(-2, -1))
            p = p.flip(-1) if flip else p
            total = p if total is None else total.add_(p)
        total = total.div_(len(DIHEDRAL))
        if blend is not None:  # a per-pixel forest has no "up" either: blended once, not 8 times
            total = blend(total, x)
        return total.cpu().numpy()

    return predict


def run_predict(params: PredictParams, progress: ProgressCallback = null_progress) -> dict[str, Any]:
    """Classify the raster (one process, or this process's share of a torchrun job)."""
    ctx = Distributed.from_env()
    out = check_output_path(params.out)
    with joined(ctx, pick_device(params.device)) as device:
        return _predict(params, progress if ctx.main else null_progress, ctx, device, out)


def _predict(params: PredictParams, progress: ProgressCallback, ctx: Distributed, device: torch.device,
             out: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    conf_out = check_output_path(params.confidence) if params.confidence else None
    vector_out = check_vector_output(params.vector, out) if params.vector else None
    model, ckpt = load_model(params.model, device, params.forest_weight, params.smooth)
    info = raster_info(params.raster)
    check_model_bands(ckpt, info, "predict")
    window = None
    if params.extent:
        window = extent_window(info, params.extent, params.extent_crs)
        if window is None:
            raise GeoSSLError(f"The extent does not overlap '{Path(params.raster).name}'.",
                              "choose an extent over the raster (or none for the whole raster).")
        info = window_info(info, window)
    table = ClassTable.from_dict(ckpt["classes"])
    stats = BandStats.from_dict(ckpt["band_stats"])
    plan = tile_plan(int(ckpt.get("tile", 256)), info.height, info.width, device.type, params.tile, params.overlap,
                     params.batch)
    tile, overlap = plan.tile, plan.overlap
    if overlap >= tile:
        raise GeoSSLError(f"Overlap {overlap} must be smaller than the tile ({tile}).", "lower --overlap.")
    lut = np.array(table.values, np.uint8)
    nodata = table.nodata_value
    tags = {"GEOSSL_CLASSES": table.to_json(), "GEOSSL_MODEL": str(Path(params.model).resolve())}
    clock = Clock()
    counts = np.zeros(len(table), np.int64)

    def on_tiles(done: int, total: int) -> None:
        progress(clock.event("predict", done, total))

    scratch = None
    if vector_out is not None and conf_out is None:  # the polygons' mean confidence needs one
        conf_out = scratch = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.confidence.partial.tif"
        if ctx.enabled:  # every process must name the same file
            conf_out = scratch = out.parent / f".{out.name}.confidence.partial.tif"
    class_band = {"dtype": "uint8", "nodata": nodata, "colormap": table.colormap(), "descriptions": ["class"],
                  "tags": tags, "cog": params.cog, "overviews": "nearest"}
    conf_band = {"dtype": "float32", "nodata": float("nan"), "descriptions": ["confidence"], "cog": params.cog,
                 "overviews": "average"}
    if scratch is not None:
        conf_band["cog"] = False  # read once by the polygons, then removed
    # every process of a distributed run must pick the same engine: the raster decides, not the cache
    engine = choose_engine(params.engine, device, params.tta, computed_pixels(info.height, info.width, tile, overlap),
                           lambda: not ctx.enabled and graph_path(params.model, tile, params.forest_weight, params.smooth).exists())
    if engine == "onnxruntime":
        progress(clock.event("predict", 0, 0, message="Preparing ONNX Runtime (once per model and tile)…"))
        predictor = onnx_predictor(exported_graph(params.model, model, ckpt, tile, params.forest_weight, params.smooth))
        model = None  # ONNX Runtime holds its own copy of the weights: the torch one goes
        gc.collect()
    else:
        predictor = torch_predictor(model, device, params.amp, params.tta)

    def classify(rows: tuple[int, int] | None, class_path: Path, conf_path: Path | None) -> None:
        """Rows ``rows`` (all: None) of the map into GeoTIFFs on that band of rows' grid."""
        r0, r1 = rows or (0, info.height)
        grid = window_info(info, Window(0, r0, info.width, r1 - r0))
        part = {"cog": False} if rows else {}  # a process's share is joined into the COG afterwards
        with contextlib.ExitStack() as stack:
            src = stack.enter_context(open_raster(params.raster))
            dst = stack.enter_context(geotiff_writer(class_path, grid, 1, **class_band | part))
            conf_dst = stack.enter_context(geotiff_writer(conf_path, grid, 1, **conf_band | part)) \
                if conf_path else None

            def write(w: Window, classes: np.ndarray, conf: np.ndarray) -> None:
                valid = classes >= 0
                counts[:] += np.bincount(classes[valid], minlength=len(table))
                mapped = np.where(valid, lut[np.clip(classes, 0, None)], nodata).astype(np.uint8)
                w = Window(w.col_off, w.row_off - r0, w.width, w.height)
                dst.write(mapped[None], window=w)
                if conf_dst is not None:
                    conf_dst.write(conf[None], window=w)

            buffer = RowBuffer(write)
            for block in predict_stripes(src, stats, predictor, tile, overlap, plan.batch, on_tiles=on_tiles,
                                         window=window, rows=rows):
                buffer.add(block)
            buffer.flush()

    if ctx.enabled:
        outputs = [(out, class_band)] + ([(conf_out, conf_band)] if conf_out else [])
        _predict_share(ctx, device, classify, info, outputs, counts)
        if not ctx.main:
            return {"rank": ctx.rank, "seconds": round(time.monotonic() - t0, 2)}
    else:
        classify(None, out, conf_out)
    write_qml(out.with_suffix(".qml"), table)
    vector: dict[str, Any] = {}
    if vector_out is not None:
        progress(clock.event("polygons", 0, 0, message="Writing polygons…"))
        try:
            vector = vectorize(out, vector_out, table, conf_out, params.min_area, params.simplify)
        finally:
            if scratch is not None:
                scratch.unlink(missing_ok=True)
    return {
        "classes_raster": str(out.resolve()),
        "confidence_raster": str(Path(params.confidence).resolve()) if params.confidence else None,
        **vector,
        "style": str(out.with_suffix(".qml").resolve()),
        "class_pixels": dict(zip(table.names, counts.tolist(), strict=True)),
        "tile": tile,
        "overlap": overlap,
        "batch": plan.batch,
        "device": str(device),
        "engine": engine,
        "processes": ctx.world_size,
        "seconds": round(time.monotonic() - t0, 2),
    }


def _part(path: Path, rank: int, ctx: Distributed) -> Path:
    return path.parent / f".{path.name}.part{rank}of{ctx.world_size}.tif"


def _predict_share(ctx: Distributed, device: torch.device, classify, info: RasterInfo,
                   outputs: list[tuple[Path, dict]], counts: np.ndarray) -> None:
    """This process's rows into its part files; then rank 0 joins every part into the outputs
    (classes first, then the confidence if any: each with its GeoTIFF writer's options).

    The processes agree on success before anything is joined: one failure fails them all, and
    the parts are removed (the outputs are written atomically, so none is left half-written).
    """
    shares = row_shares(info.height, ctx.world_size)
    targets = [target for target, _ in outputs]
    mine = shares[ctx.rank]
    error: BaseException | None = None
    try:
        if mine[1] > mine[0]:
            parts = [_part(target, ctx.rank, ctx) for target in targets]
            classify(mine, parts[0], parts[1] if len(parts) > 1 else None)
    except Exception as exc:  # noqa: BLE001 — reported to every process, then re-raised here
        error = exc
    failed = all_succeeded(error is None, device)
    try:
        if error is not None:
            raise error
        if failed:
            raise GeoSSLError(f"Process(es) {', '.join(map(str, failed))} of the distributed prediction failed: "
                              "no output was written.", "see that process's error above, fix it and run again.")
        total = torch.as_tensor(counts, device=device)
        torch.distributed.all_reduce(total)
        counts[:] = total.cpu().numpy()
        if ctx.main:
            for target, band in outputs:
                _join_parts(target, [(_part(target, r, ctx), share) for r, share in enumerate(shares)
                                     if share[1] > share[0]], info, band)
        torch.distributed.barrier()  # nobody removes a part rank 0 still reads
    finally:
        for target in targets:
            _part(target, ctx.rank, ctx).unlink(missing_ok=True)


def _join_parts(target: Path, parts: list[tuple[Path, tuple[int, int]]], info: RasterInfo, band: dict,
                rows: int = 256) -> None:
    """Copy each process's band of rows into ``target``, 256 rows (one GeoTIFF block) at a time."""
    missing = [p.name for p, _ in parts if not p.exists()]
    if missing:
        raise GeoSSLError(f"Part(s) {', '.join(missing)} of the distributed prediction are not in '{target.parent}'.",
                          "write the output to a folder that every node of the job sees (a shared filesystem).")
    with geotiff_writer(target, info, 1, **band) as dst:
        for path, (r0, r1) in parts:
            with open_raster(path) as src:
                for y in range(0, r1 - r0, rows):
                    h = min(rows, r1 - r0 - y)
                    dst.write(src.read(1, window=Window(0, y, info.width, h))[None],
                              window=Window(0, r0 + y, info.width, h))


def read_class_table(path: str) -> ClassTable | None:
    """The class table a GeoSSL map carries in its metadata (None for other rasters)."""
    with open_raster(path) as src:
        raw = src.tags().get("GEOSSL_CLASSES")
    return ClassTable.from_dict(json.loads(raw)) if raw else None
