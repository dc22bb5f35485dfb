"""Where to label next: rank square windows by how unsure the model is, spread them out, vary the classes.

Pure numpy maths, no raster I/O (``suggest_run`` feeds it). A raster's class probabilities arrive
block by block and are summed into a coarse grid of ``cell``×``cell`` pixel cells (per cell: eligible
pixels, summed uncertainty, summed margin, summed class probabilities), so memory grows with the
raster area / cell², never with the raster times the classes. Candidate windows are every
``m``×``m`` block of cells (sliding by one cell, box sums on a summed-area table); a window is a
candidate only if *every* pixel is eligible (valid data, not under an existing polygon), so a
suggestion never lands on nodata or already-labelled ground.

Selection is greedy: take the most uncertain window, drop candidates that would overlap it or lie
closer than ``spacing`` (a person's next polygons should teach the model about different places),
and damp the scores of windows predicted as the same class (``class_decay``), so one confusing
class cannot take every slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Measure = Literal["margin", "entropy"]


def top2_margin(prob: np.ndarray) -> np.ndarray:
    """(K, ...) probabilities → p(best) − p(second best): 0 = a coin toss between two classes."""
    part = np.partition(prob, prob.shape[0] - 2, axis=0)
    return (part[-1] - part[-2]).astype(np.float32)


def normalised_entropy(prob: np.ndarray) -> np.ndarray:
    """(K, ...) probabilities → entropy / log K in [0, 1]: 1 = no idea among all classes."""
    p = np.clip(prob, 1e-12, 1.0)
    return (-(p * np.log(p)).sum(axis=0) / np.log(prob.shape[0])).astype(np.float32)


def uncertainty(prob: np.ndarray, measure: Measure = "margin") -> np.ndarray:
    """Per-pixel uncertainty in [0, 1], higher = less sure: 1 − margin, or normalised entropy."""
    return 1.0 - top2_margin(prob) if measure == "margin" else normalised_entropy(prob)


@dataclass
class CellSums:
    """Per-cell sums over a ``cell``×``cell`` grid laid on a raster of ``height``×``width`` pixels."""

    cell: int
    eligible: np.ndarray  # (R, C) eligible pixels
    uncertainty: np.ndarray  # (R, C) sum over eligible pixels
    margin: np.ndarray  # (R, C) sum over eligible pixels
    prob: np.ndarray  # (K, R, C) sum over eligible pixels

    @classmethod
    def empty(cls, height: int, width: int, cell: int, classes: int) -> CellSums:
        rows, cols = -(-height // cell), -(-width // cell)
        return cls(cell, np.zeros((rows, cols), np.int64), np.zeros((rows, cols)), np.zeros((rows, cols)),
                   np.zeros((classes, rows, cols)))

    def add(self, row0: int, col0: int, prob: np.ndarray, eligible: np.ndarray, measure: Measure = "margin") -> None:
        """Add a block of probabilities (K, h, w) whose top-left pixel is (row0, col0)."""
        h, w = eligible.shape
        rr, cc = np.nonzero(eligible)
        if rr.size == 0:
            return
        shape = self.eligible.shape
        idx = ((rr + row0) // self.cell) * shape[1] + (cc + col0) // self.cell
        p = prob[:, rr, cc]
        n = shape[0] * shape[1]
        self.eligible += np.bincount(idx, minlength=n).reshape(shape)
        self.uncertainty += np.bincount(idx, uncertainty(p, measure), minlength=n).reshape(shape)
        self.margin += np.bincount(idx, top2_margin(p), minlength=n).reshape(shape)
        for k in range(p.shape[0]):
            self.prob[k] += np.bincount(idx, p[k], minlength=n).reshape(shape)


def box_sums(a: np.ndarray, m: int) -> np.ndarray:
    """Sums of every m×m block of the last two axes (sliding by one): (..., R, C) → (..., R−m+1, C−m+1)."""
    sat = np.zeros(a.shape[:-2] + (a.shape[-2] + 1, a.shape[-1] + 1), np.float64)
    sat[..., 1:, 1:] = a.cumsum(-2).cumsum(-1)
    return sat[..., m:, m:] - sat[..., :-m, m:] - sat[..., m:, :-m] + sat[..., :-m, :-m]


@dataclass
class Candidates:
    """Windows of ``size`` pixels free of nodata and labels, with what the model thinks of them."""

    size: int
    row: np.ndarray  # top-left pixel row
    col: np.ndarray  # top-left pixel column
    score: np.ndarray  # mean uncertainty, higher = less sure
    margin: np.ndarray  # mean per-pixel top-2 margin
    top1: np.ndarray  # class index with the highest mean probability
    top2: np.ndarray  # runner-up class
    p1: np.ndarray  # their mean probabilities
    p2: np.ndarray

    def __len__(self) -> int:
        return len(self.score)

    @property
    def centres(self) -> np.ndarray:
        """(N, 2) window centres as (row, col) in pixels."""
        return np.column_stack([self.row + self.size / 2, self.col + self.size / 2])


def window_candidates(sums: CellSums, cells: int) -> Candidates:
    """Every window of ``cells``×``cells`` cells whose pixels are all eligible (cells outside the
    raster have fewer pixels than cell², so windows reaching past an edge drop out too)."""
    size = cells * sums.cell
    area = float(size * size)
    if cells > min(sums.eligible.shape):
        return _no_candidates(size)
    full = box_sums(sums.eligible, cells) >= area - 0.5
    rows, cols = np.nonzero(full)
    if rows.size == 0:
        return _no_candidates(size)
    unc = box_sums(sums.uncertainty, cells)[rows, cols] / area
    mar = box_sums(sums.margin, cells)[rows, cols] / area
    mean_prob = box_sums(sums.prob, cells)[:, rows, cols] / area  # (K, N)
    order = np.argsort(-mean_prob, axis=0, kind="stable")
    top1, top2 = order[0], order[1]
    n = np.arange(rows.size)
    return Candidates(size, rows * sums.cell, cols * sums.cell, unc.astype(np.float32), mar.astype(np.float32),
                      top1, top2, mean_prob[top1, n].astype(np.float32), mean_prob[top2, n].astype(np.float32))


def _no_candidates(size: int) -> Candidates:
    i, f = np.zeros(0, np.int64), np.zeros(0, np.float32)
    return Candidates(size, i, i, f, f, i, i, f, f)


def select(centres: np.ndarray, score: np.ndarray, klass: np.ndarray, k: int, size: int,
           spacing: float | None = None, class_decay: float = 0.5) -> list[int]:
    """Greedy ranked pick of ``k`` windows (indices, best first).

    Each pick removes candidates whose ``size``-pixel square would overlap it (Chebyshev distance of
    centres < ``size``) or whose centre lies within ``spacing`` pixels (Euclidean; default 2 × size),
    and multiplies the scores of remaining candidates of the same predicted class ``klass`` by
    ``class_decay`` (1 = no class diversity). Fewer than ``k`` come back when space runs out.
    """
    spacing = 2.0 * size if spacing is None else float(spacing)
    eff = score.astype(np.float64).copy()
    free = np.ones(len(score), bool)
    picked: list[int] = []
    while len(picked) < k and free.any():
        i = int(np.flatnonzero(free)[np.argmax(eff[free])])
        picked.append(i)
        d = centres - centres[i]
        free &= (np.abs(d).max(axis=1) >= size) & (np.hypot(d[:, 0], d[:, 1]) >= spacing)
        eff[klass == klass[i]] *= class_decay
    return picked


def reason(names: tuple[str, ...] | list[str], top1: int, top2: int, margin: float) -> str:
    """Why a window is suggested, in the user's class names: "water vs road, margin 0.04"."""
    return f"{names[top1]} vs {names[top2]}, margin {margin:.2f}"
