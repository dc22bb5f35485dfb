"""PyTorch datasets that read training windows from the user's rasters on demand.

Windows are read when asked for (rasterio windowed reads), never the whole raster, and each
worker process opens its own file handles. Item ``i`` of epoch ``e`` is drawn from the generator
seeded by ``(seed, e, i)``: a run is reproducible whatever the number of loader workers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch.utils.data import Dataset

from .classes import IGNORE_INDEX
from .errors import GeoSSLError
from .labels import LabelPolygons
from .paired import PairedReaders
from .raster_io import BandStats, RasterInfo, open_raster, read_window
from .sampling import LabelledWindowSampler, WindowRef


class _RasterReaders:
    """Lazily opened rasterio handles, dropped on pickling so each worker opens its own."""

    def __init__(self, rasters: Sequence[RasterInfo]) -> None:
        self.rasters = list(rasters)
        self._open: dict[int, rasterio.io.DatasetReader] = {}

    def read(self, ref: WindowRef) -> tuple[np.ndarray, np.ndarray]:
        if ref.raster not in self._open:
            self._open[ref.raster] = open_raster(self.rasters[ref.raster].path)
        return read_window(self._open[ref.raster], ref.window)

    def __getstate__(self) -> dict:
        return {"rasters": self.rasters, "_open": {}}


def geometric_augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and 90° rotations applied identically to image (C,H,W) and labels (H,W).

    Only transforms that keep pixels on the grid: labels are never interpolated, so no class id is
    ever invented at a border.
    """
    k = int(rng.integers(4))
    if k:
        x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
    if rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def photometric_augment(x: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Per-band gain and offset plus pixel noise on standardised data (units of the band's std).

    Imagery of another date, sun angle or sensor shifts each band's level and contrast; a model
    that has seen such shifts maps unseen polygons by their pattern, not by the exact values of the
    few it was shown. Nothing is clipped (standardised values have no fixed range).
    """
    c = x.shape[0]
    gain = 1.0 + strength * rng.standard_normal((c, 1, 1)).astype(np.float32)
    offset = strength * rng.standard_normal((c, 1, 1)).astype(np.float32)
    noise = (0.5 * strength) * rng.standard_normal(x.shape).astype(np.float32)
    return x * gain + offset + noise


class LabelledTiles(Dataset):
    """Random labelled-biased windows with their labels, normalised and augmented."""

    def __init__(
        self,
        polys: Sequence[LabelPolygons],
        stats: BandStats,
        tile: int,
        length: int,
        seed: int,
        augment: bool = True,
        balance: float = 1.0,
        photometric: float = 0.0,
    ) -> None:
        self.polys = list(polys)
        self.readers = _RasterReaders([p.raster for p in self.polys])
        self.sampler = LabelledWindowSampler(self.polys, tile, balance)
        self.photometric = photometric
        self.stats = stats
        self.length = length
        self.seed = seed
        self.augment = augment
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        for _ in range(10):  # a window that holds labelled, valid pixels
            ref = self.sampler.sample(rng)
            x, y = load_labelled_window(self.readers, self.polys, self.stats, ref)
            if (y != IGNORE_INDEX).any():
                break
        if self.augment:
            x, y = geometric_augment(x, y, rng)
            if self.photometric > 0:
                x = photometric_augment(x, rng, self.photometric)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


class WindowTiles(Dataset):
    """Fixed windows (validation): same pixels every epoch, no augmentation."""

    def __init__(self, polys: Sequence[LabelPolygons], stats: BandStats, refs: Sequence[WindowRef]) -> None:
        self.polys = list(polys)
        self.readers = _RasterReaders([p.raster for p in self.polys])
        self.stats = stats
        self.refs = list(refs)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = load_labelled_window(self.readers, self.polys, self.stats, self.refs[index])
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


def load_labelled_window(
    readers: _RasterReaders, polys: Sequence[LabelPolygons], stats: BandStats, ref: WindowRef
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised image and labels of one window; nodata pixels are unlabeled."""
    data, valid = readers.read(ref)
    x = stats.normalise(data, valid)
    y = polys[ref.raster].rasterize(ref.window, valid.shape)
    y[~valid] = IGNORE_INDEX
    return x, y


def labelled_pixels(polys: Sequence[LabelPolygons], stats: BandStats, features, halo: int, max_pixels: int,
                    seed: int, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Features (P, F) and class indices (P,) of labelled pixels, for a per-pixel classifier.

    The rasters are read in ``block``² windows (plus ``halo`` pixels each side for neighbourhood
    features) that hold polygons, never whole; when the polygons label more than ``max_pixels``
    pixels, each block keeps a random share, so memory stays bounded by the cap. ``features``:
    (C, h, w) normalised window → (F, h, w).
    """
    rng = np.random.default_rng([seed, 4099])
    total = sum(int(p.pixel_count.sum()) for p in polys)
    keep = min(1.0, max_pixels / max(total, 1))
    readers = _RasterReaders([p.raster for p in polys])
    xs, ys = [], []
    for r, p in enumerate(polys):
        if not len(p.geoms):
            continue
        info = p.raster
        for y0 in range(0, info.height, block):
            for x0 in range(0, info.width, block):
                win = Window(x0, y0, min(block, info.width - x0), min(block, info.height - y0))
                labels = p.rasterize(win)
                labelled = labels != IGNORE_INDEX
                if not labelled.any():
                    continue
                outer = Window(x0 - halo, y0 - halo, win.width + 2 * halo, win.height + 2 * halo)
                data, valid = readers.read(WindowRef(r, outer))
                feats = features(stats.normalise(data, valid))[:, halo:halo + int(win.height),
                                                               halo:halo + int(win.width)]
                ok = labelled & valid[halo:halo + int(win.height), halo:halo + int(win.width)]
                if keep < 1.0:
                    ok &= rng.random(ok.shape) < keep
                xs.append(feats[:, ok].T)
                ys.append(labels[ok])
    if not xs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


# --- unlabeled windows for self-supervised pretraining --------------------------------------------

MAX_NODATA = 0.3  # windows with a larger share of nodata pixels are redrawn
MAX_OVERLAP = 0.0  # largest share of a window that another window of the same batch may cover
TRIES = 16  # candidates per window before settling for the best one


class ValidityGrid:
    """Valid-pixel counts on a coarse grid over one raster, with summed-area tables.

    Built once, in one pass over the raster read chunk by chunk (under a second for a Sentinel-2
    tile) with the same validity rule as training reads, so the sampler can put windows where the
    data are (torchgeo #1330, #2029: mostly-nodata chips
    reached training) and estimate any window's nodata share without touching the file. Cells
    are at least ``tile // 16`` pixels and at most 1024 cells a side, so the grid stays small.
    """

    def __init__(self, info: RasterInfo, tile: int, chunk: int = 1024, region: Window | None = None) -> None:
        self.width, self.height = info.width, info.height
        self.cell = max(1, tile // 16, -(-max(info.width, info.height) // 1024))
        c = self.cell
        gh, gw = -(-info.height // c), -(-info.width // c)
        counts = np.zeros((gh, gw), np.float64)
        step = c * max(1, chunk // c)
        with open_raster(info.path) as src:
            for y0 in range(0, info.height, step):
                for x0 in range(0, info.width, step):
                    win = Window(x0, y0, min(step, info.width - x0), min(step, info.height - y0))
                    _, valid = read_window(src, win)
                    h, w = valid.shape
                    padded = np.zeros((-(-h // c) * c, -(-w // c) * c), bool)
                    padded[:h, :w] = valid
                    blocks = padded.reshape(padded.shape[0] // c, c, padded.shape[1] // c, c).sum(axis=(1, 3))
                    counts[y0 // c : y0 // c + blocks.shape[0], x0 // c : x0 // c + blocks.shape[1]] = blocks
        if region is not None:  # only cells inside the user's extent count as places to sample
            keep = np.zeros_like(counts, bool)
            r0, c0 = int(region.row_off) // c, int(region.col_off) // c
            r1, c1 = -(-int(region.row_off + region.height) // c), -(-int(region.col_off + region.width) // c)
            keep[r0:r1, c0:c1] = True
            counts[~keep] = 0
        rows = np.minimum(c, info.height - np.arange(gh) * c)
        cols = np.minimum(c, info.width - np.arange(gw) * c)
        self.counts = counts
        self._valid = _summed_area(counts)
        self._area = _summed_area(np.outer(rows, cols).astype(np.float64))

    def valid_share(self, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
        """Estimated share of valid pixels in ``size`` windows at columns ``x``, rows ``y``.

        Counted over the part of each window inside the raster (a raster smaller than the tile is
        padded, not refused), at cell resolution: the cells a window touches stand for it.
        """
        c = self.cell
        cx0 = np.clip(x, 0, self.width) // c
        cy0 = np.clip(y, 0, self.height) // c
        cx1 = -(-np.clip(x + size, 0, self.width) // c)
        cy1 = -(-np.clip(y + size, 0, self.height) // c)

        def box(sat: np.ndarray) -> np.ndarray:
            return sat[cy1, cx1] - sat[cy0, cx1] - sat[cy1, cx0] + sat[cy0, cx0]

        return box(self._valid) / np.maximum(box(self._area), 1.0)


def _summed_area(a: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0] + 1, a.shape[1] + 1), np.float64)
    out[1:, 1:] = a.cumsum(axis=0).cumsum(axis=1)
    return out


class UnlabeledTiles(Dataset):
    """Whole batches of random unlabeled windows for contrastive pretraining; item ``i`` = step ``i``.

    An item is a batch, not a window, because the windows of one batch must be drawn together:
    SimCLR/GLCNet push every other window of the batch away as a negative, so two windows that
    overlap on the same raster would be pushed apart while showing the same ground (torchgeo
    #3548). Each batch is planned at once: window centres are drawn over the valid pixels of all
    rasters (so rasters weigh by their valid area), and a candidate is kept only if its nodata
    share is at most ``max_nodata`` and no earlier window of the batch covers more than
    ``max_overlap`` of it; after ``tries`` candidates the best one is kept (least overlap, then
    most data), which happens only when the rasters are too small for the batch. The plan needs
    no I/O (:class:`ValidityGrid`), so under DistributedDataParallel every process plans the same
    *global* batch from ``(seed, epoch, index)`` and reads only its own slice: negatives gathered
    across processes are spaced too, and the data do not depend on the number of loader workers.
    A window whose real nodata share exceeds the estimate is redrawn after reading (bounded).

    Returns ``(x, info)``: x (batch / world_size, C, tile, tile) normalised float32 (nodata → 0),
    info float32 [nodata share of the slice, largest overlap of two windows in the global batch].
    """

    def __init__(
        self,
        rasters: Sequence[RasterInfo],
        stats: BandStats,
        tile: int,
        batch: int,
        length: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        max_nodata: float = MAX_NODATA,
        max_overlap: float = MAX_OVERLAP,
        tries: int = TRIES,
        regions: Sequence[Window | None] | None = None,
        pairs: Sequence[RasterInfo] | None = None,
    ) -> None:
        if batch % world_size:
            raise ValueError(f"batch {batch} is not a multiple of the {world_size} processes")
        self.rasters = list(rasters)
        # With co-registered pairs (RS-BYOL), each window stacks the raster's and its pair's bands.
        self.readers = PairedReaders(self.rasters, pairs) if pairs else _RasterReaders(self.rasters)
        regions = regions or [None] * len(self.rasters)
        self.grids = [ValidityGrid(r, tile, region=w) for r, w in zip(self.rasters, regions, strict=True)]
        cells = np.concatenate([g.counts.ravel() for g in self.grids])
        if cells.sum() == 0:
            raise GeoSSLError("The rasters hold no valid pixel (everything is nodata).",
                              "check the nodata value (gdalinfo) or pick other rasters.")
        self._cdf = np.cumsum(cells)
        self._offsets = np.cumsum([0] + [g.counts.size for g in self.grids])
        self.stats = stats
        self.tile = tile
        self.batch = batch
        self.length = length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.max_nodata = max_nodata
        self.max_overlap = max_overlap
        self.tries = tries
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def _candidates(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` windows (raster, x, y) centred on random valid pixels, kept inside large rasters."""
        flat = np.searchsorted(self._cdf, rng.random(n) * self._cdf[-1], side="right")
        flat = np.minimum(flat, self._cdf.size - 1)
        raster = np.searchsorted(self._offsets, flat, side="right") - 1
        xs, ys = np.empty(n, np.int64), np.empty(n, np.int64)
        jitter = rng.random((n, 2))
        for k, r in enumerate(raster):
            g = self.grids[r]
            cy, cx = divmod(int(flat[k] - self._offsets[r]), g.counts.shape[1])
            col = min(cx * g.cell + jitter[k, 0] * g.cell, g.width - 1)
            row = min(cy * g.cell + jitter[k, 1] * g.cell, g.height - 1)
            xs[k] = _place(col, self.tile, g.width)
            ys[k] = _place(row, self.tile, g.height)
        return raster, xs, ys

    def _overlap(self, placed: np.ndarray, raster: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Largest share of each candidate covered by one window of ``placed`` (rows raster, x, y)."""
        if placed.size == 0:
            return np.zeros(len(xs))
        t = self.tile
        dx = np.maximum(t - np.abs(xs[:, None] - placed[None, :, 1]), 0)
        dy = np.maximum(t - np.abs(ys[:, None] - placed[None, :, 2]), 0)
        share = dx * dy / (t * t) * (raster[:, None] == placed[None, :, 0])
        return share.max(axis=1)

    def _choose(self, rng: np.random.Generator, placed: np.ndarray) -> tuple[np.ndarray, float]:
        """One window (raster, x, y) for a batch that already holds ``placed``, and its overlap."""
        raster, xs, ys = self._candidates(rng, self.tries)
        share = np.array([self.grids[r].valid_share(x, y, self.tile) for r, x, y in zip(raster, xs, ys, strict=True)])
        overlap = self._overlap(placed, raster, xs, ys)
        enough = share >= 1 - self.max_nodata
        good = np.flatnonzero(enough & (overlap <= self.max_overlap))
        k = good[0] if good.size else np.lexsort((-share, overlap, ~enough))[0]
        return np.array([raster[k], xs[k], ys[k]]), float(overlap[k])

    def plan(self, index: int) -> tuple[list[WindowRef], float]:
        """The global batch ``index`` (all processes) and its largest pairwise overlap."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        placed = np.empty((0, 3), np.int64)
        worst = 0.0
        for _ in range(self.batch):
            choice, overlap = self._choose(rng, placed)
            placed = np.vstack((placed, choice))
            worst = max(worst, overlap)
        t = self.tile
        return [WindowRef(int(r), Window(int(x), int(y), t, t)) for r, x, y in placed], worst

    def _read(self, ref: WindowRef) -> tuple[np.ndarray, float]:
        """Normalised window and its real nodata share (over the part inside the raster)."""
        data, valid = self.readers.read(ref)
        info = self.rasters[ref.raster]
        w = ref.window
        inside = (min(w.col_off + w.width, info.width) - max(w.col_off, 0)) * \
                 (min(w.row_off + w.height, info.height) - max(w.row_off, 0))
        return self.stats.normalise(data, valid), 1.0 - valid.sum() / max(inside, 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        refs, worst = self.plan(index)
        per = self.batch // self.world_size
        mine = range(self.rank * per, (self.rank + 1) * per)
        others = np.array([[r.raster, r.window.col_off, r.window.row_off] for r in refs])
        images, nodata = [], []
        for slot in mine:
            x, missing = self._read(refs[slot])
            if missing > self.max_nodata:  # the grid estimate was optimistic: redraw, bounded
                rng = np.random.default_rng([self.seed, self.epoch, index, slot])
                rest = np.delete(others, slot, axis=0)
                for _ in range(self.tries):
                    choice, _ = self._choose(rng, rest)
                    ref = WindowRef(int(choice[0]), Window(int(choice[1]), int(choice[2]), self.tile, self.tile))
                    x2, missing2 = self._read(ref)
                    if missing2 < missing:
                        x, missing = x2, missing2
                    if missing <= self.max_nodata:
                        break
            images.append(x)
            nodata.append(missing)
        info = torch.tensor([float(np.mean(nodata)), worst], dtype=torch.float32)
        return torch.from_numpy(np.stack(images)), info


def _place(centre: float, tile: int, size: int) -> int:
    """Offset of a ``tile`` window centred on ``centre``, inside ``size`` (centred if it cannot fit)."""
    if size <= tile:
        return (size - tile) // 2
    return int(min(max(round(centre - tile / 2), 0), size - tile))
