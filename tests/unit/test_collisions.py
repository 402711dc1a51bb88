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
