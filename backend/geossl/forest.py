"""A per-pixel Random Forest inside the model: the spectral evidence a context model forgets.

Trained on a few hundred polygons, a DeepLabV3+ recognises land cover by its surroundings as much
as by its spectra, and on new ground it can miss what any per-pixel classifier finds (a lake of
another shape, a field of another size). A Random Forest on the same pixels makes the opposite
errors: on the development data their averaged probabilities beat both (``bench/results/
ablations.md``). So a fine-tune also fits a small forest on its polygons' pixels (seconds, with
scikit-learn), and the model blends the two.

The fitted trees are packed into plain tensors (split feature, threshold, children, leaf class
probabilities), so the forest lives in the model file like any weight — loaded with
``weights_only``, never unpickled — and is evaluated by :class:`ForestHead` with torch ops
(gather along the tree, one level at a time for every tree and pixel at once): on the CPU, the GPU
and in the ONNX export alike, with no scikit-learn at prediction time.

Features are what the model sees: the normalised bands, plus their local mean and standard
deviation over ``texture`` window sizes (box filters, so a grey roof and a grey road differ by
their surroundings), and, with ``ratios``, the normalised difference (a − b)/(a + b) of every pair
of bands on the raw values (NDVI, NDWI, NDBI and their kin, without having to know which band is
which; a tree cannot build a ratio from axis-aligned splits), computed by the same code in training
and prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TREES = 32
MIN_LEAF = 3
MAX_DEPTH = 20  # a prediction costs trees × depth lookups per pixel: this keeps it near the network's cost
MAX_SAMPLES = 20_000  # pixels per tree (bootstrap): keeps the packed forest a few MB
MAX_RATIO_BANDS = 16  # band pairs grow as C²/2: 120 ratios at 16 bands, none past that


@dataclass(frozen=True)
class Ratios:
    """What undoes the model's band normalisation (raw = x·std + mean, within the clipping range), so
    band ratios are taken on the values the sensor measured, not on standardised ones."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    textured: bool = False  # the texture windows also take the local mean/std of every ratio

    @classmethod
    def for_bands(cls, low: Sequence[float], mean: Sequence[float], std: Sequence[float],
                  textured: bool = False) -> Ratios | None:
        """Ratios of these bands, or None where they mean nothing: negative values (dB, signed
        indices: a + b can vanish anywhere) or too many bands."""
        if not 2 <= len(mean) <= MAX_RATIO_BANDS or min(low) < 0:
            return None
        return cls(tuple(map(float, mean)), tuple(map(float, std)), bool(textured))

    @classmethod
    def from_dict(cls, d: dict | None) -> Ratios | None:
        return cls(tuple(d["mean"]), tuple(d["std"]), bool(d.get("textured", False))) if d else None

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "textured": self.textured}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised → (B, C(C−1)/2, H, W) normalised differences in [−1, 1], pairs (0,1),
        (0,2)…; 0 where both bands are 0 (nodata pixels are at the band means, so they stay finite)."""
        c = x.shape[1]
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).reshape(1, c, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).reshape(1, c, 1, 1)
        raw = x * std + mean
        pairs = [(i, j) for i in range(c) for j in range(i + 1, c)]  # constants in an ONNX graph
        a = raw.index_select(1, torch.tensor([i for i, _ in pairs], device=x.device))
        b = raw.index_select(1, torch.tensor([j for _, j in pairs], device=x.device))
        # in place: C²/2 channels per pixel are the largest tensors of a prediction (78 at 13 bands)
        total = (a + b).clamp_min_(1e-6)
        diff = a.sub_(b)
        del b
        return diff.div_(total).clamp_(-1.0, 1.0)  # |a − b| ≤ a + b; both 0 → 0


def pixel_features(x: torch.Tensor, texture: Sequence[int], ratios: Ratios | None = None) -> torch.Tensor:
    """(B, C, H, W) normalised bands → (B, F, H, W): bands, their local mean and std per ``texture``
    window, then (with ``ratios``) the normalised difference of every band pair, and their local mean
    and std too where ``ratios.textured`` (how uniform NDVI is around a pixel tells a field from a
    garden: dev Sentinel-2, forest alone, +2.5 ± 0.8 Kappa; the mean alone +0.4)."""
    feats = [x, *_texture(x, texture)]
    if ratios is not None:
        r = ratios.features(x)
        feats += [r, *_texture(r, texture if ratios.textured else ())]
    return torch.cat(feats, dim=1)


PIXELS_PER_PASS = 1 << 15  # features of this many pixels at a time (273 floats a pixel at 13 bands): ≈0.3 GB


def forest_probs(head: ForestHead, x: torch.Tensor, texture: Sequence[int], ratios: Ratios | None = None,
                 pixels_per_pass: int = PIXELS_PER_PASS) -> torch.Tensor:
    """(B, C, H, W) normalised bands → (B, K, H, W) forest probabilities, the features computed a
    stripe of rows at a time (plus the texture's halo), so a prediction tile's hundreds of feature
    channels never sit in memory at once; the same values as one pass, which the graph export keeps."""
    b, _, h, w = x.shape
    rows = max(1, pixels_per_pass // w)
    if head.single_pass or (b == 1 and rows >= h):
        return head(pixel_features(x, texture, ratios))
    halo = texture_halo(texture)
    out = []
    for i in range(b):  # one sample at a time: a batch's stripe measured ≈1.8× the peak memory of a sample's
        stripes = []
        for y0 in range(0, h, rows):
            y1 = min(h, y0 + rows)
            top, bottom = max(0, y0 - halo), min(h, y1 + halo)
            feats = pixel_features(x[i:i + 1, :, top:bottom], texture, ratios)
            stripes.append(head(feats[:, :, y0 - top:y1 - top]))
        out.append(torch.cat(stripes, dim=2))
    return torch.cat(out, dim=0)


def texture_halo(texture: Sequence[int]) -> int:
    """Pixels of context each side that the ``texture`` windows read around a pixel."""
    return max(texture, default=1) // 2


def _texture(x: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """Local mean and standard deviation of every channel over each ``sizes``² window (reflected edges)."""
    out = []
    for size in sizes:
        pad = size // 2
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        mean = _box(padded, size)
        sq = _box(padded.mul_(padded) if pad else padded * padded, size)  # a copy of x: not needed after
        out += [mean, sq.sub_(mean * mean).clamp_min_(0).sqrt_()]
    return out


def _box(x: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over ``size``² windows (no padding), separably: 2·size operations a pixel, not size²."""
    return F.avg_pool2d(F.avg_pool2d(x, (1, size), stride=1), (size, 1), stride=1)


@dataclass
class PackedForest:
    """A fitted forest as arrays; node 0 of each tree is its root, a leaf points to itself."""

    feature: np.ndarray  # (T, N) int64, split feature (0 at leaves)
    threshold: np.ndarray  # (T, N) float32, go left when x <= threshold (+inf at leaves)
    left: np.ndarray  # (T, N) int64
    right: np.ndarray  # (T, N) int64
    value: np.ndarray  # (T, N, K) float16, class probabilities at leaves
    depth: int

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k)))
                for k in ("feature", "threshold", "left", "right", "value")}


def fit_forest(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int, trees: int = TREES,
               min_leaf: int = MIN_LEAF, max_depth: int = MAX_DEPTH, max_samples: int = MAX_SAMPLES, jobs: int | None = None) -> PackedForest:
    """Fit on (P, F) features and (P,) class indices; classes absent from ``y`` get probability 0."""
    from sklearn.ensemble import RandomForestClassifier

    rf = RandomForestClassifier(n_estimators=trees, min_samples_leaf=min_leaf, max_depth=max_depth,
                                max_features="sqrt",
                                max_samples=min(max_samples, len(y)), n_jobs=jobs, random_state=seed)
    rf.fit(x, y)
    return pack(rf, num_classes)


def pack(rf, num_classes: int) -> PackedForest:
    """scikit-learn's trees → :class:`PackedForest` (padded to the largest tree)."""
    trees = [e.tree_ for e in rf.estimators_]
    n = max(t.node_count for t in trees)
    t_count = len(trees)
    feature = np.zeros((t_count, n), np.int64)
    threshold = np.full((t_count, n), np.inf, np.float32)
    left = np.tile(np.arange(n), (t_count, 1))
    right = left.copy()
    value = np.zeros((t_count, n, num_classes), np.float16)
    for i, t in enumerate(trees):
        m = t.node_count
        leaf = t.children_left[:m] < 0
        feature[i, :m] = np.where(leaf, 0, t.feature[:m])
        threshold[i, :m] = np.where(leaf, np.inf, t.threshold[:m])
        left[i, :m] = np.where(leaf, np.arange(m), t.children_left[:m])
        right[i, :m] = np.where(leaf, np.arange(m), t.children_right[:m])
        counts = t.value[:m, 0, :]
        probs = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1e-12)
        value[i, :m][:, rf.classes_] = probs.astype(np.float16)
    depth = max(int(t.max_depth) for t in trees)
    return PackedForest(feature, threshold, left, right, value, depth)


class ForestHead(nn.Module):
    """Evaluates a :class:`PackedForest` on feature maps: (B, F, H, W) → (B, K, H, W) probabilities."""

    def __init__(self, num_features: int, num_classes: int, trees: int = 1, nodes: int = 1, depth: int = 0) -> None:
        super().__init__()
        self.num_features, self.depth = num_features, depth
        self.single_pass = False  # set for graph export: no Python branch on the input size
        self.register_buffer("feature", torch.zeros(trees, nodes, dtype=torch.long))
        self.register_buffer("threshold", torch.full((trees, nodes), float("inf")))
        self.register_buffer("left", torch.zeros(trees, nodes, dtype=torch.long))
        self.register_buffer("right", torch.zeros(trees, nodes, dtype=torch.long))
        self.register_buffer("value", torch.zeros(trees, nodes, num_classes, dtype=torch.float16))

    @classmethod
    def from_packed(cls, packed: PackedForest, num_features: int) -> ForestHead:
        t, n, k = packed.value.shape
        head = cls(num_features, k, t, n, packed.depth)
        for name, tensor in packed.tensors().items():
            getattr(head, name).copy_(tensor)
        return head

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, f, h, w = feats.shape
        x = feats.permute(1, 0, 2, 3).reshape(f, -1)  # (F, P)
        if self.single_pass:
            probs = self._probs(x, self._tables(torch.long))  # one pass, no branch on the (dynamic) batch size
        else:
            idx = torch.int32 if x.shape[1] * f < 2**31 and self.feature.numel() * 2 < 2**31 else torch.long
            tables = self._tables(idx)  # once per call, shared by every chunk
            chunks = [self._probs(x[:, i:i + CHUNK], tables) for i in range(0, x.shape[1], CHUNK)]
            probs = torch.cat(chunks, dim=0) if len(chunks) > 1 else chunks[0]  # (P, K)
        return probs.T.reshape(-1, b, h, w).permute(1, 0, 2, 3)

    def _tables(self, idx: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat node tables in index dtype ``idx`` (int32 gathers are twice as fast as int64 on the CPU):
        split feature, threshold, children (left then right, as flat node indices) and the roots."""
        t, n = self.feature.shape
        roots = torch.arange(t, device=self.feature.device, dtype=idx) * n
        children = (torch.stack((self.left, self.right), dim=-1).to(idx) + roots[:, None, None]).reshape(-1)
        return self.feature.reshape(-1).to(idx), self.threshold.reshape(-1), children, roots

    def _probs(self, x: torch.Tensor, tables: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """(F, P) features → (P, K) mean leaf probabilities, every tree one level per iteration.

        ``index_select`` on flat contiguous arrays (advanced indexing is several times slower); a
        leaf points to itself, so a pixel that reached one stays there until the deepest tree ends."""
        feature, threshold, children, roots = tables
        t = roots.shape[0]
        f, p = x.shape
        idx = roots.dtype
        xt = x.T.contiguous().reshape(-1)  # (P·F): a pixel's features side by side
        base = (torch.arange(p, device=x.device, dtype=idx) * f)[None, :].expand(t, p).reshape(-1)
        node = roots[:, None].expand(t, p).reshape(-1)  # (T·P) flat node index: every pixel at every root
        for _ in range(self.depth):
            right = xt.index_select(0, base + feature.index_select(0, node)) > threshold.index_select(0, node)
            node = children.index_select(0, node * 2 + right.to(idx))
        return self.value.flatten(0, 1).index_select(0, node).reshape(t, p, -1).float().mean(dim=0)


CHUNK = 65_536  # pixels per pass: the (trees × chunk) node indices stay ~8–16 MB
