"""`gmptl run` end to end through the CLI on a shortened demo config: every stage, per fold, then the report."""

import contextlib
import io
import json

import numpy as np
import pytest

from gmptl import paths
from gmptl.cli import main
from gmptl.config import load_config
from gmptl.data.audio import load_audio
from gmptl.data.manifest import read_manifest
from gmptl.features.extractor import FeatureExtractor
from gmptl.features.store import FeatureStore
from gmptl.models.factory import load_model

pytestmark = pytest.mark.integration


def test_run_end_to_end(short_run):
    out, cfg = short_run.stdout, short_run.cfg
    for step in ("mtl[kfold1]", "extract[kfold1]", "cluster[kfold1]", "label[kfold1]", "gmp[kfold2]",
                 "utterance[kfold2]", "evaluate[kfold2]"):  # fmt: skip
        assert f"{step} (ran)" in out, step
    assert "mean ± std" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    assert "?workflowType=machine_learning" in out  # the link opens the runs table, not the GenAI view
    # The terminal: one line per codebook and per fold's labels; each Lloyd iteration only in the log file.
    terminal = short_run.stderr
    assert (
        "k=4: " in terminal
        and " iterations, objective " in terminal
        and "K=8 " in terminal
        and "labels in " in terminal
    )
    assert " iter 0 objective" not in terminal and "fold labels k=" not in terminal
    assert " iter 0 objective" in paths.log_file(cfg).read_text()
    run = paths.run_dir(cfg)
    report = short_run.report
    assert set(report) == {"labels", "folds", "war_mean", "war_std", "uar_mean", "uar_std", "confusion_sum",
                           "config_hash", "transductive"}  # fmt: skip
    assert report["transductive"] is False  # the demo's backbone never heard the demo's speakers
    assert report["labels"] == ["neutral", "happy", "sad", "angry"] and len(report["folds"]) == 2
    for f in report["folds"]:
        assert set(f) == {"fold", "seed", "test_speakers", "n_test", "war", "uar", "macro_f1", "confusion"}
        assert np.asarray(f["confusion"]).sum() == f["n_test"] and 0 <= f["uar"] <= 1
    assert sum(f["n_test"] for f in report["folds"]) == 40  # every utterance tested exactly once
    assert np.asarray(report["confusion_sum"]).sum() == 40
    assert {
        "report.md",
        "confusion_sum.png",
        "folds_war_uar.png",
        "config.yaml",
        "curves_mtl.png",
        "curves_gmp.png",
        "curves_utterance.png",
        "cluster_usage.png",
    } <= {p.name for p in run.iterdir()}
    assert (
        len(list(run.glob("track_fold0_*.png"))) == 3
    )  # frame tracks of test utterances under their waveform

    # features of each fold come from that fold's stage-0 model (gender-augmented GMPs)
    df = read_manifest(paths.manifest_path(cfg))
    utt = df.utt_id.iloc[0]
    mtl0, _ = load_model(paths.stage_dir(cfg, 0, "mtl") / "best")
    mine = FeatureExtractor(cfg.model, cfg.features, model=mtl0.backbone).encode(
        [load_audio(df.path.iloc[0])]
    )[0][2]
    assert np.allclose(FeatureStore(paths.features_dir(cfg, 0)).get(utt, 2), mine, atol=2e-2)

    # stage 1 learns the GMP streams and is selected on its validation loss; stage 2 starts from it
    gmp = json.loads((paths.stage_dir(cfg, 1, "gmp") / "stage.json").read_text())
    assert gmp["selection"] == {"metric": "val_loss", "mode": "min"}
    assert {"train_ce_k4", "train_ce_k8", "val_frame_acc_k4", "val_frame_acc_k8"} <= set(gmp["history"][0])
    assert gmp["inputs"]["labels_dir"] == str(paths.labels_dir(cfg, 1))
    utt = json.loads((paths.stage_dir(cfg, 1, "utterance") / "stage.json").read_text())
    assert utt["inputs"]["init_dir"] == gmp["model_dir"]
    assert json.loads((paths.stage_dir(cfg, 1, "utterance") / "best/model.json").read_text())["spec"][
        "utterance_heads"]["emotion"]["type"] == "cosine"  # fmt: skip

    # MLflow: one parent run per experiment, a child per fold and stage
    from mlflow.tracking import MlflowClient

    from gmptl.tracking import resolve_uri

    client = MlflowClient(tracking_uri=resolve_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)  # named after the job
    assert cfg.tracking.experiment == "gmptl-demo"
    # opens in MLflow's model-training view, not the GenAI one
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.data.tags.get("gmptl.run_key", "").startswith("experiment-")]
    assert len(parent) == 1 and parent[0].data.metrics["uar_mean"] == pytest.approx(report["uar_mean"])
    assert parent[0].info.run_name.startswith("gmptl-demo ")
    # per-fold test results on the parent only under per-fold keys; the summary keys are the means
    assert "test_uar" not in parent[0].data.metrics
    for f in report["folds"]:
        assert parent[0].data.metrics[f"fold{f['fold']}_test_uar"] == pytest.approx(f["uar"])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert sorted((r.data.tags["gmptl.stage"], r.data.tags["gmptl.fold"]) for r in children) == sorted(
        (s, f) for s in ("mtl", "gmp", "utterance") for f in ("0", "1"))  # fmt: skip
    assert {a.path for a in client.list_artifacts(parent[0].info.run_id)} >= {"report.json", "report.md"}
    for r in children:  # each stage run names the manifest it trained on; stage 2 holds its fold's test score
        assert [d.dataset.name for d in r.inputs.dataset_inputs] == [
            parent[0].inputs.dataset_inputs[0].dataset.name
        ]
        if r.data.tags["gmptl.stage"] == "utterance":
            fold = report["folds"][int(r.data.tags["gmptl.fold"])]
            assert r.data.metrics["test_uar"] == pytest.approx(fold["uar"])


def test_single_steps_run_alone_from_the_cache(short_run, capsys):
    """`gmptl cluster|label` and `run --until` on a finished run recompute nothing; a changed config does."""
    out_dir, sets = short_run.out_dir, [a for item in short_run.sets for a in ("--set", item)]
    assert "utterances: 40" in short_run.stdout and "kfold2" in short_run.stdout
    assert main(["run", "jobs/demo.yaml", "--until", "label", *sets]) == 0
    again = capsys.readouterr().out
    assert "steps: synth (cached), prepare (cached), folds (cached)" in again and "(ran)" not in again
    for step in ("cluster", "label"):
        assert main([step, "jobs/demo.yaml", *sets]) == 0
        alone = capsys.readouterr().out
        assert f"{step}[kfold2] (cached)" in alone and f"{step} outputs, fold 1: {out_dir}" in alone
    folds = json.loads(next((out_dir / "folds").glob("*/folds.json")).read_text())
    assert len(folds["folds"]) == 2 and sum(f["n_test"] for f in folds["folds"]) == 40
    labels = json.loads(next((out_dir / "labels").glob("*/fold0/labels.json")).read_text())
    assert set(labels["quality"]) == {"4", "8"} and {"purity", "nmi"} <= set(labels["quality"]["8"]["train"])
    # A changed config gets its own folders, never the stale result (features of model.backbone: no training).
    changed = ["--set", "data.synth.seed=1", "--set", "features.source=pretrained"]
    assert main(["extract", "jobs/demo.yaml", *sets, *changed]) == 0
    assert "shards: 1 (1 computed, 0 cached" in capsys.readouterr().out


def _fold_results(report: dict) -> list:
    return [
        {k: f[k] for k in ("fold", "test_speakers", "n_test", "war", "uar", "confusion")}
        for f in report["folds"]
    ]


def test_run_killed_mid_fold_then_restarted_gives_the_same_report(short_run, killed_run):
    """SIGKILL the whole `gmptl run` (driver and its Ray) inside fold 0's last training stage
    (``killed_run``), rerun: same report as uninterrupted. Only one stage trains again: a short test."""
    out, args = killed_run.out, killed_run.args
    cfg = load_config("jobs/demo.yaml", killed_run.sets)
    assert list(out.glob("ray_results/utterance-fold0-*"))  # killed inside that stage's Ray Train run
    assert not (paths.run_dir(cfg) / "report.json").exists()
    assert not list(out.glob("train/utterance/*/fold0/stage.json"))

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["run", "jobs/demo.yaml", *args]) == 0
    # what finished before the kill comes from cache; only fold 0's stage 2 and its evaluation run again
    for step in ("mtl", "extract", "cluster", "label", "gmp"):
        assert f"{step}[kfold1] (cached)" in printed.getvalue(), step
    assert "utterance[kfold1] (ran)" in printed.getvalue() and "evaluate[kfold1] (ran)" in printed.getvalue()
    report = json.loads((paths.run_dir(cfg) / "report.json").read_text())
    assert _fold_results(report) == _fold_results(short_run.report)[:1]
