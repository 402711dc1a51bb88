"""Search spaces (tune_spaces/*.yaml): parsing, validation against the config schema, sampling, best YAML."""

import json
import re

import numpy as np
import pytest

from gmptl import steps
from gmptl.config import load_config, save_config
from gmptl.tuning.space import SpaceError, load_space, plan

DEMO = "jobs/demo.yaml"


def write(tmp_path, params: str, extra: str = "") -> str:
    p = tmp_path / "space.yaml"
    p.write_text(extra + "params:\n" + params)
    return str(p)


PIN = [
    "stages.utterance.init=gmp",
    "stages.gmp.init=pretrained",
    "features.source=mtl",
]  # GMP-TL as the paper runs it


@pytest.mark.parametrize(
    ("name", "config", "driver", "trial"),
    [
        ("utterance", DEMO, ["gmp"], []),  # stage 2 only: the fold's stage 0/1 models are shared
        ("gmp", DEMO, ["label"], []),
        ("mtl", DEMO, ["folds"], []),
        ("joint", None, ["folds"], ["gmp"]),  # touches stage 0: each trial computes its own upstream
    ],
)
def test_shipped_spaces_validate_and_plan(name, config, driver, trial):
    space = load_space(f"tune_spaces/{name}.yaml", config, PIN)
    cfg = space.base(config, PIN)
    assert cfg.tune.stage == space.tune_settings["stage"]
    assert all(k.split(".")[0] in ("stages", "features", "clustering") for k in space.keys)
    assert plan(space, cfg) == (driver, trial)


def test_unknown_key_names_key_file_and_a_near_match(tmp_path):
    p = write(tmp_path, "  stages.utterance.lrr: {loguniform: [1.0e-5, 1.0e-3]}\n")
    with pytest.raises(SpaceError, match=re.escape(p) + r".*'stages.utterance.lrr' is not a config key "
                       r"\(did you mean 'stages.utterance.lr'\?\)"):  # fmt: skip
        load_space(p, DEMO)
    p = write(tmp_path, "  stages.utterance: {choice: [1, 2]}\n")
    with pytest.raises(SpaceError, match="'stages.utterance' is a section"):
        load_space(p, DEMO)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("  data.synth.seed: {choice: [0, 1]}\n", "'data.synth.seed' cannot be searched"),
        ("  tune.seed: {choice: [0, 1]}\n", "'tune.seed' cannot be searched"),
        ("  stages.utterance.lr: {loguniform: [0, 1.0e-3]}\n", "stages.utterance.lr: loguniform needs low > 0"),
        ("  stages.utterance.lr: {uniform: [0.1, 0.01]}\n", r"uniform needs low < high, got \[0.1, 0.01\]"),
        ("  stages.utterance.lr: {uniform: [0.1]}\n", r"uniform takes \[low, high\] \(two numbers\)"),
        ("  stages.utterance.lr: {normal: [0, 1]}\n", "stages.utterance.lr: expected one of"),
        ("  stages.utterance.pooling: {choice: []}\n", "choice takes a non-empty list"),
        ("  stages.utterance.pooling: {choice: [mean, mean]}\n", "lists a value twice"),
        # bounds and choices go through the config's own validation, which names the rule
        ("  stages.utterance.margin: {uniform: [0.1, 1.5]}\n",
         r"stages.utterance.margin: uniform value 1.5 is not valid: .*less than 1"),
        ("  stages.utterance.pooling: {choice: [mean, max]}\n",
         r"stages.utterance.pooling: choice value 'max' is not valid: .*'mean' or 'attentive'"),
        ("  stages.utterance.mask_length: {uniform: [5, 10]}\n", r"uniform value 5.0 is not valid: .*use `choice` for an integer key"),
        ("  stages.utterance.pooling: {grid: [mean, attentive]}\n", "`grid` needs tune.searcher=random"),
        # the demo's stage 2 starts from stage 1, which does not use stage 0 (features come from it, though)
        ("  stages.utterance.lr: {loguniform: [1.0e-5, 1.0e-3]}\n  clustering.k: {choice: [[8, 16], [8]]}\n",
         None),
    ],
)  # fmt: skip
def test_invalid_params_name_file_and_key(tmp_path, params, message):
    p = write(tmp_path, params, extra="tune:\n  stage: utterance\n")
    if message is None:
        load_space(p, DEMO)  # valid
        return
    with pytest.raises(SpaceError, match=re.escape(p) + ".*" + message):
        load_space(p, DEMO)


def test_key_that_cannot_change_the_stage_is_an_error(tmp_path):
    p = write(tmp_path, "  stages.gmp.lr: {loguniform: [1.0e-5, 1.0e-3]}\n")
    with pytest.raises(SpaceError, match=r"stages.gmp.lr does not change stage utterance"):
        load_space(p, DEMO, [*PIN, "stages.utterance.init=pretrained"])  # plain fine-tuning: no stage 1
    load_space(p, DEMO, PIN)  # GMP-TL: stage 2 starts from stage 1


def test_grid_and_choice_sampling(tmp_path):
    p = write(
        tmp_path,
        "  stages.utterance.pooling: {grid: [mean, attentive]}\n"
        "  clustering.k: {grid: [[16, 64, 128], [64]]}\n"
        "  stages.utterance.scale: {choice: [16.0, 30.0]}\n"
        "  stages.utterance.lr: {loguniform: [1.0e-5, 1.0e-3]}\n",
    )
    space = load_space(p, DEMO, ["tune.searcher=random"])
    assert space.grid() == [
        {"stages.utterance.pooling": "mean", "clustering.k": [16, 64, 128]},
        {"stages.utterance.pooling": "mean", "clustering.k": [64]},
        {"stages.utterance.pooling": "attentive", "clustering.k": [16, 64, 128]},
        {"stages.utterance.pooling": "attentive", "clustering.k": [64]},
    ]
    rng = np.random.default_rng(0)
    draws = [space.sample(rng) for _ in range(200)]
    assert {d["stages.utterance.scale"] for d in draws} == {16.0, 30.0}
    assert {json.dumps(d["clustering.k"]) for d in draws} == {"[16, 64, 128]", "[64]"}
    lrs = np.array([d["stages.utterance.lr"] for d in draws])
    assert lrs.min() >= 1e-5 and lrs.max() <= 1e-3
    assert 0.3 < np.mean(lrs < 1e-4) < 0.7  # log-uniform: half the draws in the lower decade
    assert space.sample(np.random.default_rng(1)) == space.sample(np.random.default_rng(1))
    # list choices reach a searcher as JSON text (categorical) and come back as lists
    k = space.param("clustering.k")
    assert k.search_values() == ["[16, 64, 128]", "[64]"]
    assert space.decode({"clustering.k": "[64]", "stages.utterance.scale": 30.0}) == {
        "clustering.k": [64], "stages.utterance.scale": 30.0}  # fmt: skip
    assert space.apply(load_config(DEMO), {"clustering.k": "[64]"}).clustering.k == [64]


def test_best_yaml_round_trips_through_load_config(tmp_path):
    space = load_space("tune_spaces/joint.yaml", None)
    point = space.sample(np.random.default_rng(3))
    best = space.apply(space.base(None), point)
    path = save_config(best, tmp_path / "best.yaml")
    again = load_config(path)
    assert again == best
    assert again.clustering.k == point["clustering.k"] and again.features.layers == point["features.layers"]
    assert again.stages.utterance.lr == pytest.approx(point["stages.utterance.lr"])
    assert again.stages.mtl.alpha == pytest.approx(point["stages.mtl.alpha"])


def test_space_file_errors_name_the_file(tmp_path):
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(tmp_path / "nope.yaml", DEMO)
    p = tmp_path / "s.yaml"
    p.write_text("parms:\n  stages.utterance.lr: {uniform: [0.1, 0.2]}\n")
    with pytest.raises(SpaceError, match=re.escape(str(p)) + r": unknown top-level keys \['parms'\]"):
        load_space(p, DEMO)
    p.write_text("tune:\n  stage: gmp\nparams:\n  stages.gmp.lr: {uniform: [0.1, 0.2]}\n")
    with pytest.raises(SpaceError, match=r"tune.metric=val_uar: stage gmp has no emotion output"):
        load_space(p, DEMO)  # the space's tune: settings are validated like --set


def test_upstream_of_each_stage():
    def targets(cfg, stage):  # the smallest run_experiment targets that make every input of the stage
        return steps.frontier(cfg, steps.upstream(cfg, stage))

    cfg = load_config(DEMO, PIN)
    assert targets(cfg, "mtl") == ["folds"]
    assert targets(cfg, "gmp") == ["label"]
    assert targets(cfg, "utterance") == ["gmp"]
    assert targets(load_config(DEMO, [*PIN, "stages.utterance.init=pretrained"]), "utterance") == ["folds"]
    pretrained_features = load_config(DEMO, ["stages.gmp.init=mtl", "features.source=pretrained"])
    assert targets(pretrained_features, "gmp") == ["mtl", "label"]


def test_concurrency_from_cluster_resources():
    from gmptl.tuning.trials import derive_concurrency

    one = ["stages.utterance.num_workers=1", "stages.utterance.num_cpus_per_worker=1.0"]
    cfg = load_config(DEMO, [*one, "tune.num_samples=20"])  # 1 worker x 1 CPU, +0.01 for the trial itself
    assert derive_concurrency(cfg, 1, {"CPU": 2.0}) == 1
    assert derive_concurrency(cfg, 1, {"CPU": 16.0}) == 15  # 16 / 1.01
    assert derive_concurrency(cfg, 2, {"CPU": 16.0}) == 7  # 2 folds in parallel: 16 / 2.01
    light = load_config(DEMO, [*one, "stages.utterance.num_cpus_per_worker=0.9"])
    assert derive_concurrency(light, 1, {"CPU": 2.0}) == 2
    gpu = load_config(DEMO, [*one, "stages.utterance.use_gpu=true", "stages.utterance.num_workers=2"])
    assert derive_concurrency(gpu, 1, {"CPU": 64.0, "GPU": 4.0}) == 2
    assert derive_concurrency(gpu, 1, {"CPU": 64.0, "GPU": 1.0}) == 1  # does not fit: runs one (warns)
    assert derive_concurrency(load_config(DEMO, [*one, "tune.max_concurrent=5"]), 1, {"CPU": 2.0}) == 5
    assert derive_concurrency(load_config(DEMO, [*one, "tune.num_samples=2"]), 1, {"CPU": 64.0}) == 2


def test_fold_means_report_an_epoch_once_every_fold_has_it_and_the_last_once_the_run_ended():
    from gmptl.tuning.trials import FoldMeans

    m = FoldMeans([0, 1], "val_uar", "max", max_epochs=3, patience=1)
    m.add(0, {"epoch": 1, "val_uar": 0.4, "val_loss": 1.0, "best_epoch": 1})
    assert m.ready() == []  # fold 1 has not reported epoch 1 yet
    m.add(1, {"epoch": 1, "val_uar": 0.6, "val_loss": 2.0, "best_epoch": 1})
    (rep,) = m.ready()
    assert (
        rep["epoch"] == 1 and rep["objective"] == pytest.approx(0.5) and rep["val_loss"] == pytest.approx(1.5)
    )
    # fold 0's epoch 2 is not better and patience is 1: its run ends (and exports) after it
    m.add(0, {"epoch": 2, "val_uar": 0.2, "val_loss": 0.5, "best_epoch": 1})
    m.add(1, {"epoch": 2, "val_uar": 0.8, "val_loss": 1.5, "best_epoch": 2})
    assert m.ready() == []
    m.finish(0, [])
    m.add(1, {"epoch": 3, "val_uar": 0.5, "best_epoch": 2})  # epoch 3 = max_epochs: the last
    (rep2,) = m.ready()
    # objective = mean of each fold's best so far; val_uar = mean of the current values
    assert rep2["objective"] == pytest.approx((0.4 + 0.8) / 2) and rep2["val_uar"] == pytest.approx(0.5)
    m.finish(1, [{"epoch": 3, "val_uar": 0.7}])  # stage.json's history does not overwrite a forwarded epoch
    (rep3,) = m.ready()
    assert rep3["objective"] == pytest.approx((0.4 + 0.8) / 2) and rep3["val_uar"] == pytest.approx(0.35)
    assert rep3["epoch_fold0"] == 2 and rep3["epoch_fold1"] == 3 and rep3["val_uar_fold1"] == 0.5
    assert m.ready() == []
    cached = FoldMeans([0], "val_loss", "min", max_epochs=2, patience=None)  # a stage trained before
    cached.finish(0, [{"epoch": 1, "val_loss": 2.0}, {"epoch": 2, "val_loss": 3.0}])
    assert [r["objective"] for r in cached.ready()] == [2.0, 2.0]


def test_space_and_trial_bookkeeping_import_no_ray_mlflow_or_torch():
    import subprocess
    import sys

    code = (
        "import sys, gmptl.tuning.space, gmptl.tuning.trials, gmptl.locks, gmptl.cli.tune\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow', 'torch'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"pulled in: {out[:200]}"
