"""How a fine-tuned model finishes its map: the forest's share in the blend and the smoothing window.

Both are chosen together on the validation polygons' windows after training (never on pixels a
table reports), from the probabilities of one pass: the network's and the forest's are mixed at
each share of :data:`FOREST_WEIGHTS`, then averaged over each window of
:data:`geossl.models.SMOOTH_SIZES`, and the pair with the best validation Kappa is saved in the model.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .classes import IGNORE_INDEX
from .metrics import confusion_matrix, scores
from .models import SMOOTH_SIZES, autocast, smooth_probs
from .schemas import FinetuneParams

FOREST_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
UNVALIDATED_WEIGHT = 0.5  # without validation polygons: an even blend, and no smoothing


@dataclass(frozen=True)
class Finish:
    """The chosen forest share and smoothing window, with the validation Kappa of every pair tried."""

    weight: float
    smooth: int
    kappas: dict[tuple[float, int], float] | None = None

    def weight_kappas(self) -> dict[str, float] | None:
        """Kappa per forest share, at the chosen window (the model file's ``forest.validation_kappa``)."""
        return self._slice(lambda w, s: s == self.smooth, lambda w, s: f"{w:g}")

    def smooth_kappas(self) -> dict[str, float] | None:
        """Kappa per smoothing window, at the chosen share."""
        return self._slice(lambda w, s: w == self.weight, lambda w, s: str(s))

    def _slice(self, keep, name) -> dict[str, float] | None:
        if self.kappas is None:
            return None
        return {name(w, s): round(k, 4) for (w, s), k in self.kappas.items() if keep(w, s)}


def candidates(params: FinetuneParams, has_forest: bool) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """The shares and windows to try: the ones the user fixed, else all."""
    if not has_forest:
        weights: tuple[float, ...] = (0.0,)
    else:
        weights = FOREST_WEIGHTS if params.forest_weight is None else (params.forest_weight,)
    sizes = SMOOTH_SIZES if params.smooth is None else (params.smooth,)
    return weights, sizes


@torch.no_grad()
def choose_finish(model: nn.Module, val_loader, num_classes: int, device: torch.device,
                  params: FinetuneParams) -> Finish:
    """The best (forest share, smoothing window) of ``model`` on ``val_loader``'s windows.

    Ties go to the share nearer an even blend, then to the smaller window (the less the map is
    changed, the better on ground the validation polygons do not cover).
    """
    has_forest = getattr(model, "forest", None) is not None
    weights, sizes = candidates(params, has_forest)
    if val_loader is None or len(weights) * len(sizes) == 1:
        return Finish(weights[0] if len(weights) == 1 else UNVALIDATED_WEIGHT, sizes[0] if len(sizes) == 1 else 1)
    was_training = model.training
    model.eval()
    cms = {pair: np.zeros((num_classes, num_classes), np.int64) for pair in itertools.product(weights, sizes)}
    for x, y in val_loader:
        x = x.to(device)
        with autocast(device, params.amp):
            deep = torch.softmax(model.context(x).float(), dim=1)
        trees = model.forest_probs(x.float()) if has_forest and any(w > 0 for w in weights) else None
        truth = y.numpy()
        for w in weights:
            blend = deep if w == 0 else (1 - w) * deep + w * trees
            for s in sizes:
                cms[(w, s)] += confusion_matrix(truth, smooth_probs(blend, s).argmax(1).cpu().numpy(), num_classes,
                                                ignore=IGNORE_INDEX)
    model.train(was_training)
    names = [str(i) for i in range(num_classes)]
    kappas = {pair: scores(cm, names)["kappa"] for pair, cm in cms.items()}
    best = max(kappas, key=lambda p: (round(kappas[p], 6), -abs(p[0] - 0.5), -p[1]))
    return Finish(best[0], best[1], kappas)
