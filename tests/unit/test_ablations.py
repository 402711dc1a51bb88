"""`gmptl run --ablations`: the ablations file is validated up front; the table compares with the full run."""

import json
from types import SimpleNamespace

import pytest

from gmptl import ablations, experiment
from gmptl.config import derive, load_config
from gmptl.errors import ConfigError


def test_demo_ablations_all_validate():
    base = load_config("jobs/demo.yaml")
    abl = ablations.load_ablations("jobs/demo.ablations.yaml", base)
    assert set(abl) == {
        "no_gender",
        "single_k",
        "first_layer",
        "no_stage1",
        "cross_entropy",
        "plain_finetune",
    }
    assert derive(base, abl["no_gender"]).stages.mtl.alpha == 1.0
    assert derive(base, abl["single_k"]).clustering.k == [64]


def test_ablation_values_read_as_yaml_1_2(tmp_path):
    # `1e-4` is a float in YAML 1.2 (and in every gmptl file), not the string YAML 1.1 makes of it.
    f = tmp_path / "a.yaml"
    f.write_text("slow: {stages.utterance.lr: 1e-4}\n")
    abl = ablations.load_ablations(f, load_config("jobs/demo.yaml"))
    assert derive(load_config("jobs/demo.yaml"), abl["slow"]).stages.utterance.lr == 1e-4


def test_bad_ablation_names_file_ablation_and_key(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("oops: {stages.utterance.marginn: 0.1}\n")
    with pytest.raises(ConfigError, match=r"(?s)a\.yaml: ablation 'oops'.*marginn"):
        ablations.load_ablations(f, load_config("jobs/demo.yaml"))
    f.write_text("full: {stages.utterance.margin: 0.1}\n")
    with pytest.raises(ConfigError, match="`full` names the unablated run"):
        ablations.load_ablations(f, load_config("jobs/demo.yaml"))
    with pytest.raises(ConfigError, match="no ablations file"):
        ablations.load_ablations(tmp_path / "missing.yaml", load_config("jobs/demo.yaml"))


def test_run_ablations_table(tmp_path, monkeypatch):
    f = tmp_path / "a.yaml"
    f.write_text("ce: {stages.utterance.loss: ce}\nplain: {stages.utterance.init: pretrained}\n")
    uar = {("amsoftmax", "gmp"): 0.6, ("ce", "gmp"): 0.5, ("amsoftmax", "pretrained"): 0.3}
    seen = []

    def fake_run(cfg):
        seen.append(cfg)
        u = uar[(cfg.stages.utterance.loss, cfg.stages.utterance.init)]
        rep = {"folds": [{}, {}], "war_mean": u + 0.1, "war_std": 0.01, "uar_mean": u, "uar_std": 0.02}
        return SimpleNamespace(report=rep)

    monkeypatch.setattr(experiment, "run_experiment", fake_run)
    folder, text = ablations.run_ablations("jobs/demo.yaml", [f"output_dir={tmp_path}"], str(f))
    assert [c.stages.utterance.loss for c in seen] == ["amsoftmax", "ce", "amsoftmax"]
    rows = json.loads((folder / "ablations.json").read_text())
    assert [r["name"] for r in rows] == ["full", "ce", "plain"]
    assert '| ce | stages.utterance.loss="ce" | 0.600 ± 0.010 | 0.500 ± 0.020 | -0.100 |' in text
    assert "| plain |" in text and "-0.300" in text
    assert (folder / "ablations.md").read_text().count("\n|") == 5  # header, rule, 3 runs
