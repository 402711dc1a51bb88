"""`gmptl submit` / `gmptl jobs` against a real Ray head started with `ray start` (its own processes).

The head runs in its own temp dir, on free ports, dashboard on 127.0.0.1, and is stopped by killing
exactly the process tree of its `ray start --block` (never `ray stop`, which stops every Ray
process of the user, the test session's in-process Ray and other users' clusters included).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from proctree import free_port, kill_tree, wait_for_http

from gmptl import paths
from gmptl.cli import main
from gmptl.config import load_config
from gmptl.runtime import LOOPBACK_ENV

pytestmark = pytest.mark.integration

# Plain fine-tuning (stage 2 only, no stage 0/1, no clustering) on 40 utterances, 2 LOSO folds.
SHORT = ["data.synth.n_utterances=40", "data.synth.n_sessions=2", "stages.utterance.init=pretrained",
         "stages.utterance.epochs=1", "runtime.dashboard=false", "tracking.enabled=false"]  # fmt: skip


@pytest.fixture(scope="module")
def ray_head():
    """A 2-CPU Ray head with its job server on 127.0.0.1; yields the dashboard URL."""
    temp_dir = tempfile.mkdtemp(prefix="gmptl-head-", dir="/tmp")  # short: Ray's socket paths have a limit
    ports = {opt: free_port() for opt in ("port", "dashboard-port", "ray-client-server-port", "node-manager-port",
             "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port", "metrics-export-port")}  # fmt: skip
    bindir = Path(sys.executable).parent
    # The job's `python` must be this venv's (a cluster image has its own on PATH).
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", **LOOPBACK_ENV,
               PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")  # fmt: skip
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(var, None)
    cmd = [str(bindir / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--temp-dir", temp_dir, "--num-cpus", "2", "--include-dashboard", "true",
           "--dashboard-host", "127.0.0.1", "--disable-usage-stats",
           "--min-worker-port", "0", "--max-worker-port", "0",  # 0: the OS picks each worker's port
           *[a for opt, port in ports.items() for a in (f"--{opt}", str(port))]]  # fmt: skip
    log = open(Path(temp_dir) / "ray_start.log", "w")  # closed in the finalizer
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        wait_for_http(url + "/api/version", proc, Path(temp_dir) / "ray_start.log", "ray head")
        yield url
    finally:
        kill_tree(proc)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submit_a_short_run_then_inspect_it(ray_head, tmp_path, capsys):
    out_dir = tmp_path / "out"
    sets = [a for item in [*SHORT, f"output_dir={out_dir}"] for a in ("--set", item)]
    rc = main(
        ["submit", "jobs/demo.yaml", "--address", ray_head, *sets, "--", "--fold", "1"]
    )  # one fold: fast
    out = capsys.readouterr().out
    assert rc == 0, out[-4000:]
    job_id = re.search(r"submitted job (gmptl-run-\w+-\w+) to ", out)[1]
    assert "entrypoint: python -m gmptl.cli run gmptl_job/demo.yaml" in out
    assert re.search(r"working_dir: \d+ files, [\d.]+ KB", out)
    # the job's own output came through tail_job_logs: plain fine-tuning, stage 2 and evaluation only
    assert "utterance[Session2] (ran)" in out and "evaluate[Session2] (ran)" in out and "mtl[" not in out
    assert f"job {job_id}: SUCCEEDED" in out
    # the job ran the config resolved here (runtime.address=auto) and wrote under the absolute output_dir
    cfg = load_config("jobs/demo.yaml", [*SHORT, f"output_dir={out_dir}", "runtime.address=auto"])
    assert f"report: {paths.run_dir(cfg) / 'report.md'}" in out
    report = json.loads((paths.run_dir(cfg) / "report.json").read_text())
    assert [f["fold"] for f in report["folds"]] == [1] and 0 < report["folds"][0]["n_test"] < 40

    assert main(["jobs", "status", job_id, "--address", ray_head]) == 0
    out = capsys.readouterr().out
    assert f"job {job_id}: SUCCEEDED" in out and "gmptl_config: jobs/demo.yaml" in out
    assert main(["jobs", "list", "--address", ray_head]) == 0
    assert job_id in capsys.readouterr().out
    assert main(["jobs", "logs", job_id, "--address", ray_head]) == 0
    assert "test speakers (speaker-independent folds)" in capsys.readouterr().out
    assert main(["jobs", "status", "gmptl-no-such-job", "--address", ray_head]) == 1
    assert "gmptl jobs list --address" in capsys.readouterr().err


def test_a_failing_job_exits_non_zero_and_a_job_can_be_stopped(ray_head, tmp_path, capsys):
    sets = ["--set", f"output_dir={tmp_path}", "--set", "tracking.enabled=false"]
    # `gmptl run --until nowhere` is a usage error inside the job: the job FAILS, submit says so
    assert main(["submit", "jobs/demo.yaml", "--address", ray_head, *sets, "--", "--until", "nowhere"]) == 1
    cap = capsys.readouterr()
    assert "Invalid value for '--until'" in cap.out and re.search(r"job gmptl-run-\S+: FAILED", cap.out)
    assert "ended FAILED" in cap.err and "gmptl jobs logs gmptl-run-" in cap.err

    assert main(["submit", "jobs/demo.yaml", "--address", ray_head, *sets, "--no-wait",
                 "--submission-id", "gmptl-to-stop"]) == 0  # fmt: skip
    assert "submitted job gmptl-to-stop" in capsys.readouterr().out
    assert main(["jobs", "stop", "gmptl-to-stop", "--address", ray_head]) == 0
    assert "job gmptl-to-stop: STOPPED" in capsys.readouterr().out
