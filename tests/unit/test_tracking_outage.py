"""An MLflow outage mid-stage: training and the stage's outputs go on; the run never stays RUNNING."""

import logging

from gmptl import tracking
from gmptl.training import pipeline


def test_best_effort_warns_and_goes_on(caplog):
    def down(*a, **k):
        raise ConnectionError("mlflow.example:5000 refused the connection")

    with caplog.at_level(logging.WARNING, logger="gmptl.tracking"):
        assert tracking.best_effort("epoch 3's metrics", down, {"loss": 1.0}, step=3) is False
    assert "MLflow did not take epoch 3's metrics" in caplog.text and "refused" in caplog.text
    assert tracking.best_effort("x", lambda: None) is True


class FlakyRun:
    """A run whose artifact upload fails (the server went away after training)."""

    run_id = "r1"

    def __init__(self):
        self.status = "RUNNING"

    def log_artifact(self, *a, **k):
        raise OSError("connection reset")

    def set_tags(self, tags):
        pass

    def finish(self, status="FINISHED"):
        self.status = status


def test_a_stage_run_whose_artifacts_fail_ends_failed_not_running(tmp_path):
    run = FlakyRun()
    pipeline._close_stage_run(run, tmp_path, {}, best_epoch=2)
    assert run.status == "FAILED"


def test_folds_opening_runs_at_once_tag_the_experiment_once(tmp_path):
    """Parallel folds (threads) all ask for the experiment; an untagged one is tagged without a UNIQUE error."""
    import threading

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    old = client.create_experiment("made-before", artifact_location=(tmp_path / "a").as_uri())  # no kind tag
    errors, ids = [], []

    def ask():
        try:
            ids.append(tracking.experiment_id(uri, "made-before"))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and set(ids) == {old}
    assert client.get_experiment(old).tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND
    new = tracking.experiment_id(uri, "made-now")  # created with the tag: nothing left to race on
    assert client.get_experiment(new).tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND
