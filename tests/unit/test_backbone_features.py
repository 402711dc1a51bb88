"""Backbone presets, the from_pretrained path, the 1-based layer convention, frame counts and chunking."""

import copy

import numpy as np
import pytest
import torch

from gmptl.config import load_config
from gmptl.errors import ConfigError
from gmptl.features.extractor import FeatureExtractor, chunk_spans, conv_geometry
from gmptl.models.backbone import (
    _FAMILIES,
    build_backbone,
    load_pretrained,
    n_frames,
    preset_config,
    truncate_to,
)


def cfgs(*sets):
    cfg = load_config(None, ["model.backbone=tiny", "features.layers=[1,2,3,4]", *sets])
    return cfg.model, cfg.features


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_backbone(cfgs()[0]).eval()


def wave(n, seed=0):
    return np.random.default_rng(seed).normal(0, 0.1, n).astype(np.float32)


def test_layer_numbering_is_one_based_transformer_layers(tiny):
    captured = {}
    hooks = [
        layer.register_forward_hook(
            lambda m, i, o, k=k: captured.__setitem__(k, o[0] if isinstance(o, tuple) else o)
        )
        for k, layer in enumerate(tiny.encoder.layers, start=1)
    ]
    x = wave(16000)
    with torch.no_grad():
        hs = tiny(torch.from_numpy(x)[None], output_hidden_states=True).hidden_states
    for h in hooks:
        h.remove()
    assert len(hs) == 5  # input to layer 1, then the 4 layer outputs
    enc = FeatureExtractor(*cfgs(), model=tiny).encode([x])[0]
    for layer in (1, 2, 3, 4):
        torch.testing.assert_close(hs[layer], captured[layer])  # hidden_states[L] = output of layer L
        np.testing.assert_allclose(enc[layer], captured[layer][0].numpy(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(hs[0], captured[1])  # hidden_states[0] is not a transformer layer's output


@pytest.mark.parametrize("n", [400, 401, 719, 720, 16000, 3 * 16000 + 123])
def test_frame_counts(tiny, n):
    geo = conv_geometry(tiny)
    assert (geo.hop, geo.receptive_field) == (320, 400)
    expected = (n - 400) // 320 + 1
    assert geo.n_frames(n) == expected == int(n_frames(tiny, n))
    enc = FeatureExtractor(*cfgs("features.layers=[2]"), model=tiny).encode([wave(n)])[0]
    assert enc[2].shape == (expected, 64) and enc[2].dtype == np.float32


def test_too_short_for_one_frame_is_an_error(tiny):
    with pytest.raises(ValueError, match="fewer than one frame"):
        FeatureExtractor(*cfgs(), model=tiny).encode([wave(399)])


def test_padded_batch_equals_one_by_one(tiny):
    ext = FeatureExtractor(*cfgs("features.batch_max_audio_s=100"), model=tiny)
    waves = [wave(n, i) for i, n in enumerate([8000, 16000, 11111, 4000])]
    batched = ext.encode(waves)
    for w, b in zip(waves, batched, strict=True):
        single = ext.encode([w])[0]
        for layer in b:
            np.testing.assert_allclose(b[layer], single[layer], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [16000 * 5, 16000 * 5 + 77, 16000 * 7 + 319])
def test_chunks_line_up_with_the_whole_pass(tiny, n):
    geo = conv_geometry(tiny)
    spans = chunk_spans(n, geo, max_chunk_samples=16000 * 2)
    assert len(spans) > 1 and sum(f for *_, f in spans) == geo.n_frames(n)
    x = torch.from_numpy(wave(n))[None]
    with torch.no_grad():
        whole = tiny.feature_extractor(x)[0].T  # (frames, C) CNN output of the whole utterance
        pieces = [tiny.feature_extractor(x[:, s0:s1])[0].T for s0, s1, _ in spans]
    for (_, _, f), p in zip(spans, pieces, strict=True):
        assert p.shape[0] == f
    # Exactly the same CNN frames at the same positions (the tiny preset's CNN is frame-local).
    torch.testing.assert_close(torch.cat(pieces), whole, rtol=1e-5, atol=1e-5)
    chunked = FeatureExtractor(*cfgs("features.max_chunk_s=2.0"), model=tiny).encode([wave(n)])[0]
    assert chunked[4].shape == (geo.n_frames(n), 64)


def test_save_then_load_through_from_pretrained(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "tiny-hubert")
    assert (tmp_path / "tiny-hubert" / "model.safetensors").is_file()
    loaded = build_backbone(
        load_config(None, [f"model.backbone={tmp_path / 'tiny-hubert'}", "features.layers=[2]"]).model
    )
    x = torch.from_numpy(wave(8000))[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x).last_hidden_state, tiny(x).last_hidden_state)
    assert type(loaded).__name__ == "HubertModel"


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"could not be loaded.*huggingface-cli download"):
        load_pretrained("facebook/hubert-base-ls960-not-cached", offline=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"has no config.json"):
        load_pretrained(str(tmp_path / "empty"))


@pytest.mark.parametrize("arch", ["wav2vec2", "wavlm"])
def test_other_encoders_share_the_interface(arch):
    model_cfg, feat_cfg = cfgs(f"model.architecture={arch}", "features.layers=[3]")
    enc = FeatureExtractor(model_cfg, feat_cfg).encode([wave(16000)])[0]
    assert enc[3].shape == (49, 64)


def test_presets_have_the_published_shapes():
    base, large = preset_config("base"), preset_config("large")
    assert (base.hidden_size, base.num_hidden_layers, base.intermediate_size) == (768, 12, 3072)
    assert (large.hidden_size, large.num_hidden_layers, large.intermediate_size) == (1024, 24, 4096)
    with pytest.raises(ConfigError, match=r"features.layers=\[13\]: the 'base' preset has 12"):
        load_config(None, ["model.backbone=base", "features.layers=[13]"])


@pytest.mark.parametrize("arch", ["hubert", "wav2vec2", "wavlm"])
@pytest.mark.parametrize("stable", [False, True])
def test_truncated_encoder_gives_the_whole_models_hidden_states(arch, stable):
    """Extraction runs only the layers it keeps; hidden_states[1..deepest] must not change.

    Stable-layer-norm encoders (HuBERT large) normalise the last hidden state, which is why
    they keep one layer more: without it, hidden_states[deepest] would come out normalised.
    """
    config_cls, model_cls = _FAMILIES[arch]
    config = preset_config("tiny", arch)
    config.do_stable_layer_norm = stable
    torch.manual_seed(0)
    full = model_cls(config).eval()
    cut = model_cls(config).eval()
    cut.load_state_dict(full.state_dict())
    x = torch.from_numpy(wave(16000))[None]
    with torch.no_grad():
        want = full(x, output_hidden_states=True).hidden_states
        for deepest in (4, 2, 1):  # cut further each time
            kept = truncate_to(cut, deepest)
            assert kept == (min(4, deepest + 1) if stable else deepest)
            got = cut(x, output_hidden_states=True).hidden_states
            assert len(got) == kept + 1
            for layer in range(1, deepest + 1):
                torch.testing.assert_close(got[layer], want[layer])
    with pytest.raises(ConfigError, match="outside 1..4"):
        truncate_to(full, 5)


def test_extractor_runs_only_the_layers_it_needs():
    model_cfg, feat_cfg = cfgs("features.layers=[2]")
    ext = FeatureExtractor(model_cfg, feat_cfg)
    assert len(ext.model.encoder.layers) == 2
    whole = build_backbone(model_cfg).eval()  # same init_seed: the same weights
    x = wave(16000)
    with torch.no_grad():
        want = whole(torch.from_numpy(x)[None], output_hidden_states=True).hidden_states[2][0].numpy()
    np.testing.assert_allclose(ext.encode([x])[0][2], want, rtol=1e-5, atol=1e-5)
    given = build_backbone(model_cfg)
    FeatureExtractor(model_cfg, feat_cfg, model=given)
    assert len(given.encoder.layers) == 4  # a model handed in is never cut


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest per-frame cosine similarity between two (frames, D) arrays."""
    num = (a * b).sum(-1)
    return float((num / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())


def test_bf16_extraction_is_the_fp32_features_in_lower_precision(tiny):
    waves = [wave(n, i) for i, n in enumerate([8000, 16000, 24000])]
    fp32 = FeatureExtractor(*cfgs(), model=tiny, bf16=False).encode(waves)
    bf16 = FeatureExtractor(*cfgs(), model=tiny, bf16=True).encode(waves)
    for a, b in zip(fp32, bf16, strict=True):
        for layer in a:
            assert a[layer].shape == b[layer].shape and np.isfinite(b[layer]).all()
            assert not np.array_equal(a[layer], b[layer])  # autocast really ran
            assert _min_cosine(a[layer], b[layer]) > 0.98


def test_float16_output_is_the_float32_features_rounded(tiny):
    ext = FeatureExtractor(*cfgs("features.batch_max_audio_s=1"), model=tiny)  # several batches
    waves = [wave(n, i) for i, n in enumerate([8000, 16000, 24000])]
    for a, b in zip(ext.encode(waves), ext.encode(waves, dtype="float16"), strict=True):
        for layer in a:
            assert a[layer].dtype == np.float32 and b[layer].dtype == np.float16
            np.testing.assert_array_equal(a[layer].astype(np.float16), b[layer])


@pytest.mark.gpu
def test_gpu_extraction_matches_cpu(tiny):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    # Several batches, so the GPU pipeline (batch i + 1 queued before batch i is copied out) is exercised.
    sets = ("features.batch_max_audio_s=2",)
    waves = [wave(n, i) for i, n in enumerate([8000, 16000, 40000, 12000, 20000])]
    cpu = FeatureExtractor(*cfgs(*sets), model=tiny, device="cpu").encode(waves)
    on_gpu = copy.deepcopy(tiny)  # the module fixture stays on the CPU for the other tests
    gpu = FeatureExtractor(*cfgs(*sets), model=on_gpu, device="cuda")
    assert gpu.bf16  # the GPU default
    # fp32 on the GPU differs from the CPU only by cuDNN's TF32 convolutions and summation order.
    gpu_fp32 = FeatureExtractor(*cfgs(*sets), model=on_gpu, device="cuda", bf16=False)
    for ext, dtype, floor in ((gpu, "float16", 0.98), (gpu_fp32, "float32", 0.999)):
        for a, b in zip(cpu, ext.encode(waves, dtype=dtype), strict=True):
            for layer in a:
                assert a[layer].shape == b[layer].shape and b[layer].dtype == np.dtype(dtype)
                assert np.isfinite(b[layer]).all(), ext.bf16
                assert _min_cosine(a[layer], b[layer].astype(np.float32)) > floor, (ext.bf16, layer)
