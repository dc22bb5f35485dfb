"""Training labels from polygons: vector file → class table → labels in a raster's pixel grid.

Pixels outside every polygon are *unlabeled* (``IGNORE_INDEX``) and never count as background:
a mapper draws a few polygons, not a complete map. Polygons in another CRS are reprojected to
the raster's CRS, never refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import shapely
from pyproj import CRS, Transformer
from rasterio import features
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform

from .classes import IGNORE_INDEX, ClassTable
from .errors import GeoSSLError
from .raster_io import RasterInfo

POLYGONAL = ("Polygon", "MultiPolygon")


@dataclass
class VectorLabels:
    """Polygons with their class field values, as read (in the file's CRS)."""

    path: str
    geoms: np.ndarray  # shapely geometries
    values: list[object]
    crs: str | None
    warnings: list[str] = field(default_factory=list)


@dataclass
class LabelPolygons:
    """Polygons of one raster, in that raster's CRS and clipped to it, with model class indices."""

    raster: RasterInfo
    geoms: np.ndarray
    class_index: np.ndarray  # int, model index per polygon
    pixel_count: np.ndarray  # labelled pixels per polygon inside the raster
    tree: shapely.STRtree = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.tree = shapely.STRtree(self.geoms)

    def subset(self, keep: np.ndarray) -> LabelPolygons:
        return LabelPolygons(self.raster, self.geoms[keep], self.class_index[keep], self.pixel_count[keep])

    def rasterize(self, window: Window, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Class indices of ``window`` (uint8, ``IGNORE_INDEX`` where no polygon). Later polygons win
        where polygons overlap."""
        h, w = shape or (int(window.height), int(window.width))
        out = np.full((h, w), IGNORE_INDEX, np.uint8)
        win = Window(window.col_off, window.row_off, w, h)
        tf = window_transform(win, self.raster.affine)
        hits = np.sort(self.tree.query(shapely.box(*window_bounds(win, self.raster.affine))))
        if hits.size:
            shapes = zip(self.geoms[hits], self.class_index[hits].tolist(), strict=True)
            features.rasterize(shapes, out=out, transform=tf, dtype=np.uint8)
        return out


def read_vector(path: str | os.PathLike, class_field: str, layer: str | int | None = None) -> VectorLabels:
    """Read polygons and a class field with pyogrio (GeoPackage, Shapefile, GeoJSON, ...)."""
    p = Path(path)
    if not p.exists():
        raise GeoSSLError(f"Label file '{p}' does not exist.", "check the path of the polygon layer.")
    try:
        info = pyogrio.read_info(p, layer=layer)
    except Exception as exc:  # pyogrio raises several DataSource/DataLayer errors
        raise GeoSSLError(f"Label file '{p}' cannot be read: {exc}.", "give a GeoPackage, Shapefile or GeoJSON.") from exc
    fields = [str(f) for f in info["fields"]]
    if class_field not in fields:
        raise GeoSSLError(
            f"Label file '{p.name}' has no field '{class_field}' (fields: {', '.join(fields) or 'none'}).",
            "pass the name of the field that holds the class with --class-field.",
        )
    if info["features"] == 0:
        raise GeoSSLError(f"Label file '{p.name}' has no features.", "draw at least one polygon per class.")
    meta, _fids, wkb, field_data = pyogrio.raw.read(p, layer=layer, columns=[class_field])
    geoms = shapely.from_wkb(wkb)
    values = field_data[0].tolist()
    warnings: list[str] = []
    keep = np.array(
        [g is not None and not g.is_empty and g.geom_type in POLYGONAL and v is not None and v == v
         for g, v in zip(geoms, values, strict=True)],
        dtype=bool,
    )
    n_null = sum(v is None or v != v for v in values)
    if n_null:
        warnings.append(f"{n_null} feature(s) with an empty '{class_field}' were skipped.")
    n_other = int((~keep).sum()) - n_null
    if n_other > 0:
        warnings.append(f"{n_other} feature(s) without a polygon geometry were skipped.")
    if not keep.any():
        raise GeoSSLError(
            f"Label file '{p.name}' has no polygon with a value in '{class_field}'.",
            "draw polygons and fill in their class field.",
        )
    geoms = shapely.make_valid(geoms[keep])
    values = [v for v, k in zip(values, keep, strict=True) if k]
    return VectorLabels(str(p), geoms, values, meta.get("crs"), warnings)


def value_names(values: Sequence[object]) -> list[str]:
    """Class names as ``ClassTable.from_field_values`` writes them (integer codes without '.0')."""
    return [str(int(v)) if isinstance(v, int | float) and float(v).is_integer() else str(v) for v in values]


def to_raster_polygons(vec: VectorLabels, raster: RasterInfo, table: ClassTable) -> LabelPolygons:
    """Reproject ``vec`` to ``raster``'s CRS, clip to it and count labelled pixels per polygon."""
    geoms = vec.geoms
    if vec.crs is None:
        vec.warnings.append(f"'{Path(vec.path).name}' has no CRS; assumed to be the raster's CRS.")
    elif raster.crs is not None and not CRS.from_user_input(vec.crs).equals(CRS.from_wkt(raster.crs)):
        transformer = Transformer.from_crs(vec.crs, CRS.from_wkt(raster.crs), always_xy=True)
        geoms = shapely.transform(geoms, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))
    names = value_names(vec.values)
    unknown = sorted(set(names) - set(table.names))
    if unknown:
        raise GeoSSLError(
            f"Classes {', '.join(unknown)} are not among the model's classes ({', '.join(table.names)}).",
            "use the class names the model was trained with.",
        )
    index = np.array([table.index_of(n) for n in names], dtype=np.int64)
    west, south, east, north = raster.bounds
    inside = shapely.intersects(geoms, shapely.box(west, south, east, north))
    counts = np.zeros(len(geoms), np.int64)
    for i in np.flatnonzero(inside):
        counts[i] = _pixel_count(geoms[i], raster)
    keep = counts > 0
    return LabelPolygons(raster, geoms[keep], index[keep], counts[keep])


def _pixel_count(geom: shapely.Geometry, raster: RasterInfo) -> int:
    """Pixels of ``raster`` whose centre falls in ``geom`` (rasterized within its bounding box)."""
    win = from_bounds(*geom.bounds, transform=raster.affine).round_offsets().round_lengths()
    win = win.intersection(Window(0, 0, raster.width, raster.height)) if _overlaps(win, raster) else None
    if win is None or win.width < 1 or win.height < 1:
        return 0
    mask = features.geometry_mask([geom], (int(win.height), int(win.width)),
                                  window_transform(win, raster.affine), invert=True)
    return int(mask.sum())


def _overlaps(win: Window, raster: RasterInfo) -> bool:
    return (win.col_off < raster.width and win.row_off < raster.height
            and win.col_off + win.width > 0 and win.row_off + win.height > 0)


def load_label_polygons(
    path: str | os.PathLike,
    class_field: str,
    rasters: Sequence[RasterInfo],
    table: ClassTable | None = None,
    colours: Mapping[str, str] | None = None,
    layer: str | int | None = None,
) -> tuple[list[LabelPolygons], ClassTable, list[str]]:
    """Everything fine-tuning needs from the polygon layer, checked against the rasters.

    Returns the polygons per raster, the class table (built from the field unless given) and
    warnings worth showing the user.
    """
    vec = read_vector(path, class_field, layer)
    table = table or ClassTable.from_field_values(vec.values, colours)
    per_raster = [to_raster_polygons(vec, r, table) for r in rasters]
    if not any(len(p.geoms) for p in per_raster):
        raise GeoSSLError(
            f"No polygon of '{Path(path).name}' overlaps the raster(s) "
            f"({', '.join(Path(r.path).name for r in rasters)}).",
            "draw the polygons over the imagery (check both layers' CRS in QGIS).",
        )
    pixels = np.zeros(len(table), np.int64)
    for p in per_raster:
        np.add.at(pixels, p.class_index, p.pixel_count)
    empty = [table.names[i] for i in np.flatnonzero(pixels == 0)]
    if empty:
        raise GeoSSLError(
            f"Class(es) {', '.join(empty)} have no labelled pixel inside the raster(s) "
            "(polygons outside the imagery or smaller than a pixel).",
            "draw at least one polygon of each class over the imagery, or remove the class.",
        )
    return per_raster, table, vec.warnings


def split_polygons(
    polys: Sequence[LabelPolygons], val_fraction: float, seed: int
) -> tuple[list[LabelPolygons], list[LabelPolygons]]:
    """Hold out whole polygons per class for validation (never pixels of a training polygon).

    A class with a single polygon stays entirely in training: it cannot be validated.
    """
    rng = np.random.default_rng(seed)
    classes = np.concatenate([p.class_index for p in polys])
    owner = np.concatenate([np.full(len(p.geoms), i) for i, p in enumerate(polys)])
    is_val = np.zeros(len(classes), bool)
    if val_fraction > 0:
        for c in np.unique(classes):
            members = np.flatnonzero(classes == c)
            n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
            if n_val > 0:
                is_val[rng.choice(members, n_val, replace=False)] = True
    train = [p.subset(~is_val[owner == i]) for i, p in enumerate(polys)]
    val = [p.subset(is_val[owner == i]) for i, p in enumerate(polys)]
    return train, val
