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
