"""Where to label next: rank square windows by what a mapper would gain there, spread them out, vary the classes.

Pure numpy maths, no raster I/O (``suggest_run`` feeds it). A raster's class probabilities arrive
block by block and are summed into a coarse grid of ``cell``×``cell`` pixel cells (per cell: eligible
pixels, summed uncertainty, summed margin, summed class probabilities, and per class the pixels
predicted as it and their summed uncertainty), so memory grows with the raster area / cell² times
the classes, never with the raster's pixels. Candidate windows are every ``m``×``m`` block of cells
(sliding by one cell, box sums on a summed-area table); a window is a candidate only if *every*
pixel is eligible (valid data, not under an existing polygon), so a suggestion never lands on
nodata or already-labelled ground.

Scoring (``score``): a mapper given a square draws one class there, the one that covers most of it,
and only where it is. ``"uncertainty"`` ranks by the mean uncertainty of the square, which favours
class edges and mixed ground, where that polygon is small. ``"drawable"`` ranks by the uncertainty
the polygon would actually cover: with ŷ the model's map and c* its most frequent class in the
window W of N pixels, score = Σ_{x∈W, ŷ(x)=c*} u(x) / N = (drawable share) × (mean uncertainty
there). It equals the old score on a window the model sees as one class, and halves it on one split
between two; ``drawable_px`` = #{x∈W: ŷ(x)=c*} is the area the mapper is expected to draw.

Selection is greedy: take the best window, drop candidates that would overlap it or lie closer than
``spacing`` (a person's next polygons should teach the model about different places), and damp the
scores of windows of the same class (``class_decay``), so one confusing class cannot take every slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Measure = Literal["margin", "entropy"]
Score = Literal["drawable", "uncertainty"]


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
    predicted: np.ndarray  # (K, R, C) eligible pixels whose most likely class is k (int32: ≤ cell² each)
    predicted_uncertainty: np.ndarray  # (K, R, C) their summed uncertainty (float32; summed in float64)

    @classmethod
    def empty(cls, height: int, width: int, cell: int, classes: int) -> CellSums:
        rows, cols = -(-height // cell), -(-width // cell)
        return cls(cell, np.zeros((rows, cols), np.int64), np.zeros((rows, cols)), np.zeros((rows, cols)),
                   np.zeros((classes, rows, cols)), np.zeros((classes, rows, cols), np.int32),
                   np.zeros((classes, rows, cols), np.float32))

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
        unc = uncertainty(p, measure)
        self.eligible += np.bincount(idx, minlength=n).reshape(shape)
        self.uncertainty += np.bincount(idx, unc, minlength=n).reshape(shape)
        self.margin += np.bincount(idx, top2_margin(p), minlength=n).reshape(shape)
        for k in range(p.shape[0]):
            self.prob[k] += np.bincount(idx, p[k], minlength=n).reshape(shape)
        by_class = p.argmax(axis=0) * n + idx  # one bincount over (class, cell) pairs
        kshape = self.predicted.shape
        self.predicted += np.bincount(by_class, minlength=kshape[0] * n).reshape(kshape).astype(np.int32)
        self.predicted_uncertainty += np.bincount(by_class, unc, minlength=kshape[0] * n).reshape(kshape)


def box_sums(a: np.ndarray, m: int) -> np.ndarray:
    """Sums of every m×m block of the last two axes (sliding by one): (..., R, C) → (..., R−m+1, C−m+1)."""
    sat = np.zeros(a.shape[:-2] + (a.shape[-2] + 1, a.shape[-1] + 1), np.float64)
    sat[..., 1:, 1:] = a.cumsum(-2, dtype=np.float64).cumsum(-1)  # int32/float32 inputs would overflow or drift
    return sat[..., m:, m:] - sat[..., :-m, m:] - sat[..., m:, :-m] + sat[..., :-m, :-m]


@dataclass
class Candidates:
    """Windows of ``size`` pixels free of nodata and labels, with what the model thinks of them."""

    size: int
    row: np.ndarray  # top-left pixel row
    col: np.ndarray  # top-left pixel column
    score: np.ndarray  # the ranking score (``Score``), higher = better place to draw
    margin: np.ndarray  # mean per-pixel top-2 margin
    top1: np.ndarray  # class index with the highest mean probability
    top2: np.ndarray  # runner-up class
    p1: np.ndarray  # their mean probabilities
    p2: np.ndarray
    uncertainty: np.ndarray  # mean uncertainty (the "uncertainty" score)
    drawable_class: np.ndarray  # the class the model's map shows most in the window: what gets drawn
    drawable_px: np.ndarray  # pixels of that class in the model's map: the polygon's expected area

    def __len__(self) -> int:
        return len(self.score)

    @property
    def centres(self) -> np.ndarray:
        """(N, 2) window centres as (row, col) in pixels."""
        return np.column_stack([self.row + self.size / 2, self.col + self.size / 2])


def window_candidates(sums: CellSums, cells: int, score: Score = "drawable") -> Candidates:
    """Every window of ``cells``×``cells`` cells whose pixels are all eligible (cells outside the
    raster have fewer pixels than cell², so windows reaching past an edge drop out too), scored by
    ``score`` (module docstring)."""
    size = cells * sums.cell
    area = float(size * size)
    if cells > min(sums.eligible.shape):
        return _no_candidates(size)
    full = box_sums(sums.eligible, cells) >= area - 0.5
    rows, cols = np.nonzero(full)
    if rows.size == 0:
        return _no_candidates(size)
    n = np.arange(rows.size)
    unc = (box_sums(sums.uncertainty, cells)[rows, cols] / area).astype(np.float32)
    mar = box_sums(sums.margin, cells)[rows, cols] / area
    mean_prob = box_sums(sums.prob, cells)[:, rows, cols] / area  # (K, N)
    order = np.argsort(-mean_prob, axis=0, kind="stable")
    top1, top2 = order[0], order[1]
    counts = np.rint(box_sums(sums.predicted, cells)[:, rows, cols]).astype(np.int64)  # (K, N)
    drawn = counts.argmax(axis=0)
    drawable = (box_sums(sums.predicted_uncertainty, cells)[drawn, rows, cols] / area).astype(np.float32)
    return Candidates(size, rows * sums.cell, cols * sums.cell, drawable if score == "drawable" else unc,
                      mar.astype(np.float32), top1, top2, mean_prob[top1, n].astype(np.float32),
                      mean_prob[top2, n].astype(np.float32), unc, drawn, counts[drawn, n])


def _no_candidates(size: int) -> Candidates:
    i, f = np.zeros(0, np.int64), np.zeros(0, np.float32)
    return Candidates(size, i, i, f, f, i, i, f, f, f, i, i)


def score_class(c: Candidates, score: Score) -> np.ndarray:
    """The class each window's score speaks for, which ``class_decay`` spreads: the class the mapper
    will draw, or (uncertainty) the most likely one."""
    return c.drawable_class if score == "drawable" else c.top1


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


def reason(names: tuple[str, ...] | list[str], top1: int, top2: int, margin: float,
           drawable: float | None = None, drawable_class: int | None = None, unit: str = "m²") -> str:
    """Why a window is suggested, in the user's class names: "water vs road, margin 0.04", plus what
    the model expects to be drawable there: ", ~1,800 m² drawable as water"."""
    text = f"{names[top1]} vs {names[top2]}, margin {margin:.2f}"
    if drawable is None or drawable_class is None:
        return text
    return f"{text}, ~{_two_figures(drawable)} {unit} drawable as {names[drawable_class]}"


def _two_figures(x: float) -> str:
    """1834 → "1,800", 12.4 → "12": a model's estimate of an area deserves no more figures."""
    if x <= 0:
        return "0"
    e = int(np.floor(np.log10(x)))
    return f"{round(x, 1 - e):,.{max(0, 1 - e)}f}"
