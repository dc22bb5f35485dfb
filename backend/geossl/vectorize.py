"""Classified map → one polygon layer (class id, class name, mean confidence, area), memory bounded.

* **Sieve** (optional ``min_area``): regions smaller than the area are merged into a neighbour
  (GDAL's sieve through rasterio) block by block, each block read with a halo of ``N`` pixels
  (``N`` = the minimum size in pixels). A region smaller than ``N`` pixels spans fewer than ``N``
  pixels in each direction, so it lies whole inside core + halo; a larger region that reaches the
  core crosses the halo and shows at least ``N`` pixels. The small regions found are therefore
  exactly the global ones, with memory bounded by the block, not the raster.
* **Polygonize** the finished class raster in one pass of GDAL's polygonize reading the GeoTIFF
  band directly (scanline by scanline): a region that crosses prediction stripes or GeoTIFF
  blocks comes out as one polygon. Memory grows with the polygons, not the pixels.
* **Mean confidence** per polygon: polygons are an exact partition of pixels, so each block of the
  confidence raster is labelled by burning polygon ids (pixel-centre rule, the same pixels that
  made them) and summed with ``bincount``.
* **Simplify** (optional): ``shapely.coverage_simplify`` simplifies shared edges once for both
  neighbours, so simplified polygons neither overlap nor leave gaps.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import rasterio
import shapely
from rasterio import features
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from .classes import ClassTable
from .errors import GeoSSLError
from .raster_io import check_output_path

BLOCK = 1024
LAYER_FIELDS = ("class_id", "class_name", "confidence", "area")


def blocks(width: int, height: int, size: int | None = None) -> Iterator[Window]:
    size = size or BLOCK
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield Window(col, row, min(size, width - col), min(size, height - row))


def min_pixels(min_area: float | None, transform: rasterio.Affine) -> int:
    """Smallest region kept, in pixels (``min_area`` in map units²; 0 = keep everything)."""
    if not min_area:
        return 0
    return max(1, math.ceil(min_area / abs(transform.a * transform.e - transform.b * transform.d) - 1e-9))


@contextlib.contextmanager
def working_copy(classes_path: str | Path, nodata: int, size: int, beside: Path) -> Iterator[Path]:
    """A temporary 2-band GeoTIFF beside ``beside`` (named like the service's partial files, so a killed
    job's leftovers are swept): classes (sieved to ``size`` pixels when > 1) and a validity mask."""
    fd, tmp = tempfile.mkstemp(prefix=f".{beside.name}.", suffix=".partial.tif", dir=beside.resolve().parent)
    os.close(fd)
    path = Path(tmp)
    try:
        with rasterio.open(classes_path) as src:
            profile = {"driver": "GTiff", "width": src.width, "height": src.height, "count": 2, "dtype": "uint8",
                       "crs": src.crs, "transform": src.transform, "tiled": True, "blockxsize": 256,
                       "blockysize": 256, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
            with rasterio.open(path, "w", **profile) as dst:
                halo = size if size > 1 else 0
                for win in blocks(src.width, src.height):
                    big = Window(win.col_off - halo, win.row_off - halo, win.width + 2 * halo, win.height + 2 * halo)
                    data = src.read(1, window=big, boundless=True, fill_value=nodata)
                    valid = data != nodata
                    if halo:
                        data = features.sieve(data, size, mask=valid, connectivity=4)
                    core = (slice(halo, halo + int(win.height)), slice(halo, halo + int(win.width)))
                    dst.write(data[core].astype(np.uint8), 1, window=win)
                    dst.write(np.where(valid[core], 255, 0).astype(np.uint8), 2, window=win)
        yield path
    finally:
        path.unlink(missing_ok=True)


def polygonize(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(polygons, values) of band 1 of ``path`` where band 2 is valid, straight from the GeoTIFF."""
    geoms, values = [], []
    with rasterio.open(path) as src:
        for geom, value in features.shapes(rasterio.band(src, 1), mask=rasterio.band(src, 2), connectivity=4,
                                           transform=src.transform):
            geoms.append(shapely.geometry.shape(geom))
            values.append(int(value))
    return np.asarray(geoms, dtype=object), np.asarray(values, np.int64)


def mean_confidence(geoms: np.ndarray, confidence_path: str | Path) -> np.ndarray:
    """Mean of the confidence raster over each polygon's pixels (NaN where it has none valid)."""
    sums = np.zeros(len(geoms) + 1, np.float64)
    counts = np.zeros(len(geoms) + 1, np.int64)
    tree = shapely.STRtree(geoms)
    with rasterio.open(confidence_path) as src:
        for win in blocks(src.width, src.height):
            tf = window_transform(win, src.transform)
            west, north = tf * (0, 0)
            east, south = tf * (int(win.width), int(win.height))
            hits = tree.query(shapely.box(min(west, east), min(south, north), max(west, east), max(south, north)))
            if len(hits) == 0:
                continue
            ids = features.rasterize(((geoms[i], int(i) + 1) for i in hits), out_shape=(int(win.height),
                                     int(win.width)), transform=tf, fill=0, dtype="int32")
            conf = src.read(1, window=win).astype(np.float64)
            ok = np.isfinite(conf) & (ids > 0)
            sums += np.bincount(ids[ok], weights=conf[ok], minlength=len(sums))
            counts += np.bincount(ids[ok], minlength=len(counts))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts)[1:]


def write_vector_qml(path: str | Path, table: ClassTable, field: str = "class_id") -> None:
    """QGIS style sidecar: polygons categorized by class with the model's colours."""
    cats, syms = [], []
    for i, (name, value, colour) in enumerate(zip(table.names, table.values, table.colors, strict=True)):
        r, g, b = int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)
        cats.append(f'      <category symbol="{i}" value="{value}" label={quoteattr(name)} render="true"/>')
        syms.append(f"""      <symbol type="fill" name="{i}" alpha="1" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <Option type="Map">
            <Option type="QString" name="color" value="{r},{g},{b},255"/>
            <Option type="QString" name="outline_color" value="{r // 2},{g // 2},{b // 2},255"/>
            <Option type="QString" name="outline_width" value="0.2"/>
            <Option type="QString" name="style" value="solid"/>
          </Option>
        </layer>
      </symbol>""")
    qml = f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22" styleCategories="Symbology">
  <renderer-v2 type="categorizedSymbol" attr="{field}" enableorderby="0" forceraster="0" symbollevels="0">
    <categories>
{chr(10).join(cats)}
    </categories>
    <symbols>
{chr(10).join(syms)}
    </symbols>
  </renderer-v2>
  <blendMode>0</blendMode>
  <featureBlendMode>0</featureBlendMode>
</qgis>
"""
    Path(path).write_text(qml, encoding="utf-8")


@contextlib.contextmanager
def _atomic_gpkg(out: Path) -> Iterator[Path]:
    """A temporary ``.gpkg`` name beside ``out`` (GDAL wants the extension), renamed onto it on success."""
    tmp = out.resolve().parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial.gpkg"
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, Path(f"{tmp}-journal"), Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)


def check_vector_output(vector: str | Path, raster_out: str | Path) -> Path:
    """The polygons' path, refused before any work if it or its style would overwrite the map's."""
    v = check_output_path(vector)
    if v.resolve().with_suffix(".qml") == Path(raster_out).resolve().with_suffix(".qml"):
        raise GeoSSLError(f"The polygons '{v.name}' and the map '{Path(raster_out).name}' would share the style "
                          f"file {v.with_suffix('.qml').name}.",
                          f"give the polygons another name, e.g. {Path(raster_out).stem}_polygons.gpkg.")
    return v


def vectorize(classes_path: str | Path, out: str | Path, table: ClassTable, confidence_path: str | Path | None,
              min_area: float | None = None, simplify: float | None = None) -> dict[str, Any]:
    """Write ``out`` (GeoPackage, one polygon layer named after the file) and ``out``.qml."""
    import pyogrio.raw

    out = check_output_path(out)
    with rasterio.open(classes_path) as src:
        crs, transform = src.crs, src.transform
    size = min_pixels(min_area, transform)
    with working_copy(classes_path, table.nodata_value, size, out) as work:
        geoms, values = polygonize(work)
    by_value = {v: i for i, v in enumerate(table.values)}
    unknown = sorted(set(values.tolist()) - set(by_value))
    if unknown:
        raise GeoSSLError(f"'{Path(classes_path).name}' holds values {unknown} that are not classes of the model.",
                          "vectorize a map written by `geossl predict` with this model.")
    conf = mean_confidence(geoms, confidence_path) if confidence_path is not None and len(geoms) else \
        np.full(len(geoms), np.nan)
    if simplify and len(geoms):
        geoms = shapely.coverage_simplify(geoms, simplify, simplify_boundary=True)
    keep = ~shapely.is_empty(geoms)
    geoms, values, conf = geoms[keep], values[keep], conf[keep]
    index = np.array([by_value[v] for v in values.tolist()], np.int64)
    names = np.array([table.names[i] for i in index], dtype=object)
    areas = shapely.area(geoms)
    single = bool(np.all(shapely.get_type_id(geoms) == shapely.GeometryType.POLYGON))
    with _atomic_gpkg(out) as tmp:
        pyogrio.raw.write(str(tmp), geometry=shapely.to_wkb(geoms), driver="GPKG", layer=out.stem,
                          field_data=[values.astype(np.int32), names, conf.astype(np.float64), areas],
                          fields=list(LAYER_FIELDS), crs=crs.to_wkt() if crs else None,
                          geometry_type="Polygon" if single else "MultiPolygon", promote_to_multi=not single)
    qml = out.with_suffix(".qml")
    write_vector_qml(qml, table)
    counts = np.bincount(index, minlength=len(table))
    return {"vector": str(out.resolve()), "vector_style": str(qml.resolve()), "polygons": int(len(geoms)),
            "class_polygons": dict(zip(table.names, counts.tolist(), strict=True)), "min_area_pixels": size}
