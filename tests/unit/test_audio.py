import os

import numpy as np
import pytest
import soundfile as sf

from gmptl.data.audio import AudioError, inspect_audio, load_audio


def test_load_mixes_down_and_resamples(tmp_path):
    sr = 44100
    t = np.arange(sr) / sr
    left, right = 0.2 * np.sin(2 * np.pi * 440 * t), 0.1 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), sr, subtype="FLOAT")
    x = load_audio(tmp_path / "s.wav", 16000)
    assert x.dtype == np.float32 and x.ndim == 1 and abs(len(x) - 16000) <= 1
    # mono = mean of channels: amplitude 0.15, and the tone survives resampling
    assert np.max(np.abs(x[1000:-1000])) == pytest.approx(0.15, abs=0.01)
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * 16000 / len(x) - 440) < 2


def test_flac_and_native_rate(tmp_path):
    sf.write(tmp_path / "a.flac", np.zeros(1600, np.float32) + 0.01, 16000)
    info = inspect_audio(tmp_path / "a.flac")
    assert info.sample_rate == 16000 and info.n_samples == 1600 and info.duration_s == pytest.approx(0.1)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"this is not audio at all" * 4), "unreadable audio"),
        (lambda p: p.write_bytes(b"RIFF0000WAVEjunk" * 4), "truncated: no data chunk"),
        (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "zero samples"),
        (
            lambda p: sf.write(p, np.array([0.1, np.nan, 0.2] * 100, np.float32), 16000, subtype="FLOAT"),
            "NaN/inf",
        ),
        (lambda p: sf.write(p, np.array([0.1, np.inf] * 100, np.float32), 16000, subtype="FLOAT"), "NaN/inf"),
        (lambda p: os.mkfifo(p), "not a regular file"),  # reading a pipe would block for ever
        (
            lambda p: sf.write(p, np.array([0.1, -20000.0] * 100, np.float32), 16000, subtype="FLOAT"),
            r"samples up to 2e\+04 in magnitude",
        ),  # integers stored as floats
    ],
)
def test_bad_audio_is_an_error_naming_the_file(tmp_path, make, reason):
    p = tmp_path / "bad.wav"
    make(p)
    with pytest.raises(AudioError, match=reason) as e:
        inspect_audio(p)
    assert str(p) in str(e.value)


def test_truncated_wav_is_caught_from_its_header(tmp_path):
    # libsndfile silently returns the first half of a truncated file; the RIFF header tells the truth.
    sf.write(tmp_path / "ok.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    blob = (tmp_path / "ok.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(blob[: len(blob) // 2])
    assert sf.info(str(tmp_path / "cut.wav")).frames > 0  # what a naive reader would accept
    with pytest.raises(AudioError, match="truncated"):
        inspect_audio(tmp_path / "cut.wav")


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="missing file"):
        load_audio(tmp_path / "nope.wav")
