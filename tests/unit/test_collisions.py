"""Two `gmptl run` on one output_dir: the second waits for what the first is computing, then reuses it."""

import subprocess
import sys

CHILD = """
import sys
from gmptl.config import load_config
from gmptl.experiment import run_experiment
cfg = load_config("jobs/demo.yaml", [f"output_dir={sys.argv[1]}", "data.synth.n_utterances=120"])
out = run_experiment(cfg, until="folds")
print(out.steps["synth"], out.steps["prepare"])
"""


def test_two_runs_on_one_output_dir_synthesise_and_prepare_once(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path / "out")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    # Without the lock the second finds a half-written corpus folder and refuses it (or both write it).
    assert sorted(out.strip() for out, _ in results) == ["cached cached", "ran ran"]


WAITER = """
import logging, sys
from gmptl import locks, paths
from gmptl.config import load_config
logging.basicConfig(level=logging.INFO, format="%(message)s")
cfg = load_config(None, [f"output_dir={sys.argv[1]}"])
with locks.hold(cfg, [paths.output_dir(cfg) / "step"]):
    print("got it")
"""


def test_a_waiting_run_names_the_process_it_waits_for(tmp_path):
    import os

    from gmptl import locks, paths
    from gmptl.config import load_config

    cfg = load_config(None, [f"output_dir={tmp_path}"])
    with locks.hold(cfg, [paths.output_dir(cfg) / "step"]):
        child = subprocess.Popen([sys.executable, "-c", WAITER, str(tmp_path)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)  # fmt: skip
        # The child says whom it waits for before it blocks; read that line while still holding the lock.
        line = child.stderr.readline()
        assert child.poll() is None, child.communicate(timeout=60)
    out, err = child.communicate(timeout=120)
    assert f"waiting for pid {os.getpid()} on " in line and "stop it to take over" in line, line + err
    assert child.returncode == 0 and out.strip() == "got it", err[-2000:]
