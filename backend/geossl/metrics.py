"""Accuracy from a confusion matrix: OA, Cohen's Kappa, per-class precision/recall/F1/IoU, mIoU.

Pure numpy so it is tested against hand-computed matrices. Rows are reference classes, columns
predicted classes; pixels are accumulated window by window, never held all at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(reference: np.ndarray, predicted: np.ndarray, num_classes: int,
                     ignore: int | None = None) -> np.ndarray:
    """Counts ``cm[r, p]`` of pixels with reference ``r`` and prediction ``p`` (int64).

    Pixels whose reference equals ``ignore``, or whose values fall outside 0..num_classes-1, are
    left out.
    """
    ref = np.asarray(reference).ravel().astype(np.int64)
    pred = np.asarray(predicted).ravel().astype(np.int64)
    keep = (ref >= 0) & (ref < num_classes) & (pred >= 0) & (pred < num_classes)
    if ignore is not None:
        keep &= ref != ignore
    return np.bincount(ref[keep] * num_classes + pred[keep], minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)


def scores(cm: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """All accuracy figures of a confusion matrix, as plain JSON-ready data.

    Classes absent from both reference and prediction get NaN-free zeros and are left out of mIoU
    and mean F1 (they say nothing about the model).
    """
    cm = np.asarray(cm, dtype=float)
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    total = cm.sum()
    tp = np.diag(cm)
    ref_tot = cm.sum(axis=1)
    pred_tot = cm.sum(axis=0)
    oa = float(tp.sum() / total) if total else 0.0
    pe = float((ref_tot * pred_tot).sum() / total**2) if total else 0.0
    kappa = float((oa - pe) / (1 - pe)) if total and pe < 1 else 0.0
    precision = _safe_div(tp, pred_tot)
    recall = _safe_div(tp, ref_tot)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    iou = _safe_div(tp, ref_tot + pred_tot - tp)
    seen = (ref_tot + pred_tot) > 0
    return {
        "pixels": int(total),
        "overall_accuracy": oa,
        "kappa": kappa,
        "miou": float(iou[seen].mean()) if seen.any() else 0.0,
        "mean_f1": float(f1[seen].mean()) if seen.any() else 0.0,
        "per_class": {
            n: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                "iou": float(iou[i]), "support": int(ref_tot[i])}
            for i, n in enumerate(names)
        },
        "class_names": names,
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }
