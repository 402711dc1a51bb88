"""The CLI end to end, as a user runs it (a real subprocess where stdout purity matters)."""

import json
import subprocess
import sys

import pytest
from corpus_fixtures import small_iemocap

from gmptl.cli import main

pytestmark = pytest.mark.integration
GMPTL = [sys.executable, "-m", "gmptl.cli"]


def test_prepare_json_prints_exactly_one_object(tmp_path):
    root = small_iemocap(tmp_path / "IEMOCAP")
    out = tmp_path / "m.parquet"
    proc = subprocess.run(
        [*GMPTL, "prepare", "--corpus", "iemocap", "--root", str(root), "--out", str(out), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    summary = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert set(summary) == {"n_utterances", "per_class", "per_session", "speakers", "genders", "hours", "bad"}
    assert summary["n_utterances"] == 9
    assert summary["per_class"] == {"angry": 2, "happy": 3, "neutral": 2, "sad": 2}
    assert summary["per_session"] == {"Session1": 5, "Session2": 4}
    assert summary["genders"] == {"F": 5, "M": 4}
    assert summary["speakers"] == ["Ses01_F", "Ses01_M", "Ses02_F", "Ses02_M"]
    assert summary["hours"] == pytest.approx(9 * 0.25 / 3600, abs=1e-4) and summary["bad"] == []
    assert out.is_file() and (tmp_path / "m.report.json").is_file() and (tmp_path / "m.config.yaml").is_file()


def test_prepare_skip_lists_bad_in_json(tmp_path, capsys):
    root = small_iemocap(tmp_path / "IEMOCAP")
    bad = root / "Session2/sentences/wav/Ses02F_impro02/Ses02F_impro02_M000.wav"
    bad.write_bytes(b"")
    argv = [
        "prepare",
        "--corpus",
        "iemocap",
        "--root",
        str(root),
        "--out",
        str(tmp_path / "m.parquet"),
        "--json",
    ]
    assert main(argv) == 1
    assert "empty file (0 bytes)" in capsys.readouterr().err
    assert main([*argv, "--on-bad-audio", "skip", "--max-bad-fraction", "0.2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_utterances"] == 8 and summary["bad"] == [{"path": str(bad), "reason": "empty file (0 bytes)",
                                                                 "utt_id": "Ses02F_impro02_M000"}]  # fmt: skip


def test_config_errors_exit_2_with_the_key(tmp_path, capsys):
    assert main(["run", "jobs/demo.yaml", "--set", "folds.schem=loso"]) == 2
    assert "unknown config key 'folds.schem'" in capsys.readouterr().err
    assert main(["run", "jobs/demo.yaml", "--set", "data.corpus=iemocap"]) == 2
    assert "data.root is required" in capsys.readouterr().err


def test_config_keys_and_resolved_config(capsys):
    assert main(["config", "--keys"]) == 0
    assert "| `folds.scheme` |" in capsys.readouterr().out
    assert main(["config", "jobs/demo.yaml", "--set", "folds.scheme=lospk"]) == 0
    assert "scheme: lospk" in capsys.readouterr().out


def test_synth_command(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "c"), "--n", "16", "--seed", "2"]) == 0
    assert "wrote 16 utterances" in capsys.readouterr().out
    assert len(list((tmp_path / "c").rglob("*.wav"))) == 16
    assert main(["synth", "--out", str(tmp_path / "c"), "--n", "16", "--seed", "2"]) == 0  # the same: reused
    assert "already holds 16 utterances" in capsys.readouterr().out
    assert main(["synth", "--out", str(tmp_path / "c"), "--n", "16", "--seed", "3"]) == 2  # another: refused
    assert str(tmp_path / "c") in capsys.readouterr().err
    assert len(list((tmp_path / "c").rglob("*.wav"))) == 16
