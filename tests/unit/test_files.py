"""Atomic writes: a failure mid-write leaves the previous file (or none), never a torn or empty marker."""

import json

import pytest

from gmptl import files


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    marker = tmp_path / "d" / "stage.json"
    files.write_json(marker, {"best_epoch": 3})

    def torn(fh):
        fh.write(b'{"best_ep')  # half a file, then the process "dies"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        files.atomic_write(marker, torn)
    assert json.loads(marker.read_text()) == {"best_epoch": 3}
    assert [p.name for p in marker.parent.iterdir()] == ["stage.json"]
    with pytest.raises(OSError):
        files.atomic_write(tmp_path / "new.json", torn)
    assert not (tmp_path / "new.json").exists()  # a marker that was never written does not exist


def test_writers_round_trip(tmp_path):
    import numpy as np
    import pandas as pd

    files.write_text(tmp_path / "a.txt", "héllo\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    df = pd.DataFrame({"utt_id": ["a", "b"], "n": [1, 2]})
    files.write_parquet(df, tmp_path / "i.parquet")
    assert pd.read_parquet(tmp_path / "i.parquet").equals(df)
    files.save_npy(tmp_path / "c.npy", np.arange(3, dtype=np.int32))
    assert np.load(tmp_path / "c.npy").tolist() == [0, 1, 2]


def test_sweep_deletes_what_killed_writers_left_and_nothing_else(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)  # that process has exited
    sub = tmp_path / "step" / "best"
    sub.mkdir(parents=True)
    space = files._SPACE
    killed = sub / f".model.safetensors.{space}.{dead_pid}.0a1b2c3d.tmp"
    live = tmp_path / "step" / f".report.json.{space}.{os.getpid()}.0a1b2c3d.tmp"  # a write in progress
    foreign = tmp_path / "step" / f".report.json.ffffffff.{dead_pid}.0a1b2c3d.tmp"  # another host: unknown
    old_foreign = tmp_path / "step" / f".x.npy.ffffffff.{dead_pid}.0a1b2c3d.tmp"
    other = tmp_path / "step" / ".notes.tmp"  # not an atomic write's file
    for f, data in ((killed, b"12345"), (live, b"1"), (foreign, b"1"), (old_foreign, b"123"), (other, b"1")):
        f.write_bytes(data)
    day = files.FOREIGN_TMP_AGE_S
    os.utime(
        old_foreign, (os.path.getatime(old_foreign) - day - 60, os.path.getmtime(old_foreign) - day - 60)
    )
    assert files.sweep_tmp(tmp_path / "step") == (2, 8)
    assert not killed.exists() and not old_foreign.exists()
    assert live.exists() and foreign.exists() and other.exists()
    assert files.sweep_tmp(tmp_path / "missing") == (0, 0)


def test_an_interrupted_write_leaves_a_file_the_lock_holder_sweeps(tmp_path, caplog):
    import os
    import subprocess
    import sys

    from gmptl import locks
    from gmptl.config import load_config

    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}"])
    folder = tmp_path / "out" / "train" / "fold0"
    # A process killed between writing the temporary file and renaming it (os._exit skips every cleanup).
    code = (
        "import os, sys; from gmptl import files\n"
        "files.os.replace = lambda *a: os._exit(9)\n"
        f"files.write_text({str(folder / 'marker.json')!r}, 'x')\n"
    )
    rc = subprocess.run([sys.executable, "-c", code], env=os.environ | {"PYTHONPATH": os.getcwd()}).returncode
    assert rc == 9 and len(list(folder.glob(".marker.json.*.tmp"))) == 1
    with caplog.at_level("WARNING"), locks.hold(cfg, [folder]):
        assert list(folder.glob("*.tmp")) == [] and not (folder / "marker.json").exists()
    assert "removed 1 partial file(s)" in caplog.text
