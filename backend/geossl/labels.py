"""Training labels from polygons: vector file → class table → labels in a raster's pixel grid.

Pixels outside every polygon are *unlabeled* (``IGNORE_INDEX``) and never count as background:
a mapper draws a few polygons, not a complete map. Polygons in another CRS are reprojected to
the raster's CRS, never refused.

Polygon files are read with pyogrio (GDAL) where it is installed; without it (e.g. a GPU machine
given only the wheels it needs), GeoJSON is still read, with ``json`` + shapely, into the same
result, and any other format is refused with the action to take.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from rasterio import features
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform
from shapely.geometry import shape

from .classes import IGNORE_INDEX, ClassTable
from .errors import GeoSSLError
from .raster_io import RasterInfo

POLYGONAL = ("Polygon", "MultiPolygon")
GEOJSON_SUFFIXES = (".geojson", ".json")


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
    """Read polygons and a class field with pyogrio (GeoPackage, Shapefile, GeoJSON, ...); without
    pyogrio, GeoJSON only (the same result: ``_GeoJSONLayer``)."""
    p = Path(path)
    if not p.exists():
        raise GeoSSLError(f"Label file '{p}' does not exist.", "check the path of the polygon layer.")
    ogr = _pyogrio()
    if ogr is None:
        source = _GeoJSONLayer(p, layer)
        fields, n_features = source.fields, len(source.features)
    else:
        try:
            info = ogr.read_info(p, layer=layer)
        except Exception as exc:  # pyogrio raises several DataSource/DataLayer errors
            raise GeoSSLError(f"Label file '{p}' cannot be read: {exc}.",
                              "give a GeoPackage, Shapefile or GeoJSON.") from exc
        fields, n_features = [str(f) for f in info["fields"]], info["features"]
    if class_field not in fields:
        raise GeoSSLError(
            f"Label file '{p.name}' has no field '{class_field}' (fields: {', '.join(fields) or 'none'}).",
            "pass the name of the field that holds the class with --class-field.",
        )
    if n_features == 0:
        raise GeoSSLError(f"Label file '{p.name}' has no features.", "draw at least one polygon per class.")
    if ogr is None:
        geoms, values, crs = source.geometries(), source.values(class_field), source.crs()
    else:
        meta, _fids, wkb, field_data = ogr.raw.read(p, layer=layer, columns=[class_field])
        geoms, values, crs = shapely.from_wkb(wkb), field_data[0].tolist(), meta.get("crs")
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
    return VectorLabels(str(p), geoms, values, crs, warnings)


def _pyogrio():
    """The pyogrio module, or None where it is not installed."""
    try:
        import pyogrio
        import pyogrio.raw  # noqa: F401  (read_vector uses pyogrio.raw.read)
    except ImportError:
        return None
    return pyogrio


class _GeoJSONLayer:
    """A GeoJSON file read without GDAL, into what pyogrio's reader gives for it: one layer (named
    after the file or its ``name`` member), fields in order of appearance with OGR's field types
    (integers with a null become floats with NaN, a field with any text becomes text), the CRS from
    the ``crs`` member or EPSG:4326 (RFC 7946)."""

    def __init__(self, path: Path, layer: str | int | None) -> None:
        self.path = path
        if path.suffix.lower() not in GEOJSON_SUFFIXES:
            raise GeoSSLError(
                f"Label file '{path.name}' cannot be read: pyogrio, which GeoSSL reads "
                f"{path.suffix or 'such'} files with, is not installed.",
                "install pyogrio, or give the polygons as GeoJSON (.geojson).",
            )
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise self._error(f"it is not valid JSON ({exc})") from exc
        kind = doc.get("type") if isinstance(doc, dict) else None
        if kind == "Feature":
            features = [doc]
        elif kind == "FeatureCollection" and isinstance(doc.get("features"), list):
            features = doc["features"]
        else:
            raise self._error("it is not a GeoJSON FeatureCollection")
        if not all(isinstance(f, dict) for f in features):
            raise self._error("one of its features is not a JSON object")
        name = doc.get("name") if isinstance(doc.get("name"), str) else path.stem
        if layer not in (None, 0, name):
            raise GeoSSLError(f"Label file '{path.name}' has no layer '{layer}' (a GeoJSON file holds one "
                              f"layer, '{name}').", "leave the layer out.")
        self.doc, self.features = doc, features
        self.props = [f.get("properties") if isinstance(f.get("properties"), dict) else {} for f in features]
        self.fields = list(dict.fromkeys(k for p in self.props for k in p))

    def _error(self, why: str, action: str | None = None) -> GeoSSLError:
        return GeoSSLError(f"Label file '{self.path}' cannot be read: {why}.",
                           action or "give a GeoJSON FeatureCollection of polygons (or install pyogrio to read "
                                     "GeoPackage and Shapefile).")

    def geometries(self) -> np.ndarray:
        out = np.empty(len(self.features), dtype=object)
        for i, f in enumerate(self.features):
            g = f.get("geometry")
            try:
                out[i] = None if g is None else shape(g)
            except Exception as exc:  # shapely raises several errors for malformed geometries
                raise self._error(f"feature {i + 1} has a geometry that cannot be read ({exc})") from exc
        return out

    def values(self, field_name: str) -> list[object]:
        raw = [p.get(field_name) for p in self.props]
        given = [v for v in raw if v is not None]
        if any(isinstance(v, list | dict) for v in given):
            raise self._error(f"field '{field_name}' holds lists or objects, not class names or codes",
                              f"give each polygon's class in '{field_name}' as text or an integer code.")
        if any(isinstance(v, str) for v in given):  # OGR: a String field, numbers written as JSON text
            return [None if v is None else v if isinstance(v, str) else _json_text(v) for v in raw]
        if not given or (len(given) == len(raw) and all(isinstance(v, bool) for v in given)):
            return raw  # all null (a String field) or all boolean
        if any(isinstance(v, float) for v in given) or len(given) < len(raw):  # Real, or Integer with nulls
            return [float("nan") if v is None else float(v) for v in raw]
        return [int(v) for v in raw]

    def crs(self) -> str:
        member = self.doc.get("crs")
        if member is None:
            return "EPSG:4326"  # RFC 7946: longitude/latitude on WGS 84
        props = member.get("properties") if isinstance(member, dict) and member.get("type") == "name" else None
        name = props.get("name") if isinstance(props, dict) else None
        if not isinstance(name, str):
            raise self._error("its 'crs' member is not a named CRS ({\"type\": \"name\", ...})")
        try:
            crs = CRS.from_user_input(name)
        except CRSError as exc:
            raise self._error(f"its CRS '{name}' is not known ({exc})") from exc
        authority = crs.to_authority()
        if authority in (("OGC", "CRS84"), ("OGC", "84")):
            return "EPSG:4326"  # as GDAL reports it (longitude/latitude order)
        return ":".join(authority) if authority else crs.to_wkt()


def _json_text(v: object) -> str:
    """A JSON number or boolean as OGR's GeoJSON reader turns it into text (json-c's formatting)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        text = f"{v:.17g}"
        return text if any(c in text for c in ".eni") else text + ".0"
    return str(v)


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
