"""`gmptl predict` / `gmptl export`: the frame track follows an emotion change, JSON lines, no pickle, errors.

The change test needs a model whose windows really classify emotion, and a random `tiny` backbone
does not give one: its 7-layer random CNN has a LayerNorm per frame (loudness, the synthetic
corpus's strongest cue, is normalised away) and its 10-sample random filters keep little spectral
shape. Measured (held-out utterances, one speaker, sad vs angry, 1.5 s windows, nearest class mean
on standardised pooled states): `tiny` ~72 % at every layer, level-normalised log-mel ~89 %; fitting
only the cosine head on `tiny` (class means, LDA, or AM-Softmax steps) left tracks that missed the
sad half of most utterances. So the fixture keeps HuBERT's shape (frame hop 320, receptive field
400, a random 4-layer transformer, mean pooling, cosine head) but its one-layer CNN is a fixed
mel-spaced filterbank (Hann-windowed cosines, 25 ms) with an identity feature projection (~95 %),
and only the head is fitted: a logistic regression (no intercept) on the normalised pooled windows
of 12 single-emotion utterances per class. The backbone is never trained.
On 12 random change utterances the track held >= 70 % of each side for 11; the miss (seed 11)
hears its whole sad half as angry. The test uses seeds 0-2.
"""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from transformers import HubertConfig, HubertModel

from gmptl import paths
from gmptl.cli import main
from gmptl.config import SynthConfig, load_config, save_config
from gmptl.data.synth import SAMPLE_RATE_HZ, make_speakers, synthesize_utterance
from gmptl.evaluation.evaluate import evaluate_model
from gmptl.inference.predict import (
    Predictor,
    frame_average,
    list_inputs,
    predict_files,
    track_segments,
    window_starts,
)
from gmptl.models.factory import SERModel, build_model, save_model
from gmptl.training.data import Item

PAIR = ["sad", "angry"]
SPEC = {"pooling": "mean", "utterance_heads": {"emotion": {"type": "cosine", "n_classes": 2}}}
WINDOW = 74  # frames of a 1.5 s crop: (24000 - 400) // 320 + 1


def _filterbank_backbone(n_bands: int = 64) -> HubertModel:
    cfg = HubertConfig(
        hidden_size=n_bands, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128,
        conv_dim=(n_bands,), conv_kernel=(400,), conv_stride=(320,), feat_extract_norm="layer",
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=16, hidden_dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bb = HubertModel(cfg)
    mel = np.linspace(2595 * np.log10(1 + 80 / 700), 2595 * np.log10(1 + 7000 / 700), n_bands)
    hz = 700 * (10 ** (mel / 2595) - 1)
    t = np.arange(400) / SAMPLE_RATE_HZ
    bank = np.hanning(400)[None] * np.cos(2 * np.pi * hz[:, None] * t[None])  # (bands, 400)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    with torch.no_grad():
        bb.feature_extractor.conv_layers[0].conv.weight.copy_(
            torch.tensor(bank, dtype=torch.float32)[:, None]
        )
        bb.feature_projection.projection.weight.copy_(torch.eye(n_bands))
        bb.feature_projection.projection.bias.zero_()
    return bb


def _windows(h: torch.Tensor, hop: int = 12) -> torch.Tensor:
    """Mean-pooled windows (W, D) of frame states h (F, D), as the predictor pools them."""
    w = min(WINDOW, h.shape[0])
    return torch.stack([h[s : s + w].mean(0) for s in window_starts(h.shape[0], w, hop)])


@pytest.fixture(scope="module")
def speaker():
    return make_speakers(SynthConfig(seed=0))[0]


@pytest.fixture(scope="module")
def emotion_model(tmp_path_factory, speaker):
    """A saved model folder whose 1.5 s windows tell sad from angry (see the module docstring)."""
    model = SERModel(_filterbank_backbone(), SPEC).eval()
    pooled, target = [], []
    with torch.inference_mode():
        for c, emotion in enumerate(PAIR):
            for i in range(12):
                wave, _ = synthesize_utterance(speaker, [emotion], 1.0, np.random.default_rng([1, c, i]), 12)
                h, _ = model.frames(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
                pooled.append(_windows(h[0]))
                target += [c] * len(pooled[-1])
    z = F.normalize(torch.cat(pooled), dim=-1).numpy()  # what the cosine classifier sees
    # Two classes: arg-max of cos(z, w_c) with w = (-d, d) is the sign of z . d, a linear classifier through
    # the origin; the states' common component plays the intercept. Deterministic (lbfgs), ~0.1 s.
    d = LogisticRegression(C=100.0, fit_intercept=False, max_iter=2000).fit(z, target).coef_[0]
    with torch.no_grad():
        model.utterance_heads["emotion"].weight.copy_(torch.tensor(np.stack([-d, d]), dtype=torch.float32))
    folder = tmp_path_factory.mktemp("model") / "sad_angry"
    extra = {"labels": PAIR, "sample_rate_hz": SAMPLE_RATE_HZ, "loss": "amsoftmax", "scale": 30.0,
             "stage": "utterance", "fold": 0}  # fmt: skip
    return save_model(model, folder, extra)


def _fraction(frames: list[dict], t0: float, t1: float, emotion: str) -> float:
    """Share of [t0, t1] the track labels ``emotion``."""
    hit = sum(
        max(0.0, min(f["end_s"], t1) - max(f["start_s"], t0)) for f in frames if f["emotion"] == emotion
    )
    return hit / (t1 - t0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frame_track_shows_the_emotion_change(emotion_model, speaker, seed):
    """Sad then angry (the change at 40 % of the syllables: ~3 s each): each side's truth holds the track."""
    predictor = Predictor(emotion_model)
    wave, truth = synthesize_utterance(
        speaker, PAIR, 1.0, np.random.default_rng([99, seed]), 24, change_at=0.4
    )
    (pred,) = predictor.predict([wave], ["change.wav"])
    (_, change_s, first), (_, end_s, second) = truth
    assert (first, second) == ("sad", "angry")
    before, after = (
        _fraction(pred.frames, 0, change_s, "sad"),
        _fraction(pred.frames, change_s, end_s, "angry"),
    )
    assert before >= 0.7 and after >= 0.7, (before, after, pred.frames)
    # The whole-file decision alone could not show this: the track has both emotions, in order.
    assert pred.frames[0]["emotion"] == "sad" and pred.frames[-1]["emotion"] == "angry"
    assert pred.frames[0]["start_s"] == 0.0 and pred.frames[-1]["end_s"] == pytest.approx(
        len(wave) / 16000, abs=1e-3
    )


@pytest.mark.parametrize("emotion", PAIR)
def test_single_emotion_track_is_constant(emotion_model, speaker, emotion):
    predictor = Predictor(emotion_model)
    waves = [
        synthesize_utterance(speaker, [emotion], 1.0, np.random.default_rng([77, i]), 16)[0] for i in range(2)
    ]
    for pred in predictor.predict(waves, ["a.wav", "b.wav"]):
        assert pred.emotion == emotion
        assert _fraction(pred.frames, 0, pred.duration_s, emotion) >= 0.9, pred.frames


def test_window_geometry_and_frame_average():
    for n, w, hop in [(10, 74, 12), (74, 74, 12), (75, 74, 12), (300, 74, 12), (301, 50, 7)]:
        starts = window_starts(n, min(w, n), hop)
        covered = np.zeros(n, int)
        for s in starts:
            covered[s : s + min(w, n)] += 1
        assert covered.min() >= 1 and starts[-1] + min(w, n) == n and starts[0] == 0
    rng = np.random.default_rng(0)
    starts = window_starts(100, 30, 7)
    probs = rng.dirichlet(np.ones(3), len(starts))
    got = frame_average(probs, starts, 30, 100)
    for f in (0, 13, 50, 99):
        cover = [i for i, s in enumerate(starts) if s <= f < s + 30]
        np.testing.assert_allclose(got[f], probs[cover].mean(0))
    segs = track_segments(np.array([0, 0, 1, 1, 1, 0]), ["a", "b"], 0.02, 0.13)
    assert segs == [
        {"start_s": 0.0, "end_s": 0.04, "emotion": "a"},
        {"start_s": 0.04, "end_s": 0.1, "emotion": "b"},
        {"start_s": 0.1, "end_s": 0.13, "emotion": "a"},
    ]


def test_long_file_chunks_line_up_with_the_whole_pass(emotion_model, speaker):
    """Chunked encoding gives exactly the whole pass's frame count; the track still tiles the file."""
    wave = np.concatenate([synthesize_utterance(speaker, ["sad"], 1.0, np.random.default_rng([5, i]), 12)[0]
                           for i in range(3)])  # fmt: skip
    whole = Predictor(emotion_model, max_chunk_s=None).predict([wave], ["x"])[0]
    chunked = Predictor(emotion_model, max_chunk_s=2.0).predict([wave], ["x"])[0]
    assert chunked.frame_probabilities.shape == whole.frame_probabilities.shape
    assert chunked.frames[-1]["end_s"] == whole.frames[-1]["end_s"]


def _write(path, wave):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, SAMPLE_RATE_HZ, subtype="PCM_16")
    return path


def test_cli_prints_one_json_line_per_file_and_writes_timelines(emotion_model, speaker, tmp_path, capsys):
    folder = tmp_path / "in"
    for i in range(2):
        _write(
            folder / f"u{i}.wav", synthesize_utterance(speaker, PAIR, 1.0, np.random.default_rng(i), 14)[0]
        )
    (folder / "notes.txt").write_text("not audio: ignored by suffix")
    assert (
        main(["predict", "--model", str(emotion_model), str(folder), "--png-dir", str(tmp_path / "png")]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line, name in zip(lines, ["u0.wav", "u1.wav"], strict=True):
        rec = json.loads(line)
        assert set(rec) == {"path", "emotion", "probabilities", "frames"} and rec["path"].endswith(name)
        assert set(rec["probabilities"]) == set(PAIR) and sum(rec["probabilities"].values()) == pytest.approx(
            1.0
        )
        assert rec["emotion"] == max(rec["probabilities"], key=rec["probabilities"].get)
        assert all(
            set(f) == {"start_s", "end_s", "emotion"} and f["end_s"] > f["start_s"] for f in rec["frames"]
        )
        assert all(a["end_s"] == b["start_s"] for a, b in zip(rec["frames"], rec["frames"][1:], strict=False))
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["u0.png", "u1.png"]


def test_utterance_decision_is_what_evaluation_computes(emotion_model, speaker, tmp_path):
    waves = [
        synthesize_utterance(speaker, [e], 1.0, np.random.default_rng([3, i]), 10)[0]
        for i, e in enumerate(PAIR)
    ]
    files = [_write(tmp_path / f"{i}.wav", w) for i, w in enumerate(waves)]
    items = [Item(str(i), str(f), sf.info(f).frames, i, 0) for i, f in enumerate(files)]
    ev = evaluate_model(emotion_model, items, SAMPLE_RATE_HZ)
    preds = list(predict_files(Predictor(emotion_model), list_inputs(files)))
    got = np.array([[p.probabilities[lab] for lab in PAIR] for p in preds])
    np.testing.assert_allclose(got, ev.probabilities, atol=1e-5)


def test_bad_audio_named_is_an_error_in_a_folder_skipped_and_counted(
    emotion_model, speaker, tmp_path, capsys
):
    folder = tmp_path / "in"
    _write(folder / "good.wav", synthesize_utterance(speaker, ["sad"], 1.0, np.random.default_rng(0), 8)[0])
    (folder / "broken.wav").write_bytes(b"not a wav" * 50)
    assert main(["predict", "--model", str(emotion_model), str(folder)]) == 0
    out = capsys.readouterr()
    assert [json.loads(x)["path"] for x in out.out.splitlines()] == [str(folder / "good.wav")]
    assert "skipped 1 of 2 files" in out.err and f"{folder / 'broken.wav'}: unreadable audio" in out.err

    assert main(["predict", "--model", str(emotion_model), str(folder / "broken.wav")]) == 1
    assert f"{folder / 'broken.wav'}: unreadable audio" in capsys.readouterr().err
    assert main(["predict", "--model", str(emotion_model), str(folder / "missing.wav")]) == 1
    assert f"{folder / 'missing.wav'}: no such file or folder" in capsys.readouterr().err
    (folder / "good.wav").unlink()
    with pytest.raises(Exception, match="none of the 1 files could be read"):
        list(predict_files(Predictor(emotion_model), list_inputs([folder])))


def test_missing_or_unusable_model_folder_is_an_error(tmp_path, capsys):
    wav = _write(tmp_path / "a.wav", np.zeros(16000, np.float32))
    assert main(["predict", "--model", str(tmp_path / "nope"), str(wav)]) == 1
    assert "no such folder" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path), str(wav)]) == 1
    assert "is not a gmptl model folder" in capsys.readouterr().err


def _fake_run(tmp_path):
    """A finished run with a stage-2 model for fold 0 only, laid out where `gmptl run` puts it."""
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path / 'out'}",
            "model.backbone=tiny",
            "features.layers=[2]",
            "stages.utterance.crop_s=2.0",
        ],
    )
    model = build_model(cfg.model, SPEC)
    labels = ["sad", "angry"]
    save_model(model, paths.stage_dir(cfg, 0, "utterance") / "best",
               {"labels": labels, "stage": "utterance", "fold": 0, "sample_rate_hz": 16000, "loss": "amsoftmax",
                "scale": 30.0})  # fmt: skip
    run_dir = paths.run_dir(cfg)
    save_config(cfg, run_dir / "config.yaml")
    entry = {"fold": 0, "seed": 0, "test_speakers": ["Ses01_F"], "n_test": 4, "war": 0.5, "uar": 0.5,
             "macro_f1": 0.5, "confusion": [[1, 1], [1, 1]]}  # fmt: skip
    (run_dir / "report.json").write_text(
        json.dumps({"labels": labels, "folds": [entry, entry | {"fold": 1}]})
    )
    return run_dir


def test_export_then_predict_round_trip_without_pickle(tmp_path, monkeypatch, capsys):
    run_dir = _fake_run(tmp_path)
    out = tmp_path / "exported"
    assert main(["export", str(run_dir), "--fold", "0", "--out", str(out)]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert (
        meta["window_s"] == 2.0 and meta["exported_from"]["fold"] == 0 and meta["labels"] == ["sad", "angry"]
    )
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["backbone/config.json", "backbone/model.safetensors", "heads.safetensors", "model.json"]

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load called: predict must load safetensors and JSON only")

    monkeypatch.setattr(torch, "load", no_pickle)
    wav = _write(tmp_path / "a.wav", np.random.default_rng(0).normal(0, 0.05, 40000).astype(np.float32))
    capsys.readouterr()
    assert main(["predict", "--model", str(out), str(wav)]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["emotion"] in ("sad", "angry") and sum(rec["probabilities"].values()) == pytest.approx(1.0)
    assert Predictor(out).window_frames == (32000 - 400) // 320 + 1  # the recorded 2 s training crop

    # Errors: a fold the run has no model for, a fold outside the run, an existing --out, a non-run folder.
    assert main(["export", str(run_dir), "--fold", "1", "--out", str(tmp_path / "e1")]) == 1
    assert "fold 1 of" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--fold", "7", "--out", str(tmp_path / "e7")]) == 1
    assert "report.json has folds [0, 1]" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--fold", "0", "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--fold", "0", "--out", str(tmp_path / "e")]) == 1
    assert "is not a gmptl run folder" in capsys.readouterr().err
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e7").exists()
