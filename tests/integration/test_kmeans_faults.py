"""Distributed k-means under faults: an actor process SIGKILLed mid-fit, restarts exhausted, a corrupt shard.

The kills are real: the driver logs the pid of every part's actor when it has loaded its frames, and a
log handler on the driver SIGKILLs that process when the driver logs a chosen event (a Lloyd iteration,
a seeding), then waits until the process is gone, so the next call of the fit meets a dead actor.
"""

import logging
import os
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from gmptl.clustering.pipeline import PartLostError, assign_labels, fit_codebooks
from gmptl.config import load_config
from gmptl.data.folds import make_folds
from gmptl.features import store

# The limit covers the shared extraction fixture too when this module runs first (minutes on a busy machine).
pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(600)]

LOGGER = "gmptl.clustering.pipeline"


@pytest.fixture(scope="module")
def fit(small_corpus, small_features):
    """A small, fast k-means (K 4 and 8, 4 iterations, 2 000 frames) on fold 0 of the shared features."""
    cfg = load_config(
        None,
        ["data.corpus=iemocap", f"data.root={small_corpus.tmp / 'corpus'}", "model.backbone=tiny",
         "features.layers=[2]", "clustering.k=[4,8]", "clustering.n_iter=4", "clustering.tol=0",
         "clustering.max_frames=2000", "clustering.init_starts=1", "clustering.init_min_points=400"],
    )  # fmt: skip
    fold = make_folds(small_corpus.df, cfg.folds)[0]
    train = fold.select(small_corpus.df, "train").utt_id.tolist()
    return SimpleNamespace(folder=small_features.folder, cfg=cfg, train=train, df=small_corpus.df, fold=fold)


def _state(pid: int) -> str | None:
    """A process's state letter from /proc, None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _ours(pid: int) -> bool:
    """Whether ``pid`` descends from this test process (its in-process Ray started the raylet and workers)."""
    me = os.getpid()
    while pid > 1:
        if pid == me:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def _wait_gone(pids: set[int], timeout_s: float) -> set[int]:
    """Wait until none of ``pids`` runs (gone or a zombie); returns those still running at the deadline."""
    deadline = time.monotonic() + timeout_s
    while (alive := {p for p in pids if _state(p) not in (None, "Z")}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


class KillPart(logging.Handler):
    """Reads the fit's log: the actor pid of each part, and SIGKILLs a part's actor at chosen events.

    ``kills``: (part, event) pairs, where an event is ("iter", k, iteration), logged after that Lloyd
    iteration, or ("seeded", k), logged once the k-means++ starts of codebook k are drawn (the fit then
    still asks the actors for their pruning counts, a seeding call).
    """

    def __init__(self, kills: list[tuple[int, tuple]]):
        super().__init__(logging.DEBUG)
        self.kills = list(kills)
        self.pid_of: dict[int, int] = {}
        self.pids: set[int] = set()  # every actor process of the fit, replacements too
        self.killed: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("k-means %s: %d of %d frames loaded, actor pid %d"):
            part = int(record.args[0].split()[1])  # "part <i> of <n> (...)"
            self.pid_of[part] = record.args[3]
            self.pids.add(record.args[3])
            return
        if record.msg.startswith("k=%d iter %d"):
            event = ("iter", record.args[0], record.args[1])
        elif record.msg.startswith("k=%d seeding potential"):
            event = ("seeded", record.args[0])
        else:
            return
        for part, when in [kp for kp in self.kills if kp[1] == event]:
            self.kills.remove((part, when))
            self._kill(self.pid_of[part])

    def _kill(self, pid: int) -> None:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"FrameShard" in cmdline and _ours(pid), (pid, cmdline)  # only our own k-means actor
        os.kill(pid, signal.SIGKILL)
        self.killed.append(pid)
        assert not _wait_gone({pid}, 10), f"actor process {pid} still runs 10 s after SIGKILL"


@pytest.fixture
def killer():
    """Installs a KillPart on the pipeline's logger (at DEBUG: per-part loads, seeding and each Lloyd
    iteration are logged there) for one test."""
    logger = logging.getLogger(LOGGER)
    handlers, level = [], logger.level

    def install(kills: list[tuple[int, tuple]]) -> KillPart:
        h = KillPart(kills)
        logger.addHandler(h)
        handlers.append(h)
        return h

    logger.setLevel(logging.DEBUG)
    yield install
    for h in handlers:
        logger.removeHandler(h)
    logger.setLevel(level)


def _cpus_back(free: float, timeout_s: float = 30) -> bool:
    import ray

    deadline = time.monotonic() + timeout_s  # ray.kill is asynchronous
    while ray.available_resources().get("CPU", 0.0) < free and time.monotonic() < deadline:
        time.sleep(0.2)
    return ray.available_resources().get("CPU", 0.0) >= free


def test_a_killed_actor_is_replaced_and_the_codebooks_equal_an_undisturbed_fit(fit, killer, tmp_path):
    import ray

    free = ray.available_resources().get("CPU", 0.0)
    ref = fit_codebooks(fit.folder, fit.train, 2, fit.cfg.clustering, fit.cfg.runtime, tmp_path / "ref")
    assert ref["actor_restarts"] == [0, 0]
    # Part 0's actor dies after Lloyd iteration 1 of K=4 (its replacement resumes iteration 2), part 1's
    # while K=8 is being seeded (every part seeds K=8 again from its start).
    h = killer([(0, ("iter", 4, 1)), (1, ("seeded", 8))])
    rep = fit_codebooks(fit.folder, fit.train, 2, fit.cfg.clustering, fit.cfg.runtime, tmp_path / "killed")
    assert len(h.killed) == 2 and not h.kills
    assert rep["actor_restarts"] == [1, 1]
    assert len(h.pids) == 4  # two parts, each replaced once
    for k in (4, 8):
        # The same frames and centroids give the same sums; only float rounding could differ.
        np.testing.assert_allclose(
            np.load(tmp_path / "killed" / f"L2_k{k}.npy"), np.load(tmp_path / "ref" / f"L2_k{k}.npy"),
            rtol=1e-5, atol=1e-6,
        )  # fmt: skip
        got, want = rep["codebooks"][str(k)], ref["codebooks"][str(k)]
        assert [r["objective"] for r in got["history"]] == pytest.approx(
            [r["objective"] for r in want["history"]], rel=1e-6
        )
        assert got["seed_potentials"] == pytest.approx(want["seed_potentials"], rel=1e-6)
    # No k-means actor outlives the fit: every process it started has exited, and the CPUs are free.
    assert not _wait_gone(h.pids, 30)
    assert _cpus_back(free)


def test_a_part_that_keeps_dying_fails_the_fit_with_its_shards_named(fit, killer, tmp_path):
    import ray

    free = ray.available_resources().get("CPU", 0.0)
    runtime = fit.cfg.runtime.model_copy(update={"actor_restarts": 1})
    h = killer([(0, ("iter", 4, 0)), (0, ("iter", 4, 1))])  # the original actor, then its one replacement
    t0 = time.monotonic()
    with pytest.raises(
        PartLostError, match=r"actor of part 0 of 2 \(\d+ utterances in .*shard_\d{5}\.L2\.npy"
    ):
        fit_codebooks(fit.folder, fit.train, 2, fit.cfg.clustering, runtime, tmp_path / "c")
    assert time.monotonic() - t0 < 60  # an error, not a hang
    assert len(h.killed) == 2
    assert not _wait_gone(h.pids, 30)
    assert _cpus_back(free)
    assert not (tmp_path / "c" / "kmeans.json").exists()


def test_a_corrupt_shard_is_an_error_naming_it_for_kmeans_and_labels(fit, tmp_path):
    import ray

    free = ray.available_resources().get("CPU", 0.0)
    folder = tmp_path / "feats"
    shutil.copytree(fit.folder, folder)
    fs = store.FeatureStore(folder)
    shard = int(fs.index.loc[(fit.train[0], 2), "shard"])
    path = store.shard_array(folder, shard, 2)
    # Flip bytes past the .npy header: the file still loads, with the same size; only its checksum differs.
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(
        b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 8]
    )
    path.write_bytes(bytes(data))
    match = rf"feature shard file {path}: checksum differs .*rerun the command"
    with pytest.raises(store.CorruptShardError, match=match):
        fit_codebooks(folder, fit.train, 2, fit.cfg.clustering, fit.cfg.runtime, tmp_path / "c")
    assert _cpus_back(free)
    part = fit.fold.part_of(fit.df)
    parts = pd.Series(part.to_numpy(), index=fit.df.utt_id)
    centroids = {4: np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)}
    with pytest.raises(store.CorruptShardError, match=match):
        assign_labels(folder, centroids, 2, parts, fit.cfg.clustering, fit.cfg.runtime, tmp_path / "l")
    assert _cpus_back(free)
