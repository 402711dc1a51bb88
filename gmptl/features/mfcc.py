"""MFCC frames with deltas, one vector per backbone frame: the targets of HuBERT's first iteration.

Frame i covers samples ``[i * hop, i * hop + receptive_field)``, exactly the span of the CNN's i-th
output frame, so an utterance gets as many MFCC vectors as the model gives frames and a target lines
up with its frame by index. Each utterance's coefficients are mean- and variance-normalised (k-means
on raw cepstra would be dominated by the energy term and the recording channel). Pure NumPy.
"""

from __future__ import annotations

import numpy as np

from gmptl.data.logmel import mel_filterbank
from gmptl.models.backbone import FrameGeometry

LAYER = 0  # the feature-store "layer" MFCC frames are kept under (transformer layers are 1..depth)


def dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) orthonormal DCT-II: the cepstrum of n_in log-mel energies."""
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None, :]
    m = np.cos(np.pi / n_in * (n + 0.5) * k) * np.sqrt(2.0 / n_in)
    m[0] /= np.sqrt(2.0)
    return m


def deltas(x: np.ndarray, width: int = 2) -> np.ndarray:
    """Regression deltas over +-``width`` frames (edges repeated), as HTK and Kaldi compute them."""
    padded = np.pad(x, ((width, width), (0, 0)), mode="edge")
    num = sum(t * (padded[width + t : len(x) + width + t] - padded[width - t : len(x) + width - t])
              for t in range(1, width + 1))  # fmt: skip
    return num / (2 * sum(t * t for t in range(1, width + 1)))


def cepstra(wave: np.ndarray, sr: int, geo: FrameGeometry, n_mfcc: int = 13, n_mels: int = 40) -> np.ndarray:
    """(geo.n_frames(len(wave)), n_mfcc) MFCC; frame i is computed from samples [i * hop, i * hop + rf) only."""
    n = geo.n_frames(len(wave))
    if n < 1:
        raise ValueError(f"{len(wave)} samples are fewer than one frame ({geo.receptive_field})")
    win = geo.receptive_field
    n_fft = 1 << (win - 1).bit_length()
    idx = np.arange(win)[None, :] + geo.hop * np.arange(n)[:, None]
    frames = np.asarray(wave, np.float64)[idx] * np.hamming(win)[None, :]
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2
    logmel = np.log(power @ mel_filterbank(n_mels, n_fft, sr).T + 1e-10)
    return logmel @ dct_matrix(n_mfcc, n_mels).T


def mfcc_frames(
    wave: np.ndarray,
    sr: int,
    geo: FrameGeometry,
    n_mfcc: int = 13,
    n_mels: int = 40,
    with_deltas: bool = True,
) -> np.ndarray:
    """(geo.n_frames(len(wave)), n_mfcc * (3 if with_deltas else 1)) float32, per-utterance normalised."""
    c = cepstra(wave, sr, geo, n_mfcc, n_mels)
    if with_deltas:
        d1 = deltas(c)
        c = np.concatenate([c, d1, deltas(d1)], axis=1)
    c = (c - c.mean(0)) / (c.std(0) + 1e-5)
    return c.astype(np.float32)


class MfccExtractor:
    """The :class:`gmptl.features.extractor.FeatureExtractor` interface for MFCC frames: waveforms in,
    ``{LAYER: (n_frames, D)}`` per utterance out."""

    def __init__(self, geo: FrameGeometry, sample_rate_hz: int, n_mfcc: int, n_mels: int, with_deltas: bool):
        self.geometry = geo
        self.sample_rate_hz = sample_rate_hz
        self.args = (n_mfcc, n_mels, with_deltas)

    def encode(self, waves: list[np.ndarray], dtype: str = "float32") -> list[dict[int, np.ndarray]]:
        return [
            {LAYER: mfcc_frames(w, self.sample_rate_hz, self.geometry, *self.args).astype(dtype, copy=False)}
            for w in waves
        ]
