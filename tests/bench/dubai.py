"""The Dubai aerial tiles as a few-label benchmark: GeoTIFFs, dense references, user-like polygons.

The JPEG/PNG pairs carry no georeference, so each image is written as a GeoTIFF on an *assumed*
grid (EPSG:32640, 0.5 m pixels), every image 100 km east of the previous one so that polygons of
one image never fall on another. Figures from this set must say so.

Few labels are made the way a mapper digitises them: a handful of squares per class, each lying
entirely inside one class of the dense mask, until about ``label_share`` of the labelled pixels is
covered (split equally between classes). Everything else is held out for evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES = {  # mask colour → (value, name); unlabeled #9B9B9B and #000000 map to 0
    (0x3C, 0x10, 0x98): (1, "building"),
    (0x84, 0x29, 0xF6): (2, "land"),
    (0x6E, 0xC1, 0xE4): (3, "road"),
    (0xFE, 0xDD, 0x3A): (4, "vegetation"),
    (0xE2, 0xA9, 0x29): (5, "water"),
}
NAMES = [n for _, n in sorted(CLASSES.values())]
CRS = "EPSG:32640"
PIXEL = 0.5


@dataclass
class Scene:
    image: Path  # GeoTIFF (3 bands, uint8)
    reference: np.ndarray  # (H, W) uint8 class values, 0 = unlabeled
    origin: tuple[float, float]


def mask_to_values(rgb: np.ndarray) -> np.ndarray:
    out = np.zeros(rgb.shape[:2], np.uint8)
    for colour, (value, _) in CLASSES.items():
        out[np.all(rgb == np.array(colour, np.uint8), axis=-1)] = value
    return out


def prepare(src: Path, work: Path, limit: int | None = None) -> list[Scene]:
    """Write every image as a GeoTIFF on its own assumed grid; keep the reference in memory."""
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    work.mkdir(parents=True, exist_ok=True)
    scenes = []
    for i, jpg in enumerate(sorted(src.glob("tile*/images/*.jpg"))[:limit]):
        png = jpg.parent.parent / "masks" / jpg.with_suffix(".png").name
        img = np.asarray(Image.open(jpg).convert("RGB")).transpose(2, 0, 1)
        ref = mask_to_values(np.asarray(Image.open(png).convert("RGB")))
        origin = (200_000.0 + i * 100_000.0, 2_800_000.0)
        out = work / f"{jpg.parent.parent.name}_{jpg.stem}.tif"
        if not out.exists():
            with rasterio.open(out, "w", driver="GTiff", width=img.shape[2], height=img.shape[1], count=3,
                               dtype="uint8", crs=CRS, transform=from_origin(*origin, PIXEL, PIXEL)) as dst:
                dst.write(img)
        scenes.append(Scene(out, ref, origin))
    return scenes


def draw_polygons(scenes: list[Scene], seed: int, label_share: float = 0.01, max_side: int = 64,
                  min_side: int = 6) -> tuple[list, list[str], list[np.ndarray]]:
    """Squares inside single-class areas until ``label_share`` of labelled pixels is covered.

    Returns shapely polygons, their class names, and per scene a boolean mask of the pixels the
    polygons label (left out of evaluation).
    """
    import shapely

    rng = np.random.default_rng(seed)
    total = sum(int((s.reference > 0).sum()) for s in scenes)
    budget = label_share * total / len(NAMES)
    geoms, names = [], []
    used = [np.zeros(s.reference.shape, bool) for s in scenes]
    for value, name in sorted(CLASSES.values()):
        covered, tries = 0, 0
        while covered < budget and tries < 5000:
            tries += 1
            k = int(rng.integers(len(scenes)))
            ref = scenes[k].reference
            rows, cols = np.nonzero(ref == value)
            if rows.size == 0:
                continue
            j = int(rng.integers(rows.size))
            r, c = int(rows[j]), int(cols[j])
            side = max_side
            while side >= min_side:  # the largest square around (r, c) inside this class alone
                r0, c0 = r - side // 2, c - side // 2
                win = ref[max(r0, 0):r0 + side, max(c0, 0):c0 + side]
                if r0 >= 0 and c0 >= 0 and win.shape == (side, side) and (win == value).all() \
                        and not used[k][r0:r0 + side, c0:c0 + side].any():
                    break
                side //= 2
            else:
                continue
            x0, y0 = scenes[k].origin
            geoms.append(shapely.box(x0 + c0 * PIXEL, y0 - (r0 + side) * PIXEL, x0 + (c0 + side) * PIXEL,
                                     y0 - r0 * PIXEL))
            names.append(name)
            used[k][r0:r0 + side, c0:c0 + side] = True
            covered += side * side
    return geoms, names, used


def write_gpkg(path: Path, geoms: list, names: list[str]) -> Path:
    import pyogrio.raw
    import shapely

    path.unlink(missing_ok=True)
    pyogrio.raw.write(str(path), geometry=shapely.to_wkb(np.asarray(geoms, dtype=object)),
                      field_data=[np.asarray(names, dtype=object)], fields=["class"], crs=CRS,
                      geometry_type="Polygon")
    return path


def write_geojson(path: Path, geoms: list, names: list[str]) -> Path:
    """The polygons as GeoJSON with their (projected) CRS named in the ``crs`` member, written with
    ``json`` alone: GDAL reads it, and GeoSSL reads it without pyogrio (the GPU machine's case)."""
    from shapely.geometry import mapping

    crs = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::" + CRS.split(":")[1]}}
    features = [{"type": "Feature", "properties": {"class": name}, "geometry": mapping(g)}
                for g, name in zip(geoms, names, strict=True)]
    path.write_text(json.dumps({"type": "FeatureCollection", "name": path.stem, "crs": crs, "features": features}))
    return path
