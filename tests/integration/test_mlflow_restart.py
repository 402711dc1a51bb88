"""The MLflow server killed (SIGKILL) and restarted during a training stage: the stage trains on, what MLflow
could not take waits in the stage's outbox and is sent once the server is back, and the run ends FINISHED
with every epoch's metrics exactly once, equal to what the stage wrote to disk.

The server is a real `mlflow server` process (SQLite backend, artifacts proxied to its own folder), restarted
on the same port and store, as a supervisor restarting a crashed server would. Every wait has a deadline.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from proctree import free_port, wait_for_http
from short_run import SHORT_RUN

from gmptl import paths
from gmptl.config import load_config
from gmptl.data.prepare import prepare_folds
from gmptl.training.pipeline import train_stage

pytestmark = [pytest.mark.integration, pytest.mark.faults]

EPOCHS = 4  # epoch 1 logged, then the kill: at least one later epoch waits, however late the test looks


def _serve(root: Path, port: int) -> subprocess.Popen:
    """Start `mlflow server` on 127.0.0.1:``port`` over ``root``'s store (one worker, no job runner, its own
    process group so that a kill takes its uvicorn worker too); :func:`_ready` waits for it."""
    with open(root / "server.log", "a") as log:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
             f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "mlartifacts"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
            env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )  # fmt: skip


def _ready(proc: subprocess.Popen, root: Path, port: int) -> None:
    """Wait (with wait_for_http's deadline) until the server answers /health."""
    wait_for_http(f"http://127.0.0.1:{port}/health", proc, root / "server.log", "mlflow server")


def _stop(proc: subprocess.Popen, sig: int) -> None:
    """Signal the server's process group (only the processes this test started), then reap it."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


def _wait_for(what: str, check, deadline_s: float, thread: threading.Thread) -> object:
    """Poll ``check()`` until it returns something truthy; fail after ``deadline_s`` or if the stage ended."""
    deadline = time.monotonic() + deadline_s
    while not (got := check()):
        assert thread.is_alive(), f"the stage ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after {deadline_s:.0f} s"
        time.sleep(0.2)
    return got


def test_a_stage_survives_its_mlflow_server_killed_and_restarted(ray_session, tmp_path):
    from mlflow.tracking import MlflowClient

    root = tmp_path / "server"
    root.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(root, port)  # starts while the corpus is made
    try:
        cfg = load_config("jobs/demo.yaml", [f"output_dir={tmp_path / 'out'}", *SHORT_RUN, f"stages.mtl.epochs={EPOCHS}",
                                             f"tracking.uri={url}", "tracking.experiment=restart"])  # fmt: skip
        prep = prepare_folds(cfg)
        _ready(server, root, port)
        outbox = paths.stage_dir(cfg, 0, "mtl") / paths.MLFLOW_OUTBOX
        result: dict = {}

        def stage() -> None:
            try:
                result["stage"] = train_stage(cfg, prep.df, prep.folds[0], "mtl")
            except BaseException as e:  # noqa: BLE001 - re-raised by the test
                result["error"] = e

        thread = threading.Thread(target=stage, name="stage", daemon=True)
        thread.start()
        client = MlflowClient(tracking_uri=url)

        def stage_run() -> str | None:
            exp = client.get_experiment_by_name("restart")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            return runs[0].info.run_id if runs else None

        run_id = _wait_for("stage run in MLflow", stage_run, 180, thread)
        _wait_for(
            "epoch 1 metrics in MLflow", lambda: client.get_metric_history(run_id, "train_loss"), 180, thread
        )
        _stop(server, signal.SIGKILL)
        # Training goes on without the server; what rank 0 cannot send waits in the stage's outbox.
        _wait_for("outbox entry", outbox.exists, 120, thread)
        time.sleep(2.0)
        server = _serve(root, port)  # same port, same store
        _ready(server, root, port)
        thread.join(timeout=240)
        assert not thread.is_alive(), "the stage did not end within 240 s of the restart"
        if "error" in result:
            raise result["error"]
        m = result["stage"]
    finally:
        _stop(server, signal.SIGTERM)

    assert m["mlflow_run_id"] == run_id and m["epochs_run"] == EPOCHS
    assert m["mlflow_points_waited"] > 0  # the outage was real: some epoch's metrics waited
    assert not outbox.exists()  # everything was sent
    # The server is down now: read its store directly.
    store = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(store.search_runs([run.info.experiment_id])) == 1
    for key in m["history"][0]:
        want = [h for h in m["history"] if h[key] == h[key]]  # NaN values are not logged
        points = sorted(store.get_metric_history(run_id, key), key=lambda p: p.step)
        assert [p.step for p in points] == [h["epoch"] for h in want], key  # each epoch once
        for p, h in zip(points, want, strict=True):
            assert p.value == pytest.approx(h[key], rel=1e-9, abs=1e-12), (key, p.step)
    assert [h["epoch"] for h in m["history"]] == list(range(1, EPOCHS + 1))
    (logged,) = (root / "mlartifacts").rglob(paths.STAGE_JSON)  # proxied to the server's artifact folder
    assert logged.read_bytes() == (paths.stage_dir(cfg, 0, "mtl") / paths.STAGE_JSON).read_bytes()
    assert run.data.tags["gmptl.best_epoch"] == str(m["best_epoch"])
