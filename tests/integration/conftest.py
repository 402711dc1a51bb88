import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from short_run import SHORT_RUN


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray for every integration test (a few seconds to start)."""
    import ray

    from gmptl.runtime import bind_embedded_ray_to_loopback

    bind_embedded_ray_to_loopback()  # the tests turn token authentication off: loopback only, then
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=300 * 1024**2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """20 synthetic utterances in IEMOCAP's layout, prepared, with a config that encodes them with the tiny
    backbone (layers 2 and 4, shards of 4 utterances, 2 actors). No Ray."""
    from gmptl.config import SynthConfig, load_config
    from gmptl.data.manifest import read_manifest
    from gmptl.data.prepare import prepare_manifest
    from gmptl.data.synth import synthesize_corpus

    tmp = tmp_path_factory.mktemp("small_corpus")
    synthesize_corpus(tmp / "corpus", SynthConfig(n_utterances=20, seed=5))
    cfg = load_config(
        None,
        ["data.corpus=iemocap", f"data.root={tmp / 'corpus'}", "model.backbone=tiny", "features.layers=[2,4]",
         "features.shard_max_utts=4", "features.num_workers=2"],
    )  # fmt: skip
    df = read_manifest(prepare_manifest(cfg.data, tmp / "corpus", tmp / "m.parquet").manifest_path)
    return SimpleNamespace(tmp=tmp, cfg=cfg, df=df)


@pytest.fixture(scope="session")
def small_features(ray_session, small_corpus):
    """``small_corpus`` encoded once on Ray Data, with one encoder actor killed mid-shard after a torn write
    (features.pipeline.FAULT_ENV): the extraction tests check what that run did and wrote, the k-means and
    label tests read its features. Read-only: a test that damages shards works on a copy."""
    from gmptl.features.pipeline import FAULT_ENV, extract_features

    c = small_corpus
    marker = c.tmp / "crashed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FAULT_ENV, str(marker))
        result = extract_features(c.df, c.cfg.model, c.cfg.features, c.cfg.runtime, c.tmp / "feats")
    return SimpleNamespace(folder=c.tmp / "feats", result=result, crash_marker=marker)


@pytest.fixture(scope="session")
def short_run(ray_session, tmp_path_factory):
    """One whole `gmptl run` of the shortened demo through the CLI (every step, both folds), shared by the
    tests that read its outputs (the end-to-end checks, the restart-after-kill test)."""
    from gmptl import paths
    from gmptl.cli import main
    from gmptl.config import load_config

    out_dir = tmp_path_factory.mktemp("short_run")
    sets = [f"output_dir={out_dir}", *SHORT_RUN]
    printed, terminal = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(terminal):
        rc = main(["run", "jobs/demo.yaml", *[a for item in sets for a in ("--set", item)]])
    assert rc == 0, printed.getvalue()[-3000:] + terminal.getvalue()[-3000:]
    cfg = load_config("jobs/demo.yaml", sets)
    report = json.loads((paths.run_dir(cfg) / "report.json").read_text())
    return SimpleNamespace(out_dir=out_dir, sets=sets, cfg=cfg, stdout=printed.getvalue(), stderr=terminal.getvalue(),
                           report=report)  # fmt: skip


@pytest.fixture(scope="session")
def killed_run(short_run, tmp_path_factory):
    """`gmptl run --fold 0` as a user starts it (its own embedded Ray, dashboard on, token authentication on)
    on a copy of the short run's folder without fold 0's stage 2 and the report, SIGKILLed (driver and its
    Ray) once that stage's Ray Train actors are up. Just before the kill, the TCP sockets its process tree
    listens on are listed. test_loopback checks those; test_run reruns the run and compares the report."""
    from proctree import kill_tree, listening_sockets

    # A moved folder keeps its caches; fold 0's stage-2 folder also holds its evaluation.
    tmp = tmp_path_factory.mktemp("killed_run")
    out = tmp / "out"
    shutil.copytree(short_run.out_dir, out)
    for d in [*out.glob("train/utterance/*/fold0"), *out.glob("ray_results/utterance-fold0-*")]:
        shutil.rmtree(d)
    shutil.rmtree(out / "runs")
    sets = [f"output_dir={out}", *SHORT_RUN, "runtime.parallel_folds=1"]
    # fold 0 only; its results must equal fold 0 of the uninterrupted two-fold run
    args = [*[a for item in sets for a in ("--set", item)], "--fold", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ENABLE")}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE"):  # as a user runs it: token authentication on
        env.pop(key, None)
    log_path = tmp / "killed.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gmptl.cli", "run", "jobs/demo.yaml", *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            # Fold 0's stage 2 has its Ray Train run folder and its controller or worker process up (actors
            # run, as in any real run); that stage takes many seconds more to finish.
            deadline = time.monotonic() + 300
            while not (
                list(out.glob("ray_results/utterance-fold0-*"))
                and any("Train" in cmd for _, cmd, _, _ in listening_sockets(proc.pid))
            ):
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "fold 0 never started stage 2"
                time.sleep(0.5)
            time.sleep(1.0)  # agents that start their servers after the first task
            sockets = listening_sockets(proc.pid)
        finally:
            kill_tree(proc, crash=True)
    return SimpleNamespace(out=out, sets=sets, args=args, sockets=sockets, terminal=log_path.read_text())
