"""Frame pseudo-labels on disk: reading them back, and their cluster quality (no Ray, no faiss).

A labels folder (``gmptl.paths.labels_dir``) holds, per feature shard and K, one int32 array of the
shard's frames (``shard_<n>.k<K>.npy``) and ``index.parquet`` (utt_id, part, shard, offset, n_frames).
The training workers read labels through :class:`LabelStore`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gmptl import paths
from gmptl.clustering.quality import contingency, frame_truth, purity_nmi, usage

log = logging.getLogger(__name__)


def label_shard(folder: Path, shard: int, k: int) -> Path:
    """The labels of feature shard ``shard`` for codebook size ``k``."""
    return Path(folder) / f"shard_{shard:05d}.k{k}.npy"


class LabelStore:
    """Read access to per-utterance frame labels."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.index = pd.read_parquet(self.folder / paths.LABELS_INDEX).set_index("utt_id")

    def get(self, utt_id: str, k: int) -> np.ndarray:
        """(n_frames,) int32 labels of one utterance for codebook size ``k``."""
        row = self.index.loc[utt_id]
        arr = np.load(label_shard(self.folder, int(row.shard), k), mmap_mode="r")
        labels = np.asarray(arr[int(row.offset) : int(row.offset) + int(row.n_frames)])
        if len(labels) != int(row.n_frames):
            raise ValueError(f"utterance {utt_id}: {len(labels)} labels for {int(row.n_frames)} frames")
        return labels


def label_quality(
    corpus_root: Path, ks: list[int], folder: Path, index: pd.DataFrame
) -> tuple[dict[str, Any], dict[str, dict[str, list[int]]]]:
    """Per K and part: usage, entropy, and (synthetic corpus) purity/NMI against the true frame emotion.

    Also returns the frames per cluster (K -> part -> counts), drawn as the run's cluster-usage figure.
    """
    from gmptl.data.synth import EMOTIONS, SEGMENTS_FILE, read_segments

    segments = read_segments(corpus_root) if (corpus_root / SEGMENTS_FILE).is_file() else None
    labels = LabelStore(folder)
    quality: dict[str, Any] = {}
    all_counts: dict[str, dict[str, list[int]]] = {}
    for k in ks:
        for part_name, group in index.groupby("part"):
            counts = np.zeros(k, np.int64)
            table = np.zeros((k, len(EMOTIONS)), np.int64)
            for utt in group.utt_id:
                lab = labels.get(utt, k)
                counts += np.bincount(lab, minlength=k)
                if segments is not None:
                    truth = frame_truth(segments[utt], len(lab), 0.02, 0.025, list(EMOTIONS))
                    table += contingency(lab, truth, k, len(EMOTIONS))
            row: dict[str, Any] = usage(counts)
            if segments is not None:
                row |= purity_nmi(table)
            quality.setdefault(str(k), {})[part_name] = row
            all_counts.setdefault(str(k), {})[part_name] = counts.tolist()
            log.debug("fold labels k=%d %s: %s", k, part_name, {a: round(b, 3) for a, b in row.items()})
    # One line on the terminal: what the training frames' labels look like at each K.
    log.info("labels in %s: %s", folder, "; ".join(_summary(k, q.get("train")) for k, q in quality.items()))
    return quality, all_counts


def _summary(k: str, row: dict[str, Any] | None) -> str:
    if row is None:
        return f"K={k}"
    nmi = f", NMI {row['nmi']:.3f} with the frame emotions" if "nmi" in row else ""
    return f"K={k} {row['clusters_used']} clusters used, entropy {row['entropy_norm']:.2f}{nmi}"
