"""Training data: utterances -> crops -> length-bucketed, padded batches (no Ray, no MLflow).

Input: manifest rows of one fold part (utt_id, path, duration_s, emotion, gender)
and, for stage 1, a frame-label reader. Output: batches of zero-padded waveforms
``(B, T)`` with their sample counts, utterance targets, and frame-label arrays
``(B, F)`` that line up one-to-one with the backbone's output frames.

Every random choice (shuffle, crop position, gain) comes from a generator seeded
by ``(seed, epoch, rank)``: an epoch is reproducible on its own, which is what
makes a resumed run equal an uninterrupted one (the epoch number *is* the RNG state).

Crops start on a frame boundary (a multiple of the CNN hop), so the crop's frames
are exactly frames ``[start / hop, start / hop + n_frames(crop))`` of the whole
utterance, and its slice of the frame labels is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gmptl.data.audio import load_audio
from gmptl.models.backbone import FrameGeometry as Geometry  # hop and receptive field, in samples

FrameLabels = Callable[[str], dict[str, np.ndarray]]  # utt_id -> {stream: (n_frames,) int labels}


@dataclass(frozen=True)
class Item:
    utt_id: str
    path: str
    n_samples: int
    emotion: int
    gender: int


@dataclass(frozen=True)
class Request:
    """One example to load: which item, and the crop's first sample (-1 = whole utterance)."""

    index: int
    start: int = -1
    gain_db: float = 0.0


def crop_requests(
    items: Sequence[Item],
    crop_samples: int | None,
    hop: int,
    gain_db: float,
    rng: np.random.Generator,
) -> list[Request]:
    """A random frame-aligned crop (and gain) per item; items shorter than the crop stay whole."""
    out = []
    for i, it in enumerate(items):
        start = 0
        if crop_samples is not None and it.n_samples > crop_samples:
            start = hop * int(rng.integers(0, (it.n_samples - crop_samples) // hop + 1))
        gain = float(rng.uniform(-gain_db, gain_db)) if gain_db > 0 else 0.0
        out.append(Request(i, start if crop_samples is not None else -1, gain))
    return out


def plan_batches(
    lengths: Sequence[int],
    batch_size: int,
    mode: str,
    rng: np.random.Generator,
    pool_batches: int = 50,
) -> list[list[int]]:
    """Group example indices into batches of ``batch_size``.

    ``random``: a plain shuffle. ``bucket``: shuffle, then within pools of
    ``pool_batches`` batches sort by length and cut into batches, then shuffle the
    batches: similar lengths share a batch (little padding) while batch order and
    composition still vary every epoch.
    """
    order = rng.permutation(len(lengths))
    if mode == "random":
        return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if mode != "bucket":
        raise ValueError(f"batching={mode!r}: expected 'bucket' or 'random'")
    pool = batch_size * pool_batches
    batches: list[list[int]] = []
    for p in range(0, len(order), pool):
        chunk = sorted(order[p : p + pool].tolist(), key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def shard_batches(batches: list[list[int]], rank: int, world: int) -> tuple[list[list[int]], int]:
    """Rank ``rank``'s disjoint share of the batches, padded so every rank runs the same number of steps.

    DDP needs every rank to take part in every backward: when the count does not
    divide, the first batches are repeated (as torch's DistributedSampler pads).
    Returns (this rank's batches, number of repeated batches over all ranks).
    """
    n_pad = (-len(batches)) % world
    padded = batches + batches[:n_pad]
    return padded[rank::world], n_pad


class UtteranceDataset(torch.utils.data.Dataset):
    """Loads the examples of a batch of :class:`Request` s and pads them (a torch ``batch_sampler`` dataset)."""

    def __init__(
        self,
        items: Sequence[Item],
        sample_rate_hz: int,
        geometry: Geometry,
        crop_samples: int | None,
        frame_labels: FrameLabels | None = None,
        cache_limit_bytes: int = 0,
    ):
        self.items = list(items)
        self.sample_rate_hz = sample_rate_hz
        self.geometry = geometry
        self.crop_samples = crop_samples
        self.frame_labels = frame_labels
        # Decoded audio kept in memory up to this many bytes (epochs re-read the same files).
        self.cache_limit_bytes = cache_limit_bytes
        self._cache: dict[str, np.ndarray] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.items)

    def _wave(self, it: Item) -> np.ndarray:
        if it.utt_id in self._cache:
            return self._cache[it.utt_id]
        w = load_audio(it.path, self.sample_rate_hz)
        if self._cached_bytes + w.nbytes <= self.cache_limit_bytes:
            self._cache[it.utt_id] = w
            self._cached_bytes += w.nbytes
        return w

    def __getitem__(self, reqs: list[Request]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return self.collate(reqs)

    def collate(self, reqs: list[Request]) -> dict[str, torch.Tensor]:
        """{wave (B, T) float32, n_samples (B,), emotion (B,), gender (B,), index (B,),
        frames_<stream> (B, F) int64 (padding = -1)} for stage 1."""
        geo = self.geometry
        waves, starts, full = [], [], []
        for r in reqs:
            it = self.items[r.index]
            w = self._wave(it)
            full.append(len(w))
            s0 = max(r.start, 0)
            s1 = len(w) if r.start < 0 or self.crop_samples is None else min(len(w), s0 + self.crop_samples)
            w = w[s0:s1]
            if r.gain_db:
                w = w * np.float32(10 ** (r.gain_db / 20))
            waves.append(w)
            starts.append(s0)
        n = np.array([len(w) for w in waves])
        wave = np.zeros((len(waves), int(n.max())), np.float32)  # (B, T) zero-padded
        for i, w in enumerate(waves):
            wave[i, : len(w)] = w
        batch = {
            "wave": torch.from_numpy(wave),
            "n_samples": torch.from_numpy(n.astype(np.int64)),
            "emotion": torch.tensor([self.items[r.index].emotion for r in reqs], dtype=torch.int64),
            "gender": torch.tensor([self.items[r.index].gender for r in reqs], dtype=torch.int64),
            "index": torch.tensor([r.index for r in reqs], dtype=torch.int64),
        }
        if self.frame_labels is not None:
            n_frames = [geo.n_frames(len(w)) for w in waves]
            streams: dict[str, np.ndarray] = {}
            for i, r in enumerate(reqs):
                it = self.items[r.index]
                labels = self.frame_labels(it.utt_id)
                for name, lab in labels.items():
                    whole = geo.n_frames(full[i])
                    if len(lab) != whole:
                        raise ValueError(
                            f"utterance {it.utt_id}: {len(lab)} frame labels ({name}) but the backbone "
                            f"gives {whole} frames for its {full[i]} samples; re-run `gmptl label`"
                        )
                    arr = streams.setdefault(name, np.full((len(reqs), max(n_frames)), -1, np.int64))
                    f0 = starts[i] // geo.hop
                    arr[i, : n_frames[i]] = lab[f0 : f0 + n_frames[i]]
            batch |= {f"frames_{k}": torch.from_numpy(v) for k, v in streams.items()}
        return batch


def padding_waste(n_samples: torch.Tensor) -> tuple[int, int]:
    """(real samples, padded slots) of one batch: waste = 1 - real / slots."""
    return int(n_samples.sum()), int(n_samples.max()) * len(n_samples)
