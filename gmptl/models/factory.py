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
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from gmptl import files
from gmptl.config import STAGE_NAMES, ModelConfig, TrainConfig
from gmptl.errors import GmptlError
from gmptl.models.backbone import (
    build_backbone,
    input_norm,
    load_pretrained,
    normalize_input,
    uses_attention_mask,
)
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
        wave = normalize_input(wave, n_samples, input_norm(self.backbone.config))
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
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a one-file "Writing model shards" bar per save, on the driver's terminal
    model.backbone.save_pretrained(folder / BACKBONE_DIR, safe_serialization=True)
    heads = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith("backbone.")
    }
    save_file(heads, str(folder / HEADS_FILE))
    files.write_json(folder / MODEL_JSON, {"spec": model.spec, **(extra or {})})
    return folder


class ModelFolderError(GmptlError, ValueError):
    """A model folder (its ``model.json``, weights or layout) cannot be used; the message names the file."""


class ModelJsonMissingError(ModelFolderError, FileNotFoundError):
    """The folder has no ``model.json`` (also a FileNotFoundError, what load_model raised before)."""


# model.json: gmptl writes it (save_model, export); these bounds only refuse what gmptl never writes.
MAX_MODEL_JSON_BYTES = 1024**2
MAX_HEADS = 64
MAX_CLASSES = 65536
MAX_LABELS = 1000
_HEAD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")  # an nn.ModuleDict key: no dots
_HEAD_TYPES = ("linear", "cosine", "frame")
_POOLINGS = ("mean", "attentive")
_FIX = (
    "model.json is written by gmptl, not by hand: re-export the model (`gmptl export RUN_DIR --fold K "
    "--out MODEL`) or rerun the stage that wrote it"
)


def _bad(meta_path: Path, key: str, value: Any, expected: str) -> ModelFolderError:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return ModelFolderError(f"{meta_path}: key {key!r} is {shown}, expected {expected}; {_FIX}")


def _int_in(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _number_in(value: Any, lo: float, hi: float) -> bool:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return ok and math.isfinite(value) and lo < value <= hi


def validate_model_meta(meta: Any, meta_path: Path) -> dict[str, Any]:
    """``model.json`` checked against the keys gmptl reads; a ModelFolderError names the key.

    Required: ``spec`` (``pooling`` mean/attentive; ``utterance_heads`` and ``frame_heads``: at most
    64 heads each, named like identifiers, of type linear/cosine/frame with 1..65536 ``n_classes``, a
    frame head's ``hidden`` likewise; at least one head). Optional, checked when present: ``labels``
    (1..1000 non-empty names, as many as an ``emotion`` head's classes), ``sample_rate_hz``
    (1000..384000), ``window_s`` (0..3600 s or null), ``scale`` (0..10000), ``loss``, ``stage``
    (mtl/gmp/utterance), ``fold`` (>= 0), ``config_hash``, ``exported_from`` (an object). Other keys
    are kept as they are.
    """
    if not isinstance(meta, dict):
        raise ModelFolderError(f"{meta_path}: expected a JSON object, found {type(meta).__name__}; {_FIX}")
    spec = meta.get("spec")
    if not isinstance(spec, dict):
        raise _bad(meta_path, "spec", spec, "an object with the model's heads")
    if spec.get("pooling", "mean") not in _POOLINGS:
        raise _bad(meta_path, "spec.pooling", spec.get("pooling"), f"one of {list(_POOLINGS)}")
    n_heads = 0
    for group in ("utterance_heads", "frame_heads"):
        heads = spec.get(group, {})
        if not isinstance(heads, dict) or len(heads) > MAX_HEADS:
            raise _bad(meta_path, f"spec.{group}", heads, f"an object of at most {MAX_HEADS} heads")
        for name, head in heads.items():
            key = f"spec.{group}.{name}"
            if not _HEAD_NAME.match(name):
                raise _bad(meta_path, key, name, "a head name of letters, digits and _ (at most 64)")
            if not isinstance(head, dict):
                raise _bad(meta_path, key, head, "an object {type, n_classes}")
            if head.get("type", "frame") not in _HEAD_TYPES:
                raise _bad(meta_path, f"{key}.type", head.get("type"), f"one of {list(_HEAD_TYPES)}")
            if not _int_in(head.get("n_classes"), 1, MAX_CLASSES):
                raise _bad(
                    meta_path, f"{key}.n_classes", head.get("n_classes"), f"an integer 1..{MAX_CLASSES}"
                )
            if head.get("type", "frame") == "frame" and not _int_in(head.get("hidden"), 1, MAX_CLASSES):
                raise _bad(meta_path, f"{key}.hidden", head.get("hidden"), f"an integer 1..{MAX_CLASSES}")
            n_heads += 1
    if n_heads == 0:
        raise _bad(meta_path, "spec", spec, "at least one head in utterance_heads or frame_heads")
    if "labels" in meta:
        labels = meta["labels"]
        if (
            not isinstance(labels, list)
            or not 1 <= len(labels) <= MAX_LABELS
            or not all(isinstance(x, str) and 0 < len(x) <= 200 for x in labels)
        ):
            raise _bad(meta_path, "labels", labels, f"a list of 1..{MAX_LABELS} non-empty label names")
        emotion = spec.get("utterance_heads", {}).get("emotion")
        if emotion is not None and len(labels) != emotion["n_classes"]:
            raise _bad(
                meta_path,
                "labels",
                labels,
                f"{emotion['n_classes']} names, one per class of the emotion head",
            )
    checks = {
        "sample_rate_hz": (lambda v: _int_in(v, 1000, 384000), "an integer 1000..384000 (Hz)"),
        "window_s": (lambda v: v is None or _number_in(v, 0, 3600), "seconds in (0, 3600] or null"),
        "scale": (lambda v: _number_in(v, 0, 10000), "a number in (0, 10000]"),
        "loss": (lambda v: isinstance(v, str), "a string"),
        "stage": (lambda v: v in (*STAGE_NAMES, "pretrain"), f"one of {[*STAGE_NAMES, 'pretrain']}"),
        "fold": (lambda v: _int_in(v, 0, 10**6), "an integer >= 0"),
        "best_epoch": (lambda v: v is None or _int_in(v, 0, 10**9), "an integer >= 0"),
        "config_hash": (lambda v: isinstance(v, str), "a string"),
        "exported_from": (lambda v: isinstance(v, dict), "an object"),
    }
    for key, (ok, expected) in checks.items():
        if key in meta and not ok(meta[key]):
            raise _bad(meta_path, key, meta[key], expected)
    return meta


def read_model_json(folder: str | Path) -> dict[str, Any]:
    """The ``model.json`` of a model folder, parsed (at most 1 MiB) and checked by :func:`validate_model_meta`."""
    meta_path = Path(folder) / MODEL_JSON
    if not meta_path.is_file():
        raise ModelJsonMissingError(
            f"{folder} is not a gmptl model folder: {MODEL_JSON} is missing; export one with "
            "`gmptl export RUN_DIR --fold K --out MODEL`"
        )
    size = meta_path.stat().st_size
    if size > MAX_MODEL_JSON_BYTES:
        raise ModelFolderError(
            f"{meta_path}: {size} bytes, over the {MAX_MODEL_JSON_BYTES} bytes a model.json can hold; {_FIX}"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ModelFolderError(f"{meta_path}: not UTF-8 text ({e.reason}); {_FIX}") from None
    except json.JSONDecodeError as e:
        raise ModelFolderError(
            f"{meta_path}, line {e.lineno} column {e.colno}: not valid JSON ({e.msg}); {_FIX}"
        ) from None
    return validate_model_meta(meta, meta_path)


def load_model(folder: str | Path) -> tuple[SERModel, dict[str, Any]]:
    """Load a folder written by :func:`save_model`; returns the model (eval mode) and its ``model.json``.

    Raises:
        ModelFolderError: ``model.json`` is missing, over 1 MiB, not JSON or not what gmptl writes
            (:func:`validate_model_meta`); the message names the file and the key.
    """
    folder = Path(folder)
    meta = read_model_json(folder)
    model = SERModel(load_pretrained(str(folder / BACKBONE_DIR), offline=True), meta["spec"])
    missing, unexpected = model.load_state_dict(load_file(str(folder / HEADS_FILE)), strict=False)
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise ValueError(f"{folder / HEADS_FILE}: missing {missing}, unexpected {unexpected}")
    return model.eval(), meta
