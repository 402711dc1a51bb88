"""Epoch checkpoints: weights as safetensors, optimizer/scheduler via ``torch.save`` loaded ``weights_only``.

A checkpoint folder holds ``model.safetensors`` (the whole model: backbone and heads),
``optimizer.pt`` and ``scheduler.pt`` (tensors and plain containers only, read back
with ``weights_only=True``), and ``state.json`` (epoch, step, best score, history).
RNG state: every random choice of an epoch is drawn from generators seeded by
(seed, epoch, rank), so the epoch number in ``state.json`` restores it exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gmptl import files

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.json"


def save_checkpoint(
    folder: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(folder / MODEL_FILE))
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    files.write_json(folder / STATE_FILE, state, indent=1)
    return folder


def load_checkpoint(
    folder: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, Any]:
    """Restore in place; returns ``state.json``. Raises with the file name when something is missing."""
    folder = Path(folder)
    for name in (MODEL_FILE, STATE_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"checkpoint {folder} has no {name}: it is incomplete or not a gmptl checkpoint"
            )
    model.load_state_dict(load_file(str(folder / MODEL_FILE)))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    return json.loads((folder / STATE_FILE).read_text())
