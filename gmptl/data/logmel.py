"""Log-mel statistics: a classic, model-free utterance descriptor.

Used as a sanity baseline (is a corpus learnable at all?) and to check the
synthetic corpus carries emotion cues. Pure NumPy.
"""

from __future__ import annotations

import numpy as np


def mel_filterbank(
    n_mels: int, n_fft: int, sr: int, fmin: float = 50.0, fmax: float | None = None
) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters on the HTK mel scale."""
    fmax = fmax or sr / 2

    def hz_to_mel(f):  # noqa: ANN001, ANN202
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):  # noqa: ANN001, ANN202
        return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)

    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, 1.0 / sr)
    fb = np.zeros((n_mels, bins.size))
    for i in range(n_mels):
        lo, mid, hi = edges[i : i + 3]
        fb[i] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0, None)
    return fb


def log_mel(
    wave: np.ndarray, sr: int = 16000, n_mels: int = 40, win_s: float = 0.025, hop_s: float = 0.01
) -> np.ndarray:
    """(frames, n_mels) log-mel energies of a (T,) waveform."""
    win, hop = int(win_s * sr), int(hop_s * sr)
    n_fft = 1 << (win - 1).bit_length()
    if len(wave) < win:
        wave = np.pad(wave, (0, win - len(wave)))
    n_frames = 1 + (len(wave) - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n_frames)[:, None]
    frames = wave[idx] * np.hanning(win)[None, :]  # (F, win)
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2  # (F, n_fft/2+1)
    return np.log(power @ mel_filterbank(n_mels, n_fft, sr).T + 1e-10)


def log_mel_stats(wave: np.ndarray, sr: int = 16000, n_mels: int = 40) -> np.ndarray:
    """(4 * n_mels + 1,) utterance vector: mean, std, 10th and 90th percentile per band, and log duration."""
    m = log_mel(wave, sr, n_mels)
    return np.concatenate(
        [
            m.mean(0),
            m.std(0),
            np.percentile(m, 10, axis=0),
            np.percentile(m, 90, axis=0),
            [np.log(len(wave) / sr)],
        ]
    )
