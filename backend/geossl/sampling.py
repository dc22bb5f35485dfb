"""Where to take training windows from: labelled-biased, random-valid and validation windows.

Every draw takes an explicit ``numpy.random.Generator`` so a run is reproducible from its seed
and any window can be re-drawn from ``(seed, epoch, index)`` in whichever worker process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from rasterio.transform import rowcol
from rasterio.windows import Window

from .labels import LabelPolygons


@dataclass(frozen=True)
class WindowRef:
    """A window in one of several rasters."""

    raster: int
    window: Window


def _window_around(col: float, row: float, tile: int, width: int, height: int, rng: np.random.Generator) -> Window:
    """A ``tile`` window holding pixel (col, row) somewhere in its central half, kept inside the
    raster when the raster is large enough (smaller rasters get a boundless, padded window)."""
    x0 = int(col) - int(rng.integers(tile // 4, 3 * tile // 4 + 1))
    y0 = int(row) - int(rng.integers(tile // 4, 3 * tile // 4 + 1))
    if width >= tile:
        x0 = min(max(x0, 0), width - tile)
    if height >= tile:
        y0 = min(max(y0, 0), height - tile)
    return Window(x0, y0, tile, tile)


def _point_in(geom: shapely.Geometry, rng: np.random.Generator, tries: int = 64) -> tuple[float, float]:
    """A uniform random point in ``geom`` (rejection sampling in its bounding box)."""
    x0, y0, x1, y1 = geom.bounds
    xs = rng.uniform(x0, x1, tries)
    ys = rng.uniform(y0, y1, tries)
    inside = np.flatnonzero(shapely.contains_xy(geom, xs, ys))
    if inside.size:
        return float(xs[inside[0]]), float(ys[inside[0]])
    p = geom.representative_point()
    return p.x, p.y


class LabelledWindowSampler:
    """Windows biased to contain labelled pixels, balanced across classes.

    A class is drawn with probability ∝ (its labelled pixels)^(1 − ``balance``): ``balance`` 1 draws
    every class equally often (rare classes are seen as often as common ones), 0 in proportion to
    the labelled area. Then one of its polygons in proportion to its labelled pixels, then a random
    point in it that the window must contain.
    """

    def __init__(self, polys: Sequence[LabelPolygons], tile: int, balance: float = 1.0) -> None:
        self.polys = list(polys)
        self.tile = tile
        self.entries = [(r, i) for r, p in enumerate(self.polys) for i in range(len(p.geoms))]
        self.classes = np.array([self.polys[r].class_index[i] for r, i in self.entries])
        self.weights = np.array([self.polys[r].pixel_count[i] for r, i in self.entries], float)
        self.present = np.unique(self.classes)
        area = np.array([self.weights[self.classes == c].sum() for c in self.present])
        p = area ** (1.0 - balance)
        self.class_p = p / p.sum()
        self.balance = balance

    def sample(self, rng: np.random.Generator) -> WindowRef:
        c = rng.choice(self.present) if self.balance == 1.0 else rng.choice(self.present, p=self.class_p)
        members = np.flatnonzero(self.classes == c)
        w = self.weights[members]
        r, i = self.entries[int(rng.choice(members, p=w / w.sum()))]
        poly = self.polys[r]
        x, y = _point_in(poly.geoms[i], rng)
        row, col = rowcol(poly.raster.affine, x, y)
        return WindowRef(r, _window_around(col, row, self.tile, poly.raster.width, poly.raster.height, rng))


def validation_windows(polys: Sequence[LabelPolygons], tile: int, seed: int) -> list[WindowRef]:
    """One fixed window per validation polygon (centred on it), so validation is the same every epoch."""
    rng = np.random.default_rng(seed)
    refs = []
    for r, p in enumerate(polys):
        for geom in p.geoms:
            pt = geom.representative_point()
            row, col = rowcol(p.raster.affine, pt.x, pt.y)
            refs.append(WindowRef(r, _window_around(col, row, tile, p.raster.width, p.raster.height, rng)))
    return refs

