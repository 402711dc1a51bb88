"""Pooling and the heads the three training stages put on the backbone (stages 0-2, docs/method.md).

Inputs are frame sequences ``(B, F, D)`` with a boolean ``valid`` mask
``(B, F)`` (True = a real frame, False = padding); every module here ignores
padded frames exactly, so a padded batch gives the same outputs as one-by-one runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MeanPooling(nn.Module):
    """Masked mean over valid frames."""

    def forward(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        w = valid.to(h.dtype).unsqueeze(-1)  # (B, F, 1)
        return (h * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, D)


class AttentivePooling(nn.Module):
    """Softmax-weighted mean over valid frames, the weights from a learned linear score."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        s = self.score(h).squeeze(-1)  # (B, F)
        s = s.masked_fill(~valid, torch.finfo(s.dtype).min)
        a = torch.softmax(s, dim=1).unsqueeze(-1)  # (B, F, 1)
        return (a * h).sum(1)  # (B, D)


def build_pooling(kind: str, dim: int) -> nn.Module:
    if kind == "mean":
        return MeanPooling()
    if kind == "attentive":
        return AttentivePooling(dim)
    raise ValueError(f"pooling={kind!r}: expected 'mean' or 'attentive'")


class FrameHead(nn.Module):
    """Stage 1: Linear(D -> hidden), tanh, Linear(hidden -> K), applied to every frame."""

    def __init__(self, dim: int, hidden: int, n_classes: int):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"FrameHead: n_classes must be >= 2, got {n_classes}")
        self.proj = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.proj(h)))  # (B, F, K)


class CosineClassifier(nn.Module):
    """Stage 2: cosine similarity between L2-normalised embeddings and L2-normalised class weights.

    Returns cosines in [-1, 1]; AM-Softmax scales them (and subtracts the margin) in the loss,
    so the same layer scores single frames for the frame-level emotion track.
    """

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"CosineClassifier: n_classes must be >= 2, got {n_classes}")
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).t()  # (..., C)
