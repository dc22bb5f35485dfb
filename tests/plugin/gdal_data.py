"""Tiny test inputs written with GDAL/OGR from QGIS's own Python (no backend packages needed).

The same scene as tests/data.py: UTM 33N, 10 m pixels, the left half dark and the right half
bright, and two polygons per class inside the halves, so any working pipeline separates them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr

EPSG = 32633
ORIGIN = (330000.0, 5822040.0)
PIXEL = 10.0


def _srs() -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    return srs


def two_class_raster(path: Path, size: int = 64, bands: int = 3, seed: int = 0) -> Path:
    """A ``size``×``size`` uint16 GeoTIFF: columns < size/2 around 200, the others around 800."""
    rng = np.random.default_rng(seed)
    base = np.where(np.arange(size)[None, :] < size // 2, 200.0, 800.0)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), size, size, bands, gdal.GDT_UInt16)
    ds.SetGeoTransform((ORIGIN[0], PIXEL, 0.0, ORIGIN[1], 0.0, -PIXEL))
    ds.SetProjection(_srs().ExportToWkt())
    for b in range(bands):
        data = (np.broadcast_to(base, (size, size)) + rng.normal(0, 30, (size, size))).clip(1, None)
        ds.GetRasterBand(b + 1).WriteArray(data.astype(np.uint16))
    ds = None
    return path


def _box(col0: float, row0: float, col1: float, row1: float) -> ogr.Geometry:
    x0, y0 = ORIGIN
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for c, r in ((col0, row0), (col1, row0), (col1, row1), (col0, row1), (col0, row0)):
        ring.AddPoint_2D(x0 + c * PIXEL, y0 - r * PIXEL)
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    return polygon


def class_polygons(path: Path, size: int = 64, field: str = "class",
                   values: tuple[str, str] = ("dark", "bright"), layer: str = "polygons") -> Path:
    """A GeoPackage with 4 polygons, two per class, inside the halves of ``two_class_raster``."""
    q = size // 4
    boxes = [(4, 4, q, size // 2 - 4), (4, size // 2 + 4, q, size - 4),
             (size - q, 4, size - 4, size // 2 - 4), (size - q, size // 2 + 4, size - 4, size - 4)]
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    lyr = ds.CreateLayer(layer, _srs(), ogr.wkbPolygon)
    lyr.CreateField(ogr.FieldDefn(field, ogr.OFTString))
    lyr.CreateField(ogr.FieldDefn("code", ogr.OFTInteger))
    for i, box in enumerate(boxes):
        feature = ogr.Feature(lyr.GetLayerDefn())
        feature.SetField(field, values[0] if i < 2 else values[1])
        feature.SetField("code", 1 if i < 2 else 2)
        feature.SetGeometry(_box(*box))
        lyr.CreateFeature(feature)
    ds = None
    return path
