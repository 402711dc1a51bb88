"""The trainable model of every stage: the backbone, masked pooling and named heads, built from a spec.

A *head spec* is plain JSON, so a model folder is self-describing::

    {"pooling": "mean",
     "utterance_heads": {"emotion": {"type": "cosine", "n_classes": 4}},   # on the pooled embedding
     "frame_heads": {"k64": {"hidden": 256, "n_classes": 64}}}             # on every frame

Stage 0 (MTL) has linear ``emotion`` and ``gender`` utterance heads; stage 1 one
frame head per K; stage 2 one ``emotion`` head (cosine for AM-Softmax, linear for
the cross-entropy ablation). A model folder holds ``backbone/`` (``save_pretrained``,
safetensors; loadable by the feature extractor as ``model.backbone``),
``heads.safetensors`` and ``model.json`` (the spec plus the label names): no pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from gmptl import files
from gmptl.config import ModelConfig, TrainConfig
from gmptl.models.backbone import build_backbone, load_pretrained, uses_attention_mask
from gmptl.models.heads import CosineClassifier, FrameHead, build_pooling

MODEL_JSON = "model.json"
HEADS_FILE = "heads.safetensors"
BACKBONE_DIR = "backbone"


def _build_head(name: str, spec: dict[str, Any], dim: int) -> nn.Module:
    kind = spec.get("type", "frame")
    if kind == "linear":
        return nn.Linear(dim, int(spec["n_classes"]))
    if kind == "cosine":
        return CosineClassifier(dim, int(spec["n_classes"]))
    if kind == "frame":
        return FrameHead(dim, int(spec["hidden"]), int(spec["n_classes"]))
    raise ValueError(f"head {name!r}: unknown type {kind!r} (linear, cosine, frame)")


class SERModel(nn.Module):
    """Backbone -> frames (B, F, D) -> frame heads; pooled (B, D) -> utterance heads."""

    def __init__(self, backbone: PreTrainedModel, spec: dict[str, Any]):
        super().__init__()
        self.backbone = backbone
        self.spec = spec
        # gmptl draws time masks itself (seeded; stage 1 needs to know which frames were masked) and always
        # hands them to the backbone in training, so transformers never draws its own time masks; feature
        # (channel) masking is off. The mask embedding exists only when the config asked for masking:
        # create it otherwise, and mark the config so a saved folder rebuilds (and loads) it.
        bc = backbone.config
        bc.apply_spec_augment = True
        bc.mask_feature_prob = 0.0
        if getattr(backbone, "masked_spec_embed", None) is None:
            bc.mask_time_prob = 0.05
            backbone.masked_spec_embed = nn.Parameter(torch.empty(bc.hidden_size).uniform_())
        dim = int(backbone.config.hidden_size)
        self.pooling = build_pooling(spec.get("pooling", "mean"), dim)
        self.utterance_heads = nn.ModuleDict(
            {n: _build_head(n, s, dim) for n, s in spec.get("utterance_heads", {}).items()}
        )
        self.frame_heads = nn.ModuleDict(
            {n: _build_head(n, s, dim) for n, s in spec.get("frame_heads", {}).items()}
        )
        self.use_mask = uses_attention_mask(backbone)

    def n_frames(self, n_samples: torch.Tensor) -> torch.Tensor:
        return self.backbone._get_feat_extract_output_lengths(n_samples)

    def frames(
        self, wave: torch.Tensor, n_samples: torch.Tensor, mask_time_indices: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden state (B, F, D) and the valid-frame mask (B, F) of a zero-padded batch (B, T)."""
        if self.training and mask_time_indices is None:
            width = int(self.n_frames(torch.tensor(wave.shape[1])))
            mask_time_indices = torch.zeros(wave.shape[0], width, dtype=torch.bool, device=wave.device)
        attn = None
        if self.use_mask:
            attn = (torch.arange(wave.shape[1], device=wave.device)[None, :] < n_samples[:, None]).long()
        out = self.backbone(wave, attention_mask=attn, mask_time_indices=mask_time_indices)
        h = out.last_hidden_state  # (B, F, D)
        n = self.n_frames(n_samples).to(h.device)  # (B,)
        valid = torch.arange(h.shape[1], device=h.device)[None, :] < n[:, None]  # (B, F)
        return h, valid

    def forward(
        self, wave: torch.Tensor, n_samples: torch.Tensor, mask_time_indices: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """{head name: logits or cosines}: utterance heads (B, C), frame heads (B, F, K); plus ``valid``."""
        h, valid = self.frames(wave, n_samples, mask_time_indices)
        out: dict[str, torch.Tensor] = {"valid": valid}
        if len(self.utterance_heads):
            pooled = self.pooling(h, valid)  # (B, D)
            out |= {n: head(pooled) for n, head in self.utterance_heads.items()}
        out |= {n: head(h) for n, head in self.frame_heads.items()}
        return out

    def frame_track(self, wave: torch.Tensor, n_samples: torch.Tensor, head: str = "emotion") -> torch.Tensor:
        """An utterance head applied to every frame (B, F, C): the intra-utterance emotion track."""
        h, _ = self.frames(wave, n_samples)
        return self.utterance_heads[head](h)


def configure_training(model: SERModel, train: TrainConfig) -> None:
    """Freeze the CNN front-end (and the first N transformer layers); set dropout if configured."""
    bb = model.backbone
    if train.freeze_cnn:
        # transformers' own switch: besides requires_grad it stops the encoder from asking autograd
        # for gradients down to the waveform (a frozen CNN otherwise still runs its backward, ~1.5x slower).
        bb.feature_extractor._freeze_parameters()
    layers = bb.encoder.layers
    if train.freeze_layers > len(layers):
        raise ValueError(f"freeze_layers={train.freeze_layers} exceeds the backbone's {len(layers)} layers")
    for layer in layers[: train.freeze_layers]:
        for p in layer.parameters():
            p.requires_grad = False
    if train.dropout is not None:
        for m in bb.modules():
            if isinstance(m, nn.Dropout):
                m.p = train.dropout


def build_model(model_cfg: ModelConfig, spec: dict[str, Any], init_dir: str | Path | None = None) -> SERModel:
    """A new model from ``spec``: backbone from ``model.backbone``, or from a previous stage's folder."""
    if init_dir is None:
        backbone = build_backbone(model_cfg)
    else:
        backbone = load_pretrained(str(Path(init_dir) / BACKBONE_DIR), offline=True)
    return SERModel(backbone, spec)


def save_model(model: SERModel, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``backbone/`` (safetensors), ``heads.safetensors`` and ``model.json`` (spec + ``extra``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.backbone.save_pretrained(folder / BACKBONE_DIR, safe_serialization=True)
    heads = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith("backbone.")
    }
    save_file(heads, str(folder / HEADS_FILE))
    files.write_json(folder / MODEL_JSON, {"spec": model.spec, **(extra or {})})
    return folder


def load_model(folder: str | Path) -> tuple[SERModel, dict[str, Any]]:
    """Load a folder written by :func:`save_model`; returns the model (eval mode) and its ``model.json``."""
    folder = Path(folder)
    meta_path = folder / MODEL_JSON
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder} is not a gmptl model folder: {MODEL_JSON} is missing")
    meta = json.loads(meta_path.read_text())
    model = SERModel(load_pretrained(str(folder / BACKBONE_DIR), offline=True), meta["spec"])
    missing, unexpected = model.load_state_dict(load_file(str(folder / HEADS_FILE)), strict=False)
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise ValueError(f"{folder / HEADS_FILE}: missing {missing}, unexpected {unexpected}")
    return model.eval(), meta
