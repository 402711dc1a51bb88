"""The frame-feature extractor: waveforms in, per-layer hidden states cut to valid frames out.

Loaded once (``__init__`` builds the backbone), called many times: the shape Ray
Data's ``map_batches`` wants, and usable without Ray in tests. No ray imports.

Batching: utterances are sorted by length and grouped so a forward batch holds
at most ``features.batch_max_audio_s`` seconds of (padded) audio. Backbones with
a layer-norm CNN get an attention mask, so a padded batch equals one-by-one
runs; group-norm CNNs (HuBERT/wav2vec2 base) were trained without one and see
zero padding, which length-grouping keeps small. On a GPU the forward runs in bf16
autocast, the kept layers are cast to the requested dtype (the shards' storage dtype) on
the device, and batches are pipelined: the next batch is queued before the previous
one's features are copied out, so the host's unpacking overlaps the device's work.

Chunking (``features.max_chunk_s``): a long utterance is cut at frame
boundaries. Chunk c covers frames [f0, f1) and is fed samples
[f0 * hop, (f1 - 1) * hop + receptive_field), so the CNN yields exactly f1 - f0
frames at exactly the positions a whole-utterance pass would; the concatenated
chunks have the whole pass's frame count. (The transformer sees less context
inside a chunk, so deep-layer values differ from a whole pass: chunk only when
memory demands it.)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from gmptl.config import FeatureConfig, ModelConfig
from gmptl.data.batching import length_batches
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
from gmptl.models.posconv import use_fft_positional_conv, use_on_gpu

_DTYPES = {"float16": torch.float16, "float32": torch.float32}


class _Batch(NamedTuple):
    """A launched forward batch: its utterance lengths, kept layers (B, F, D) and the event that ends it."""

    lengths: list[int]
    layers: dict[int, torch.Tensor]
    done: torch.cuda.Event | None


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
        fft_pos_conv: bool | None = None,
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
        # On a GPU the positional convolution runs through FFTs (gmptl.models.posconv: cuDNN's kernels for
        # its shape dominate the pass otherwise); a model handed in is only switched when asked.
        if fft_pos_conv is None and own_model:
            use_on_gpu(self.model, self.device)
        elif fft_pos_conv:
            use_fft_positional_conv(self.model)
        self.model.to(self.device)
        self.geometry = conv_geometry(self.model)
        self.use_mask = uses_attention_mask(self.model)
        max_chunk = features_cfg.max_chunk_s
        self.max_chunk_samples = int(max_chunk * sample_rate_hz) if max_chunk else None

    def n_frames(self, n_samples: int) -> int:
        return self.geometry.n_frames(n_samples)

    @torch.inference_mode()
    def _launch(self, waves: list[np.ndarray], dtype: torch.dtype) -> _Batch:
        """Queue one padded batch's forward; on a GPU also the copy of its kept layers to pinned host memory.

        Returns at once on a GPU (nothing here waits for the device), so the caller can collect the
        previous batch while this one runs.
        """
        lengths = [len(w) for w in waves]
        cuda = self.device.type == "cuda"
        x = torch.zeros(len(waves), max(lengths), pin_memory=cuda)  # (B, T) zero-padded
        for i, w in enumerate(waves):
            x[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
        n = torch.tensor(lengths)
        x = normalize_input(x.to(self.device, non_blocking=True), n, input_norm(self.model.config))
        mask = None
        if self.use_mask:
            mask = (torch.arange(x.shape[1])[None, :] < n[:, None]).long().to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(x, attention_mask=mask, output_hidden_states=True)
        layers = {}
        for L in self.cfg.layers:
            h = out.hidden_states[L].to(dtype)  # (B, F, D), cast on the device: fewer bytes to copy
            if cuda:
                host = torch.empty(h.shape, dtype=dtype, pin_memory=True)
                host.copy_(h, non_blocking=True)
                h = host
            layers[L] = h
        done = None
        if cuda:
            done = torch.cuda.Event()
            done.record()
        return _Batch(lengths, layers, done)

    def _collect(self, batch: _Batch) -> list[dict[int, np.ndarray]]:
        """Wait for a launched batch; each utterance's valid frames as arrays of their own."""
        if batch.done is not None:
            batch.done.synchronize()
        # A copy per utterance: the caller may keep them, the batch's (pinned) buffers go back at once.
        return [
            {L: h[i, : self.n_frames(n)].numpy().copy() for L, h in batch.layers.items()}
            for i, n in enumerate(batch.lengths)
        ]

    def encode(self, waves: list[np.ndarray], dtype: str = "float32") -> list[dict[int, np.ndarray]]:
        """Per utterance, {layer: (n_frames, D) array of ``dtype``}; n_frames = the whole-utterance frame count.

        On a GPU the batches are pipelined: batch i + 1 is queued before batch i's features are copied
        out, so the device computes while the host unpacks.
        """
        torch_dtype = _DTYPES[np.dtype(dtype).name]
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
        pending: tuple[list[int], _Batch] | None = None
        for batch in [*length_batches([len(p[1]) for p in pieces], budget), None]:
            launched = (
                None if batch is None else (batch, self._launch([pieces[j][1] for j in batch], torch_dtype))
            )
            if pending is not None:
                for idx, enc in zip(pending[0], self._collect(pending[1]), strict=True):
                    encoded[idx] = enc
            pending = launched
        out: list[dict[int, list[np.ndarray]]] = [{L: [] for L in self.cfg.layers} for _ in waves]
        for (i, _), enc in zip(pieces, encoded, strict=True):
            for L, arr in enc.items():  # type: ignore[union-attr]
                out[i][L].append(arr)
        # An utterance in one piece (the usual case) is returned as is: no second copy of its frames.
        return [{L: v[0] if len(v) == 1 else np.concatenate(v, axis=0) for L, v in d.items()} for d in out]
