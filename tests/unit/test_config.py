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


def test_tilde_in_output_dir_is_the_home_folder_everywhere(monkeypatch, tmp_path):
    from gmptl import paths, tracking
    from gmptl.config import absolutize

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(None, ["output_dir=~/runs/x", "runtime.storage_path=~/ckpt"])
    assert paths.output_dir(cfg) == tmp_path / "runs" / "x"
    # the embedded MLflow store lives in output_dir, not in a folder named `~` under the working directory
    assert tracking.resolve_uri(cfg) == f"sqlite:///{tmp_path}/runs/x/mlflow.db"
    assert paths.storage_path(cfg) == str(tmp_path / "ckpt")
    explicit = load_config(None, ["tracking.uri=sqlite:///~/m.db"])
    assert tracking.resolve_uri(explicit) == f"sqlite:///{tmp_path}/m.db"
    absolute = absolutize(load_config(None, ["output_dir=~/o", "data.corpus=iemocap", "data.root=rel/corpus",
                                             "tracking.uri=http://mlflow:5000", "runtime.storage_path=s3://b/c"]))  # fmt: skip
    assert absolute.output_dir == str(tmp_path / "o")
    assert Path(absolute.data.root).is_absolute() and absolute.data.root.endswith("rel/corpus")
    assert absolute.tracking.uri == "http://mlflow:5000" and absolute.runtime.storage_path == "s3://b/c"


def test_derive_validates_and_names_the_key():
    from gmptl.config import derive

    base = load_config(None, ["stages.utterance.lr=0.001"])
    assert derive(base, {"stages.utterance.lr": 1e-4}).stages.utterance.lr == 1e-4
    assert base.stages.utterance.lr == 0.001  # the base is left as it was
    with pytest.raises(ConfigError, match=r"ablation 'x': .*stages\.utterance\.marginn"):
        derive(base, {"stages.utterance.marginn": 0.1}, "ablation 'x'")
    with pytest.raises(ConfigError, match=r"stages\.nope.*not a config section"):
        derive(base, {"stages.nope.lr": 0.1})
    with pytest.raises(ConfigError, match="stages.utterance.lr"):
        derive(base, {"stages.utterance.lr": "fast"})


def test_one_yaml_reader_names_file_and_line(tmp_path):
    from gmptl.config import read_yaml

    p = tmp_path / "c.yaml"
    p.write_text("stages:\n  utterance:\n    lr: 1e-4\n")
    assert read_yaml(p)["stages"]["utterance"]["lr"] == 1e-4  # YAML 1.2: a float, not a string
    p.write_text("stages:\n  utterance:\n    lr: [1e-4\n")
    with pytest.raises(ConfigError, match=re.escape(str(p)) + r", line \d+: not valid YAML"):
        read_yaml(p)
    p.write_bytes("output_dir: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=re.escape(str(p)) + ": not UTF-8"):
        load_config(p)
    p.write_bytes(b"\xef\xbb\xbfoutput_dir: out/x\n")  # a byte-order mark is not part of the first key
    assert load_config(p).output_dir == "out/x"


def test_an_unknown_key_from_set_is_blamed_on_set():
    with pytest.raises(ConfigError, match="--set: unknown config key 'foo'"):
        load_config("jobs/demo.yaml", ["foo.bar=1"])


@pytest.mark.parametrize("key", ["stages.utterance.lr", "stages.utterance.scale", "stages.mtl.crop_s"])
@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_non_finite_values_are_rejected(key, value):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, [f"{key}={value}"])


def test_a_seed_listed_twice_is_rejected():
    with pytest.raises(ConfigError, match=r"seeds=\[0, 0\] lists a seed twice"):
        load_config(None, ["seeds=[0, 0]"])
    assert load_config(None, ["seeds=[0, 1]"]).seeds == [0, 1]


@pytest.mark.parametrize("key", ["metadata_file", "speaker_table"])
@pytest.mark.parametrize("value", ["../labels.csv", "/etc/labels.csv", "a/../../labels.csv", "..\\x.csv"])
def test_metadata_and_speaker_tables_stay_inside_the_corpus_root(key, value):
    with pytest.raises(ConfigError, match=rf"data.{key}=.* leaves the corpus root"):
        load_config(None, ["data.corpus=generic", "data.root=/data/c", f"data.{key}={value}"])
    ok = load_config(None, ["data.corpus=generic", "data.root=/data/c", f"data.{key}=meta/../labels.csv"])
    assert getattr(ok.data, key) == "meta/../labels.csv"


def test_a_malformed_set_value_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match=r"--set 'clustering.k=\[64, 512': the value is not valid YAML"):
        load_config(None, ["clustering.k=[64, 512"])


def test_command_options_are_values_not_yaml(tmp_path, capsys):
    from gmptl.cli import main

    root = tmp_path / "c #1"  # YAML would read `/…/c #1` as `/…/c` (the rest a comment)
    rc = main(["prepare", "--corpus", "iemocap", "--root", str(root), "--out", str(tmp_path / "m.parquet")])
    assert rc != 0 and "c #1" in capsys.readouterr().err


def test_the_sample_rate_must_match_the_backbone(tmp_path):
    from gmptl.models.backbone import check_sample_rate

    with pytest.raises(
        ConfigError, match="data.sample_rate_hz=8000: the 'tiny' preset's CNN is built for 16000 Hz"
    ):
        load_config(None, ["model.backbone=tiny", "data.sample_rate_hz=8000"])
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "preprocessor_config.json").write_text('{"sampling_rate": 16000}')
    cfg = load_config(None, [f"model.backbone={folder}", "data.sample_rate_hz=22050"])
    with pytest.raises(ConfigError, match=r"was trained on 16000 Hz audio .*set data.sample_rate_hz=16000"):
        check_sample_rate(cfg.model, cfg.data.sample_rate_hz)
    check_sample_rate(cfg.model, 16000)
