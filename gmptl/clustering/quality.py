"""Cluster quality of the GMP label streams. Pure math (numpy).

Reported per K: clusters used, usage entropy (bits, and normalised by log2 K) and,
where frame-level truth exists (the synthetic corpus), purity and normalised mutual
information (arithmetic-mean normalisation, as scikit-learn's default) against the
true frame emotion, all computed from a K x C contingency matrix that can be summed
across shards.
"""

from __future__ import annotations

import numpy as np


def contingency(labels: np.ndarray, truth: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """(K, C) int64 counts of (cluster, class) pairs; labels (N,) in [0, K), truth (N,) in [0, C)."""
    return np.bincount(labels.astype(np.int64) * n_classes + truth, minlength=k * n_classes).reshape(
        k, n_classes
    )


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def usage(counts: np.ndarray) -> dict[str, float]:
    """Clusters used and the entropy of cluster usage, from (K,) counts."""
    k = len(counts)
    p = counts / max(counts.sum(), 1)
    h = _entropy(p) / np.log(2)
    return {
        "clusters_used": int((counts > 0).sum()),
        "entropy_bits": float(h),
        "entropy_norm": float(h / np.log2(k)),
    }


def purity_nmi(table: np.ndarray) -> dict[str, float]:
    """Purity and NMI of a (K, C) contingency matrix."""
    n = table.sum()
    p = table / n
    pk, pc = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pk, pc)[nz])).sum())
    hk, hc = _entropy(pk), _entropy(pc)
    denom = (hk + hc) / 2
    return {"purity": float(table.max(1).sum() / n), "nmi": mi / denom if denom > 0 else 0.0}


def frame_truth(segments: list[tuple[float, float, str]], n_frames: int, hop_s: float, window_s: float,
                classes: list[str]) -> np.ndarray:  # fmt: skip
    """(n_frames,) class index of each frame: the segment holding the frame's centre."""
    centres = np.arange(n_frames) * hop_s + window_s / 2
    ends = np.array([e for _, e, _ in segments])
    idx = np.minimum(np.searchsorted(ends, centres, side="right"), len(segments) - 1)
    return np.array([classes.index(segments[i][2]) for i in idx], dtype=np.int64)
