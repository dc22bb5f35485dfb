"""Tiny generated GeoTIFFs and polygon files for tests: small, explicit, with a real CRS.

Shared by backend and plugin tests; nothing binary is committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

UTM33 = "EPSG:32633"
ORIGIN = (330000.0, 5822040.0)  # upper-left corner, metres
PIXEL = 10.0

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Python code printing this process's peak resident memory in MB, for ``python -c`` children.
# VmHWM, not ``ru_maxrss``: Linux carries the parent's peak RSS over fork + exec into the child's
# ``ru_maxrss``, so a child of a big pytest or benchmark process would report its parent's memory.
PEAK_RSS_MB_CODE = ("int(next(line for line in open('/proc/self/status') if line.startswith('VmHWM')).split()[1])"
                    " / 1024")


def write_raster(path: Path, data: np.ndarray, crs: str | None = UTM33, nodata: float | None = None,
                 origin: tuple[float, float] = ORIGIN, pixel: float = PIXEL, tiled: bool = False) -> Path:
    """Write (C, H, W) ``data`` as a GeoTIFF with a north-up grid of ``pixel`` metres."""
    import rasterio
    from rasterio.transform import from_origin

    c, h, w = data.shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": c, "dtype": data.dtype.name,
               "crs": crs, "transform": from_origin(origin[0], origin[1], pixel, pixel), "nodata": nodata}
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def two_class_raster(path: Path, h: int = 96, w: int = 96, bands: int = 3, seed: int = 0,
                     dtype: str = "uint16", nodata: float | None = None) -> Path:
    """Left half dark, right half bright (plus noise): a problem any working pipeline solves."""
    rng = np.random.default_rng(seed)
    base = np.where(np.arange(w)[None, :] < w // 2, 200.0, 800.0)
    data = base[None] + rng.normal(0, 30, (bands, h, w))
    return write_raster(path, data.clip(1, None).astype(dtype), nodata=nodata)


def pixel_box(col0: float, row0: float, col1: float, row1: float,
              origin: tuple[float, float] = ORIGIN, pixel: float = PIXEL):
    """A shapely box covering pixel columns [col0, col1) and rows [row0, row1)."""
    import shapely

    x0, y0 = origin
    return shapely.box(x0 + col0 * pixel, y0 - row1 * pixel, x0 + col1 * pixel, y0 - row0 * pixel)


def write_polygons(path: Path, geoms: Sequence, values: Sequence, field: str = "class",
                   crs: str | None = UTM33, extra: dict[str, Sequence] | None = None) -> Path:
    """Write polygons with one class attribute (str or int) to a GeoPackage/GeoJSON/Shapefile."""
    import pyogrio.raw
    import shapely

    values_arr = np.array(values, dtype=object if isinstance(values[0], str) or values[0] is None else None)
    fields = [field] + list((extra or {}).keys())
    arrays = [values_arr] + [np.asarray(v) for v in (extra or {}).values()]
    pyogrio.raw.write(
        str(path), geometry=shapely.to_wkb(np.asarray(geoms, dtype=object)), field_data=arrays,
        fields=fields, crs=crs, geometry_type="MultiPolygon", promote_to_multi=True,
    )
    return path


def two_class_polygons(path: Path, w: int = 96, h: int = 96, field: str = "class",
                       values: Sequence = ("dark", "bright"), crs: str = UTM33) -> Path:
    """Two polygons per class, inside the halves of ``two_class_raster``."""
    q = w // 4
    geoms = [pixel_box(4, 4, q, h // 2 - 4), pixel_box(4, h // 2 + 4, q, h - 4),
             pixel_box(w - q, 4, w - 4, h // 2 - 4), pixel_box(w - q, h // 2 + 4, w - 4, h - 4)]
    vals = [values[0], values[0], values[1], values[1]]
    if crs != UTM33:
        import shapely
        from pyproj import Transformer

        t = Transformer.from_crs(UTM33, crs, always_xy=True)
        geoms = [shapely.transform(g, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1]))) for g in geoms]
    return write_polygons(path, geoms, vals, field=field, crs=crs)


def two_class_model(folder: Path, *extra: str, steps: int = 4) -> Path:
    """A few-step model fine-tuned on ``two_class_raster`` + ``two_class_polygons`` (32-px tiles),
    for tests that need a real model file, not a good one."""
    from geossl.cli import main

    raster = two_class_raster(folder / "scene.tif")
    labels = two_class_polygons(folder / "labels.gpkg")
    assert main(["finetune", "--raster", str(raster), "--labels", str(labels), "--class-field", "class",
                 "--out", str(folder / "m.pt"), "--steps", str(steps), "--steps-per-epoch", str(steps),
                 "--tile", "32", "--batch", "2", *extra]) == 0
    return folder / "m.pt"
