"""The step graph (gmptl.steps) is the one place a step is declared: run, tune, train and the CLI read it."""

import dataclasses

import pytest

from gmptl import steps
from gmptl.cli import main
from gmptl.config import load_config
from gmptl.experiment import plan as run_plan
from gmptl.tuning.space import load_space
from gmptl.tuning.space import plan as tune_plan

DEMO = "jobs/demo.yaml"
GMPTL = ["stages.utterance.init=gmp", "stages.gmp.init=pretrained", "features.source=mtl"]


def test_default_graph_is_the_gmptl_pipeline():
    cfg = load_config(DEMO, GMPTL)
    assert run_plan(cfg) == ["folds", "mtl", "extract", "cluster", "label", "gmp", "utterance", "evaluate"]
    assert steps.train_stages() == ["mtl", "gmp", "utterance"]
    # every training stage has its config section
    assert all(hasattr(cfg.stages, s) for s in steps.train_stages())


@pytest.mark.parametrize(
    ("sets", "until", "expected"),
    [
        (["stages.utterance.init=pretrained"], "evaluate", ["folds", "utterance", "evaluate"]),
        (["features.source=pretrained"], "label", ["folds", "extract", "cluster", "label"]),
        (["features.source=pretrained", "stages.gmp.init=mtl"], "gmp",
         ["folds", "mtl", "extract", "cluster", "label", "gmp"]),
        (["stages.utterance.init=mtl"], "utterance", ["folds", "mtl", "utterance"]),
        ([], "folds", ["folds"]),
    ],
)  # fmt: skip
def test_needed_steps_follow_the_config(sets, until, expected):
    assert run_plan(load_config(DEMO, [*GMPTL, *sets]), until) == expected


def test_a_searched_key_maps_to_the_first_step_it_changes():
    assert steps.step_of("clustering.k") == "cluster"
    assert steps.step_of("features.layers") == "extract"
    assert steps.step_of("stages.gmp.lr") == "gmp"
    assert steps.step_of("model.backbone") == "mtl"
    assert steps.step_of("model.backbone", ["folds", "utterance"]) == "utterance"
    assert steps.step_of("features.layers", ["folds", "utterance"]) is None


def test_a_new_step_needs_one_entry(monkeypatch, tmp_path, capsys):
    """A dummy step added to GRAPH alone shows up in run's plan, tune's plan, trial locks and the CLI."""
    relabel = steps.Step(
        "relabel", "data", lambda c: ("label",), keys=("clustering.",),
        folder=lambda c, fold: tmp_path / "relabel" / f"fold{fold}", marker="done.json",
        body="tests_dummy:relabel",
    )  # fmt: skip
    gmp = steps.get("gmp")
    graph = []
    for s in steps.GRAPH:
        if s.name == "gmp":
            graph += [relabel, dataclasses.replace(s, needs=lambda c: ("relabel",))]
        else:
            graph.append(s)
    monkeypatch.setattr(steps, "GRAPH", tuple(graph))
    cfg = load_config(DEMO, GMPTL)

    assert run_plan(cfg, "gmp") == ["folds", "mtl", "extract", "cluster", "label", "relabel", "gmp"]
    # tune: a stage-1 search shares everything before it, the new step included
    space = load_space("tune_spaces/gmp.yaml", DEMO, GMPTL)
    assert tune_plan(space, space.base(DEMO, GMPTL)) == (["relabel"], [])
    joint = load_space("tune_spaces/joint.yaml", None, GMPTL)
    base = joint.base(None, GMPTL)
    driver, trial = tune_plan(joint, base)
    assert driver == ["folds"] and trial == ["gmp"]
    # a trial that computes its own upstream locks the new step's folder too
    assert tmp_path / "relabel" / "fold0" in steps.folders(base, 0, steps.upstream(base, "utterance"))
    assert gmp.kind == "train"
    # the CLI's --until accepts it and lists it among the choices
    assert main(["run", DEMO, "--until", "nosuchstep"]) == 2
    assert "relabel" in capsys.readouterr().err
    assert main(["run", "--help"]) == 0
    assert "relabel" in capsys.readouterr().out


def test_missing_inputs_name_the_step_that_makes_them(tmp_path):
    cfg = load_config(DEMO, [*GMPTL, f"output_dir={tmp_path}"])
    assert steps.missing_inputs(cfg, "gmp", 0) == ["label"]
    assert steps.missing_inputs(cfg, "utterance", 0) == ["gmp"]
    assert steps.missing_inputs(cfg, "mtl", 0) == []
    marker = steps.get("label").folder(cfg, 0) / "labels.json"
    marker.parent.mkdir(parents=True)
    for damaged in ("", '{"layer": 1'):  # a 0-byte marker (killed write, full disk) or half of one
        marker.write_text(damaged)
        assert steps.missing_inputs(cfg, "gmp", 0) == ["label"]  # not done: recomputed, never a crash
    marker.write_text("{}")
    assert steps.missing_inputs(cfg, "gmp", 0) == []
    assert steps.folders(cfg, 0, ["folds", "label"]) == [marker.parent]


def test_unknown_step_is_a_config_error():
    from gmptl.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown step 'nope'"):
        steps.needed(load_config(DEMO), "nope")


def test_every_step_body_resolves_to_a_function():
    import importlib

    for step in steps.GRAPH:
        if step.kind == "setup":
            assert step.body is None
            continue
        module, _, func = step.body.partition(":")
        assert callable(getattr(importlib.import_module(module), func)), step.name


def test_the_extract_step_verifies_shard_checksums_before_clustering_reads_them(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from gmptl.features import pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "extract_features", lambda *a, **k: seen.update(k))
    cfg = load_config(DEMO, ["features.source=pretrained", f"output_dir={tmp_path}"])
    pipeline.extract_step(SimpleNamespace(cfg=cfg, df=None, fold=SimpleNamespace(index=0)))
    assert seen["verify"] is True
