"""What each training stage changes: heads, targets, loss and the model-selection score.

The stages share the loop (:mod:`gmptl.training.loop`) and the Ray glue
(:mod:`gmptl.training.worker`); a stage is a small strategy object:

- ``mtl`` (stage 0): linear emotion and gender heads on the pooled last layer,
  ``alpha * CE_emotion + (1 - alpha) * CE_gender``; selected on validation UAR.
- ``gmp`` (stage 1): one frame head per K predicting the GMP labels, cross-entropy
  on masked (default) or all valid frames; selected on validation frame loss
  (there is no emotion output to score: the lowest held-out loss is the model
  that best predicts the pseudo-labels of unseen speakers).
- ``utterance`` (stage 2): a cosine classifier with AM-Softmax (or a linear layer
  with cross-entropy, the ablation); selected on validation UAR.
- ``pretrain`` (``gmptl pretrain``): stage 1's frame heads and targets on unlabeled
  audio: cross-entropy on masked frames plus ``unmasked_weight`` times that on the
  unmasked ones; validation is masked too (with a fixed mask), so it measures
  masked-prediction accuracy; selected on validation loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from gmptl.config import (
    Config,
    GMPStageConfig,
    MTLStageConfig,
    PretrainStageConfig,
    TrainConfig,
    UtteranceStageConfig,
)
from gmptl.training import losses


@dataclass
class Stage:
    name: str
    cfg: TrainConfig
    n_emotions: int
    ks: list[int] = field(default_factory=list)
    weight: torch.Tensor | None = None  # (C,) class weights, stage 2 only

    @property
    def selection(self) -> tuple[str, str]:
        """(validation metric, "max" | "min") that picks the best epoch and drives early stopping."""
        return ("val_loss", "min") if self.uses_frame_labels else ("val_uar", "max")

    @property
    def uses_frame_labels(self) -> bool:
        return self.name in ("gmp", "pretrain")

    @property
    def scores_emotion(self) -> bool:
        return not self.uses_frame_labels

    @property
    def masks_in_eval(self) -> bool:
        """Validation masks frames too (with a fixed generator): what pre-training measures is masked prediction."""
        return self.name == "pretrain"

    def head_spec(self) -> dict[str, Any]:
        c = self.cfg
        if isinstance(c, MTLStageConfig):
            return {
                "pooling": c.pooling,
                "utterance_heads": {
                    "emotion": {"type": "linear", "n_classes": self.n_emotions},
                    "gender": {"type": "linear", "n_classes": 2},
                },
            }
        if isinstance(c, GMPStageConfig | PretrainStageConfig):
            return {
                "frame_heads": {
                    f"k{k}": {"type": "frame", "hidden": c.head_dim, "n_classes": k} for k in self.ks
                }
            }
        if isinstance(c, UtteranceStageConfig):
            kind = "cosine" if c.loss == "amsoftmax" else "linear"
            return {
                "pooling": c.pooling,
                "utterance_heads": {"emotion": {"type": kind, "n_classes": self.n_emotions}},
            }
        raise TypeError(f"no stage for {type(c).__name__}")

    def loss(
        self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], masked: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss to minimise, named parts for logging) of one batch.

        ``masked`` (B, F) bool: the frames hidden by time masking in this forward (None = no masking).
        """
        c = self.cfg
        if isinstance(c, MTLStageConfig):
            ce_e = losses.cross_entropy(out["emotion"], batch["emotion"])
            ce_g = losses.cross_entropy(out["gender"], batch["gender"])
            return losses.mtl_loss(ce_e, ce_g, c.alpha), {"ce_emotion": ce_e, "ce_gender": ce_g}
        if isinstance(c, GMPStageConfig):
            select = out["valid"]
            if masked is not None and c.loss_on == "masked":
                select = select & masked
            names = [f"k{k}" for k in self.ks]
            total, per = losses.frame_cross_entropy(
                {n: out[n] for n in names}, {n: batch[f"frames_{n}"] for n in names}, select
            )
            return total, {f"ce_{n}": v for n, v in per.items()}
        if isinstance(c, PretrainStageConfig):
            names = [f"k{k}" for k in self.ks]
            logits, targets = {n: out[n] for n in names}, {n: batch[f"frames_{n}"] for n in names}
            if masked is None:  # no mask drawn: every valid frame counts
                total, per = losses.frame_cross_entropy(logits, targets, out["valid"])
                return total, {f"ce_{n}": v for n, v in per.items()}
            total, per = losses.frame_cross_entropy(logits, targets, out["valid"] & masked)
            parts = {f"ce_masked_{n}": v for n, v in per.items()}
            if c.unmasked_weight > 0:
                rest, per_u = losses.frame_cross_entropy(logits, targets, out["valid"] & ~masked)
                total = total + c.unmasked_weight * rest
                parts |= {f"ce_unmasked_{n}": v for n, v in per_u.items()}
            return total, parts
        assert isinstance(c, UtteranceStageConfig)
        if c.loss == "amsoftmax":
            loss = losses.am_softmax(out["emotion"], batch["emotion"], c.scale, c.margin, self.weight)
        else:
            loss = losses.cross_entropy(out["emotion"], batch["emotion"], self.weight)
        return loss, {}


_CONFIGS = {
    "mtl": MTLStageConfig,
    "gmp": GMPStageConfig,
    "utterance": UtteranceStageConfig,
    "pretrain": PretrainStageConfig,
}


def stage_config(cfg: Config, name: str) -> TrainConfig:
    """The settings of a training stage: ``stages.<name>``, or ``pretrain.train`` for pre-training."""
    return cfg.pretrain.train if name == "pretrain" else getattr(cfg.stages, name)


def make_stage(name: str, cfg: TrainConfig, n_emotions: int, ks: list[int] | None = None) -> Stage:
    expected = _CONFIGS[name]
    if not isinstance(cfg, expected):
        raise TypeError(f"stage {name!r} needs a {expected.__name__}, got {type(cfg).__name__}")
    if name in ("gmp", "pretrain") and not ks:
        raise ValueError(f"stage {name} needs the K of every target stream")
    return Stage(name, cfg, n_emotions, list(ks or []))


def track_best(state: dict[str, Any], epoch: int, score: float, mode: str) -> bool:
    """Record ``epoch``'s selection score in ``state`` (best_score, best_epoch, since_best); True if it is the best.

    Ties keep the earlier epoch: a later epoch must be strictly better to be selected.
    """
    better = state.get("best_score") is None or (
        score > state["best_score"] if mode == "max" else score < state["best_score"]
    )
    if better:
        state.update(best_score=score, best_epoch=epoch, since_best=0)
    else:
        state["since_best"] = state.get("since_best", 0) + 1
    state["epoch"] = epoch
    return better


def should_stop(state: dict[str, Any], patience: int | None) -> bool:
    """Early stopping: ``patience`` epochs in a row without a new best (None = never)."""
    return patience is not None and state.get("since_best", 0) >= patience
