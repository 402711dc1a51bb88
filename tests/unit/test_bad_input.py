"""Bad input never passes silently: an error naming the file (and line), or under `skip` a listed omission."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from corpus_fixtures import small_iemocap, write_generic

from gmptl.config import load_config
from gmptl.data.prepare import prepare_manifest
from gmptl.errors import BadInputError

WAV = "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"
LABELS = "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"


def _truncate(root: Path) -> None:
    blob = (root / WAV).read_bytes()
    (root / WAV).write_bytes(blob[: len(blob) // 2])


def _replace_line(root: Path, old: str, new: str) -> None:
    p = root / LABELS
    p.write_text(p.read_text().replace(old, new, 1))


def _label_line_of(root: Path, needle: str) -> int:
    lines = (root / LABELS).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


def _outside_symlink(root: Path) -> None:
    outside = root.parent / "elsewhere.wav"
    (root / WAV).rename(outside)
    os.symlink(outside, root / WAV)


def _duplicate(root: Path) -> None:
    p = root / LABELS
    text = p.read_text()
    block = text[text.index("[0.0000") : text.index("[3.0000")]
    p.write_text(text + block)


# (name, corrupt(root), expected reason regex, where: "wav" | "labels")
CASES = [
    ("truncated", _truncate, r"truncated: header declares", "wav"),
    ("unreadable", lambda r: (r / WAV).write_bytes(b"garbage bytes, not a wav" * 20), r"unreadable audio", "wav"),
    ("zero_bytes", lambda r: (r / WAV).write_bytes(b""), r"empty file \(0 bytes\)", "wav"),
    ("zero_samples", lambda r: sf.write(r / WAV, np.zeros(0, np.float32), 16000), r"zero samples", "wav"),
    ("nan", lambda r: sf.write(r / WAV, np.full(3200, np.nan, np.float32), 16000, subtype="FLOAT"), r"NaN/inf", "wav"),
    ("inf", lambda r: sf.write(r / WAV, np.full(3200, np.inf, np.float32), 16000, subtype="FLOAT"), r"NaN/inf", "wav"),
    ("missing_wav", lambda r: (r / WAV).unlink(), r"points at missing wav", "labels"),
    ("malformed_line", lambda r: _replace_line(r, "[0.0000 - 2.0000]", "[0.0000 - oops]"), r"malformed utterance line", "labels"),
    ("unknown_label", lambda r: _replace_line(r, "\tneu\t", "\tjoy\t"), r"unknown label 'joy'", "labels"),
    ("duplicate_id", _duplicate, r"duplicated utterance id Ses01F_impro01_F000", "labels"),
    ("outside_root", _outside_symlink, r"is outside the corpus root", "labels"),
]  # fmt: skip


def _cfg(root: Path, *sets: str):
    return load_config(None, ["data.corpus=iemocap", f"data.root={root}", *sets])


@pytest.mark.parametrize("name, corrupt, reason, where", CASES, ids=[c[0] for c in CASES])
def test_error_policy_names_file_and_line(tmp_path, name, corrupt, reason, where):
    root = small_iemocap(tmp_path / "IEMOCAP")
    line = _label_line_of(root, "Ses01F_impro01_F000")
    corrupt(root)
    cfg = _cfg(root)
    with pytest.raises(BadInputError, match=reason) as e:
        prepare_manifest(cfg.data, root, tmp_path / "m.parquet")
    msg = str(e.value)
    if where == "wav":
        assert str(root / WAV) in msg
    else:
        assert re.search(re.escape(str(root / LABELS)) + r":\d+", msg), msg
        if name not in ("duplicate_id",):
            assert f"{root / LABELS}:{line}:" in msg
    assert not (tmp_path / "m.parquet").exists()


@pytest.mark.parametrize("name, corrupt, reason, where", CASES, ids=[c[0] for c in CASES])
def test_skip_policy_lists_and_reports(tmp_path, name, corrupt, reason, where):
    root = small_iemocap(tmp_path / "IEMOCAP")
    corrupt(root)
    cfg = _cfg(root, "data.on_bad_audio=skip", "data.max_bad_fraction=0.3")
    res = prepare_manifest(cfg.data, root, tmp_path / "m.parquet")
    assert res.summary.bad and all(re.search(reason, b["reason"]) for b in res.summary.bad)
    report = json.loads(res.report_path.read_text())
    assert report["summary"]["bad"] == res.summary.bad
    n_bad = 2 if name == "duplicate_id" else 1  # every copy of a duplicated id is left out
    assert len(res.summary.bad) == n_bad
    assert res.summary.n_utterances == 8  # 9 usable before the damage


def test_skip_still_fails_above_max_bad_fraction(tmp_path):
    root = small_iemocap(tmp_path / "IEMOCAP")
    (root / WAV).write_bytes(b"")
    cfg = _cfg(
        root, "data.on_bad_audio=skip"
    )  # default cap 1 %; 9 candidates (fru, xxx are excluded, not bad)
    with pytest.raises(BadInputError, match=r"1 of 9 items are bad \(11.1% > data.max_bad_fraction 1.0%\)"):
        prepare_manifest(cfg.data, root, tmp_path / "m.parquet")


def test_relative_path_escaping_root_in_metadata(tmp_path):
    root = write_generic(tmp_path / "mine")
    meta = root / "meta.csv"
    meta.write_text(meta.read_text().replace("audio/a_neutral.wav", "../outside.wav"))
    (tmp_path / "outside.wav").write_bytes((root / "audio/a_happy.wav").read_bytes())
    cfg = load_config(None, ["data.corpus=generic", f"data.root={root}", "data.metadata_file=meta.csv"])
    with pytest.raises(BadInputError, match=re.escape(f"{meta}:2: path ") + r".*outside the corpus root"):
        prepare_manifest(cfg.data, root, tmp_path / "m.parquet")


def test_malformed_csv_and_bad_gender_in_generic(tmp_path):
    root = write_generic(tmp_path / "mine")
    meta = root / "meta.csv"
    lines = meta.read_text().splitlines()
    lines[3] = lines[3].replace(",F,", ",X,")
    lines[5] = lines[5] + ",extra,fields"
    meta.write_text("\n".join(lines) + "\n")
    cfg = load_config(
        None,
        ["data.corpus=generic", f"data.root={root}", "data.metadata_file=meta.csv", "data.on_bad_audio=skip",
         "data.max_bad_fraction=0.2"],
    )  # fmt: skip
    res = prepare_manifest(cfg.data, root, tmp_path / "m.parquet")
    got = {(b["line"], b["reason"].split(":")[0]) for b in res.summary.bad}
    assert got == {(4, "gender 'X' is not F/M"), (6, "malformed CSV line")}
