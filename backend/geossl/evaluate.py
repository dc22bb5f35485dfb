"""``geossl evaluate``: accuracy of a classified map against a reference raster or polygons.

Read block by block and accumulated in a confusion matrix, so maps of any size are evaluated in
bounded memory. Classes are matched by the map's own class table (written by ``predict``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds

from .classes import IGNORE_INDEX, ClassTable
from .errors import GeoSSLError
from .labels import load_label_polygons
from .metrics import confusion_matrix, scores
from .predict import read_class_table
from .raster_io import atomic_path, check_output_path, open_raster, raster_info
from .schemas import EvaluateParams


def _blocks(width: int, height: int, size: int = 1024) -> Iterator[Window]:
    for y in range(0, height, size):
        for x in range(0, width, size):
            yield Window(x, y, min(size, width - x), min(size, height - y))


def _value_lut(table: ClassTable) -> np.ndarray:
    """Map value → model index, IGNORE_INDEX for values that are no class (nodata, unlabeled)."""
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[list(table.values)] = np.arange(len(table), dtype=np.uint8)
    return lut


def _table_for(path: str) -> ClassTable:
    table = read_class_table(path)
    if table is None:
        raise GeoSSLError(
            f"'{Path(path).name}' carries no GeoSSL class table.",
            "evaluate a map written by `geossl predict`.",
        )
    return table


def run_evaluate(params: EvaluateParams) -> dict[str, Any]:
    out = check_output_path(params.out) if params.out else None
    table = _table_for(params.prediction)
    pred_info = raster_info(params.prediction)
    lut = _value_lut(table)
    k = len(table)
    cm = np.zeros((k, k), np.int64)
    with open_raster(params.prediction) as pred_src:
        if params.reference:
            ref_info = raster_info(params.reference)
            if (ref_info.width, ref_info.height) != (pred_info.width, pred_info.height) or not np.allclose(
                ref_info.transform, pred_info.transform
            ):
                raise GeoSSLError(
                    "The reference raster is not on the prediction's grid (size or transform differ).",
                    "resample the reference onto the prediction (gdalwarp -te … -tr …) first.",
                )
            with open_raster(params.reference) as ref_src:
                for win in _blocks(pred_info.width, pred_info.height):
                    pred = lut[pred_src.read(1, window=win)]
                    ref = lut[ref_src.read(1, window=win).clip(0, 255).astype(np.uint8)]
                    cm += confusion_matrix(ref, pred, k, ignore=IGNORE_INDEX)
            source = {"reference": str(Path(params.reference).resolve())}
        else:
            (polys,), _, warnings = load_label_polygons(
                params.labels, params.class_field, [pred_info], table=table, layer=params.layer
            )
            for win in _blocks(pred_info.width, pred_info.height):
                if not polys.tree.query(shapely.box(*window_bounds(win, pred_info.affine))).size:
                    continue
                ref = polys.rasterize(win)
                pred = lut[pred_src.read(1, window=win)]
                cm += confusion_matrix(ref, pred, k, ignore=IGNORE_INDEX)
            source = {"labels": str(Path(params.labels).resolve()), "class_field": params.class_field,
                      "warnings": warnings}
    if cm.sum() == 0:
        raise GeoSSLError("No reference pixel overlaps the classified map.", "check the reference's extent.")
    result = {"prediction": str(Path(params.prediction).resolve()), **source, **scores(cm, table.names)}
    if out:
        with atomic_path(out) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=2))
        result["metrics_file"] = str(out.resolve())
    return result
