"""Classification metrics from confusion matrices (pure NumPy).

Workers sum their confusion matrices first (an all-reduce of integer counts), and
every metric is derived from the summed matrix: never an average of per-worker
accuracies, which weights a worker's small shard like a large one.
Convention: ``cm[i, j]`` counts examples of true class i predicted as j.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) int64 counts from (N,) int true and predicted labels in [0, n_classes)."""
    true = np.asarray(true, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if true.shape != pred.shape:
        raise ValueError(f"true {true.shape} and pred {pred.shape} differ in shape")
    if true.size and (min(true.min(), pred.min()) < 0 or max(true.max(), pred.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    return np.bincount(true * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def war(cm: np.ndarray) -> float:
    """Weighted average recall = accuracy."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """(C,) recall per true class; NaN for a class with no example."""
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def uar(cm: np.ndarray) -> float:
    """Unweighted average recall over the classes that occur (scikit-learn's balanced accuracy)."""
    r = per_class_recall(cm)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over all C classes; a class never true nor predicted scores 0 (sklearn zero_division=0)."""
    tp = np.diag(cm).astype(float)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # 2TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def summarize(cm: np.ndarray, labels: list[str] | None = None) -> dict[str, float]:
    """WAR, UAR, macro-F1 and per-class recall (``recall_<label>``) of one summed matrix."""
    out = {"war": war(cm), "uar": uar(cm), "macro_f1": macro_f1(cm)}
    names = labels or [str(i) for i in range(cm.shape[0])]
    out |= {f"recall_{n}": float(r) for n, r in zip(names, per_class_recall(cm), strict=True)}
    return out
