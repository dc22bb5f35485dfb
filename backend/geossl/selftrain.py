"""Self-training on the user's own unlabeled pixels: windows the model labels for itself.

A mapper's polygons cover a small part of the imagery; the rest is unlabeled but not useless.
Every epoch after a supervised start, a fresh set of random windows over the training rasters is
labelled by the *teacher* (the moving average of the weights when there is one, else the model
itself): pixels it is confident about (max probability ≥ ``threshold``) become pseudo-labels,
every other pixel is ignored, and pixels under a real polygon keep their real class. Those
windows then fill a share of every batch, strongly augmented (per-band gain/offset/noise), so the
student must reproduce the teacher's confident answers under changes it did not see
(FixMatch / ST++ / LSST in remote sensing: +3 to +11 mIoU over supervised-only at few labels).

Labelling one window costs one forward pass (about a third of a training step's cost per
window), and only the windows of the coming epoch are labelled: no whole-raster prediction, so
the cost does not grow with the raster.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from rasterio.windows import Window
from torch import nn
from torch.utils.data import Dataset

from .classes import IGNORE_INDEX
from .datasets import LabelledTiles, _RasterReaders, geometric_augment, photometric_augment
from .labels import LabelPolygons
from .models import autocast
from .raster_io import BandStats
from .sampling import WindowRef


def pseudo_labels(probs: np.ndarray, threshold: float) -> np.ndarray:
    """(B, K, H, W) probabilities → (B, H, W) uint8 classes where max prob ≥ ``threshold``, else ignore."""
    labels = probs.argmax(axis=1).astype(np.uint8)
    labels[probs.max(axis=1) < threshold] = IGNORE_INDEX
    return labels


class PseudoLabelledTiles(Dataset):
    """Random windows over the training rasters, labelled by a teacher once per epoch."""

    def __init__(self, polys: Sequence[LabelPolygons], stats: BandStats, tile: int, length: int, seed: int,
                 threshold: float, photometric: float) -> None:
        self.polys = list(polys)
        self.readers = _RasterReaders([p.raster for p in self.polys])
        self.stats, self.tile, self.length, self.seed = stats, tile, length, seed
        self.threshold, self.photometric = threshold, photometric
        area = np.array([p.raster.width * p.raster.height for p in self.polys], float)
        self.raster_p = area / area.sum()
        self.refs: list[WindowRef] = []
        self.labels = np.zeros((0, tile, tile), np.uint8)
        self.epoch = 0
        self.coverage = 0.0  # share of pixels of the last refresh that carry a pseudo-label

    def _draw(self, epoch: int) -> list[WindowRef]:
        rng = np.random.default_rng([self.seed, 7919, epoch])
        refs = []
        for r in rng.choice(len(self.polys), self.length, p=self.raster_p):
            info = self.polys[r].raster
            x = int(rng.integers(0, max(info.width - self.tile, 0) + 1))
            y = int(rng.integers(0, max(info.height - self.tile, 0) + 1))
            refs.append(WindowRef(int(r), Window(x, y, self.tile, self.tile)))
        return refs

    @torch.no_grad()
    def refresh(self, teacher: nn.Module, device: torch.device, amp: bool, batch: int, epoch: int) -> None:
        """Draw this epoch's windows and label them with ``teacher`` (eval mode)."""
        self.epoch = epoch
        self.refs = self._draw(epoch)
        was_training = teacher.training
        teacher.eval()
        labels, kept = [], 0
        for b in range(0, len(self.refs), batch):
            xs, truth, valid = [], [], []
            for ref in self.refs[b:b + batch]:
                data, ok = self.readers.read(ref)
                xs.append(self.stats.normalise(data, ok))
                truth.append(self.polys[ref.raster].rasterize(ref.window, ok.shape))
                valid.append(ok)
            x = torch.from_numpy(np.stack(xs)).to(device)
            with autocast(device, amp):
                probs = torch.softmax(teacher(x).float(), dim=1).cpu().numpy()
            pl = pseudo_labels(probs, self.threshold)
            truth_a = np.stack(truth)
            pl = np.where(truth_a != IGNORE_INDEX, truth_a, pl)  # real labels win
            pl[~np.stack(valid)] = IGNORE_INDEX
            kept += int((pl != IGNORE_INDEX).sum())
            labels.append(pl)
        teacher.train(was_training)
        self.labels = np.concatenate(labels) if labels else np.zeros((0, self.tile, self.tile), np.uint8)
        self.coverage = kept / max(self.labels.size, 1)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        data, valid = self.readers.read(self.refs[index])
        x = self.stats.normalise(data, valid)
        y = self.labels[index].copy()
        rng = np.random.default_rng([self.seed, 7919, self.epoch, index])
        x, y = geometric_augment(x, y, rng)
        if self.photometric > 0:
            x = photometric_augment(x, rng, self.photometric)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


class MixedTiles(Dataset):
    """Batches whose first ``n_pseudo`` windows come from the pseudo-labelled pool, the rest labelled.

    Read sequentially (no shuffling) in batches of ``batch``, so the position in the batch is
    ``index % batch``. Returns (x, y, is_pseudo) so the loss can weigh the two parts.
    """

    def __init__(self, labelled: LabelledTiles, pool: PseudoLabelledTiles, batch: int, n_pseudo: int) -> None:
        self.labelled, self.pool, self.batch, self.n_pseudo = labelled, pool, batch, n_pseudo

    def __len__(self) -> int:
        return len(self.labelled)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        slot, row = index % self.batch, index // self.batch
        if slot < self.n_pseudo and len(self.pool):
            x, y = self.pool[(row * self.n_pseudo + slot) % len(self.pool)]
            return x, y, True
        x, y = self.labelled[index]
        return x, y, False
