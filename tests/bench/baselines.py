"""The classic baseline every bench row is measured against: a pixel Random Forest from the same polygons.

What SCP / dzetsaka users run in QGIS today, so the figure a deep row must beat, on exactly the same
pixels: trained on the pixels of the training polygons, predicted over the whole raster, written as
a GeoSSL map (class table in its tags) and scored by the same ``geossl evaluate`` code path as the
deep rows.

* Multispectral (Sentinel-2): the bands + NDVI per pixel (200 trees, min_samples_leaf 2).
* RGB aerial (Dubai): RGB + local mean and standard deviation of each band at three scales (5, 11,
  21 px), the "simple texture" a dzetsaka user can add with a filter, since RGB values alone cannot
  tell a grey roof from a grey road.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from geossl.classes import IGNORE_INDEX, ClassTable
from geossl.labels import load_label_polygons
from geossl.raster_io import check_training_rasters, geotiff_writer, raster_info, read_window
from rasterio.windows import Window
from scipy import ndimage
from sklearn.ensemble import RandomForestClassifier

TEXTURE_SCALES = (5, 11, 21)


def forest(seed: int, trees: int = 200) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=trees, min_samples_leaf=2, n_jobs=-1, random_state=seed)


def spectral_features(data: np.ndarray, red: int | None, nir: int | None) -> np.ndarray:
    """(C, H, W) raw bands → (H*W, C [+1]) features: the bands, plus NDVI when red/NIR are known (0-based)."""
    feats = [data.reshape(data.shape[0], -1)]
    if red is not None and nir is not None:
        r, n = data[red].astype(np.float64), data[nir].astype(np.float64)
        feats.append(((n - r) / np.maximum(n + r, 1e-6)).reshape(1, -1))
    return np.concatenate(feats).T.astype(np.float32)


def texture_features(data: np.ndarray, scales: Sequence[int] = TEXTURE_SCALES) -> np.ndarray:
    """(C, H, W) → (H*W, C·(1 + 2·len(scales))): each band, and its local mean and std per scale."""
    x = data.astype(np.float32)
    feats = [x]
    for s in scales:
        mean = ndimage.uniform_filter(x, size=(1, s, s), mode="reflect")
        sq = ndimage.uniform_filter(x * x, size=(1, s, s), mode="reflect")
        feats += [mean, np.sqrt(np.maximum(sq - mean * mean, 0))]
    return np.concatenate(feats).reshape(-1, x.shape[1] * x.shape[2]).T


def forest_maps(rasters: Sequence[Path], labels: Path, class_field: str, out_dir: Path, seed: int,
                features, trees: int = 200) -> list[Path]:
    """Train one forest on the pixels of ``labels`` over ``rasters`` and write one GeoSSL map per raster.

    ``features(data) -> (H*W, F)``. Rasters are read whole: the bench rasters are small (≤ 2 Mpx).
    """
    infos = check_training_rasters([str(r) for r in rasters])
    polys, table, _ = load_label_polygons(labels, class_field, infos)
    feats, xs, ys = [], [], []
    for info, p in zip(infos, polys, strict=True):
        with rasterio.open(info.path) as src:
            data, valid = read_window(src, Window(0, 0, src.width, src.height))
        f = features(data)
        y = p.rasterize(Window(0, 0, info.width, info.height)).ravel()
        keep = (y != IGNORE_INDEX) & valid.ravel()
        feats.append((f, valid))
        xs.append(f[keep])
        ys.append(y[keep])
    rf = forest(seed, trees).fit(np.concatenate(xs), np.concatenate(ys))
    outs = []
    for info, (f, valid) in zip(infos, feats, strict=True):
        pred = rf.predict(f).reshape(info.height, info.width).astype(np.int64)
        outs.append(write_map(out_dir / f"rf_{Path(info.path).stem}.tif", info.path, table, pred, valid))
    return outs


def write_map(out: Path, like: str, table: ClassTable, index: np.ndarray, valid: np.ndarray) -> Path:
    """Model indices (H, W) → a classified GeoTIFF with the class table ``geossl evaluate`` reads."""
    info = raster_info(like)
    lut = np.array(table.values, np.uint8)
    values = np.where(valid, lut[np.clip(index, 0, len(lut) - 1)], table.nodata_value).astype(np.uint8)
    with geotiff_writer(out, info, 1, "uint8", table.nodata_value, colormap=table.colormap(),
                        descriptions=["class"], tags={"GEOSSL_CLASSES": table.to_json()}) as dst:
        dst.write(values[None])
    return out


def band_index(descriptions: Sequence[str | None], name: str) -> int | None:
    """0-based index of the band described as ``name`` (e.g. 'B04'), None when no band says so."""
    for i, d in enumerate(descriptions):
        if d and d.strip().upper() == name.upper():
            return i
    return None
