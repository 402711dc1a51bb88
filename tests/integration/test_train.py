"""Ray Train stages end to end on the synthetic corpus (2 CPU workers, gloo DDP), read back through MLflow."""

import numpy as np
import pytest
from safetensors.torch import load_file

from gmptl.config import load_config
from gmptl.data.prepare import prepare_folds
from gmptl.tracking import TrackingError
from gmptl.training.pipeline import TrainingError, train_stage
from gmptl.training.worker import FAULT_ENV

pytestmark = pytest.mark.integration

SMALL = [
    "data.synth.n_utterances=60",
    "stages.mtl.crop_s=1.0",
    "stages.mtl.batch_size=8",
    "stages.mtl.lr=2e-3",
    "stages.mtl.dropout=0.0",
    "stages.mtl.patience=null",
    "stages.mtl.freeze_cnn=true",  # what these settings were chosen for (the demo trains its random CNN)
]


def _setup(tmp_path, extra=()):
    cfg = load_config("jobs/demo.yaml", [f"output_dir={tmp_path}", *SMALL, *extra])
    prep = prepare_folds(cfg)
    return cfg, prep.df, prep.folds


def _mlflow_client(cfg):
    from mlflow.tracking import MlflowClient

    from gmptl.tracking import resolve_uri

    return MlflowClient(tracking_uri=resolve_uri(cfg))


@pytest.fixture(scope="module")
def uninterrupted(ray_session, tmp_path_factory):
    """One uninterrupted 2-epoch, 2-worker stage-0 run: the reference the resume tests compare with."""
    tmp = tmp_path_factory.mktemp("whole")
    cfg, df, folds = _setup(tmp, ["stages.mtl.epochs=2"])
    return tmp, cfg, df, folds, train_stage(cfg, df, folds[0], "mtl")


def _assert_same_run(whole, other):
    assert [h["epoch"] for h in other["history"]] == [1, 2]
    for a, b in zip(whole["history"], other["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_uar", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    wa = load_file(f"{whole['model_dir']}/heads.safetensors")
    wb = load_file(f"{other['model_dir']}/heads.safetensors")
    for k in wa:
        assert np.allclose(wa[k].numpy(), wb[k].numpy(), atol=1e-5), k


def test_mtl_ddp_lowers_loss_and_logs_to_mlflow(uninterrupted):
    tmp_path, cfg, df, folds, m = uninterrupted
    hist = m["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert all(np.isfinite(h["val_loss"]) for h in hist)
    n_val = int((folds[0].part_of(df) == "validation").sum())
    assert m["n_validation"] == n_val
    assert m["best_epoch"] in (1, 2) and m["selection"] == {"metric": "val_uar", "mode": "max"}
    best = m["model_dir"]
    assert {p.name for p in (tmp_path / "train").rglob("*") if p.parent.name == "best"} >= {
        "backbone", "heads.safetensors", "model.json"}  # fmt: skip

    client = _mlflow_client(cfg)
    run = client.get_run(m["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["stages.mtl.lr"] == "0.002" and run.data.params["job.fold"] == "0"
    train_loss = client.get_metric_history(run.info.run_id, "train_loss")
    assert [x.step for x in sorted(train_loss, key=lambda x: x.step)] == [1, 2]
    for name in ("val_uar", "val_war", "lr", "train_audio_s_per_s", "train_padding_waste"):
        assert len(client.get_metric_history(run.info.run_id, name)) == 2, name
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "stage.json", "curves.png", "confusion.png", "best_model"} <= arts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "best_model")} >= {
        "best_model/heads.safetensors", "best_model/model.json", "best_model/backbone"}  # fmt: skip
    # finished stages are not retrained
    assert train_stage(cfg, df, folds[0], "mtl")["model_dir"] == best


def test_restart_with_same_run_name_resumes_and_equals_uninterrupted(uninterrupted, tmp_path, monkeypatch):
    cfg, df, folds = _setup(tmp_path, ["stages.mtl.epochs=2", "stages.mtl.max_failures=0"])
    monkeypatch.setenv(FAULT_ENV, f"1:{tmp_path / 'fired'}")
    with pytest.raises(TrainingError, match="rerun the same command to resume"):
        train_stage(cfg, df, folds[0], "mtl")
    assert (tmp_path / "fired").is_file()
    resumed = train_stage(cfg, df, folds[0], "mtl")  # same run name: continues after epoch 1
    _assert_same_run(uninterrupted[-1], resumed)
    client = _mlflow_client(cfg)  # the MLflow run was continued, not duplicated
    assert client.get_run(resumed["mlflow_run_id"]).info.status == "FINISHED"
    steps = sorted({x.step for x in client.get_metric_history(resumed["mlflow_run_id"], "train_loss")})
    assert steps == [1, 2]
    assert (
        len(client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])) == 1
    )


def test_worker_failure_is_retried_by_failure_config(uninterrupted, tmp_path, monkeypatch):
    cfg, df, folds = _setup(tmp_path, ["stages.mtl.epochs=2", "stages.mtl.max_failures=1"])
    monkeypatch.setenv(FAULT_ENV, f"1:{tmp_path / 'fired'}")
    m = train_stage(cfg, df, folds[0], "mtl")
    assert (tmp_path / "fired").is_file()
    _assert_same_run(uninterrupted[-1], m)


def test_missing_stage_inputs_name_the_command(tmp_path):
    cfg, df, folds = _setup(tmp_path)
    with pytest.raises(TrainingError, match="step label.*gmptl run CONFIG --until label"):
        train_stage(cfg, df, folds[0], "gmp")
    with pytest.raises(TrainingError, match="--stage gmp --fold 0"):
        train_stage(cfg, df, folds[0], "utterance")
    cfg2, df2, folds2 = _setup(tmp_path, ["tracking.uri=http://127.0.0.1:9"])
    with pytest.raises(TrackingError, match="unreachable"):  # before any worker starts
        train_stage(cfg2, df2, folds2[0], "mtl")
