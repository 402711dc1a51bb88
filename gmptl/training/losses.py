"""Losses of the three stages: pure functions of tensors (no I/O, no global state).

Shapes: B utterances, C classes, F frames, K clusters of one GMP stream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def am_softmax(
    cos: torch.Tensor,
    target: torch.Tensor,
    scale: float,
    margin: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Additive-margin softmax (stage 2, docs/method.md), mean over the batch.

    ``L = -log( e^{s(cos_y - m)} / (e^{s(cos_y - m)} + sum_{j != y} e^{s cos_j}) )``

    Args:
        cos: (B, C) float cosines between L2-normalised embeddings and class weights.
        target: (B,) int64 class indices.
        scale: s. margin: m (m = 0 is cross-entropy on s-scaled cosines).
        weight: optional (C,) class weights (weighted mean, as ``F.cross_entropy``).
    Returns:
        scalar float tensor.
    """
    logits = scale * (cos - margin * F.one_hot(target, cos.shape[-1]).to(cos.dtype))  # (B, C)
    return F.cross_entropy(logits.float(), target, weight=weight)


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy of (B, C) logits against (B,) targets (in float32 under autocast)."""
    return F.cross_entropy(logits.float(), target, weight=weight)


def frame_cross_entropy(
    logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], select: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage 1: sum over the GMP streams of the cross-entropy on the selected frames.

    Args:
        logits: {stream: (B, F, K) logits}.
        labels: {stream: (B, F) int64 frame labels}; values on unselected frames are ignored.
        select: (B, F) bool, the frames that count: valid frames, or valid *and masked* frames
            when time masking is on (HuBERT's masked prediction).
    Returns:
        (sum over streams of the mean CE over selected frames, {stream: that mean}); a batch
        with no selected frame gives zeros that still carry a graph (DDP needs every rank to backward).
    """
    per: dict[str, torch.Tensor] = {}
    n = select.sum()
    for name, z in logits.items():
        y = labels[name]
        if y.shape != z.shape[:2]:
            raise ValueError(
                f"stream {name}: labels {tuple(y.shape)} do not match logits {tuple(z.shape[:2])}"
            )
        ce = F.cross_entropy(z.float().transpose(1, 2), y.clamp_min(0), reduction="none")  # (B, F)
        per[name] = (ce * select).sum() / n.clamp_min(1)
    total = torch.stack(list(per.values())).sum()
    return total, per


def mtl_loss(ce_emotion: torch.Tensor, ce_gender: torch.Tensor, alpha: float) -> torch.Tensor:
    """Stage 0: ``alpha * CE_emotion + (1 - alpha) * CE_gender`` (alpha = 1: no gender task)."""
    return alpha * ce_emotion + (1.0 - alpha) * ce_gender


def class_weights(counts: torch.Tensor) -> torch.Tensor:
    """Inverse-frequency weights (C,), normalised to mean 1; a class with no example gets weight 0."""
    c = counts.float()
    inv = torch.where(c > 0, 1.0 / c.clamp_min(1), torch.zeros_like(c))
    return inv * (c > 0).sum() / inv.sum()
