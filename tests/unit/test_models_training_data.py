"""Model factory (padding invariance, save/load, freezing), training batches (crops, bucketing, frame labels)."""

import numpy as np
import pytest
import torch

from gmptl.config import ModelConfig, load_config
from gmptl.data.batching import length_batches
from gmptl.models.factory import build_model, configure_training, load_model, save_model
from gmptl.training import data as tdata
from gmptl.training.loop import lr_lambda, span_mask
from gmptl.training.stages import make_stage

TINY = ModelConfig(backbone="tiny")


def _spec(pooling="mean"):
    return {
        "pooling": pooling,
        "utterance_heads": {
            "emotion": {"type": "cosine", "n_classes": 4},
            "gender": {"type": "linear", "n_classes": 2},
        },
        "frame_heads": {"k8": {"type": "frame", "hidden": 16, "n_classes": 8}},
    }


@pytest.mark.parametrize("pooling", ["mean", "attentive"])
def test_padded_batch_equals_one_by_one(pooling):
    torch.manual_seed(0)
    model = build_model(TINY, _spec(pooling)).eval()
    lengths = [16000, 9000, 23456]
    waves = [torch.randn(n) * 0.1 for n in lengths]
    batch = torch.zeros(3, max(lengths))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    with torch.no_grad():
        out = model(batch, torch.tensor(lengths))
        for i, w in enumerate(waves):
            one = model(w[None], torch.tensor([len(w)]))
            assert torch.allclose(out["emotion"][i], one["emotion"][0], atol=1e-5)
            assert torch.allclose(out["gender"][i], one["gender"][0], atol=1e-5)
            n = int(one["valid"].sum())
            assert int(out["valid"][i].sum()) == n
            assert torch.allclose(out["k8"][i, :n], one["k8"][0], atol=1e-4)


def test_cosine_head_outputs_cosines():
    model = build_model(TINY, _spec()).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 8000), torch.tensor([8000, 6000]))
    assert out["emotion"].abs().max() <= 1.0 + 1e-6
    track = model.frame_track(torch.randn(1, 8000), torch.tensor([8000]))
    assert track.shape[-1] == 4 and track.shape[1] == int(out["valid"][0].sum())


def test_save_load_round_trip(tmp_path):
    model = build_model(TINY, _spec("attentive")).eval()
    save_model(model, tmp_path / "m", {"labels": ["a", "b", "c", "d"]})
    assert not list((tmp_path / "m").rglob("*.bin")) and not list((tmp_path / "m").rglob("*.pt"))
    loaded, meta = load_model(tmp_path / "m")
    assert meta["labels"] == ["a", "b", "c", "d"]
    x, n = torch.randn(2, 12000), torch.tensor([12000, 7000])
    with torch.no_grad():
        a, b = model(x, n), loaded(x, n)
    for k in ("emotion", "gender", "k8"):
        assert torch.allclose(a[k], b[k], atol=1e-6)
    # a later stage starts from this folder's backbone
    nxt = build_model(
        TINY, {"utterance_heads": {"emotion": {"type": "linear", "n_classes": 4}}}, tmp_path / "m"
    )
    sd = model.backbone.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in nxt.backbone.state_dict().items())


def test_load_model_missing_folder_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path)


def test_freezing_and_dropout():
    sets = [
        "model.backbone=tiny",
        "stages.mtl.freeze_cnn=true",
        "stages.mtl.freeze_layers=2",
        "stages.mtl.dropout=0.3",
    ]
    cfg = load_config("jobs/demo.yaml", sets)
    model = build_model(cfg.model, _spec())
    configure_training(model, cfg.stages.mtl)
    bb = model.backbone
    assert not any(p.requires_grad for p in bb.feature_extractor.parameters())
    assert bb.feature_extractor._requires_grad is False  # no backward through the frozen CNN at all
    assert not any(p.requires_grad for p in bb.encoder.layers[1].parameters())
    assert all(p.requires_grad for p in bb.encoder.layers[2].parameters())
    assert all(m.p == 0.3 for m in bb.modules() if isinstance(m, torch.nn.Dropout))
    # freeze_cnn=false trains the CNN (and asks autograd for its gradients)
    cfg = load_config("jobs/demo.yaml", ["model.backbone=tiny", "stages.mtl.freeze_cnn=false"])
    model = build_model(cfg.model, _spec())
    configure_training(model, cfg.stages.mtl)
    assert all(p.requires_grad for p in model.backbone.feature_extractor.parameters())
    assert model.backbone.feature_extractor._requires_grad is True


def test_no_hidden_masking_in_training_and_mask_embedding_survives_save(tmp_path):
    # gmptl draws the time masks itself (seeded): training mode without a mask is the eval-mode function
    cfg = load_config("jobs/demo.yaml", ["stages.mtl.dropout=0.0"])
    model = build_model(cfg.model, _spec())
    configure_training(model, cfg.stages.mtl)
    x, n = torch.randn(2, 16000), torch.tensor([16000, 12000])
    with torch.no_grad():
        a = model.train()(x, n)["emotion"]
        b = model.eval()(x, n)["emotion"]
    assert torch.allclose(a, b, atol=1e-6)
    # a backbone whose config disables masking still gets (and saves, and reloads) a mask embedding
    from gmptl.models.backbone import preset_config
    from gmptl.models.factory import SERModel

    pc = preset_config("tiny")
    pc.mask_time_prob = 0.0
    bare = SERModel(__import__("transformers").HubertModel(pc), _spec())
    save_model(bare, tmp_path / "m")
    again = build_model(cfg.model, _spec(), tmp_path / "m")
    assert torch.equal(again.backbone.masked_spec_embed, bare.backbone.masked_spec_embed)
    mask = torch.zeros(1, 49, dtype=torch.bool)
    mask[0, 5:15] = True
    with torch.no_grad():
        again.train()(torch.randn(1, 16000), torch.tensor([16000]), mask)  # masking works


def test_crop_frame_labels_line_up_with_whole_utterance(tmp_path):
    import soundfile as sf

    model = build_model(TINY, {"frame_heads": {}})
    geo = tdata.Geometry(320, 400)
    rng = np.random.default_rng(0)
    items, labels = [], {}
    for i, n in enumerate([16000, 40000, 5000]):
        p = tmp_path / f"u{i}.wav"
        sf.write(p, (rng.normal(size=n) * 0.1).astype(np.float32), 16000, subtype="FLOAT")
        items.append(tdata.Item(f"u{i}", str(p), n, i % 4, i % 2))
        nf = int(model.n_frames(torch.tensor(n)))
        assert nf == geo.n_frames(n)
        labels[f"u{i}"] = {"k8": np.arange(nf) % 8 + 100 * i}
    ds = tdata.UtteranceDataset(items, 16000, geo, 8000, frame_labels=labels.__getitem__)
    reqs = tdata.crop_requests(items, 8000, geo.hop, 0.0, rng)
    batch = ds.collate(reqs)
    whole = {
        it.utt_id: tdata.UtteranceDataset([it], 16000, geo, None).collate([tdata.Request(0)]) for it in items
    }
    for i, r in enumerate(reqs):
        n = int(batch["n_samples"][i])
        f0 = max(r.start, 0) // geo.hop
        nf = geo.n_frames(n)
        assert np.array_equal(batch["frames_k8"][i, :nf].numpy(), labels[items[i].utt_id]["k8"][f0 : f0 + nf])
        assert (batch["frames_k8"][i, nf:] == -1).all()
        w = whole[items[i].utt_id]["wave"][0]
        assert torch.equal(batch["wave"][i, :n], w[max(r.start, 0) : max(r.start, 0) + n])
        # the crop's frames are the whole pass's frames (layer-norm tiny model, CNN output)
    assert reqs[2].start == 0 and int(batch["n_samples"][2]) == 5000  # shorter than the crop: whole


def test_frame_label_count_mismatch_names_the_utterance(tmp_path):
    import soundfile as sf

    p = tmp_path / "x.wav"
    sf.write(p, np.zeros(16000, np.float32), 16000)
    it = tdata.Item("utt_x", str(p), 16000, 0, 0)
    ds = tdata.UtteranceDataset(
        [it], 16000, tdata.Geometry(320, 400), None, frame_labels=lambda u: {"k8": np.zeros(10)}
    )
    with pytest.raises(ValueError, match="utt_x.*10 frame labels"):
        ds.collate([tdata.Request(0)])


def test_bucketing_reduces_padding_and_keeps_every_example():
    rng = np.random.default_rng(0)
    lengths = rng.integers(16000, 16000 * 10, 500).tolist()
    waste = {}
    for mode in ("bucket", "random"):
        batches = tdata.plan_batches(lengths, 16, mode, np.random.default_rng(1), pool_batches=20)
        assert sorted(i for b in batches for i in b) == list(range(500))
        real = sum(lengths)
        slots = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        waste[mode] = 1 - real / slots
    assert waste["bucket"] < 0.1 < waste["random"]


def test_shard_batches_disjoint_and_equal_steps():
    batches = [[i] for i in range(7)]
    shards = [tdata.shard_batches(batches, r, 3) for r in range(3)]
    assert all(len(s) == 3 for s, _ in shards) and shards[0][1] == 2
    assert sorted(b[0] for s, _ in shards for b in s) == sorted(list(range(7)) + [0, 1])
    ev = length_batches([5, 1, 9, 3], 12)
    assert sorted(i for b in ev for i in b) == [0, 1, 2, 3]
    assert all(len(b) * max([5, 1, 9, 3][i] for i in b) <= 12 or len(b) == 1 for b in ev)


def test_span_mask_and_schedule():
    g = torch.Generator().manual_seed(0)
    m = span_mask(torch.tensor([200, 50, 0]), 210, 0.065, 10, g)
    assert m.shape == (3, 210) and not m[0, 200:].any() and not m[1, 50:].any() and not m[2].any()
    assert 0.02 < m[0].float().mean() < 0.2
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(m, span_mask(torch.tensor([200, 50, 0]), 210, 0.065, 10, g2))
    f = lr_lambda(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(100) == 0.0
    assert f(55) == pytest.approx(0.5)


def test_stage_specs():
    cfg = load_config("jobs/demo.yaml")
    assert make_stage("gmp", cfg.stages.gmp, 4, [8, 16]).head_spec()["frame_heads"]["k16"]["n_classes"] == 16
    assert make_stage("utterance", cfg.stages.utterance, 4).selection == ("val_uar", "max")
    with pytest.raises(TypeError):
        make_stage("gmp", cfg.stages.mtl, 4, [8])
