"""Test-speaker evaluation of a stage-2 model folder (no Ray, no MLflow).

Input: a model folder written by :func:`gmptl.models.factory.save_model` (its
``model.json`` names the classes and, for AM-Softmax, the scale) and manifest
items of the fold's test speakers. Output: per-utterance predictions with class
probabilities, and the confusion matrix the metrics are derived from. Whole
utterances, length-grouped batches, no cropping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gmptl.data.batching import length_batches
from gmptl.models.backbone import frame_geometry
from gmptl.models.factory import SERModel, load_model
from gmptl.models.posconv import use_on_gpu
from gmptl.training import data as tdata
from gmptl.training import metrics


@dataclass
class Evaluation:
    labels: list[str]
    confusion: np.ndarray  # (C, C) int64, rows = true class
    utt_ids: list[str]
    true: np.ndarray  # (N,) int64
    pred: np.ndarray  # (N,) int64
    probabilities: np.ndarray  # (N, C) float32

    def summary(self) -> dict[str, Any]:
        return {"n_test": len(self.utt_ids), **metrics.summarize(self.confusion, self.labels)}


def probabilities(scores: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    """Class probabilities from the emotion head: softmax of s * cosine (AM-Softmax, no margin) or of logits."""
    scale = (
        float(meta.get("scale", 1.0))
        if meta["spec"]["utterance_heads"]["emotion"]["type"] == "cosine"
        else 1.0
    )
    return torch.softmax(scale * scores.float(), dim=-1)


def autocast(device: str) -> torch.autocast:
    """bf16 autocast on CUDA, a no-op elsewhere: how every whole-utterance forward pass runs."""
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=device.startswith("cuda"))


@torch.inference_mode()
def evaluate_model(
    model_dir: str | Path,
    items: Sequence[tdata.Item],
    sample_rate_hz: int,
    max_batch_audio_s: float = 120.0,
    device: str = "cpu",
) -> Evaluation:
    """Predict every item whole; ``items`` carry the true class index in ``emotion``."""
    model, meta = load_model(model_dir)
    labels: list[str] = meta["labels"]
    model: SERModel = model.to(device)
    use_on_gpu(model.backbone, device)
    geo = tdata.Geometry(*frame_geometry(model.backbone.config))
    ds = tdata.UtteranceDataset(items, sample_rate_hz, geo, None)
    n = len(items)
    probs = np.zeros((n, len(labels)), np.float32)
    for batch_idx in length_batches([it.n_samples for it in items], int(max_batch_audio_s * sample_rate_hz)):
        batch = ds.collate([tdata.Request(i) for i in batch_idx])
        with autocast(device):
            out = model(batch["wave"].to(device), batch["n_samples"].to(device))
        probs[batch_idx] = probabilities(out["emotion"], meta).cpu().numpy()
    true = np.array([it.emotion for it in items], np.int64)
    pred = probs.argmax(1).astype(np.int64) if n else np.zeros(0, np.int64)
    return Evaluation(
        labels,
        metrics.confusion_matrix(true, pred, len(labels)),
        [it.utt_id for it in items],
        true,
        pred,
        probs,
    )
