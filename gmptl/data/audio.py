"""Audio I/O: soundfile decode, mono mix-down, soxr resampling, float32.

``inspect_audio`` is what ``gmptl prepare`` runs once per file: it decodes the
whole file and measures its duration, so truncated, empty, unreadable or
non-finite audio is caught there, never later inside a Ray worker.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


class AudioError(ValueError):
    """A file that cannot be used as audio; ``reason`` is a short phrase for reports."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # noqa: ANN204 - so the error crosses process boundaries (Ray workers) intact
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    n_samples: int
    n_channels: int

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate


def _wav_truncation(path: Path) -> str | None:
    """Compare a RIFF/WAVE file's declared data size with the bytes present.

    libsndfile silently clips a truncated data chunk to what the file holds, so a
    half-copied WAV decodes as a shorter clip; the header is the only witness.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                available = size - offset - 8
                # 0 and 0xFFFFFFFF are what streaming writers leave when the size is unknown.
                if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
                    return f"truncated: header declares {chunk_size} bytes of audio, file holds {available}"
                return None
            offset += 8 + chunk_size + (chunk_size & 1)
    return "truncated: no data chunk before end of file"


def _decode(path: Path) -> tuple[np.ndarray, int]:
    if not path.exists():
        raise AudioError(path, "missing file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    truncated = _wav_truncation(path)
    if truncated:
        raise AudioError(path, truncated)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudioError(path, f"unreadable audio: {e}") from None
    if data.shape[0] == 0:
        raise AudioError(path, "zero samples")
    if not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise AudioError(path, f"{n_bad} NaN/inf samples")
    return data, int(sr)


def inspect_audio(path: str | Path) -> AudioInfo:
    """Decode a whole file and check it; raise :class:`AudioError` on any defect."""
    data, sr = _decode(Path(path))
    return AudioInfo(sample_rate=sr, n_samples=int(data.shape[0]), n_channels=int(data.shape[1]))


def load_audio(path: str | Path, sample_rate_hz: int = 16000) -> np.ndarray:
    """Read a file as mono float32 at ``sample_rate_hz``.

    Returns:
        (T,) float32 array. Channels are averaged; soxr's high-quality resampler
        converts other rates.
    """
    data, sr = _decode(Path(path))
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != sample_rate_hz:
        mono = soxr.resample(mono, sr, sample_rate_hz, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)
