"""Audio I/O: soundfile decode, mono mix-down, soxr resampling, float32.

``inspect_audio`` is what ``gmptl prepare`` runs once per file: it decodes the
whole file and measures its duration, so truncated, empty, unreadable or
non-finite audio is caught there, never later inside a Ray worker.

Bounds (:class:`AudioBounds`) are checked from the header before anything is
decoded, and again on the decoded samples: the native sample rate must be
plausible (:data:`MIN_SAMPLE_RATE_HZ`..:data:`MAX_SAMPLE_RATE_HZ`, always: a
header that says 1 Hz would otherwise resample a 2 MB file to 64 GB), and the
duration must lie within ``data.min_duration_s``..``data.max_duration_s`` when
the caller passes them.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import soxr

if TYPE_CHECKING:
    from gmptl.config import DataConfig

# Native rates a speech file can have: telephone speech is 8 kHz, studio masters go up to 384 kHz.
MIN_SAMPLE_RATE_HZ = 4_000
MAX_SAMPLE_RATE_HZ = 384_000


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


@dataclass(frozen=True)
class AudioBounds:
    """The clip lengths a caller accepts (None: no bound); the sample-rate range always applies."""

    min_duration_s: float | None = None
    max_duration_s: float | None = None

    @classmethod
    def from_config(cls, data: DataConfig) -> AudioBounds:
        """``data.min_duration_s`` and ``data.max_duration_s``; ConfigError when they cross."""
        from gmptl.errors import ConfigError

        lo, hi = data.min_duration_s, data.max_duration_s
        if hi is not None and lo > hi:
            raise ConfigError(
                f"data.min_duration_s={lo:g} is above data.max_duration_s={hi:g}: no clip could pass; "
                f"lower data.min_duration_s or raise data.max_duration_s (null = no limit)"
            )
        return cls(min_duration_s=lo or None, max_duration_s=hi)

    def check(self, path: str | Path, sample_rate: int, n_samples: int | None) -> None:
        """Raise :class:`AudioError` when the rate or (if ``n_samples`` is known) the duration is out of bounds."""
        if not MIN_SAMPLE_RATE_HZ <= sample_rate <= MAX_SAMPLE_RATE_HZ:
            raise AudioError(
                path,
                f"implausible sample rate {sample_rate} Hz in the header (speech audio has "
                f"{MIN_SAMPLE_RATE_HZ}..{MAX_SAMPLE_RATE_HZ} Hz): the header is damaged or the file is not "
                f"speech; re-encode it at its true rate",
            )
        if n_samples is None:
            return
        duration = n_samples / sample_rate
        if self.min_duration_s is not None and duration < self.min_duration_s:
            raise AudioError(
                path,
                f"too short: {duration:.3f} s, below data.min_duration_s={self.min_duration_s:g} "
                f"(lower data.min_duration_s to keep it; one frame of the model is 0.025 s)",
            )
        if self.max_duration_s is not None and duration > self.max_duration_s:
            raise AudioError(
                path,
                f"too long: {duration:.1f} s, above data.max_duration_s={self.max_duration_s:g} "
                f"(raise data.max_duration_s, or set it to null for no limit; a clip is encoded whole)",
            )


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


# The largest sample magnitude accepted in a floating-point file (12 dB over full scale): room for files a
# float pipeline left slightly over 1, none for integers written as floats (up to 32768).
MAX_ABS_SAMPLE = 4.0


def _stat(path: Path) -> os.stat_result:
    """``os.stat`` of a file that must be a regular file; every failure is an :class:`AudioError`."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AudioError(path, "missing file") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise AudioError(path, "symlink loop: the link points (through others) back at itself") from None
        raise AudioError(path, f"cannot read: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(path, "is a folder, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(path, "not a regular file (a device, pipe or socket)")
    return st


def read_header(path: str | Path) -> AudioInfo:
    """Rate, length and channels from the header alone (nothing is decoded); AudioError on any defect.

    ``n_samples`` is 0 when the header does not say (some streamed files); the decode then counts.
    """
    path = Path(path)
    if _stat(path).st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        truncated = _wav_truncation(path)
    except OSError as e:
        raise AudioError(path, f"cannot read: {e.strerror or e}") from None
    if truncated:
        raise AudioError(path, truncated)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudioError(path, f"unreadable audio: {e}") from None
    except OSError as e:
        raise AudioError(path, f"cannot read: {e.strerror or e}") from None
    return AudioInfo(
        sample_rate=int(info.samplerate), n_samples=int(info.frames), n_channels=int(info.channels)
    )


def _decode(path: Path, bounds: AudioBounds | None) -> tuple[np.ndarray, int]:
    bounds = bounds or AudioBounds()
    header = read_header(path)
    # Before decoding: a header outside the bounds is never read into memory (nor resampled).
    bounds.check(path, header.sample_rate, header.n_samples or None)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudioError(path, f"unreadable audio: {e}") from None
    except OSError as e:
        raise AudioError(path, f"cannot read: {e.strerror or e}") from None
    if data.shape[0] == 0:
        raise AudioError(path, "zero samples")
    if not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise AudioError(path, f"{n_bad} NaN/inf samples")
    peak = float(np.abs(data).max())
    if peak > MAX_ABS_SAMPLE:
        # Only floating-point files can hold these (PCM decodes into [-1, 1)): integer samples stored as
        # floats, or a gain gone wrong. Input scaling would hide it, so it is an error, not a silent fix.
        raise AudioError(
            path,
            f"samples up to {peak:.4g} in magnitude: floating-point audio must lie within [-1, 1] (up to "
            f"{MAX_ABS_SAMPLE:g} is accepted); rescale the file",
        )
    bounds.check(path, int(sr), int(data.shape[0]))  # what was decoded, for formats whose header estimates
    return data, int(sr)


def inspect_audio(path: str | Path, bounds: AudioBounds | None = None) -> AudioInfo:
    """Check the header against ``bounds``, then decode the whole file and check it; AudioError on any defect."""
    data, sr = _decode(Path(path), bounds)
    return AudioInfo(sample_rate=sr, n_samples=int(data.shape[0]), n_channels=int(data.shape[1]))


def load_audio(
    path: str | Path, sample_rate_hz: int = 16000, bounds: AudioBounds | None = None
) -> np.ndarray:
    """Read a file as mono float32 at ``sample_rate_hz``.

    ``bounds`` (``AudioBounds.from_config(cfg.data)`` for corpus audio) adds the duration limits to the
    sample-rate check that always runs; without them a file of any length is read (batch prediction).

    Returns:
        (T,) float32 array. Channels are averaged; soxr's high-quality resampler
        converts other rates.
    """
    data, sr = _decode(Path(path), bounds)
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != sample_rate_hz:
        mono = soxr.resample(mono, sr, sample_rate_hz, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)
