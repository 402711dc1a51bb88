"""Every odd input file gets a bounded, named outcome: an error (exit 1) or a counted skip, never a traceback.

Audio bounds (native sample rate, data.min_duration_s, data.max_duration_s) are checked from the header
in prepare and again when audio is read; metadata files are read as UTF-8 (a BOM allowed) with typed
fields; `gmptl synth` never writes into a folder it did not make, and never leaves half a corpus.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from corpus_fixtures import small_iemocap, write_cremad, write_emobox, write_generic, write_ravdess, write_wav

from gmptl.cli import main
from gmptl.config import SynthConfig, load_config
from gmptl.data import audio
from gmptl.data.audio import AudioBounds, AudioError, inspect_audio, load_audio
from gmptl.data.prepare import ensure_synthetic_corpus, prepare_manifest
from gmptl.data.synth import synthesize_corpus
from gmptl.errors import BadInputError, ConfigError

WAV = "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"
LABELS = "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
SMALL = dict(n_utterances=12, n_sessions=2, seed=7)


def _prepare(tmp_path: Path, corpus: str, root: Path, *sets: str):
    cfg = load_config(None, [f"data.corpus={corpus}", f"data.root={root}", *sets])
    return prepare_manifest(cfg.data, root, tmp_path / "m.parquet")


# ----------------------------------------------------------------------------- audio bounds


def _one_hz(p: Path) -> None:
    # 2 MB of PCM-16 whose header says 1 Hz: 277.8 hours, 16e9 samples (64 GB) once resampled to 16 kHz.
    sf.write(p, np.zeros(1_000_000, np.int16), 1, subtype="PCM_16")


# (name, write(path), reason regex, the bound the message must name)
BOUNDS = [
    ("sample_rate_1hz", _one_hz, r"implausible sample rate 1 Hz .*4000\.\.384000 Hz", "384000"),
    ("too_short", lambda p: write_wav(p, seconds=0.02), r"too short: 0\.020 s, below data\.min_duration_s=0\.1", "data.min_duration_s"),
    ("too_long", lambda p: write_wav(p, seconds=61.0, sr=8000), r"too long: 61\.0 s, above data\.max_duration_s=60", "data.max_duration_s"),
]  # fmt: skip


@pytest.mark.parametrize("name, write, reason, key", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_prepare_rejects_audio_outside_the_bounds(tmp_path, name, write, reason, key):
    root = small_iemocap(tmp_path / "IEMOCAP")
    write(root / WAV)
    with pytest.raises(BadInputError, match=reason) as e:
        _prepare(tmp_path, "iemocap", root)
    assert str(root / WAV) in str(e.value) and key in str(e.value)
    assert not (tmp_path / "m.parquet").exists()


@pytest.mark.parametrize("name, write, reason, key", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_skip_policy_counts_audio_outside_the_bounds(tmp_path, name, write, reason, key):
    root = small_iemocap(tmp_path / "IEMOCAP")
    write(root / WAV)
    res = _prepare(tmp_path, "iemocap", root, "data.on_bad_audio=skip", "data.max_bad_fraction=0.2")
    assert [b["path"] for b in res.summary.bad] == [str(root / WAV)]
    assert re.search(reason, res.summary.bad[0]["reason"])
    assert res.summary.n_utterances == 8 and res.summary.hours < 0.001


def test_skip_of_out_of_bounds_audio_is_still_capped(tmp_path):
    root = small_iemocap(tmp_path / "IEMOCAP")
    write_wav(root / WAV, seconds=0.02)
    with pytest.raises(BadInputError, match=r"1 of 9 items are bad .*too short"):
        _prepare(tmp_path, "iemocap", root, "data.on_bad_audio=skip")


def test_duration_bounds_are_config_keys(tmp_path):
    root = small_iemocap(tmp_path / "IEMOCAP")
    write_wav(root / WAV, seconds=0.02)
    write_wav(root / WAV.replace("F000", "M000"), seconds=61.0, sr=8000)
    res = _prepare(tmp_path, "iemocap", root, "data.min_duration_s=0.01", "data.max_duration_s=null")
    assert res.summary.n_utterances == 9 and not res.summary.bad
    with pytest.raises(ConfigError, match=r"data\.min_duration_s=2 is above data\.max_duration_s=1"):
        _prepare(tmp_path, "iemocap", root, "data.min_duration_s=2", "data.max_duration_s=1")


def test_bounds_are_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    long_wav = write_wav(tmp_path / "long.wav", seconds=61.0, sr=8000)
    one_hz = tmp_path / "one_hz.wav"
    _one_hz(one_hz)

    def no_decode(*a, **k):
        raise AssertionError("decoded a file the header already rules out")

    monkeypatch.setattr(audio.sf, "read", no_decode)
    bounds = AudioBounds(min_duration_s=0.1, max_duration_s=60.0)
    with pytest.raises(AudioError, match="too long"):
        inspect_audio(long_wav, bounds)
    with pytest.raises(AudioError, match="implausible sample rate"):
        inspect_audio(one_hz, bounds)
    with pytest.raises(AudioError, match="implausible sample rate"):
        load_audio(one_hz)  # the rate check needs no bounds: it is what keeps the resampler's output finite


def test_load_audio_checks_the_bounds_it_is_given(tmp_path):
    # 100 samples declared at 1 Hz would resample to 1.6 M samples at 16 kHz (a 1 MB file: 16 GB).
    sf.write(tmp_path / "slow.wav", np.zeros(100, np.int16), 1, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"implausible sample rate 1 Hz") as e:
        load_audio(tmp_path / "slow.wav", 16000)
    assert str(tmp_path / "slow.wav") in str(e.value)
    short = write_wav(tmp_path / "short.wav", seconds=0.02)
    # No duration bounds unless asked (batch prediction reads any length).
    assert len(load_audio(short)) == 320
    with pytest.raises(AudioError, match=r"too short: 0\.020 s, below data\.min_duration_s=0\.1"):
        load_audio(short, 16000, AudioBounds(min_duration_s=0.1))
    with pytest.raises(AudioError, match=r"too long: 1\.0 s, above data\.max_duration_s=0\.5"):
        load_audio(write_wav(tmp_path / "one.wav", seconds=1.0), 16000, AudioBounds(max_duration_s=0.5))


def test_fixture_corpora_keep_every_utterance_under_the_default_bounds(tmp_path):
    for corpus, root, sets in (
        ("ravdess", write_ravdess(tmp_path / "ravdess"), ()),
        ("cremad", write_cremad(tmp_path / "cremad"), ()),
        ("generic", write_generic(tmp_path / "generic"), ("data.metadata_file=meta.csv",)),  # 8 kHz stereo
        ("emobox", write_emobox(tmp_path / "emobox"), ("data.drop_labels=[fear]",)),  # 22.05 kHz
    ):
        res = _prepare(tmp_path, corpus, root, *sets)
        assert not res.summary.bad and res.summary.n_utterances > 0, corpus


# ----------------------------------------------------------------------------- files that are not files


def test_looping_symlink_is_a_named_bad_item(tmp_path):
    root = small_iemocap(tmp_path / "IEMOCAP")
    (root / WAV).unlink()
    os.symlink((root / WAV).name, root / WAV)  # points at itself
    with pytest.raises(BadInputError, match=r"symlink loop") as e:
        _prepare(tmp_path, "iemocap", root)
    assert f"{root / LABELS}:" in str(e.value)
    res = _prepare(tmp_path, "iemocap", root, "data.on_bad_audio=skip", "data.max_bad_fraction=0.2")
    assert res.summary.n_utterances == 8 and "symlink loop" in res.summary.bad[0]["reason"]


def test_looping_symlink_found_by_a_name_glob(tmp_path):
    root = write_ravdess(tmp_path / "ravdess")
    a, b = root / "Actor_01" / "03-01-01-01-01-02-01.wav", root / "Actor_01" / "03-01-01-01-02-02-01.wav"
    os.symlink(b.name, a)
    os.symlink(a.name, b)  # a -> b -> a
    res = _prepare(tmp_path, "ravdess", root, "data.on_bad_audio=skip", "data.max_bad_fraction=0.2")
    assert sorted(x["path"] for x in res.summary.bad) == sorted([str(a), str(b)])
    assert all("symlink loop" in x["reason"] for x in res.summary.bad) and res.summary.n_utterances == 16


def test_folder_named_like_a_wav(tmp_path):
    root = write_ravdess(tmp_path / "ravdess")
    folder = root / "Actor_01" / "03-01-01-01-01-02-01.wav"
    folder.mkdir()
    with pytest.raises(BadInputError, match=re.escape(f"{folder}: is a folder, not an audio file")):
        _prepare(tmp_path, "ravdess", root)
    res = _prepare(tmp_path, "ravdess", root, "data.on_bad_audio=skip", "data.max_bad_fraction=0.2")
    assert [b["path"] for b in res.summary.bad] == [str(folder)] and res.summary.n_utterances == 16
    with pytest.raises(AudioError, match="is a folder"):
        load_audio(folder)


# ----------------------------------------------------------------------------- metadata text and types


def _latin1_row(meta: Path, row: int) -> None:
    lines = meta.read_bytes().split(b"\n")
    lines[row - 1] = lines[row - 1].replace(b"a_happy,", "a_happé,".encode("latin-1"), 1)
    meta.write_bytes(b"\n".join(lines))


def test_csv_that_is_not_utf8_names_its_line(tmp_path):
    root = write_generic(tmp_path / "mine")
    meta = root / "meta.csv"
    _latin1_row(meta, 3)
    with pytest.raises(BadInputError, match=re.escape(f"{meta}:3: not UTF-8: byte 0xe9 at column 7")) as e:
        _prepare(tmp_path, "generic", root, "data.metadata_file=meta.csv")
    assert "re-save the file as UTF-8" in str(e.value)
    res = _prepare(
        tmp_path,
        "generic",
        root,
        "data.metadata_file=meta.csv",
        "data.on_bad_audio=skip",
        "data.max_bad_fraction=0.1",
    )
    assert [(b["line"], b["reason"][:10]) for b in res.summary.bad] == [(3, "not UTF-8:")]
    assert res.summary.n_utterances == 15


def test_jsonl_that_is_not_utf8_names_its_line(tmp_path):
    root = write_emobox(tmp_path / "emobox")
    jsonl = root / "toy.jsonl"
    jsonl.write_bytes(jsonl.read_bytes().replace(b'"toy-s1-sad"', b'"toy-s1-sad\xe9"'))
    with pytest.raises(BadInputError, match=re.escape(f"{jsonl}:3: not UTF-8: byte 0xe9")):
        _prepare(tmp_path, "emobox", root, "data.drop_labels=[fear]")


def test_utf16_metadata_is_named(tmp_path):
    root = write_generic(tmp_path / "mine")
    meta = root / "meta.csv"
    meta.write_bytes(meta.read_text().encode("utf-16"))
    with pytest.raises(BadInputError, match=re.escape(f"{meta}: UTF-16 text, not UTF-8")):
        _prepare(tmp_path, "generic", root, "data.metadata_file=meta.csv")


def test_cremad_demographics_not_utf8_or_with_bom(tmp_path):
    root = write_cremad(tmp_path / "cremad")
    demo = root / "VideoDemographics.csv"
    good = demo.read_bytes()
    demo.write_bytes(b"\xef\xbb\xbf" + good)  # Excel's "CSV UTF-8"
    assert _prepare(tmp_path, "cremad", root).summary.n_utterances == 12
    demo.write_bytes(good.replace(b"1002,40,Female,Caucasian", b"1002,40,Female,Cauc\xe1sian"))
    with pytest.raises(BadInputError, match=re.escape(f"{demo}:3: not UTF-8: byte 0xe1")):
        _prepare(tmp_path, "cremad", root)


def test_iemocap_label_line_not_utf8(tmp_path):
    root = small_iemocap(tmp_path / "IEMOCAP")
    labels = root / LABELS
    blob = labels.read_bytes()
    # A Latin-1 byte in an annotator's comment is harmless (those lines are not read) ...
    labels.write_bytes(blob.replace(b"sounds tired", b"sounds tir\xe9d", 1))
    assert _prepare(tmp_path, "iemocap", root).summary.n_utterances == 9
    # ... in an utterance line it is named, with its line.
    labels.write_bytes(blob.replace(b"Ses01F_impro01_F000\tneu", b"Ses01F_impro01_F000\tneu\xe9", 1))
    with pytest.raises(BadInputError, match=re.escape(f"{labels}:3: not UTF-8: byte 0xe9")):
        _prepare(tmp_path, "iemocap", root)


def test_csv_with_byte_order_mark(tmp_path):
    root = write_generic(tmp_path / "mine")
    meta = root / "meta.csv"
    meta.write_bytes(b"\xef\xbb\xbf" + meta.read_bytes())
    res = _prepare(tmp_path, "generic", root, "data.metadata_file=meta.csv")
    assert res.summary.n_utterances == 16 and not res.summary.bad


def _edit_jsonl(path: Path, line: int, **changes) -> None:
    rows = path.read_text().splitlines()
    rows[line - 1] = json.dumps({**json.loads(rows[line - 1]), **changes})
    path.write_text("\n".join(rows) + "\n")


TYPES = [
    ("emobox", "speaker", ["s1", "s2"], r"field 'speaker' must be a string, found a list \[\"s1\", \"s2\"\]"),
    ("emobox", "key", 17, r"field 'key' must be a string, found a number 17"),
    ("generic", "text", 5, r"field 'text' must be a string, found a number 5"),
    ("generic", "valence", [1], r"field 'valence' must be a number, found a list \[1\]"),
    ("generic", "arousal", True, r"field 'arousal' must be a number, found a boolean true"),
    ("generic", "session", {"n": 1}, r"field 'session' must be a string, found an object"),
]


@pytest.mark.parametrize("corpus, field, value, reason", TYPES, ids=[f"{t[0]}-{t[1]}" for t in TYPES])
def test_jsonl_field_of_the_wrong_type(tmp_path, corpus, field, value, reason):
    if corpus == "emobox":
        root, sets = write_emobox(tmp_path / "c"), ["data.drop_labels=[fear]"]
        path = root / "toy.jsonl"
    else:
        root, sets = write_generic(tmp_path / "c", "jsonl"), ["data.metadata_file=meta.jsonl"]
        path = root / "meta.jsonl"
    _edit_jsonl(path, 2, **{field: value})
    with pytest.raises(BadInputError, match=re.escape(f"{path}:2: ") + reason):
        _prepare(tmp_path, corpus, root, *sets)
    res = _prepare(tmp_path, corpus, root, *sets, "data.on_bad_audio=skip", "data.max_bad_fraction=0.1")
    assert [b["line"] for b in res.summary.bad] == [2]


def test_msp_style_table_as_jsonl_with_a_number_for_a_code(tmp_path):
    root = tmp_path / "msp"
    write_wav(root / "Audios" / "a.wav")
    row = {"FileName": "a.wav", "EmoClass": 3, "EmoAct": 3, "EmoVal": 3, "EmoDom": 3, "SpkrID": "1",
           "Gender": "Female", "Split_Set": "Train"}  # fmt: skip
    (root / "labels.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(
        BadInputError, match=r"labels\.jsonl:1: field 'EmoClass' must be a string, found a number 3"
    ):
        _prepare(tmp_path, "msp_podcast", root, "data.metadata_file=labels.jsonl")


# ----------------------------------------------------------------------------- gmptl synth --out


def test_synth_refuses_a_folder_that_is_not_its_own(tmp_path, capsys):
    real = small_iemocap(tmp_path / "IEMOCAP_full_release")
    before = {p: p.read_bytes() for p in real.rglob("*") if p.is_file()}
    assert main(["synth", "--out", str(real), "--n", "12"]) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert f"--out {real} is not empty and holds no synthetic corpus" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in real.rglob("*") if p.is_file()} == before


def test_synth_reuses_its_own_corpus_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "c"
    args = ["synth", "--out", str(out), "--n", "12", "--set", "data.synth.n_sessions=2"]
    assert main([*args, "--seed", "7"]) == 0
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main([*args, "--seed", "7"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp  # nothing rewritten
    capsys.readouterr()
    assert main([*args, "--seed", "8"]) == ConfigError.exit_code
    assert "holds a synthetic corpus made with" in capsys.readouterr().err


def test_synth_into_an_existing_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    res = synthesize_corpus(tmp_path / "empty", SynthConfig(**SMALL))
    assert res.n_utterances == 12 and (tmp_path / "empty" / "gmptl_synthetic.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no temporary folder left beside it


def test_synth_failure_leaves_no_half_corpus(tmp_path, monkeypatch):
    from gmptl.data import synth

    calls, real_write = [], sf.write

    def failing_write(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        return real_write(*a, **k)

    monkeypatch.setattr(synth.sf, "write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        synthesize_corpus(tmp_path / "c", SynthConfig(**SMALL))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert synthesize_corpus(tmp_path / "c", SynthConfig(**SMALL)).n_utterances == 12


def test_killed_synthesis_does_not_wedge_the_folder(tmp_path):
    root = tmp_path / "corpus"
    code = (
        "import sys\nfrom gmptl.config import SynthConfig\nfrom gmptl.data.synth import synthesize_corpus\n"
        "synthesize_corpus(sys.argv[1], SynthConfig(n_utterances=5000, n_sessions=2, seed=7))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)])
    try:
        deadline = time.monotonic() + 60
        while not any(tmp_path.rglob("*.wav")):
            assert proc.poll() is None and time.monotonic() < deadline, "synthesis never started writing"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not root.exists() or not any(root.iterdir())  # the half corpus is not at the destination
    cfg = load_config(None, [f"data.root={root}", *(f"data.synth.{k}={v}" for k, v in SMALL.items())])
    assert ensure_synthetic_corpus(cfg, root) == "ran"
    assert ensure_synthetic_corpus(cfg, root) == "cached"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # the dead run's partial folder is gone


def test_unreadable_synthetic_marker_is_named(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "gmptl_synthetic.json").write_text('{"seed": 7, "n_utt')  # cut short
    cfg = load_config(None, [f"data.root={root}"])
    with pytest.raises(
        ConfigError, match=re.escape(f"data.root={root}: its gmptl_synthetic.json is unreadable")
    ):
        ensure_synthetic_corpus(cfg, root)
