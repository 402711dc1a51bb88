"""Pre-training pieces without Ray: the masked-prediction loss, MFCC targets aligned to model frames, input
normalisation, model folders as backbones, the validation split, and the stored demo backbone."""

from pathlib import Path

import numpy as np
import pytest
import torch

from gmptl import paths
from gmptl.config import ModelConfig, PretrainStageConfig, load_config
from gmptl.features.mfcc import cepstra, deltas, mfcc_frames
from gmptl.models.backbone import build_backbone, frame_geometry, input_norm, normalize_input, preset_config
from gmptl.models.factory import build_model, read_model_json, save_model
from gmptl.pretraining.pipeline import split_utterances
from gmptl.training.loop import EpochStats, run_epoch
from gmptl.training.stages import make_stage

ROOT = Path(__file__).resolve().parents[2]
STORED = ROOT / "jobs" / "backbones" / "mini-synth"
JOB = ROOT / "jobs" / "pretrain_demo.yaml"


def _out(b=2, f=6, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"valid": torch.ones(b, f, dtype=torch.bool), "k5": torch.randn(b, f, k, generator=g)}


def _ce(logits, y):  # per-frame cross-entropy (B, F)
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_masked_prediction_loss_counts_masked_frames_and_weights_the_rest(weight):
    stage = make_stage("pretrain", PretrainStageConfig(unmasked_weight=weight), 4, [5])
    out = _out()
    y = torch.randint(0, 5, (2, 6), generator=torch.Generator().manual_seed(1))
    out["valid"][1, 4:] = False  # padding
    masked = torch.zeros(2, 6, dtype=torch.bool)
    masked[0, 1:3] = True
    masked[1, 3:6] = True  # frames 4, 5 are padding: never counted
    loss, parts = stage.loss(out, {"frames_k5": y}, masked)
    ce = _ce(out["k5"], y)
    m = masked & out["valid"]
    u = ~masked & out["valid"]
    want = ce[m].mean() + weight * ce[u].mean()
    assert torch.allclose(loss, want)
    assert torch.allclose(parts["ce_masked_k5"], ce[m].mean())
    assert ("ce_unmasked_k5" in parts) == (weight > 0)
    # A wrong target on an unmasked frame changes nothing unless unmasked frames are weighted.
    y2 = y.clone()
    y2[0, 0] = (y[0, 0] + 1) % 5
    loss2, _ = stage.loss(out, {"frames_k5": y2}, masked)
    assert torch.equal(loss, loss2) == (weight == 0)
    # ... and a target on padding never does.
    y3 = y.clone()
    y3[1, 5] = (y[1, 5] + 1) % 5
    assert torch.equal(stage.loss(out, {"frames_k5": y3}, masked)[0], loss)


def test_validation_is_masked_with_a_fixed_mask_and_reports_masked_accuracy():
    cfg = PretrainStageConfig(mask_prob=0.5, mask_length=2)
    stage = make_stage("pretrain", cfg, 4, [8])
    model = build_model(ModelConfig(backbone="tiny"), stage.head_spec()).eval()
    n = torch.tensor([8000, 6400])
    frames = int(model.n_frames(torch.tensor(8000)))
    batch = {"wave": torch.randn(2, 8000), "n_samples": n, "emotion": torch.zeros(2, dtype=torch.long),
             "gender": torch.zeros(2, dtype=torch.long), "frames_k8": torch.randint(0, 8, (2, frames))}  # fmt: skip

    def evaluate(seed):
        return run_epoch(
            model, [batch], stage, torch.device("cpu"), mask_gen=torch.Generator().manual_seed(seed)
        )

    a, b = evaluate(3), evaluate(3)
    assert a.masked_count > 0 and a.masked_count == b.masked_count and a.loss_sum == b.loss_sum
    assert 0 < a.masked_count < a.frame_count
    m = a.metrics("val_")
    assert 0 <= m["val_masked_acc_k8"] <= 1 and 0 <= m["val_unmasked_acc_k8"] <= 1
    hits = a.frame_hits["k8"]
    want = (hits - a.masked_hits["k8"]) / (a.frame_count - a.masked_count)
    assert m["val_unmasked_acc_k8"] == pytest.approx(want)


def test_masked_counts_survive_the_cross_rank_sum():
    from gmptl.training.loop import all_reduce_stats

    s = EpochStats(4, frame_count=10, masked_count=4, frame_hits={"k8": 6}, masked_hits={"k8": 1})
    assert all_reduce_stats(s).masked_hits == {"k8": 1}  # identity without a process group


@pytest.mark.parametrize("n_samples", [400, 401, 719, 720, 16000, 23457])
def test_mfcc_targets_line_up_with_the_models_frames(n_samples):
    model = build_backbone(ModelConfig(backbone="mini"))
    geo = frame_geometry(model.config)
    m = mfcc_frames(np.random.default_rng(0).standard_normal(n_samples).astype(np.float32), 16000, geo)
    assert len(m) == int(model._get_feat_extract_output_lengths(torch.tensor(n_samples)))
    assert m.shape[1] == 39 and np.isfinite(m).all()


def test_mfcc_frame_i_sees_exactly_its_cnn_span():
    """Changing samples outside frame i's span [i*hop, i*hop+rf) leaves frame i's cepstrum unchanged."""
    geo = frame_geometry(preset_config("mini"))
    x = np.random.default_rng(1).standard_normal(8000)
    y = x.copy()
    y[3 * geo.hop + geo.receptive_field :] += 5.0  # everything after frame 3's span
    a, b = cepstra(x, 16000, geo), cepstra(y, 16000, geo)
    assert np.allclose(a[:4], b[:4]) and not np.allclose(a[4], b[4])
    d = deltas(np.arange(10.0)[:, None] ** 2)
    assert np.allclose(d[2:-2, 0], 2 * np.arange(10.0)[2:-2])  # the regression delta of t^2 is 2t


def test_peak_and_std_normalisation_use_valid_samples_only():
    wave = torch.tensor([[0.5, -2.0, 1.0, 0.0], [0.1, -0.2, 9.0, 9.0]])
    n = torch.tensor([3, 2])
    peak = normalize_input(wave, n, "peak")
    assert torch.allclose(peak[0, :3], wave[0, :3] / 2.0) and torch.allclose(peak[1, :2], wave[1, :2] / 0.2)
    std = normalize_input(wave, n, "std")
    for i, k in enumerate(n.tolist()):
        assert std[i, :k].mean().abs() < 1e-5 and (std[i, :k].var(unbiased=False) - 1).abs() < 1e-3
        assert (std[i, k:] == 0).all()
    assert torch.equal(normalize_input(wave, n, "none"), wave)


def test_mini_is_peak_normalised_and_gain_invariant_and_the_setting_travels_with_the_folder(tmp_path):
    model = build_model(
        ModelConfig(backbone="mini"), {"frame_heads": {"k4": {"type": "frame", "hidden": 8, "n_classes": 4}}}
    ).eval()
    assert input_norm(model.backbone.config) == "peak"
    x = torch.randn(1, 8000) * 0.1
    with torch.no_grad():
        assert torch.allclose(
            model(x, torch.tensor([8000]))["k4"], model(x * 7, torch.tensor([8000]))["k4"], atol=1e-4
        )
    save_model(model, tmp_path / "m")
    again = build_backbone(
        ModelConfig(backbone=str(tmp_path / "m"))
    )  # a gmptl model folder as model.backbone
    assert input_norm(again.config) == "peak"
    for (k, v), (k2, v2) in zip(model.backbone.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    forced = build_backbone(ModelConfig(backbone=str(tmp_path / "m"), input_norm="none"))
    assert input_norm(forced.config) == "none"


def test_validation_split_is_seeded_and_disjoint():
    ids = [f"u{i}" for i in range(100)]
    a = split_utterances(ids, 0.1, seed=0)
    assert a.equals(split_utterances(list(reversed(ids)), 0.1, seed=0))
    assert (a == "validation").sum() == 10 and set(a.index) == set(ids)
    assert not a.equals(split_utterances(ids, 0.1, seed=1))
    assert (split_utterances(ids[:2], 0.01, 0) == "validation").sum() == 1


def test_pretrain_iteration_folders_reuse_earlier_iterations(tmp_path):
    one = load_config(JOB, [f"output_dir={tmp_path}", "pretrain.iterations=[{targets: mfcc, k: [64]}]"])
    two = load_config(
        JOB,
        [f"output_dir={tmp_path}", "pretrain.iterations=[{targets: mfcc, k: [64]}, {targets: 1, k: [32]}]"],
    )
    assert paths.pretrain_iteration_dir(one, 0) == paths.pretrain_iteration_dir(two, 0)
    assert paths.pretrain_dir(one) != paths.pretrain_dir(two)
    other = load_config(JOB, [f"output_dir={tmp_path}", "pretrain.train.lr=1e-3"])
    assert paths.pretrain_iteration_dir(other, 0) != paths.pretrain_iteration_dir(one, 0)
    resources = load_config(JOB, [f"output_dir={tmp_path}", "pretrain.train.num_cpus_per_worker=0.5"])
    assert paths.pretrain_dir(resources) == paths.pretrain_dir(one)
    policy = load_config(JOB, [f"output_dir={tmp_path}", "folds.transductive=true"])  # changes no weights
    assert paths.pretrain_dir(policy) == paths.pretrain_dir(one)


def test_a_target_layer_the_model_does_not_have_is_an_error_before_anything_runs():
    from gmptl.pretraining.pipeline import PretrainError, check_iterations

    with pytest.raises(PretrainError, match=r"pretrain.iterations\[1\].targets=3: .* 2 transformer layers"):
        check_iterations(
            load_config(JOB, ["pretrain.iterations=[{targets: mfcc, k: [8]}, {targets: 3, k: [8]}]"])
        )
    check_iterations(load_config(JOB))


def test_the_stored_demo_backbone_loads_and_matches_its_job_file():
    meta = read_model_json(STORED)
    assert meta["pretrain"]["config_hash"] == paths.pretrain_hash(load_config(JOB)), (
        "jobs/backbones/mini-synth was not made by jobs/pretrain_demo.yaml as it is now: run `make backbone`"
    )
    model = build_backbone(ModelConfig(backbone=str(STORED)))
    assert input_norm(model.config) == "peak" and model.config.num_hidden_layers == 2
    size = sum(f.stat().st_size for f in STORED.rglob("*") if f.is_file())
    assert size < 2_000_000, f"the stored backbone is {size} bytes: keep it small"


def test_a_backbone_pretrained_on_test_speakers_is_refused_unless_transductive(tmp_path):
    from gmptl.config import to_dict
    from gmptl.errors import ConfigError
    from gmptl.pretraining.provenance import check_speaker_independent, seen_test_speakers

    demo = load_config(ROOT / "jobs" / "demo.yaml")
    model = build_model(
        ModelConfig(backbone="mini"), {"frame_heads": {"k4": {"type": "frame", "hidden": 8, "n_classes": 4}}}
    )
    record = {
        "corpus": "synthetic",
        "synth": to_dict(demo.data.synth),
        "speakers": ["Ses01_F", "Ses01_M", "Ses02_F"],
    }
    save_model(model, tmp_path / "m", {"pretrain": record})
    cfg = load_config(
        ROOT / "jobs" / "demo.yaml", [f"model.backbone={tmp_path / 'm'}", "features.layers=[2]"]
    )
    assert seen_test_speakers(cfg, ["Ses01_F", "Ses03_F"]) == ["Ses01_F"]
    with pytest.raises(ConfigError, match=r"test speakers \['Ses01_F'\].*folds.transductive=true"):
        check_speaker_independent(cfg, ["Ses01_F", "Ses03_F"])
    check_speaker_independent(cfg, ["Ses03_F"])  # not heard
    other_voices = load_config(ROOT / "jobs" / "demo.yaml", [f"model.backbone={tmp_path / 'm'}", "features.layers=[2]",
                                                            "data.synth.seed=5"])  # fmt: skip
    assert seen_test_speakers(other_voices, ["Ses01_F"]) == []  # same names, other voices
    allowed = load_config(ROOT / "jobs" / "demo.yaml", [f"model.backbone={tmp_path / 'm'}", "features.layers=[2]",
                                                       "folds.transductive=true"])  # fmt: skip
    check_speaker_independent(allowed, ["Ses01_F"])
