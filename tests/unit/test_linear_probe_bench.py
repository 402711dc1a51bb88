"""bench/linear_probe.py pools every hidden layer of the frozen model over the whole utterance."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from gmptl.config import ModelConfig
from gmptl.models.backbone import build_backbone

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _module():
    sys.path.insert(0, str(BENCH))  # the script imports fold_scores from its neighbour, as when run
    try:
        spec = importlib.util.spec_from_file_location("linear_probe", BENCH / "linear_probe.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


def test_each_layer_is_pooled_by_mean_and_by_mean_with_std_over_its_own_frames():
    mod = _module()
    model = build_backbone(ModelConfig(backbone="mini")).eval()
    rng = np.random.default_rng(0)
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in (8000, 16000, 12345)]
    feats = mod.pooled_layers(model, waves)
    depth = model.config.num_hidden_layers
    assert sorted(feats) == sorted(f"layer {i}, {p}" for i in range(depth + 1) for p in ("mean", "mean+std"))
    d = model.config.hidden_size
    # The second utterance, run alone with the same input scaling, gives the pooled rows of that utterance.
    x = torch.from_numpy(waves[1] / np.abs(waves[1]).max())[None]
    with torch.no_grad():
        last = model(x, output_hidden_states=True).hidden_states[depth][0].numpy()
    np.testing.assert_allclose(feats[f"layer {depth}, mean"][1], last.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats[f"layer {depth}, mean+std"][1, d:], last.std(0), rtol=1e-4, atol=1e-5)
    assert feats["layer 0, mean"].shape == (3, d) and feats["layer 0, mean+std"].shape == (3, 2 * d)
