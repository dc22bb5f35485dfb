"""Co-registered raster pairs (e.g. Sentinel-2 + Sentinel-1 of one place) read window by window.

RS-BYOL takes its two views from two sensors of the same ground. ``geossl pretrain --raster A.tif
--pair B.tif`` reads every training window of A and the same ground of B, stacked band-wise (A's
bands then B's), so :mod:`geossl.views` can hand each view its sensor. When B is on another grid
(CRS, pixel size or origin), it is reprojected on the fly onto A's grid with a rasterio
``WarpedVRT`` (bilinear), never resampled to disk; only the window asked for is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from .errors import GeoSSLError
from .raster_io import BandStats, RasterInfo, open_raster, raster_info, read_window
from .sampling import WindowRef

__all__ = ["PairedReaders", "check_pairs", "same_grid", "stacked_stats"]


def same_grid(a: RasterInfo, b: RasterInfo) -> bool:
    """True when ``b``'s pixels are ``a``'s pixels (same CRS, size and transform)."""
    return (a.width, a.height) == (b.width, b.height) and np.allclose(a.transform, b.transform) and \
        (a.crs == b.crs or rasterio.crs.CRS.from_user_input(a.crs) == rasterio.crs.CRS.from_user_input(b.crs)
         if a.crs and b.crs else a.crs == b.crs)


def check_pairs(infos: Sequence[RasterInfo], pairs: Sequence[str]) -> list[RasterInfo]:
    """Infos of the paired rasters, one per training raster, refused early when they cannot pair."""
    if len(pairs) != len(infos):
        raise GeoSSLError(f"{len(infos)} raster(s) but {len(pairs)} --pair raster(s).",
                          "give one --pair per --raster, in the same order (folders cannot be paired).")
    out = [raster_info(p) for p in pairs]
    if len({p.count for p in out}) > 1:
        listing = ", ".join(f"{Path(p.path).name}: {p.count}" for p in out)
        raise GeoSSLError(f"The paired rasters have different band counts ({listing}).",
                          "pair with rasters of the same sensor and bands.")
    for a, b in zip(infos, out, strict=True):
        if same_grid(a, b):
            continue
        if not (a.crs and b.crs):
            missing = Path(a.path if not a.crs else b.path).name
            raise GeoSSLError(f"'{missing}' has no coordinate reference system, so its pair cannot be matched "
                              "to the same ground.", "assign the CRS (QGIS: Layer Properties ▸ Source).")
        if not _overlap(a, b):
            raise GeoSSLError(f"'{Path(b.path).name}' does not overlap '{Path(a.path).name}'.",
                              "pair each raster with a raster of the same place.")
    return out


def _overlap(a: RasterInfo, b: RasterInfo) -> bool:
    from rasterio.warp import transform_bounds

    w, s, e, n = transform_bounds(b.crs, a.crs, *b.bounds)
    aw, as_, ae, an = a.bounds
    return w < ae and e > aw and s < an and n > as_


def stacked_stats(a: BandStats, b: BandStats) -> BandStats:
    """Normalisation of the stacked bands: the raster's statistics, then the pair's."""
    return BandStats(a.low + b.low, a.high + b.high, a.mean + b.mean, a.std + b.std)


def _read_clipped(src: rasterio.io.DatasetReaderBase, window: Window, width: int, height: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A window that may pass the edges, from a source that cannot read boundless (a WarpedVRT)."""
    c0, r0 = int(window.col_off), int(window.row_off)
    w, h = int(window.width), int(window.height)
    x0, y0 = max(c0, 0), max(r0, 0)
    x1, y1 = min(c0 + w, width), min(r0 + h, height)
    data = np.zeros((src.count, h, w), np.float32)
    valid = np.zeros((h, w), bool)
    if x1 > x0 and y1 > y0:
        inner = Window(x0, y0, x1 - x0, y1 - y0)
        part = src.read(window=inner).astype(np.float32, copy=False)
        ok = src.read_masks(window=inner).min(axis=0) > 0
        if src.nodata is not None and not np.isnan(src.nodata):
            ok &= ~np.all(part == np.float32(src.nodata), axis=0)
        ok &= np.isfinite(part).all(axis=0)
        part[:, ~ok] = 0.0
        data[:, y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = part
        valid[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = ok
    return data, valid


class PairedReaders:
    """Window ``ref`` of raster i stacked with the same ground of pair i: ((C_a + C_b, h, w), valid).

    A pixel is valid when it is valid in both. Handles open lazily and are dropped on pickling, so
    every loader worker opens its own (like the single-raster readers).
    """

    def __init__(self, rasters: Sequence[RasterInfo], pairs: Sequence[RasterInfo]) -> None:
        self.rasters = list(rasters)
        self.pairs = list(pairs)
        self._open: dict[int, tuple[rasterio.io.DatasetReader, rasterio.io.DatasetReaderBase, bool]] = {}

    def _handles(self, i: int) -> tuple[rasterio.io.DatasetReader, rasterio.io.DatasetReaderBase, bool]:
        if i not in self._open:
            a, b = self.rasters[i], self.pairs[i]
            src_a, src_b = open_raster(a.path), open_raster(b.path)
            if same_grid(a, b):
                self._open[i] = (src_a, src_b, False)
            else:
                vrt = WarpedVRT(src_b, crs=src_a.crs, transform=src_a.transform, width=src_a.width,
                                height=src_a.height, resampling=Resampling.bilinear,
                                add_alpha=src_b.nodata is None)
                self._open[i] = (src_a, vrt, True)
        return self._open[i]

    def read(self, ref: WindowRef) -> tuple[np.ndarray, np.ndarray]:
        src_a, src_b, warped = self._handles(ref.raster)
        data_a, valid_a = read_window(src_a, ref.window)
        if warped:
            info = self.rasters[ref.raster]
            data_b, valid_b = _read_clipped(src_b, ref.window, info.width, info.height)
            if src_b.count > self.pairs[ref.raster].count:  # the alpha band added for a source without nodata
                data_b = data_b[: self.pairs[ref.raster].count]
        else:
            data_b, valid_b = read_window(src_b, ref.window)
        valid = valid_a & valid_b
        data = np.concatenate((data_a, data_b))
        data[:, ~valid] = 0.0
        return data, valid

    def __getstate__(self) -> dict:
        return {"rasters": self.rasters, "pairs": self.pairs, "_open": {}}
