"""A huge but sparse Cloud-Optimised GeoTIFF (40 000 × 40 000 by default) made in seconds.

Only a few patches hold data; every other block is nodata and, with ``SPARSE_OK``, never written,
so the file is a few MB and generation never touches the empty 99.9 %. Used by the huge-raster
test (an extent of it in CI) and by ``make fuzz`` (the whole raster).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.data import ORIGIN, PIXEL, UTM33

HUGE = 40_000
BLOCK = 512


def patches(size: int, patch: int = 1024) -> list[tuple[int, int]]:
    """Upper-left (col, row) of the data patches: the centre and near three corners."""
    c = (size // 2) // BLOCK * BLOCK
    far = (size - patch - BLOCK) // BLOCK * BLOCK
    return [(c, c), (BLOCK, BLOCK), (far, BLOCK), (BLOCK, far)]


def write_sparse_cog(path: Path, size: int = HUGE, bands: int = 3, patch: int = 1024, seed: int = 0) -> Path:
    """Write ``size``² pixels, uint16 with nodata 0, data only in :func:`patches` (left dark, right bright)."""
    import rasterio
    from rasterio.shutil import copy
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    base = np.where(np.arange(patch)[None, :] < patch // 2, 200.0, 800.0)
    data = (base[None] + rng.normal(0, 30, (bands, patch, patch))).clip(1, None).astype("uint16")
    profile = {"driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": "uint16", "crs": UTM33,
               "transform": from_origin(ORIGIN[0], ORIGIN[1], PIXEL, PIXEL), "nodata": 0, "tiled": True,
               "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate", "sparse_ok": True,
               "BIGTIFF": "YES"}
    tmp = path.with_name(f".{path.name}.sparse.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for col, row in patches(size, patch):
            dst.write(data, window=rasterio.windows.Window(col, row, patch, patch))
    try:
        # COG layout (IFD first, blocks in order); no overviews: they would read all 1.6 G pixels.
        copy(tmp, path, driver="COG", compress="deflate", blocksize=BLOCK, overviews="NONE", sparse_ok=True,
             bigtiff="YES")
    finally:
        tmp.unlink(missing_ok=True)
    return path
