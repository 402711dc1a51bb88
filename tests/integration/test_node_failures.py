"""Real failures on a real two-node Ray cluster, and `gmptl run` SIGKILLed while it writes a step marker.

The cluster (tests/two_node.py) is a head and a worker node on 127.0.0.1, each its own `ray start --block`
with its own CPUs, ports and temp folder. Each node test starts a fresh worker node, makes the head busy (a
Holder takes its CPUs) so that the step's actors or Ray Train workers can only start on the worker node,
runs `gmptl run --until STEP` as a subprocess joined to the cluster (runtime.address), waits until the
step's work runs on the worker node, SIGKILLs that node's whole process tree (raylet, workers, agents: a
lost machine), frees the head, and checks the outcome against an undisturbed run: the same results, or a
clear error and a rerun that gives them. Every wait has a deadline; a run past it is killed and fails the
test with its log's tail.
"""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from proctree import kill_tree, listening_sockets
from short_run import SHORT_RUN
from two_node import Holder, TwoNodeCluster, log_tail, ray_env

from gmptl import paths
from gmptl.config import load_config
from gmptl.data.prepare import report_path_for
from gmptl.features.store import FeatureStore
from gmptl.files import FAULT_BEFORE_RENAME_ENV

pytestmark = [pytest.mark.faults, pytest.mark.timeout(2400)]

# The short demo on fold 0, features of the backbone (no stage 0 before extraction), 20 feature shards of 2
# utterances, stage 0 for EPOCHS epochs (enough are left after epoch 1 for the node to be lost mid-stage).
# Every pool claims little enough that the head alone (2 CPUs) holds it after the worker node (2 CPUs) is
# lost: 2 extraction actors x 0.25 + a decode task 0.25, 2 k-means actors x 0.2, 1 Ray Train worker x 0.6.
EPOCHS = 4
SETS = [*SHORT_RUN, "features.source=pretrained", "features.num_workers=2", "features.num_cpus_per_worker=0.25",
        "features.decode_num_cpus=0.25", "features.shard_max_utts=2", "clustering.num_workers=2",
        f"stages.mtl.epochs={EPOCHS}", "tracking.enabled=false"]  # fmt: skip
FOLD = 0
RUN_DEADLINE_S = 900.0  # one `gmptl run`: minutes on a loaded 2-core machine, seconds on an idle one
WORK_DEADLINE_S = 600.0  # until the step's work is seen on the worker node


def _sets(out: Path, cluster: TwoNodeCluster) -> list[str]:
    return [*SETS, f"output_dir={out}", f"runtime.address={cluster.address}"]


def _cfg(out: Path, cluster: TwoNodeCluster):
    return load_config("jobs/demo.yaml", _sets(out, cluster))


def start_run(cluster: TwoNodeCluster, out: Path, until: str, log_path: Path, **env: str) -> subprocess.Popen:
    """`gmptl run jobs/demo.yaml --until UNTIL --fold 0` on ``out``, joined to the cluster, output to ``log_path``."""
    args = [sys.executable, "-m", "gmptl.cli", "run", "jobs/demo.yaml", "--until", until, "--fold", str(FOLD),
            *[a for item in _sets(out, cluster) for a in ("--set", item)]]  # fmt: skip
    with open(log_path, "w") as log:
        return subprocess.Popen(
            args, env=ray_env(**env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def finish(proc: subprocess.Popen, log_path: Path, what: str, timeout_s: float = RUN_DEADLINE_S,
           watch=lambda: None) -> int:  # fmt: skip
    """Wait for a run to end, calling ``watch()`` meanwhile; past the deadline it is killed (its whole tree)
    and the test fails."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        if time.monotonic() > deadline:
            kill_tree(proc, crash=True)
            pytest.fail(f"{what} still ran after {timeout_s:.0f} s (a hang); killed. Its log ends:\n"
                        f"{log_tail(log_path)}")  # fmt: skip
        watch()
        time.sleep(0.2)
    return proc.returncode


def run_ok(cluster: TwoNodeCluster, out: Path, until: str, log_path: Path, what: str) -> None:
    rc = finish(start_run(cluster, out, until, log_path), log_path, what)
    assert rc == 0, f"{what} failed (exit {rc}):\n{log_tail(log_path)}"


def wait_until(cond, proc: subprocess.Popen, log_path: Path, what: str, timeout_s: float = WORK_DEADLINE_S):
    """Poll ``cond()`` until it returns something truthy; fail with the run's log if it ends or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not (got := cond()):
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}:\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            kill_tree(proc, crash=True)
            pytest.fail(f"no {what} after {timeout_s:.0f} s; run killed. Its log ends:\n{log_tail(log_path)}")
        time.sleep(0.1)
    return got


def copy_without(src: Path, dst: Path, *remove: Path) -> Path:
    """A copy of an output folder (caches are keyed relative to it) without the given parts of it."""
    shutil.copytree(src, dst, symlinks=True)
    for part in remove:
        target = dst / part.relative_to(src)
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    return dst


@pytest.fixture(scope="module")
def cluster():
    """The head (2 CPUs); each node test adds its own worker node. Everything started is killed at the end."""
    c = TwoNodeCluster(head_cpus=2, node_cpus=2)
    try:
        c.start()
        yield c
    finally:
        c.close()


@pytest.fixture
def node2(cluster):
    """A fresh worker node (2 CPUs) joined to the head; stopped after the test if the test left it running."""
    node = cluster.add_node()
    yield node
    node.stop()


@pytest.fixture
def holder(cluster, node2, tmp_path):
    """Keeps the head's CPUs busy (see two_node.Holder) until the test calls ``release()``."""
    h = Holder(cluster, tmp_path / "holder.log")
    yield h
    h.release()


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    """Undisturbed runs on the head alone, in one output folder: `--until cluster` (features, codebooks),
    then `--until mtl` (stage 0, EPOCHS epochs). The node tests compare with it and start from copies of it."""
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "out"
    run_ok(cluster, out, "cluster", tmp / "cluster.log", "the undisturbed run --until cluster")
    run_ok(cluster, out, "mtl", tmp / "mtl.log", "the undisturbed run --until mtl")
    cfg = _cfg(out, cluster)
    return SimpleNamespace(
        out=out,
        cfg=cfg,
        features=paths.features_dir(cfg),
        clusters=paths.clusters_dir(cfg, FOLD),
        mtl=paths.stage_dir(cfg, FOLD, "mtl"),
        mtl_run=paths.storage_path(cfg) + "/" + paths.stage_run_name(cfg, FOLD, "mtl"),
    )


def test_the_cluster_listens_on_loopback_only(cluster, node2):
    """Token authentication is off in these tests: allowed only because no node listens beyond loopback."""
    for node in (cluster.head, node2):
        sockets = listening_sockets(node.proc.pid)
        assert sockets, f"{node.name}: no listening socket found"
        outside = [s for s in sockets if not s[2].startswith("127.")]
        assert not outside, f"{node.name} listens beyond loopback: {outside}"


def _outcome(rc: int) -> str:
    if rc == 0:
        return "the run completed"
    return f"the run failed with a clear error (exit {rc}), the rerun completed"


def _assert_clear_error(rc: int, log_path: Path, *expected: str) -> None:
    """A failed run must end with gmptl's one-line `error: ...` (a GmptlError), not a traceback."""
    text = log_tail(log_path, 1_000_000)
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert errors and all(e in text for e in expected), (
        f"not a clear error (exit {rc}):\n{log_tail(log_path)}"
    )


def _lose_node(node, holder: Holder) -> None:
    """SIGKILL the worker node's tree (a lost machine), then free the head for the work to go on."""
    node.crash()
    holder.release()


def _features(folder: Path) -> dict[tuple[str, int], np.ndarray]:
    fs = FeatureStore(folder)
    return {
        (u, int(layer)): np.asarray(fs.get(u, int(layer)), dtype=np.float32) for u, layer in fs.index.index
    }


def _assert_same_features(ref: Path, got: Path) -> None:
    index = pd.read_parquet(got / paths.FEATURES_INDEX)
    dupes = index[index.duplicated(["utt_id", "layer"], keep=False)]
    assert dupes.empty, f"utterances indexed twice:\n{dupes}"
    a, b = _features(ref), _features(got)
    assert sorted(a) == sorted(b), f"utterances differ: {sorted(set(a) ^ set(b))[:10]}"
    for key in a:
        assert a[key].shape == b[key].shape, (key, a[key].shape, b[key].shape)
        # float16 storage: one unit in the last place is ~1e-3 of the value; the two computations may round
        # a value either way
        np.testing.assert_allclose(a[key], b[key], rtol=4e-3, atol=4e-3, err_msg=str(key))


def test_extraction_survives_losing_the_node_it_runs_on(cluster, node2, holder, reference, tmp_path):
    out = copy_without(reference.out, tmp_path / "out", reference.features)
    folder = out / reference.features.relative_to(reference.out)
    log_path = tmp_path / "run.log"
    proc = start_run(cluster, out, "extract", log_path)
    try:
        # An encoder actor on the worker node has committed a shard: extraction is under way there.
        wait_until(lambda: node2.workers("ShardEncoder") and list(folder.glob("shard_*.json")), proc, log_path,
                   "extraction on the worker node")  # fmt: skip
        committed = len(list(folder.glob("shard_*.json")))
        _lose_node(node2, holder)
        rc = finish(proc, log_path, "extraction after the node loss")
    finally:
        kill_tree(proc, crash=True)
    n_planned = json.loads((reference.features / "extract.json").read_text())["n_shards"]
    assert committed < n_planned, f"extraction had finished ({committed} shards) before the node was lost"
    if rc != 0:
        _assert_clear_error(rc, log_path)
        run_ok(cluster, out, "extract", tmp_path / "rerun.log", "the rerun of extraction")
    _assert_same_features(reference.features, folder)
    step = json.loads((folder / "extract.json").read_text())
    assert step["n_utterances"] == 40 and step["n_shards"] == n_planned, step
    print(f"extraction: worker node lost with {committed} of {n_planned} shards committed; {_outcome(rc)}")


def test_kmeans_survives_losing_the_node_it_runs_on(cluster, node2, holder, reference, tmp_path):
    out = copy_without(reference.out, tmp_path / "out", reference.clusters)
    folder = out / reference.clusters.relative_to(reference.out)
    log_path = tmp_path / "run.log"
    proc = start_run(cluster, out, "cluster", log_path)
    try:
        # The fit's actors on the worker node hold their frames: the Lloyd loop runs there.
        wait_until(lambda: node2.workers("FrameShard") and "frames loaded" in log_tail(log_path, 100_000), proc,
                   log_path, "k-means actors with their frames on the worker node")  # fmt: skip
        _lose_node(node2, holder)
        rc = finish(proc, log_path, "k-means after the node loss")
    finally:
        kill_tree(proc, crash=True)
    if rc != 0:
        _assert_clear_error(rc, log_path)
        run_ok(cluster, out, "cluster", tmp_path / "rerun.log", "the rerun of k-means")
    ref = json.loads((reference.clusters / paths.KMEANS_JSON).read_text())
    got = json.loads((folder / paths.KMEANS_JSON).read_text())
    assert sorted(got["codebooks"]) == sorted(ref["codebooks"]) and got["n_fit_frames"] == ref["n_fit_frames"]
    for k, book in ref["codebooks"].items():
        np.testing.assert_allclose(np.load(folder / book["file"]), np.load(reference.clusters / book["file"]),
                                   rtol=1e-5, atol=1e-6, err_msg=f"K={k}")  # fmt: skip
        objectives = [h["objective"] for h in got["codebooks"][k]["history"]]
        assert objectives == pytest.approx([h["objective"] for h in book["history"]], rel=1e-6), f"K={k}"
    print(
        f"k-means: worker node lost mid-fit; {_outcome(rc)}; actor replacements per part {got['actor_restarts']}"
    )


def _assert_complete_stage(got: dict) -> None:
    """Every epoch once, finite losses, stage.json's best epoch among them, and the model folder loads."""
    from gmptl.models.factory import load_model

    epochs = list(range(1, EPOCHS + 1))
    assert [h["epoch"] for h in got["history"]] == epochs, got["history"]
    assert all(np.isfinite([h["train_loss"], h["val_loss"]]).all() for h in got["history"]), got["history"]
    assert got["epochs_run"] == EPOCHS and got["best_epoch"] in epochs, got
    load_model(got["model_dir"])  # the final model folder loads (and validates)


def _assert_same_history(ref: dict, got: dict) -> None:
    """Epochs draw every random choice from (seed, epoch, rank): a restart, from a checkpoint or from scratch,
    replays them exactly, so the stage ends as the undisturbed one did."""
    from safetensors.torch import load_file

    for a, b in zip(ref["history"], got["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_uar", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["epoch"], key, ref["history"])
    assert got["best_epoch"] == ref["best_epoch"]
    wa = load_file(f"{ref['model_dir']}/heads.safetensors")
    wb = load_file(f"{got['model_dir']}/heads.safetensors")
    for k in wa:
        assert np.allclose(wa[k].numpy(), wb[k].numpy(), atol=1e-5), k


def test_a_training_stage_survives_losing_the_node_it_runs_on(cluster, node2, holder, reference, tmp_path):
    run_dir = Path(reference.mtl_run)
    out = copy_without(reference.out, tmp_path / "out", reference.mtl, run_dir)
    ckpts = out / run_dir.relative_to(reference.out)
    log_path = tmp_path / "run.log"
    proc = start_run(cluster, out, "mtl", log_path)
    on_head: set[int] = set()
    try:
        # Its Ray Train worker runs on the worker node and has checkpointed epoch 1.
        wait_until(lambda: node2.workers("RayTrainWorker") and list(ckpts.glob("checkpoint_*")), proc, log_path,
                   "a Ray Train worker on the worker node with a checkpoint")  # fmt: skip
        _lose_node(node2, holder)
        rc = finish(proc, log_path, "stage mtl after the node loss",
                    watch=lambda: on_head.update(cluster.head.workers("RayTrainWorker")))  # fmt: skip
    finally:
        kill_tree(proc, crash=True)
    if rc == 0:  # FailureConfig restarted the worker group, which only the head could hold
        assert on_head, f"no Ray Train worker ran on the head after the loss:\n{log_tail(log_path)}"
    else:
        _assert_clear_error(rc, log_path, "rerun the same command to resume")
        run_ok(cluster, out, "mtl", tmp_path / "rerun.log", "the rerun of stage mtl")
    ref = json.loads((reference.mtl / paths.STAGE_JSON).read_text())
    got = json.loads((out / reference.mtl.relative_to(reference.out) / paths.STAGE_JSON).read_text())
    _assert_complete_stage(got)
    # Ray Train collects a worker's reports by polling it: a checkpoint reported just before the node was
    # lost may never reach the controller, and the restarted worker group then starts from an earlier one or
    # from scratch. Either way the epochs replay exactly.
    _assert_same_history(ref, got)
    print(
        f"stage mtl: worker node lost after a checkpoint; {_outcome(rc)}, with the undisturbed run's history"
    )


def test_a_run_killed_while_writing_a_marker_leaves_no_torn_marker(cluster, reference, tmp_path):
    """``gmptl run`` SIGKILLed between a marker's fsync and its rename (files.FAULT_BEFORE_RENAME_ENV), once
    per kind of marker: the marker is still missing (the old state), the killed step reruns and the run
    goes on. Each rerun is killed at the next kind, in pipeline order, so one folder serves every kind."""
    cfg = reference.cfg
    manifest_report = report_path_for(paths.manifest_path(cfg))
    # Markers the copy drops so that its steps write them again; the later ones are written for the first time.
    dropped = [
        manifest_report,
        reference.features / paths.FEATURES_INDEX,
        reference.clusters / paths.KMEANS_JSON,
    ]
    out = copy_without(reference.out, tmp_path / "out", *dropped)
    kinds = [
        ("manifest report", manifest_report),
        ("features index", reference.features / paths.FEATURES_INDEX),
        ("kmeans.json", reference.clusters / paths.KMEANS_JSON),
        ("labels.json", paths.labels_dir(cfg, FOLD) / paths.LABELS_JSON),
        ("stage.json", paths.stage_dir(cfg, FOLD, "gmp") / paths.STAGE_JSON),
        ("test.json", paths.test_dir(cfg, FOLD) / paths.TEST_JSON),
    ]
    for i, (kind, ref_path) in enumerate(kinds):
        marker = out / ref_path.relative_to(reference.out)
        log_path = tmp_path / f"run{i}.log"
        proc = start_run(cluster, out, "evaluate", log_path, **{FAULT_BEFORE_RENAME_ENV: str(marker)})
        try:
            seen = f"{FAULT_BEFORE_RENAME_ENV}: {marker} written"
            wait_until(lambda seen=seen, log_path=log_path: seen in log_tail(log_path, 100_000), proc, log_path,
                       f"the write of the {kind}", RUN_DEADLINE_S)  # fmt: skip
        finally:
            kill_tree(proc, crash=True)
        assert not marker.exists(), f"{kind}: {marker} exists after a kill before its rename"
        left = list(marker.parent.glob(f".{marker.name}.*.tmp"))
        assert left, f"{kind}: the kill came before the temporary file was written"
        for tmp in left:  # what the killed write left: complete, but under a name no reader looks at
            if marker.suffix == ".json":
                json.loads(tmp.read_text())
        # this run (the rerun of the kill before) wrote every earlier kind whole
        _assert_whole([out / p.relative_to(reference.out) for _, p in kinds[:i]])
    final_log = tmp_path / "final.log"
    run_ok(cluster, out, "evaluate", final_log, "the run after the last kill")
    assert re.search(r"evaluate\[\w+\] \(ran\)", log_tail(final_log)), log_tail(final_log)
    _assert_whole([out / p.relative_to(reference.out) for _, p in kinds])
    # The killed writes' temporary files: swept by the reruns that took each step's folder.
    left = [t for _, p in kinds for t in (out / p.relative_to(reference.out)).parent.glob(".*.tmp")]
    assert not left, left


def _assert_whole(markers: list[Path]) -> None:
    for marker in markers:
        assert marker.is_file(), f"{marker} missing after the rerun"
        if marker.suffix == ".json":
            json.loads(marker.read_text())
        else:
            pd.read_parquet(marker)
