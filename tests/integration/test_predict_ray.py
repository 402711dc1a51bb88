"""`gmptl predict --out FILE.parquet`: Ray Data batch inference writes what the JSON lines say."""

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from gmptl.cli import main
from gmptl.config import ModelConfig
from gmptl.inference.predict import Predictor, list_inputs, predict_files
from gmptl.models.factory import build_model, save_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
LABELS = ["neutral", "happy", "sad"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random model: this test is about the plumbing, not about accuracy."""
    spec = {"pooling": "mean", "utterance_heads": {"emotion": {"type": "cosine", "n_classes": 3}}}
    model = build_model(ModelConfig(backbone="tiny"), spec)
    extra = {"labels": LABELS, "sample_rate_hz": 16000, "loss": "amsoftmax", "scale": 30.0}
    return save_model(model.eval(), tmp_path_factory.mktemp("model") / "m", extra)


def test_out_parquet_matches_the_json_lines(ray_session, model_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, seconds in enumerate([0.5, 2.0, 3.3]):  # shorter than, about, and longer than the 1.5 s window
        sf.write(folder / f"u{i}.wav", rng.normal(0, 0.05, int(seconds * 16000)).astype(np.float32), 16000)
    (folder / "broken.wav").write_bytes(b"\x00" * 100)
    out = tmp_path / "pred.parquet"
    argv = [
        "predict",
        "--model",
        str(model_dir),
        str(folder),
        "--out",
        str(out),
        "--png-dir",
        str(tmp_path / "png"),
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "skipped 1 of 4 files" in err and "broken.wav" in err

    df = pd.read_parquet(out).sort_values("path").reset_index(drop=True)
    assert list(df.columns) == ["path", "emotion", "probabilities", "frames"] and len(df) == 3
    local = [
        p.as_dict() for p in predict_files(Predictor(model_dir), list_inputs(sorted(folder.glob("u*.wav"))))
    ]
    for row, want in zip(df.to_dict("records"), local, strict=True):
        assert row["path"] == want["path"] and row["emotion"] == want["emotion"]
        assert row["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
        assert sum(row["probabilities"].values()) == pytest.approx(1.0)
        assert [dict(f) for f in row["frames"]] == want["frames"]
    assert len(df.frames[0]) == 1  # 0.5 s: shorter than one window, one segment
    report = json.loads((tmp_path / "pred.report.json").read_text())
    assert (report["n_files"], report["n_predicted"]) == (4, 3)
    assert [s["path"] for s in report["skipped"]] == [str(folder / "broken.wav")]
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["u0.png", "u1.png", "u2.png"]

    # A file named explicitly that cannot be decoded is an error, and nothing is written.
    bad_out = tmp_path / "bad.parquet"
    assert (
        main(["predict", "--model", str(model_dir), str(folder / "broken.wav"), "--out", str(bad_out)]) == 1
    )
    assert "broken.wav" in capsys.readouterr().err and not bad_out.exists()
