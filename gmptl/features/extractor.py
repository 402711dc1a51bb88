"""The frame-feature extractor: waveforms in, per-layer hidden states cut to valid frames out.

Loaded once (``__init__`` builds the backbone), called many times: the shape Ray
Data's ``map_batches`` wants, and usable without Ray in tests. No ray imports.

Batching: utterances are sorted by length and grouped so a forward batch holds
at most ``features.batch_max_audio_s`` seconds of (padded) audio. Backbones with
a layer-norm CNN get an attention mask, so a padded batch equals one-by-one
runs; group-norm CNNs (HuBERT/wav2vec2 base) were trained without one and see
zero padding, which length-grouping keeps small.

Chunking (``features.max_chunk_s``): a long utterance is cut at frame
boundaries. Chunk c covers frames [f0, f1) and is fed samples
[f0 * hop, (f1 - 1) * hop + receptive_field), so the CNN yields exactly f1 - f0
frames at exactly the positions a whole-utterance pass would; the concatenated
chunks have the whole pass's frame count. (The transformer sees less context
inside a chunk, so deep-layer values differ from a whole pass: chunk only when
memory demands it.)
"""

from __future__ import annotations

import numpy as np
import torch

from gmptl.config import FeatureConfig, ModelConfig
from gmptl.models.backbone import (
    FrameGeometry,
    build_backbone,
    check_layers,
    frame_geometry,
    input_norm,
    normalize_input,
    truncate_to,
    uses_attention_mask,
)
from gmptl.training.data import eval_batches


def conv_geometry(model: torch.nn.Module) -> FrameGeometry:
    """The frame geometry of a loaded backbone."""
    return frame_geometry(model.config)


def chunk_spans(
    n_samples: int, geo: FrameGeometry, max_chunk_samples: int | None
) -> list[tuple[int, int, int]]:
    """[(sample_start, sample_end, n_frames)] whose frames tile the whole pass's frames exactly."""
    total = geo.n_frames(n_samples)
    if max_chunk_samples is None or n_samples <= max_chunk_samples:
        return [(0, n_samples, total)]
    per_chunk = geo.n_frames(max_chunk_samples)
    if per_chunk < 1:
        raise ValueError(f"features.max_chunk_s is shorter than one frame ({geo.receptive_field} samples)")
    spans = []
    for f0 in range(0, total, per_chunk):
        f1 = min(f0 + per_chunk, total)
        spans.append((f0 * geo.hop, (f1 - 1) * geo.hop + geo.receptive_field, f1 - f0))
    return spans


class FeatureExtractor:
    """Callable: waveforms -> {layer: (n_frames, D) float32} per utterance."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        features_cfg: FeatureConfig,
        sample_rate_hz: int = 16000,
        model: torch.nn.Module | None = None,
        device: str | None = None,
        bf16: bool | None = None,
    ):
        self.cfg = features_cfg
        self.sample_rate_hz = sample_rate_hz
        own_model = model is None
        self.model = (build_backbone(model_cfg) if own_model else model).eval()
        check_layers(self.model, list(features_cfg.layers))
        if own_model:
            # Only a model built here is cut down: a model handed in may be in use elsewhere.
            truncate_to(self.model, max(features_cfg.layers))
        if device is None:
            device = "cuda" if features_cfg.num_gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        # bf16 autocast on GPU by default (tensor cores; features are stored as float16 anyway); fp32 on CPU.
        self.bf16 = self.device.type == "cuda" if bf16 is None else bf16
        self.model.to(self.device)
        self.geometry = conv_geometry(self.model)
        self.use_mask = uses_attention_mask(self.model)
        max_chunk = features_cfg.max_chunk_s
        self.max_chunk_samples = int(max_chunk * sample_rate_hz) if max_chunk else None

    def n_frames(self, n_samples: int) -> int:
        return self.geometry.n_frames(n_samples)

    @torch.inference_mode()
    def _forward(self, waves: list[np.ndarray]) -> list[dict[int, np.ndarray]]:
        lengths = [len(w) for w in waves]
        x = torch.zeros(len(waves), max(lengths))  # (B, T) zero-padded
        for i, w in enumerate(waves):
            x[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
        x = normalize_input(x.to(self.device), torch.tensor(lengths), input_norm(self.model.config))
        mask = None
        if self.use_mask:
            mask = (torch.arange(x.shape[1])[None, :] < torch.tensor(lengths)[:, None]).long().to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(x, attention_mask=mask, output_hidden_states=True)
        result = []
        for i, n in enumerate(lengths):
            frames = self.n_frames(n)
            result.append(
                {L: out.hidden_states[L][i, :frames].float().cpu().numpy() for L in self.cfg.layers}
            )
        return result

    def encode(self, waves: list[np.ndarray]) -> list[dict[int, np.ndarray]]:
        """Per utterance, {layer: (n_frames, D) float32}; n_frames = the whole-utterance frame count."""
        pieces: list[tuple[int, np.ndarray]] = []  # (utterance index, chunk waveform)
        for i, w in enumerate(waves):
            if self.n_frames(len(w)) < 1:
                raise ValueError(
                    f"utterance {i} has {len(w)} samples, fewer than one frame ({self.geometry.receptive_field})"
                )
            for s0, s1, _ in chunk_spans(len(w), self.geometry, self.max_chunk_samples):
                pieces.append((i, w[s0:s1]))
        encoded: list[dict[int, np.ndarray] | None] = [None] * len(pieces)
        budget = int(self.cfg.batch_max_audio_s * self.sample_rate_hz)
        for batch in eval_batches([len(p[1]) for p in pieces], budget):
            for idx, enc in zip(batch, self._forward([pieces[j][1] for j in batch]), strict=True):
                encoded[idx] = enc
        out: list[dict[int, list[np.ndarray]]] = [{L: [] for L in self.cfg.layers} for _ in waves]
        for (i, _), enc in zip(pieces, encoded, strict=True):
            for L, arr in enc.items():  # type: ignore[union-attr]
                out[i][L].append(arr)
        return [{L: np.concatenate(v, axis=0) for L, v in d.items()} for d in out]
