"""Streaming tiled prediction over a whole raster, with overlap blending and bounded memory.

The raster is cut into a *global* grid of overlapping tiles (edge tiles are shifted inside the
raster, never zero-padded). Each tile's class probabilities are weighted by a window that is 1 in
the middle and tapers over the overlap, summed, and divided by the summed weights: neighbouring
tiles agree smoothly, so there are no seams. Tiles are processed row by row inside vertical
stripes of at most ``stripe`` pixels; a row of output is written as soon as no later tile can
touch it. A tile belongs to one stripe only: the overlap its stripe's last tile adds to the next
stripe is kept for every row (classes × height × overlap). Memory is therefore bounded by tile
size × stripe width × classes plus that strip, never by the raster's area. This module knows
nothing about torch: it calls a ``predict`` function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from .raster_io import BandStats, read_window
from .schemas import BATCH_PIXELS, PREDICT_OVERLAP, PREDICT_TILE, PREDICT_TILE_MIN

Predict = Callable[[np.ndarray], np.ndarray]  # (B, C, t, t) float32 → (B, K, t, t) probabilities
STRIPE = 4096  # columns of output held at once by predict_stripes (memory ∝ tile × stripe)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering ``length`` with ``tile``-long tiles: regular steps of ``stride``,
    the last one shifted back so it ends exactly at the edge (no padding)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """(tile, tile) weights: raised-cosine ramps over ``overlap`` pixels at each side, 1 inside.

    Never zero, so a pixel covered by a single tile (raster edges) keeps its prediction.
    """
    ramp = np.ones(tile, np.float32)
    if overlap > 0:
        i = np.arange(overlap, dtype=np.float32)
        up = 0.5 - 0.5 * np.cos(np.pi * (i + 0.5) / overlap)
        ramp[:overlap] = np.minimum(ramp[:overlap], up)
        ramp[tile - overlap:] = np.minimum(ramp[tile - overlap:], up[::-1])
    return np.outer(ramp, ramp)


def stripe_columns(width: int, tile: int, stride: int, stripe: int) -> list[list[int]]:
    """Tile x offsets of each vertical stripe: consecutive tiles spanning at most ``stripe``
    pixels (at least one tile). Every tile belongs to exactly one stripe, so none is computed
    twice; what a stripe's last tile adds to the next stripe's columns (the overlap) is carried
    over by :func:`predict_stripes`. The whole plan is a few integers: nothing is per pixel."""
    xs = tile_starts(width, tile, stride)
    stripe = max(stripe, tile)
    stripes: list[list[int]] = []
    a = 0
    while a < len(xs):
        b = a
        while b + 1 < len(xs) and xs[b + 1] + tile - xs[a] <= stripe:
            b += 1
        # The last tile is shifted back to the raster's edge: never start a stripe with it alone,
        # or the stripe before would carry over up to a whole tile instead of the overlap.
        if b + 2 == len(xs) and xs[-1] - xs[-2] < stride:
            b += 1
        stripes.append(xs[a:b + 1])
        a = b + 1
    return stripes


def stripe_bounds(width: int, tile: int, stride: int, stripe: int) -> list[tuple[int, int]]:
    """Output columns ``[start, end)`` of each stripe of :func:`stripe_columns`: from its first
    tile to the next stripe's first tile (the raster's edge for the last)."""
    return _bounds(stripe_columns(width, tile, stride, stripe), width)


def _bounds(columns: list[list[int]], width: int) -> list[tuple[int, int]]:
    starts = [xs[0] for xs in columns]
    return list(zip(starts, [*starts[1:], width], strict=True))


def batch_sizes(height: int, width: int, tile: int, overlap: int, batch_size: int, stripe: int = STRIPE) -> list[int]:
    """Sizes of the model batches :func:`predict_stripes` will make over a raster without nodata,
    in order (for benchmarks that replay exactly the same forward passes in memory)."""
    stride = max(1, tile - overlap)
    rows = len(tile_starts(height, tile, stride))
    sizes = []
    for xs in stripe_columns(width, tile, stride, stripe):
        row = [min(batch_size, len(xs) - b) for b in range(0, len(xs), batch_size)]
        sizes += row * rows
    return sizes



@dataclass(frozen=True)
class TilePlan:
    """How a raster is cut for prediction: tile side, overlap and tiles per forward pass."""

    tile: int
    overlap: int
    batch: int


def computed_pixels(height: int, width: int, tile: int, overlap: int, stripe: int = STRIPE) -> int:
    """Pixels the model computes to predict a ``height`` × ``width`` raster (overlaps counted twice)."""
    stride = max(1, tile - overlap)
    columns = sum(len(xs) for xs in stripe_columns(width, tile, stride, stripe))
    return len(tile_starts(height, tile, stride)) * columns * tile * tile


def tile_plan(train_tile: int, height: int, width: int, device: str = "cpu", tile: int | None = None,
              overlap: int | None = None, batch: int | None = None) -> TilePlan:
    """The tiles that predict a ``height`` × ``width`` raster fastest, for what is left unset.

    A fully convolutional model predicts larger tiles than it was trained on, and larger tiles cost
    less per pixel (fewer overlapping pixels computed twice, bigger convolutions). The default tile
    is the one between :data:`PREDICT_TILE_MIN` and :data:`PREDICT_TILE` that computes the fewest
    pixels over this raster (:func:`computed_pixels`: the last tile of a row is shifted inside the
    raster, so a tile that divides it evenly wastes least); never smaller than the training tile,
    never larger than the raster's shorter side (a thin raster is not padded to a square). The
    overlap is a fixed few pixels (a quarter of a tile under 64 px); a batch holds about
    :data:`BATCH_PIXELS` pixels.
    """
    if tile is None:
        fit = -(-min(height, width) // 16) * 16
        hi = max(train_tile, min(PREDICT_TILE, fit))
        lo = max(train_tile, min(PREDICT_TILE_MIN, hi))
        tile = min(range(hi, lo - 1, -16), key=lambda t: computed_pixels(
            height, width, t, overlap if overlap is not None else min(PREDICT_OVERLAP, t // 4)))
    if overlap is None:
        overlap = min(PREDICT_OVERLAP, tile // 4)
    if batch is None:
        batch = max(1, BATCH_PIXELS.get(device, BATCH_PIXELS["cpu"]) // (tile * tile))
    return TilePlan(tile, overlap, batch)


def row_shares(height: int, parts: int, block: int = 256) -> list[tuple[int, int]]:
    """``parts`` contiguous row ranges covering ``[0, height)``, cut at multiples of ``block``
    (each process of a distributed prediction writes whole GeoTIFF blocks), as even as that allows.
    Ranges can be empty (``r0 == r1``) when the raster has fewer blocks than parts."""
    blocks = math.ceil(height / block)
    edges = [min(height, round(k * blocks / parts) * block) for k in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))

@dataclass
class TileOutput:
    """Finished rows of one stripe: class index (or -1 for nodata) and confidence."""

    window: Window
    classes: np.ndarray  # int16 (h, w), -1 = nodata
    confidence: np.ndarray  # float32 (h, w)
    probabilities: np.ndarray | None = None  # float32 (K, h, w), blended; when asked for and any pixel is valid


def predict_stripes(
    src,
    stats: BandStats,
    predict: Predict,
    tile: int,
    overlap: int,
    batch_size: int,
    stripe: int = STRIPE,
    on_tiles: Callable[[int, int], None] | None = None,
    window: Window | None = None,
    probabilities: bool = False,
    rows: tuple[int, int] | None = None,
):
    """Yield ``TileOutput`` blocks covering the raster ``src`` (an open rasterio dataset), or only
    its ``window``; output windows are then relative to that window. ``probabilities=True`` also
    yields each block's blended class probabilities (uncertainty maps, e.g. ``suggest``).

    ``rows=(r0, r1)``: only output rows ``r0 ≤ row < r1`` (one process's share of a distributed
    prediction). Every tile touching them is computed, in the same batches and summed in the same
    order as for the whole raster, so the share is identical, bit for bit, to those rows of it.

    ``on_tiles(done, total)`` is called after each batch for progress reporting.
    """
    window = window or Window(0, 0, src.width, src.height)
    wx, wy = int(window.col_off), int(window.row_off)
    height, width = int(window.height), int(window.width)
    stride = max(1, tile - overlap)
    ys = tile_starts(height, tile, stride)
    r0, r1 = rows or (0, height)
    # the tile rows that touch [r0, r1); a row of output is final once the next tile row starts
    tile_rows = [i for i, y in enumerate(ys) if y < r1 and y + tile > r0]
    first = tile_rows[0] if tile_rows else 0
    weight = blend_window(tile, min(overlap, tile // 2))
    stripe_tiles = stripe_columns(width, tile, stride, stripe)
    bounds = _bounds(stripe_tiles, width)  # output columns of each stripe
    total = sum(len(t) for t in stripe_tiles) * len(tile_rows)
    if not tile_rows:
        return
    done = 0
    span0 = ys[first]  # carried rows are indexed from the first tile row of this share
    span = ys[tile_rows[-1]] + tile - span0

    def extent(xs: list[int]) -> tuple[int, int]:
        return xs[0], (min(xs[-1] + tile, width) if width >= tile else width)

    def load(ex0: int, ex1: int, ext_w: int, y: int) -> tuple[np.ndarray, np.ndarray]:
        rows = min(tile, height - y)
        data, valid = read_window(src, Window(wx + ex0, wy + y, ex1 - ex0, rows))
        x_norm = stats.normalise(data, valid)
        if x_norm.shape[1:] != (tile, ext_w):  # raster smaller than a tile: mirror, not zeros
            x_norm = np.pad(x_norm, ((0, 0), (0, tile - rows), (0, ext_w - (ex1 - ex0))), mode="symmetric")
        return x_norm, valid

    def rows_ahead() -> Iterator[tuple[int, int, int, int, np.ndarray, np.ndarray]]:
        """(stripe, ex0, ext_w, row index, normalised row of tiles, validity), reading the next row
        in a thread while the model works on this one (GDAL and numpy release the GIL). Only this
        thread touches ``src``."""
        plan = []
        for s, xs in enumerate(stripe_tiles):
            ex0, ex1 = extent(xs)
            plan += [(s, ex0, ex1, max(ex1 - ex0, tile), i) for i in tile_rows]
        with ThreadPoolExecutor(1, thread_name_prefix="geossl-read") as pool:
            pending = pool.submit(load, *plan[0][1:4], ys[plan[0][4]])
            for k, (s, ex0, _ex1, ext_w, i) in enumerate(plan):
                x_norm, valid = pending.result()
                if k + 1 < len(plan):
                    pending = pool.submit(load, *plan[k + 1][1:4], ys[plan[k + 1][4]])
                yield s, ex0, ext_w, i, x_norm, valid

    # What a stripe's last tiles add to the next stripe's first columns (the overlap), for every
    # row: summed weighted probabilities (K, span, c) — None until a tile was predicted — and weights.
    acc = wsum = carry_in = carry_out = None
    for s, ex0, ext_w, i, x_norm, valid in rows_ahead():
        (sx0, sx1), xs, y = bounds[s], stripe_tiles[s], ys[i]
        c_out = extent(xs)[1] - sx1 if s + 1 < len(stripe_tiles) else 0
        if i == first:  # a new stripe
            acc, carry_in = None, carry_out
            carry_out = [None, np.zeros((span, c_out), np.float32)] if c_out > 0 else None
            wsum = np.zeros((tile, ext_w), np.float32)
        # Tiles without a single valid pixel are not sent to the model: their pixels are nodata in
        # the output whatever it says (sparse rasters, e.g. a scene's corners, cost nothing).
        for x in xs:
            wsum[:, x - ex0:x - ex0 + tile] += weight
        useful = [x for x in xs if valid[:, x - ex0:x - ex0 + tile].any()]
        done += len(xs) - len(useful)
        for b in range(0, len(useful), batch_size):
            group = useful[b:b + batch_size]
            tiles = np.stack([x_norm[:, :, x - ex0:x - ex0 + tile] for x in group])
            probs = predict(tiles)
            if acc is None:
                acc = np.zeros((probs.shape[1], tile, ext_w), np.float32)
            probs *= weight  # in place: no (K, t, t) temporary per tile
            for x, p in zip(group, probs, strict=True):
                acc[:, :, x - ex0:x - ex0 + tile] += p
            done += len(group)
            if on_tiles:
                on_tiles(done, total)
        next_y = ys[i + 1] if i + 1 < len(ys) else height
        d = next_y - y  # rows [y, next_y) are final
        rows_c = slice(y - span0, y - span0 + d)
        if carry_in is not None:  # the previous stripe's share of these rows
            c_probs, c_weights = carry_in
            c = c_weights.shape[1]
            wsum[:d, :c] += c_weights[rows_c]
            if c_probs is not None:
                if acc is None:
                    acc = np.zeros((c_probs.shape[0], tile, ext_w), np.float32)
                acc[:, :d, :c] += c_probs[:, rows_c]
        if carry_out is not None:
            cols = slice(sx1 - ex0, sx1 - ex0 + c_out)
            carry_out[1][rows_c] = wsum[:d, cols]
            if acc is not None:
                if carry_out[0] is None:
                    carry_out[0] = np.zeros((acc.shape[0], span, c_out), np.float32)
                carry_out[0][:, rows_c] = acc[:, :d, cols]
        if acc is None:  # nothing valid yet in this stripe: every finished row is nodata
            lo, hi = max(y, r0), min(next_y, r1)
            if hi > lo:
                yield TileOutput(Window(sx0, lo, sx1 - sx0, hi - lo), np.full((hi - lo, sx1 - sx0), -1, np.int16),
                                 np.full((hi - lo, sx1 - sx0), np.nan, np.float32))
            wsum[: tile - d] = wsum[d:].copy()
            wsum[tile - d:] = 0.0
            if on_tiles:
                on_tiles(done, total)
            continue
        # The summed weights are the same for every class of a pixel, so the argmax needs no division
        # and only the winning class is divided (K× fewer divisions than normalising every class).
        part, w = acc[:, :d, sx0 - ex0:sx1 - ex0], wsum[:d, sx0 - ex0:sx1 - ex0]
        classes = part.argmax(axis=0).astype(np.int16)
        conf = part.max(axis=0) / w
        prob = part / w[None] if probabilities else None
        ok = valid[:d, sx0 - ex0:sx1 - ex0]
        classes[~ok] = -1
        conf[~ok] = np.nan
        lo, hi = max(y, r0) - y, min(next_y, r1) - y  # rows of this block inside the share
        if hi > lo:
            yield TileOutput(Window(sx0, y + lo, sx1 - sx0, hi - lo), classes[lo:hi], conf[lo:hi],
                             None if prob is None else prob[:, lo:hi])
        acc[:, : tile - d] = acc[:, d:].copy()
        acc[:, tile - d:] = 0.0
        wsum[: tile - d] = wsum[d:].copy()
        wsum[tile - d:] = 0.0


class RowBuffer:
    """Collects finished rows of a stripe and writes them in block-aligned chunks.

    Writing whole 256-row blocks keeps compressed tiled GeoTIFFs compact (GDAL never has to
    re-compress a half-written block).
    """

    def __init__(self, write: Callable[[Window, np.ndarray, np.ndarray], None], block: int = 256) -> None:
        self.write = write
        self.block = block
        self.window: Window | None = None
        self.classes: list[np.ndarray] = []
        self.confidence: list[np.ndarray] = []

    def add(self, out: TileOutput) -> None:
        if self.window is not None and self.window.col_off != out.window.col_off:
            self.flush()
        if self.window is None:
            self.window = out.window
        self.classes.append(out.classes)
        self.confidence.append(out.confidence)
        rows = sum(c.shape[0] for c in self.classes)
        row0 = int(self.window.row_off)
        cut = (row0 + rows) // self.block * self.block - row0
        if cut > 0:
            self._emit(cut)

    def flush(self) -> None:
        if self.classes:
            self._emit(sum(c.shape[0] for c in self.classes))
        self.window, self.classes, self.confidence = None, [], []

    def _emit(self, rows: int) -> None:
        classes = np.concatenate(self.classes)
        conf = np.concatenate(self.confidence)
        w = self.window
        self.write(Window(w.col_off, w.row_off, w.width, rows), classes[:rows], conf[:rows])
        self.classes, self.confidence = [classes[rows:]], [conf[rows:]]
        self.window = Window(w.col_off, w.row_off + rows, w.width, 0)
