"""`gmptl tune`: a real 2-trial ASHA search logging to a real `mlflow server` over HTTP, read back.

The server runs as its own process (SQLite backend, artifacts proxied to a folder of its own),
so this also checks what Ray's MLflow integration gets wrong: the tracking URI reaches every
trial and Ray Train worker (nothing is logged to a local store), artifacts logged from the
driver and from the trials' processes end up on the server, and the experiment is created
once, before the trials start, on a brand-new SQLite store.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from proctree import free_port, wait_for_http

from gmptl.cli import main
from gmptl.config import load_config

pytestmark = pytest.mark.integration

SPACE = "tune_spaces/utterance.yaml"
SMALL = [
    "data.synth.n_utterances=40",
    "data.synth.n_sessions=2",
    "stages.utterance.init=pretrained",  # plain fine-tuning: nothing runs before the searched stage
    "stages.utterance.epochs=2",
    "stages.utterance.num_cpus_per_worker=0.9",  # two 1-worker trials fit on the 2-CPU test cluster
    "tune.searcher=random",
    "tune.seed=3",
    "tracking.experiment=tune-test",
]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 (one worker, no job runner), its store and artifacts under tmp_path."""
    port = free_port()
    root = tmp_path / "server"
    root.mkdir()
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed in the finaliser
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
        env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", proc, root / "server.log", "mlflow server")
        yield url, root
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker (its own process group)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_two_trial_search_logs_parent_and_child_runs_to_an_mlflow_server(ray_session, mlflow_server, tmp_path,
                                                                         capsys):  # fmt: skip
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    url, server_root = mlflow_server
    out_dir = tmp_path / "out"
    sets = [f"output_dir={out_dir}", f"tracking.uri={url}", *SMALL]
    args = ["tune", "jobs/demo.yaml", "--space", SPACE, "--samples", "2"]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    printed = capsys.readouterr().out
    assert "search utterance-" in printed and "best config:" in printed

    (folder,) = (out_dir / "tune").glob("utterance-*")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n_trials"] == 2 and summary["n_failed"] == 0
    assert summary["n_completed"] + summary["n_stopped_early"] == 2
    assert summary["epochs_budget"] == 4 and 2 <= summary["epochs_run"] <= 4
    keys = [
        "stages.utterance.lr",
        "stages.utterance.margin",
        "stages.utterance.scale",
        "stages.utterance.pooling",
    ]
    trials = {t["trial_id"]: t for t in summary["trials"]}
    for t in trials.values():
        assert sorted(t["params"]) == sorted(keys) and [h["epoch"] for h in t["history"]] == list(
            range(1, len(t["history"]) + 1))  # fmt: skip
        assert 0 <= t["objective"] <= 1
    best = summary["best"]
    assert best["objective"] == max(t["objective"] for t in trials.values())
    # best.yaml is a config `gmptl run` accepts, with the best trial's values
    cfg = load_config(folder / "best.yaml")
    assert cfg.stages.utterance.lr == pytest.approx(best["params"]["stages.utterance.lr"])
    assert cfg.stages.utterance.pooling == best["params"]["stages.utterance.pooling"]
    assert cfg.output_dir == str(out_dir) and cfg.data.synth.n_utterances == 40

    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name("tune-test")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("gmptl.run_key") == f"tune-{summary['name']}"]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["tune.searcher"] == "random" and parent.data.metrics["n_trials"] == 2
    assert parent.data.tags["gmptl.tune.best_trial"] == best["trial_id"]
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.json", "parallel_coordinates.png", "best.yaml", "space.yaml"} <= arts
    # the artifacts are on the server (proxied into its --artifacts-destination), not lost on a trial's disk
    got = download_artifacts(run_id=parent.info.run_id, artifact_path="summary.json", tracking_uri=url,
                             dst_path=str(tmp_path / "dl"))  # fmt: skip
    assert json.loads(Path(got).read_text())["best"] == best
    assert any(p.name == "parallel_coordinates.png" for p in (server_root / "mlartifacts").rglob("*"))

    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["gmptl.tune.trial_id"] for r in children) == sorted(trials)
    for child in children:
        t = trials[child.data.tags["gmptl.tune.trial_id"]]
        want = {"completed": "FINISHED", "stopped_early": "KILLED"}[t["status"]]
        assert child.info.status == want
        for k in keys:
            assert child.data.params[k] == str(t["params"][k])
        hist = client.get_metric_history(child.info.run_id, "objective")
        assert sorted(m.step for m in hist) == [h["epoch"] for h in t["history"]]
        assert len(client.get_metric_history(child.info.run_id, "val_uar_fold0")) == len(t["history"])
        # the trial's stage run (per fold) is a child of the trial's run, with the full config and artifacts
        (stage,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == child.info.run_id]
        assert stage.data.tags["gmptl.stage"] == "utterance" and stage.data.tags["gmptl.fold"] == "0"
        assert stage.data.params["stages.utterance.margin"] == str(t["params"]["stages.utterance.margin"])
        assert stage.info.status == want
        assert len(client.get_metric_history(stage.info.run_id, "val_uar")) >= len(t["history"])
        if t["status"] == "completed":
            assert {"stage.json", "config.yaml"} <= {a.path for a in client.list_artifacts(stage.info.run_id)}
    # the URI reached every process: nothing was written to a local MLflow store anywhere
    assert not [p for p in out_dir.rglob("*") if p.name in ("mlflow.db", "mlruns", "mlartifacts")]
    assert not Path("mlruns").exists()

    # running the same command again restores the finished experiment: same trials, no new runs
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    again = json.loads((folder / "summary.json").read_text())
    assert again["best"] == best and sorted(t["trial_id"] for t in again["trials"]) == sorted(trials)
    assert len(client.search_runs([exp.experiment_id])) == len(runs)
