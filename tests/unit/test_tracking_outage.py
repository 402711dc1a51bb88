"""An MLflow outage mid-stage: training and the stage's outputs go on, what MLflow did not take waits in the
stage's outbox and is sent later in order, each metric point once; the run never stays RUNNING after a rerun.

MLflow is a real SQLite store behind a client that can be made to fail (:class:`Switch`): ``down`` raises
before anything reaches the store, ``lost_reply`` stores the batch and then raises, as a server killed
before it answered does."""

import json
import logging
import os

import pytest

from gmptl import files, paths, tracking
from gmptl.config import load_config
from gmptl.training import pipeline


def test_best_effort_warns_and_goes_on(caplog):
    def down(*a, **k):
        raise ConnectionError("mlflow.example:5000 refused the connection")

    with caplog.at_level(logging.WARNING, logger="gmptl.tracking"):
        assert tracking.best_effort("epoch 3's metrics", down, {"loss": 1.0}, step=3) is False
    assert "MLflow did not take epoch 3's metrics" in caplog.text and "refused" in caplog.text
    assert tracking.best_effort("x", lambda: None) is True


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


# ----------------------------------------------------------------------------- the outbox


class Switch:
    """An MlflowClient that fails on demand: ``mode`` is ``up``, ``down`` or ``lost_reply``."""

    def __init__(self, client):
        self.client, self.mode, self.calls = client, "up", []

    def __getattr__(self, name):
        real = getattr(self.client, name)

        def call(*a, **k):
            if self.mode == "down":
                raise ConnectionError("127.0.0.1:5000 refused the connection")
            out = real(*a, **k)
            self.calls.append((name, sorted({m.step for m in k.get("metrics") or ()})))
            if self.mode == "lost_reply" and name == "log_batch":
                raise ConnectionError("connection reset before the answer")
            return out

        return call


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite MLflow store for the module (creating one costs about a second)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    return uri, tracking.experiment_id(uri, "outbox")


@pytest.fixture
def mlflow(store, monkeypatch, tmp_path):
    """(a fresh run with an outbox in tmp_path, the switch every tracking call goes through)."""
    from mlflow.tracking import MlflowClient

    uri, exp = store
    client = MlflowClient(tracking_uri=uri)
    switch = Switch(client)
    monkeypatch.setattr(tracking, "_client", lambda _uri: switch)
    run_id = client.create_run(exp).info.run_id
    return tracking.Run(uri, run_id, tracking.Outbox(tmp_path / paths.MLFLOW_OUTBOX)), switch


def _steps(switch, run, key="loss"):
    return [m.step for m in switch.client.get_metric_history(run.run_id, key)]


def test_what_mlflow_did_not_take_waits_and_goes_first_in_order(mlflow, caplog):
    run, switch = mlflow
    switch.mode = "down"
    with caplog.at_level(logging.WARNING, logger="gmptl.tracking"):
        run.log_metrics({"loss": 1.0, "acc": 0.5}, step=1)  # training goes on: nothing raises
        run.log_metrics({"loss": 0.8, "acc": 0.6}, step=2)
        run.set_tags({"gmptl.best_epoch": "2"})
    assert caplog.text.count("MLflow did not take") == 1  # once, with where it waits; the rest at debug
    assert "2 metric points (step 1)" in caplog.text and str(run.outbox.path) in caplog.text
    assert [e["op"] for e in run.outbox.read()[0]] == ["metrics", "metrics", "tags"]
    assert _steps(switch, run) == []

    switch.mode = "up"
    run.log_metrics({"loss": 0.7, "acc": 0.7}, step=3)  # sends what waits first, then its own
    assert [c for c in switch.calls if c[0] == "log_batch"] == [("log_batch", [1]), ("log_batch", [2]),
                                                                 ("log_batch", []), ("log_batch", [3])]  # fmt: skip
    assert _steps(switch, run) == [1, 2, 3] and _steps(switch, run, "acc") == [1, 2, 3]
    assert switch.client.get_run(run.run_id).data.tags["gmptl.best_epoch"] == "2"
    assert run.outbox.read() == ([], 0)
    assert run.outbox.counts() == {"entries": 3, "metric_points": 4, "waiting": 0, "torn": 0}


def test_a_point_stored_before_the_reply_was_lost_is_not_sent_again(mlflow):
    run, switch = mlflow
    switch.mode = "lost_reply"  # the store has the batch, the client saw an error
    run.log_metrics({"loss": 1.0}, step=1)
    assert _steps(switch, run) == [1] and len(run.outbox.read()[0]) == 1
    switch.mode = "up"
    assert run.outbox.flush(run.uri) is True
    assert _steps(switch, run) == [1]  # looked up, found, not re-sent
    assert [c for c in switch.calls if c[0] == "log_batch"] == [("log_batch", [1])]
    assert json.loads(run.outbox.path.read_text().splitlines()[-1]) == {"done": 1, "how": "present"}


def test_a_flush_killed_before_it_marked_an_entry_done_sends_nothing_twice(mlflow):
    run, switch = mlflow
    switch.mode = "down"
    run.log_metrics({"loss": 1.0}, step=1)
    run.log_metrics({"loss": 0.9}, step=2)
    switch.mode = "up"
    assert run.outbox.flush(run.uri) is True
    lines = run.outbox.path.read_text().splitlines()
    files.write_text(run.outbox.path, "\n".join(lines[:-1]) + "\n")  # step 2 sent, its done line lost
    again = tracking.Outbox(run.outbox.path)  # the rerun's
    assert [e["metrics"][0][3] for e in again.read()[0]] == [2]
    assert again.flush(run.uri) is True and again.flush(run.uri) is True
    assert _steps(switch, run) == [1, 2]
    assert [c for c in switch.calls if c[0] == "log_batch"] == [("log_batch", [1]), ("log_batch", [2])]


def test_a_torn_last_line_is_skipped_and_counted(mlflow, caplog):
    run, switch = mlflow
    switch.mode = "down"
    run.log_metrics({"loss": 1.0}, step=1)
    with open(run.outbox.path, "ab") as fh:  # a kill in the middle of the next append
        fh.write(b'{"n": 2, "run": "r", "op": "metr')
    box = tracking.Outbox(run.outbox.path)
    assert [e["n"] for e in box.read()[0]] == [1] and box.read()[1] == 1
    run.log_metrics({"loss": 0.9}, step=2)  # starts on a line of its own
    assert box.counts() == {"entries": 2, "metric_points": 2, "waiting": 2, "torn": 1}
    switch.mode = "up"
    with caplog.at_level(logging.WARNING, logger="gmptl.tracking"):
        assert box.flush(run.uri) is True
    assert "1 line(s) do not parse" in caplog.text
    assert _steps(switch, run) == [1, 2]


def test_an_entry_mlflow_refuses_is_dropped_with_a_warning_not_retried_for_ever(mlflow, caplog):
    run, switch = mlflow
    gone = tracking.Run(run.uri, "0" * 32, run.outbox)  # a run the store does not have
    switch.mode = "down"
    gone.log_metrics({"loss": 1.0}, step=1)
    run.log_metrics({"loss": 1.0}, step=1)
    switch.mode = "up"
    with caplog.at_level(logging.WARNING, logger="gmptl.tracking"):
        assert run.outbox.flush(run.uri) is True
    assert "MLflow refused 1 metric points (step 1)" in caplog.text
    assert _steps(switch, run) == [1] and run.outbox.read() == ([], 0)


def test_a_rerun_supersedes_the_end_an_earlier_attempt_could_not_send(mlflow):
    run, switch = mlflow
    switch.mode = "down"
    run.log_metrics({"loss": 1.0}, step=1)
    run.finish("FAILED")
    switch.mode = "up"
    assert run.outbox.flush(run.uri, supersede_status=True) is True  # the rerun trains on: not FAILED
    assert switch.client.get_run(run.run_id).info.status == "RUNNING" and _steps(switch, run) == [1]


def test_a_stage_ending_while_mlflow_is_down_is_finished_by_its_rerun(mlflow, tmp_path, caplog):
    """Artifacts and the end wait in the outbox behind the epochs (the run is not FINISHED without them);
    the rerun of the finished stage sends them: FINISHED, artifacts there, the outbox gone."""
    run, switch = mlflow
    out = tmp_path
    (out / "best").mkdir()
    (out / "best" / "model.json").write_text("{}")
    for name in ("config.yaml", paths.STAGE_JSON):
        (out / name).write_text("{}")
    switch.mode = "down"
    run.log_metrics({"loss": 1.0}, step=1)
    with caplog.at_level(logging.WARNING):
        pipeline._close_stage_run(run, out, {}, best_epoch=1)
    assert "they are sent when this stage runs again" in caplog.text
    assert switch.client.get_run(run.run_id).info.status == "RUNNING"
    assert [e["op"] for e in run.outbox.read()[0]] == ["metrics", "artifact", "artifact", "artifact", "tags",
                                                       "status"]  # fmt: skip

    switch.mode = "up"
    cfg = load_config(None, [f"output_dir={tmp_path}", f"tracking.uri={run.uri}"])
    pipeline.settle_outbox(cfg, out)
    got = switch.client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.tags["gmptl.best_epoch"] == "1"
    arts = {a.path for a in switch.client.list_artifacts(run.run_id)}
    assert {"config.yaml", "stage.json", "best_model"} <= arts and _steps(switch, run) == [1]
    assert not run.outbox.path.exists()


def test_test_metrics_wait_in_the_test_folder_while_mlflow_is_down(mlflow, tmp_path):
    """Scoring a fold while MLflow is down: the evaluation ends, its metrics wait in the test folder and the
    step's next run sends them to the stage-2 run they belong to."""
    from gmptl.evaluation.pipeline import _log_on_stage_run

    run, switch = mlflow
    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}", f"tracking.uri={run.uri}"])
    files.write_json(paths.stage_dir(cfg, 0, "utterance") / paths.STAGE_JSON, {"mlflow_run_id": run.run_id})
    out = paths.test_dir(cfg, 0)
    switch.mode = "down"
    _log_on_stage_run(cfg, 0, {"war": 0.5, "uar": 0.625, "macro_f1": 0.4}, out)  # nothing raises
    assert tracking.Outbox(out / paths.MLFLOW_OUTBOX).counts()["waiting"] == 1
    switch.mode = "up"
    pipeline.settle_outbox(cfg, out)
    assert switch.client.get_run(run.run_id).data.metrics["test_uar"] == 0.625
    assert not (out / paths.MLFLOW_OUTBOX).exists()


def test_a_run_ending_while_mlflow_is_down_is_completed_by_the_next_run_of_its_config(mlflow, tmp_path):
    """The parent run's report metrics, files and end wait in the run folder; the next run of the config sends
    the metrics and files first and does not end the run it continues (it ends it itself)."""
    from gmptl.experiment import close_parent_run

    run, switch = mlflow
    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}", f"tracking.uri={run.uri}"])
    folder = paths.run_dir(cfg)
    files.write_json(folder / "report.json", {"uar_mean": 0.5})
    parent = tracking.Run(run.uri, run.run_id).with_outbox(folder / paths.MLFLOW_OUTBOX)
    report = {"war_mean": 0.5, "war_std": 0.1, "uar_mean": 0.55, "uar_std": 0.05,
              "folds": [{"fold": 0, "war": 0.5, "uar": 0.55}]}  # fmt: skip
    switch.mode = "down"
    close_parent_run(parent, cfg, report)  # nothing raises: the work is on disk
    assert [e["op"] for e in parent.outbox.read()[0]] == ["metrics", "metrics", "artifact", "status"]
    switch.mode = "up"
    assert tracking.Outbox(folder / paths.MLFLOW_OUTBOX).settle(run.uri)
    got = switch.client.get_run(run.run_id)
    assert got.data.metrics["uar_mean"] == 0.55 and got.data.metrics["fold0_test_uar"] == 0.55
    assert {a.path for a in switch.client.list_artifacts(run.run_id)} == {"report.json"}
    assert got.info.status == "RUNNING"  # the end was superseded: the continuing run ends it
    assert not (folder / paths.MLFLOW_OUTBOX).exists()


def test_outbox_entries_hold_no_tracking_uri_and_no_credentials(mlflow):
    run, switch = mlflow
    switch.mode = "down"
    run.set_tags({"note": "https://user:hunter2@mlflow.example", "hf_token": "hf_" + "a" * 34})
    text = run.outbox.path.read_text()
    assert "hunter2" not in text and "hf_aaaa" not in text and run.uri not in text


def test_quick_http_bounds_retries_only_for_a_server_and_keeps_what_the_user_set(monkeypatch):
    for key in tracking.QUICK_HTTP:
        monkeypatch.delenv(key, raising=False)
    tracking.quick_http("sqlite:///x.db")
    assert not any(k in os.environ for k in tracking.QUICK_HTTP)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    tracking.quick_http("http://127.0.0.1:5000")
    assert (
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
        and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    )


def test_append_line_starts_after_a_torn_line_and_refuses_newlines(tmp_path):
    log = tmp_path / "log.jsonl"
    files.append_line(log, "one")
    with open(log, "ab") as fh:
        fh.write(b"tor")
    files.append_line(log, "two")
    assert log.read_text().splitlines() == ["one", "tor", "two"]
    with pytest.raises(ValueError, match="no newline"):
        files.append_line(log, "a\nb")
