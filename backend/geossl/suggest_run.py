"""``geossl suggest``: run a fine-tuned model over a raster and write "label here next" rectangles.

The raster is predicted with the same streaming tiles and blending as ``geossl predict`` (memory
bounded by the tile size); each finished block's probabilities go into the coarse cell sums of
:mod:`geossl.suggest`, with pixels that are nodata or under an existing polygon marked ineligible.
The result is a GeoPackage layer of squares in the raster's CRS, ranked, with the reason and the
area the model expects a mapper to draw there (m² when the raster's pixel size in metres is known).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer

from .classes import IGNORE_INDEX, ClassTable
from .errors import GeoSSLError
from .labels import LabelPolygons, read_vector, value_names
from .predict import check_model_bands, load_model, torch_predictor
from .progress import Clock, ProgressCallback, null_progress
from .raster_io import (
    BandStats,
    RasterInfo,
    atomic_path,
    check_output_path,
    open_raster,
    pixel_size_m,
    raster_info,
)
from .schemas import SuggestParams
from .suggest import Candidates, CellSums, reason, score_class, select, window_candidates
from .tiling import predict_stripes

LAYER = "label here next"


def label_footprints(params: SuggestParams, info: RasterInfo, table: ClassTable) -> tuple[LabelPolygons | None,
                                                                                        list[str]]:
    """The existing polygons in the raster's CRS (their class does not matter here: all ground
    under them counts as labelled), plus warnings about classes the model does not know."""
    if not params.labels:
        return None, []
    vec = read_vector(params.labels, params.class_field, params.layer)
    warnings = list(vec.warnings)
    unknown = sorted(set(value_names(vec.values)) - set(table.names))
    if unknown:
        warnings.append(f"Class(es) {', '.join(unknown)} of the labels are not in the model "
                        f"({', '.join(table.names)}); a warm start cannot learn them: fine-tune afresh.")
    geoms = vec.geoms
    if vec.crs is not None and info.crs is not None and not CRS.from_user_input(vec.crs).equals(CRS.from_wkt(info.crs)):
        t = Transformer.from_crs(vec.crs, CRS.from_wkt(info.crs), always_xy=True)
        geoms = shapely.transform(geoms, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
    n = len(geoms)
    return LabelPolygons(info, geoms, np.zeros(n, np.int64), np.ones(n, np.int64)), warnings


def run_suggest(params: SuggestParams, progress: ProgressCallback = null_progress) -> dict[str, Any]:
    """Propose ``params.k`` windows to label next; writes ``params.out`` and returns them as a list."""
    t0 = time.monotonic()
    out = check_output_path(params.out)
    from .models import pick_device

    device = pick_device(params.device)
    model, ckpt = load_model(params.model, device)
    info = raster_info(params.raster)
    check_model_bands(ckpt, info, "suggest")
    if params.window > min(info.width, info.height):
        raise GeoSSLError(f"The window ({params.window} px) is larger than the raster ({info.width}×{info.height}).",
                          "choose a smaller --window.")
    table = ClassTable.from_dict(ckpt["classes"])
    stats = BandStats.from_dict(ckpt["band_stats"])
    footprints, warnings = label_footprints(params, info, table)
    tile = params.tile or int(ckpt.get("tile", 256))
    overlap = params.overlap if params.overlap is not None else tile // 4
    if overlap >= tile:
        raise GeoSSLError(f"Overlap {overlap} must be smaller than the tile ({tile}).", "lower --overlap.")
    cell = params.window // 4
    sums = CellSums.empty(info.height, info.width, cell, len(table))
    clock = Clock()

    def on_tiles(done: int, total: int) -> None:
        progress(clock.event("suggest", done, total))

    predictor = torch_predictor(model, device, params.amp)
    with open_raster(params.raster) as src:
        for block in predict_stripes(src, stats, predictor, tile, overlap, params.batch, on_tiles=on_tiles,
                                     probabilities=True):
            if block.probabilities is None:  # no valid pixel in these rows: nothing to suggest there
                continue
            eligible = block.classes >= 0
            if footprints is not None and len(footprints.geoms):
                eligible &= footprints.rasterize(block.window, eligible.shape) == IGNORE_INDEX
            sums.add(int(block.window.row_off), int(block.window.col_off), block.probabilities, eligible,
                     params.measure)
    cands = window_candidates(sums, 4, params.score)
    if len(cands) == 0:
        raise GeoSSLError(f"No {params.window}×{params.window}-pixel window of '{Path(params.raster).name}' is free "
                          "of nodata and existing polygons.", "choose a smaller --window.")
    picks = select(cands.centres, cands.score, score_class(cands, params.score), params.k, cands.size,
                   params.spacing, params.class_decay)
    metres = pixel_size_m(info)
    items = [_item(i, rank, cands, table, info, metres) for rank, i in enumerate(picks, start=1)]
    if len(items) < params.k:
        warnings.append(f"Only {len(items)} of {params.k} suggestions fit (windows must not overlap, nor lie closer "
                        "than the spacing).")
    write_suggestions(out, items, info)
    return {
        "suggestions": str(out.resolve()),
        "layer": LAYER,
        "count": len(items),
        "items": items,
        "measure": params.measure,
        "score": params.score,
        "window": params.window,
        "warnings": warnings,
        "device": str(device),
        "seconds": round(time.monotonic() - t0, 2),
    }


def _item(i: int, rank: int, c: Candidates, table: ClassTable, info: RasterInfo,
          metres: float | None) -> dict[str, Any]:
    """One suggestion; ``metres`` is the pixel size in metres (None: areas stay in pixels)."""
    a = info.affine
    r0, c0, s = int(c.row[i]), int(c.col[i]), c.size
    x0, y0 = a * (c0, r0)
    x1, y1 = a * (c0 + s, r0 + s)
    px = int(c.drawable_px[i])
    m2 = None if metres is None else round(px * metres * metres, 1)
    drawn = int(c.drawable_class[i])
    return {
        "rank": rank,
        "score": round(float(c.score[i]), 4),
        "margin": round(float(c.margin[i]), 4),
        "reason": reason(table.names, int(c.top1[i]), int(c.top2[i]), float(c.margin[i]),
                         px if m2 is None else m2, drawn, "px" if m2 is None else "m²"),
        "class_1": table.names[int(c.top1[i])],
        "class_2": table.names[int(c.top2[i])],
        "p_1": round(float(c.p1[i]), 4),
        "p_2": round(float(c.p2[i]), 4),
        "uncertainty": round(float(c.uncertainty[i]), 4),
        "drawable_class": table.names[drawn],
        "drawable_px": px,
        "drawable_m2": m2,
        "row": r0, "col": c0, "size": s,
        "bounds": [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)],
        "centre": [(x0 + x1) / 2, (y0 + y1) / 2],
    }


def write_suggestions(out: Path, items: list[dict[str, Any]], info: RasterInfo) -> None:
    """One polygon layer ``LAYER`` (squares in the raster's CRS) with rank, score, reason and the
    expected drawable area, atomically (``drawable_m2`` is empty without a metric pixel size)."""
    import pyogrio.raw  # only here: a machine without pyogrio can still import this module

    geoms = [shapely.box(*it["bounds"]) for it in items]
    cols = ("rank", "score", "margin", "reason", "class_1", "class_2", "p_1", "p_2", "drawable_class",
            "drawable_px", "drawable_m2")
    data = [np.array([it[k] for it in items], dtype=object if isinstance(items[0][k], str) else None) for k in cols]
    data[-1] = np.array([np.nan if it["drawable_m2"] is None else it["drawable_m2"] for it in items], np.float64)
    with atomic_path(out) as tmp, warnings.catch_warnings():  # a new GeoPackage replaces the old one whole
        warnings.filterwarnings("ignore", "The filename extension", RuntimeWarning)  # the temporary name
        warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)  # the raster has none either
        tmp.unlink()  # the driver creates the file itself
        pyogrio.raw.write(str(tmp), geometry=shapely.to_wkb(np.asarray(geoms, dtype=object)), field_data=data,
                          fields=list(cols), crs=info.crs, geometry_type="Polygon", driver="GPKG", layer=LAYER)
