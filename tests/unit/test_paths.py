"""Artifact paths are absolute (Ray workers run elsewhere) and hashes do not depend on where output_dir is."""

import pickle
from pathlib import Path

from gmptl import paths
from gmptl.config import load_config
from gmptl.data.audio import AudioError

REPO = Path(__file__).resolve().parents[2]


def test_paths_absolute_and_hashes_relocatable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "jobs/demo.yaml", ["output_dir=out/x"])
    for p in (paths.corpus_root(cfg), paths.manifest_path(cfg), paths.features_dir(cfg, 0), paths.labels_dir(cfg, 1),
              paths.stage_dir(cfg, 2, "utterance"), Path(paths.storage_path(cfg))):  # fmt: skip
        assert p.is_absolute() and str(p).startswith(str(tmp_path / "out/x")), p
    moved = cfg.model_copy(update={"output_dir": str(tmp_path / "elsewhere")})
    assert paths.stage_dir(moved, 2, "utterance").relative_to(tmp_path / "elsewhere") == paths.stage_dir(
        cfg, 2, "utterance"
    ).relative_to(tmp_path / "out/x")
    assert paths.features_dir(cfg, 0) != paths.features_dir(cfg, 1)  # features.source=mtl: one per fold


def test_audio_error_survives_pickling():
    e = pickle.loads(pickle.dumps(AudioError("/a.wav", "missing file")))
    assert isinstance(e, AudioError) and e.path == "/a.wav" and e.reason == "missing file"


def test_cache_keys_follow_a_local_backbones_weights_not_only_its_path(tmp_path):
    import shutil

    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "bb"
    shutil.copytree(REPO / "jobs/backbones/mini-synth", folder)
    weights = folder / "backbone" / "model.safetensors"
    cfg = load_config(REPO / "jobs/demo.yaml", [f"output_dir={tmp_path / 'out'}", f"model.backbone={folder}"])

    def keys():
        return paths.stage_dir(cfg, 0, "mtl"), paths.features_dir(cfg, 0)

    before = keys()
    original = weights.read_bytes()
    save_file({"w": torch.zeros(3)}, str(weights))  # the folder rebuilt in place with other weights
    changed = keys()
    assert changed[0] != before[0] and changed[1] != before[1]
    weights.write_bytes(original)  # the same weights again: the same keys (content, not file times)
    assert keys() == before
    preset = cfg.model_copy(update={"model": cfg.model.model_copy(update={"backbone": "mini"})})
    assert paths.backbone_fingerprint("mini") is None and paths.stage_dir(preset, 0, "mtl") != before[0]
