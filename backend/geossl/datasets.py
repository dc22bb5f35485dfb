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
from torch.utils.data import Dataset

from .classes import IGNORE_INDEX
from .labels import LabelPolygons
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
    ) -> None:
        self.polys = list(polys)
        self.readers = _RasterReaders([p.raster for p in self.polys])
        self.sampler = LabelledWindowSampler(self.polys, tile)
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
