import re
from pathlib import Path

import pytest

from gmptl.config import Config, config_hash, load_config, save_config
from gmptl.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_are_the_embedded_demo():
    cfg = load_config()
    assert cfg.data.corpus == "synthetic" and cfg.folds.scheme == "loso"
    assert cfg.data.on_bad_audio == "error" and cfg.data.max_bad_fraction == 0.01


def test_file_then_overrides(tmp_path):
    p = write(tmp_path, "data:\n  corpus: iemocap\n  root: /a\nfolds:\n  scheme: lospk\n")
    cfg = load_config(p, ["data.root=/x", "folds.scheme=loso", "data.max_bad_fraction=5e-2"])
    assert cfg.data.root == "/x" and cfg.folds.scheme == "loso"
    assert cfg.data.max_bad_fraction == pytest.approx(0.05)  # 5e-2 is a float, not YAML 1.1's string


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    p = write(tmp_path, "data:\n  corpus: synthetic\n  roots: /typo\n")
    with pytest.raises(ConfigError, match=re.escape(str(p)) + r".*unknown config key 'data.roots'"):
        load_config(p)


def test_unknown_key_in_override_names_set():
    with pytest.raises(ConfigError, match=r"--set: unknown config key 'folds.shceme'"):
        load_config(None, ["folds.shceme=loso"])


def test_a_misspelt_key_in_a_section_is_an_error():
    assert load_config(None, ["tune.num_samples=4"]).tune.num_samples == 4
    with pytest.raises(ConfigError, match=r"unknown config key 'tune.num_sample'"):
        load_config(None, ["tune.num_sample=4"])


def test_wrong_type_names_key_and_value(tmp_path):
    p = write(tmp_path, "data:\n  max_bad_fraction: lots\n")
    with pytest.raises(
        ConfigError, match=r"data.max_bad_fraction: Input should be a valid number \(got 'lots'\)"
    ):
        load_config(p)
    with pytest.raises(ConfigError, match=r"folds.n_validation_speakers.*got '2'"):
        load_config(None, ["folds.n_validation_speakers='2'"])  # a quoted string is not an int


def test_missing_root_for_a_real_corpus_is_an_error():
    with pytest.raises(ConfigError, match=r"data.root is required for corpus 'iemocap'"):
        load_config(None, ["data.corpus=iemocap"])


def test_selecting_on_test_fold_is_rejected():
    with pytest.raises(ConfigError, match=r"folds.validation=test would select models on the test fold"):
        load_config(None, ["folds.validation=test"])


def test_stage_sections_cross_checks():
    with pytest.raises(ConfigError, match=r"clustering.layer=3 is not among features.layers=\[2\]"):
        load_config(None, ["model.backbone=tiny", "features.layers=[2]", "clustering.layer=3"])
    with pytest.raises(ConfigError, match=r"clustering.k=\[64, 64\]: give distinct codebook sizes"):
        load_config(None, ["clustering.k=[64,64]"])
    with pytest.raises(ConfigError, match=r"features.layers=\[0\]: give distinct 1-based"):
        load_config(None, ["features.layers=[0]"])


def test_cross_field_rules():
    with pytest.raises(ConfigError, match=r"folds.n_folds is required"):
        load_config(None, ["folds.scheme=speaker_kfold"])
    with pytest.raises(ConfigError, match=r"folds.scheme=official needs"):
        load_config(None, ["folds.scheme=official"])
    with pytest.raises(ConfigError, match=r"expected key=value"):
        load_config(None, ["folds.scheme"])
    with pytest.raises(ConfigError, match=r"less than 1"):
        load_config(None, ["data.max_bad_fraction=1.5"])


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_round_trips_and_hash_tracks_changes(tmp_path):
    cfg = load_config(None, ["data.corpus=iemocap", "data.root=/d", "folds.scheme=lospk"])
    again = load_config(save_config(cfg, tmp_path / "resolved.yaml"))
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(None, ["data.synth.seed=1"]).data) != config_hash(Config().data)
