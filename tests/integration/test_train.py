"""Ray Train stages end to end on the synthetic corpus (2 CPU workers, gloo DDP), read back through MLflow."""

import json

import numpy as np
import pytest
from safetensors.torch import load_file
from short_run import SHORT_RUN

from gmptl import paths
from gmptl.config import load_config
from gmptl.data.prepare import prepare_folds
from gmptl.tracking import TrackingError
from gmptl.training.pipeline import TrainingError, train_stage
from gmptl.training.worker import FAULT_ENV

pytestmark = pytest.mark.integration


def _setup(tmp_path, extra=()):
    cfg = load_config("jobs/demo.yaml", [f"output_dir={tmp_path}", *SHORT_RUN, *extra])
    prep = prepare_folds(cfg)
    return cfg, prep.df, prep.folds


def _mlflow_client(cfg):
    from mlflow.tracking import MlflowClient

    from gmptl.tracking import resolve_uri

    return MlflowClient(tracking_uri=resolve_uri(cfg))


@pytest.fixture(scope="module")
def uninterrupted(short_run):
    """Fold 0's stage 0 of the shared short run (3 epochs, uninterrupted): its stage.json (what train_stage
    returns) is what these tests read back and the reference the recovery test compares with."""
    cfg = short_run.cfg
    prep = prepare_folds(cfg)  # cached: the run prepared them
    m = json.loads((paths.stage_dir(cfg, 0, "mtl") / paths.STAGE_JSON).read_text())
    return short_run.out_dir, cfg, prep.df, prep.folds, m


def _assert_same_run(whole, other):
    assert [h["epoch"] for h in other["history"]] == [h["epoch"] for h in whole["history"]] == [1, 2, 3]
    for a, b in zip(whole["history"], other["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_uar", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    wa = load_file(f"{whole['model_dir']}/heads.safetensors")
    wb = load_file(f"{other['model_dir']}/heads.safetensors")
    for k in wa:
        assert np.allclose(wa[k].numpy(), wb[k].numpy(), atol=1e-5), k


def test_mtl_ddp_lowers_loss_and_logs_to_mlflow(uninterrupted):
    out_dir, cfg, df, folds, m = uninterrupted
    hist = m["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert all(np.isfinite(h["val_loss"]) for h in hist)
    n_val = int((folds[0].part_of(df) == "validation").sum())
    assert m["n_validation"] == n_val
    assert m["best_epoch"] in (1, 2, 3) and m["selection"] == {"metric": "val_uar", "mode": "max"}
    best = m["model_dir"]
    assert {p.name for p in (out_dir / "train").rglob("*") if p.parent.name == "best"} >= {
        "backbone", "heads.safetensors", "model.json"}  # fmt: skip

    client = _mlflow_client(cfg)
    run = client.get_run(m["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["stages.mtl.lr"] == "0.002" and run.data.params["job.fold"] == "0"
    train_loss = client.get_metric_history(run.info.run_id, "train_loss")
    assert [x.step for x in sorted(train_loss, key=lambda x: x.step)] == [1, 2, 3]
    for name in ("val_uar", "val_war", "lr", "train_audio_s_per_s", "train_padding_waste"):
        assert len(client.get_metric_history(run.info.run_id, name)) == 3, name
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "stage.json", "curves.png", "confusion.png", "best_model"} <= arts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "best_model")} >= {
        "best_model/heads.safetensors", "best_model/model.json", "best_model/backbone"}  # fmt: skip
    # finished stages are not retrained
    assert train_stage(cfg, df, folds[0], "mtl")["model_dir"] == best


@pytest.mark.faults  # an injected worker failure and two more fits: `make test-faults`
def test_a_failed_run_resumes_on_rerun_and_a_failed_worker_is_retried(uninterrupted, tmp_path, monkeypatch):
    """Both ways a stage recovers, in one run name, ending equal to the uninterrupted run: with
    max_failures=0 a worker failure after epoch 1 ends the stage (the error says to rerun) and the same
    command again resumes after epoch 1; in that rerun (max_failures=1) a worker failure after epoch 2 is
    retried by Ray Train's FailureConfig, and the restarted worker group trains epoch 3."""
    cfg, df, folds = _setup(tmp_path, ["stages.mtl.max_failures=0"])
    monkeypatch.setenv(FAULT_ENV, f"1:{tmp_path / 'fired1'}")
    with pytest.raises(TrainingError, match="rerun the same command to resume"):
        train_stage(cfg, df, folds[0], "mtl")
    assert (tmp_path / "fired1").is_file()
    # max_failures is no part of the stage's folder or run name: this is the same run, resumed
    cfg, df, folds = _setup(tmp_path, ["stages.mtl.max_failures=1"])
    monkeypatch.setenv(FAULT_ENV, f"2:{tmp_path / 'fired2'}")
    resumed = train_stage(cfg, df, folds[0], "mtl")  # same run name: continues after epoch 1
    assert (tmp_path / "fired2").is_file()  # the worker really failed, and the stage finished anyway
    _assert_same_run(uninterrupted[-1], resumed)
    client = _mlflow_client(cfg)  # the MLflow run was continued, not duplicated
    assert client.get_run(resumed["mlflow_run_id"]).info.status == "FINISHED"
    steps = sorted({x.step for x in client.get_metric_history(resumed["mlflow_run_id"], "train_loss")})
    assert steps == [1, 2, 3]
    assert (
        len(client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])) == 1
    )


def test_missing_stage_inputs_name_the_command(tmp_path):
    cfg, df, folds = _setup(tmp_path)
    with pytest.raises(TrainingError, match="step label.*gmptl run CONFIG --until label"):
        train_stage(cfg, df, folds[0], "gmp")
    with pytest.raises(TrainingError, match="--stage gmp --fold 0"):
        train_stage(cfg, df, folds[0], "utterance")
    cfg2, df2, folds2 = _setup(tmp_path, ["tracking.uri=http://127.0.0.1:9"])
    with pytest.raises(TrackingError, match="unreachable"):  # before any worker starts
        train_stage(cfg2, df2, folds2[0], "mtl")
