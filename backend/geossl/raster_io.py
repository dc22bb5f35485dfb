"""Raster input/output with rasterio: windowed, nodata-aware, any band count and dtype.

Everything here works window by window so memory never depends on raster size. Outputs are
written to a temporary file beside the target and renamed at the end, so a crash or a full disk
never leaves a half-written GeoTIFF under the name the user asked for.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.errors import CRSError, RasterioIOError
from rasterio.windows import Window

from .errors import GeoSSLError

SUPPORTED_KINDS = ("u", "i", "f")  # unsigned, signed integer, float; complex is refused

# GDAL's block cache defaults to 5% of RAM and keeps every block read or written until it is full:
# over a 16k² raster that alone is ~1 GB more RSS on a 24 GB machine. Windows are read once, in
# order, so a small cache loses nothing: a row of 4096-column windows needs ~16 MB, and at 128 MB
# the 16k² peak was 1.21× the 2k² one. Read by GDAL on first use; a user's own setting wins.
GDAL_CACHE_MB = 64
os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))


@dataclass(frozen=True)
class RasterInfo:
    """What the pipeline needs to know about a raster, without holding it open."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: str | None
    transform: tuple[float, ...]
    nodata: float | None
    descriptions: tuple[str | None, ...]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in the raster's CRS."""
        return tuple(rasterio.transform.array_bounds(self.height, self.width, self.affine))

    @property
    def affine(self) -> rasterio.Affine:
        return rasterio.Affine(*self.transform[:6])

    def to_dict(self) -> dict:
        return asdict(self)


def open_raster(path: str | os.PathLike) -> rasterio.io.DatasetReader:
    """Open a raster for reading, turning every failure into an actionable message."""
    p = Path(path)
    if not p.exists():
        raise GeoSSLError(f"Raster '{p}' does not exist.", "check the path (absolute paths are safest).")
    if p.is_dir():
        raise GeoSSLError(f"'{p}' is a folder, not a raster file.", "give the path of a GeoTIFF (or any GDAL raster).")
    try:
        src = rasterio.open(p)
    except RasterioIOError as exc:
        raise GeoSSLError(
            f"Raster '{p}' cannot be read: {exc}.", "check that it is a valid GeoTIFF and not truncated."
        ) from exc
    kinds = {np.dtype(d).kind for d in src.dtypes}
    if not kinds <= set(SUPPORTED_KINDS):
        src.close()
        raise GeoSSLError(
            f"Raster '{p}' has data type {src.dtypes[0]}, which GeoSSL does not support.",
            "convert it to an integer or float type (e.g. gdal_translate -ot Float32).",
        )
    return src


def raster_info(path: str | os.PathLike) -> RasterInfo:
    with open_raster(path) as src:
        return RasterInfo(
            path=str(Path(path).resolve()),
            width=src.width,
            height=src.height,
            count=src.count,
            dtype=src.dtypes[0],
            crs=src.crs.to_wkt() if src.crs else None,
            transform=tuple(src.transform)[:6],
            nodata=src.nodata,
            descriptions=tuple(src.descriptions),
        )


def check_training_rasters(paths: Sequence[str | os.PathLike]) -> list[RasterInfo]:
    """Infos of several training rasters, refusing sets whose bands do not agree."""
    if not paths:
        raise GeoSSLError("No raster was given.", "pass at least one --raster.")
    infos = [raster_info(p) for p in paths]
    counts = {i.count for i in infos}
    if len(counts) > 1:
        listing = ", ".join(f"{Path(i.path).name}: {i.count}" for i in infos)
        raise GeoSSLError(
            f"The training rasters have different band counts ({listing}).",
            "use rasters with the same bands in the same order.",
        )
    for info in infos:
        if info.crs is None:
            raise GeoSSLError(
                f"Raster '{info.path}' has no coordinate reference system.",
                "assign one (QGIS: Raster ▸ Projections ▸ Assign Projection, or gdal_edit.py -a_srs).",
            )
    return infos


def read_window(src: rasterio.io.DatasetReader, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Read ``window`` as float32 (C, h, w) plus a validity mask (h, w).

    The window may extend past the raster: outside pixels come back invalid (boundless read), so
    callers can take fixed-size windows at the edges without special cases. A pixel is valid only
    if every band is valid (nodata, GDAL masks and non-finite values all count as invalid).
    """
    # rasterio serves boundless reads through a VRT, about 3× slower than a plain read (a third of
    # predict's overhead on a 4k² raster), so only windows that pass an edge take that path.
    inside = (window.col_off >= 0 and window.row_off >= 0 and window.col_off + window.width <= src.width
              and window.row_off + window.height <= src.height)
    data = src.read(window=window, boundless=not inside, masked=False, fill_value=0).astype(np.float32, copy=False)
    if inside and all(MaskFlags.all_valid in flags for flags in src.mask_flag_enums):
        valid = np.ones(data.shape[1:], bool)  # no nodata, no mask band: nothing to read
    else:
        valid = src.read_masks(window=window, boundless=not inside).min(axis=0) > 0
    if src.nodata is not None and not np.isnan(src.nodata):
        valid &= ~np.all(data == np.float32(src.nodata), axis=0)
    if data.dtype.kind == "f":
        valid &= np.isfinite(data).all(axis=0)
    if not valid.all():
        data[:, ~valid] = 0.0
    return data, valid


def random_windows(
    width: int, height: int, size: int, n: int, rng: np.random.Generator
) -> Iterator[Window]:
    """``n`` random ``size``×``size`` windows inside a raster (the whole raster if it is smaller)."""
    for _ in range(n):
        x = int(rng.integers(0, max(width - size, 0) + 1))
        y = int(rng.integers(0, max(height - size, 0) + 1))
        yield Window(x, y, min(size, width), min(size, height))


@dataclass
class BandStats:
    """Robust per-band normalisation, stored with every model so inference normalises identically.

    Values are clipped to the [low, high] percentiles (bright outliers such as clouds or specular
    glints would otherwise dominate), then standardised with the mean/std of the clipped values.
    """

    low: list[float]
    high: list[float]
    mean: list[float]
    std: list[float]

    @property
    def count(self) -> int:
        return len(self.mean)

    def normalise(self, data: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """(C, ...) raw values → standardised float32; invalid pixels become 0 (the band mean)."""
        shape = (-1,) + (1,) * (data.ndim - 1)
        low = np.asarray(self.low, np.float32).reshape(shape)
        high = np.asarray(self.high, np.float32).reshape(shape)
        mean = np.asarray(self.mean, np.float32).reshape(shape)
        std = np.asarray(self.std, np.float32).reshape(shape)
        out = (np.clip(data, low, high) - mean) / std
        if valid is not None:
            out[..., ~valid] = 0.0
        return out.astype(np.float32, copy=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BandStats:
        return cls(**{k: [float(v) for v in d[k]] for k in ("low", "high", "mean", "std")})


def compute_band_stats(
    paths: Sequence[str | os.PathLike],
    n_windows: int = 64,
    window: int = 256,
    seed: int = 0,
    percentiles: tuple[float, float] = (2.0, 98.0),
    max_samples: int = 500_000,
) -> BandStats:
    """Percentile/mean/std per band from a sample of windows over all rasters, never the whole raster."""
    rng = np.random.default_rng(seed)
    chunks: list[np.ndarray] = []
    per_raster = max(1, n_windows // len(paths))
    for path in paths:
        with open_raster(path) as src:
            for win in random_windows(src.width, src.height, window, per_raster, rng):
                data, valid = read_window(src, win)
                if valid.any():
                    chunks.append(data[:, valid])
    if not chunks:
        names = ", ".join(Path(p).name for p in paths)
        raise GeoSSLError(
            f"No valid pixel found in {names}: the raster is entirely nodata.",
            "check the nodata value (gdalinfo) or pick another raster.",
        )
    values = np.concatenate(chunks, axis=1)
    if values.shape[1] > max_samples:
        values = values[:, rng.choice(values.shape[1], max_samples, replace=False)]
    low = np.percentile(values, percentiles[0], axis=1)
    high = np.percentile(values, percentiles[1], axis=1)
    clipped = np.clip(values, low[:, None], high[:, None])
    mean = clipped.mean(axis=1)
    std = np.maximum(clipped.std(axis=1), 1e-6)
    return BandStats(low.tolist(), high.tolist(), mean.tolist(), std.tolist())


def extent_window(info: RasterInfo, extent: Sequence[float], extent_crs: str | None = None) -> Window | None:
    """The pixel window of ``info`` covering ``extent`` ([xmin, ymin, xmax, ymax] in ``extent_crs``,
    default the raster's CRS), snapped outwards to whole pixels and clipped to the raster; None
    when the extent misses the raster."""
    from rasterio.warp import transform_bounds
    from rasterio.windows import from_bounds

    bounds = tuple(float(v) for v in extent)
    try:
        other = CRS.from_user_input(extent_crs) if extent_crs else None
    except CRSError as exc:
        raise GeoSSLError(f"The extent's CRS '{extent_crs}' is not a coordinate reference system.",
                          "give an authority code such as EPSG:4326, or leave it out for the raster's CRS.") from exc
    if other is not None and info.crs and other != CRS.from_wkt(info.crs):
        bounds = transform_bounds(extent_crs, info.crs, *bounds, densify_pts=21)
    win = from_bounds(*bounds, transform=info.affine)
    col0, row0 = max(0, int(np.floor(win.col_off + 1e-6))), max(0, int(np.floor(win.row_off + 1e-6)))
    col1 = min(info.width, int(np.ceil(win.col_off + win.width - 1e-6)))
    row1 = min(info.height, int(np.ceil(win.row_off + win.height - 1e-6)))
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def window_info(info: RasterInfo, window: Window) -> RasterInfo:
    """``info`` cut to ``window``: same CRS and resolution, the window's size and origin."""
    from rasterio.windows import transform as window_transform

    return replace(info, width=int(window.width), height=int(window.height),
                   transform=tuple(window_transform(window, info.affine))[:6])


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail before any work if ``path`` cannot be written (missing or read-only folder).

    Permission bits do not tell (``/proc``, a read-only mount, a full disk, a network share say
    "writable" to ``os.access`` and root writes everywhere), so a probe file is created and removed.
    """
    p = Path(path).expanduser()
    folder = p.resolve().parent
    if not folder.is_dir():
        raise GeoSSLError(f"Output folder '{folder}' does not exist.", "create it or choose another output path.")
    if p.is_dir():
        raise GeoSSLError(f"Output '{p}' is a folder.", "give a file name, e.g. classes.tif.")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise GeoSSLError(f"No file can be created in the output folder '{folder}' ({exc.strerror or exc}).",
                          "choose a folder you can write to.") from exc
    os.close(fd)
    Path(probe).unlink(missing_ok=True)
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.resolve().parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except RasterioIOError as exc:  # an OSError without errno: before that clause
        tmp_path.unlink(missing_ok=True)
        # GDAL reports a failed block write without errno ("Write failed", libtiff's "Write error"):
        # on a file we just created, a full disk, quota or file-size limit is what causes it.
        if "write" in f"{exc} {exc.__cause__ or ''}".lower():
            raise disk_full(target, f"GDAL: {exc.__cause__ or exc}") from exc
        raise
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.errno in DISK_FULL_ERRNOS:
            raise disk_full(target, exc.strerror) from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_full(target: str | os.PathLike, reason: str | None = None) -> GeoSSLError:
    """The message for a write that ran out of space: nothing was replaced."""
    name = Path(target).name
    return GeoSSLError(
        f"Not enough disk space to write '{target}' ({reason or 'the file could not be written completely'}); "
        f"nothing was written and an existing '{name}' is unchanged.",
        "free disk space (or raise the quota) or choose an output folder on another disk, then run again.")


def check_written(tmp: Path, target: str | os.PathLike) -> None:
    """Refuse a GeoTIFF that GDAL did not write whole.

    A full disk during writing is only printed by libtiff on stderr: the dataset closes without an
    error and the file is truncated. Its directory must open and every block must lie inside the
    file (a cheap check: offsets only, nothing is decompressed).
    """
    size = tmp.stat().st_size
    try:
        with rasterio.open(tmp) as src:
            for band in src.indexes:
                for (row, col), _ in src.block_windows(band):
                    offset = src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=band)
                    length = src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=band)
                    if offset and length and int(offset) + int(length) > size:
                        raise disk_full(target)
    except RasterioIOError as exc:
        raise disk_full(target) from exc


@contextlib.contextmanager
def geotiff_writer(
    path: str | os.PathLike,
    like: RasterInfo,
    count: int,
    dtype: str,
    nodata: float | None,
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
    descriptions: Sequence[str] | None = None,
    tags: dict[str, str] | None = None,
    blocksize: int = 256,
    cog: bool = False,
    overviews: str = "nearest",
) -> Iterator[rasterio.io.DatasetWriter]:
    """A tiled, deflate-compressed GeoTIFF on ``like``'s grid, written atomically.

    ``cog``: a Cloud Optimized GeoTIFF (overviews resampled by ``overviews``, "nearest" for
    classes, "average" for continuous values), which QGIS and web viewers display at any zoom
    without reading every pixel. GDAL's COG driver only copies, so the raster is written plainly
    first, beside the output, then copied.
    """
    profile = {
        "driver": "GTiff",
        "width": like.width,
        "height": like.height,
        "count": count,
        "dtype": dtype,
        "crs": like.crs,
        "transform": like.affine,
        "nodata": nodata,
        "compress": "deflate",
        "predictor": 2 if np.dtype(dtype).kind in "ui" else 3,
        "BIGTIFF": "IF_SAFER",
    }
    if like.width >= blocksize and like.height >= blocksize:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    with atomic_path(path) as tmp:
        plain = tmp.with_name(tmp.name + ".plain.tif") if cog else tmp
        try:
            with rasterio.open(plain, "w", **profile) as dst:
                if colormap:
                    dst.write_colormap(1, colormap)
                for i, text in enumerate(descriptions or [], start=1):
                    dst.set_band_description(i, text)
                if tags:
                    dst.update_tags(**tags)
                yield dst
            check_written(plain, path)
            if cog:
                rasterio.shutil.copy(plain, tmp, driver="COG", COMPRESS="DEFLATE", PREDICTOR=profile["predictor"],
                                     BLOCKSIZE=blocksize, OVERVIEW_RESAMPLING=overviews.upper(), BIGTIFF="IF_SAFER")
                check_written(tmp, path)
        finally:
            if cog:
                plain.unlink(missing_ok=True)


def pixel_size_m(info: RasterInfo) -> float | None:
    """Ground size of a pixel in metres (mean of x and y), for model metadata; None without a CRS.

    Projected CRSs convert their linear unit; geographic ones measure the centre pixel on the
    ellipsoid (degrees are not a length).
    """
    if not info.crs:
        return None
    crs = CRS.from_wkt(info.crs)
    a, e = abs(info.transform[0]), abs(info.transform[4])
    if crs.is_projected:
        return (a + e) / 2 * float(crs.linear_units_factor[1])
    from pyproj import Geod

    west, south, east, north = info.bounds
    lon, lat = (west + east) / 2, (south + north) / 2
    geod = Geod(ellps="WGS84")  # centimetre-level differences between ellipsoids do not matter here
    dx = geod.inv(lon, lat, lon + a, lat)[2]
    dy = geod.inv(lon, lat, lon, lat + e)[2]
    return (dx + dy) / 2
