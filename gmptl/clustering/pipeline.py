"""``gmptl cluster`` and ``gmptl label``: multi-scale k-means as a Ray job, then frame pseudo-labels.

cluster: the fold's training utterances are split into ``clustering.num_workers``
disjoint parts; each Ray actor loads only its part's frames from the memory-mapped
feature shards and samples its share of ``clustering.max_frames`` (seeded). The
driver seeds the centroids (k-means++ over a sample that stays on the actors, see
``kmeans.kmeanspp_seed``) and runs the Lloyd loop of ``kmeans.iterate``: per
iteration it sends the centroids and receives per-centroid sums and counts only,
so driver memory depends on K x D, never on the number of frames. Every K of the
set is fitted over the same loaded frames. Output per fold: ``L<layer>_k<K>.npy``
centroids and ``kmeans.json``.

Faults: an actor that dies mid-fit (its process killed: out of memory, a lost node) is replaced,
up to ``runtime.actor_restarts`` times per part, by one that reloads the same part (same utterances,
budget and seed, hence the same frames); the Lloyd iteration it was in continues and a seeding it
was in starts again, so the codebooks equal an undisturbed fit's. Past the bound the fit fails with
an error naming the part's feature shards. Every actor the fit started is killed however it ends.
Each feature shard file is checked against its extraction checksum before its frames are read
(``store.check_shard_array``), for k-means and for labels.

label: a Ray Data pass over the feature shards assigns every frame of every
utterance in the fold to its nearest centroid for every K and writes int32 label
arrays shard by shard, with the feature shard's offsets; a label count that
differs from the utterance's frame count is an error naming the utterance.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gmptl import files, paths
from gmptl.clustering import kmeans
from gmptl.clustering.labels import label_quality, label_shard
from gmptl.config import ClusterConfig, Config, RuntimeConfig, to_dict
from gmptl.errors import GmptlError
from gmptl.features import store

log = logging.getLogger(__name__)


def _reset_peak_rss() -> None:
    """Restart the process's peak-RSS count (Linux >= 4.0): Ray may give an actor a worker process
    that ran other work before, whose peak would otherwise be reported as this actor's. Where this
    is not possible the report is the process's lifetime peak (an overestimate, never an under-)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class FrameShard:
    """Ray actor: a disjoint part of the fold's training frames, sampled to its budget.

    The constructor only records the part; ``load`` reads it. A corrupt shard is then an error of
    a call (the actor stays alive), never an actor that died while being created, which the fit
    would take for a lost process and replace.
    """

    def __init__(
        self,
        folder: str,
        utt_ids: list[str],
        layer: int,
        budget: int,
        seed: list[int],
        gpu: bool = False,
        verify_shards: Sequence[int] = (),
    ):
        self.folder, self.utt_ids, self.layer = Path(folder), utt_ids, layer
        self.budget, self.seed, self.gpu, self.verify_shards = budget, seed, gpu, list(verify_shards)

    def load(self) -> tuple[int, int, int]:
        """Check ``verify_shards`` against their checksums, then load the part's sampled frames.

        Returns (frames loaded, frames of the part, this process's pid: the driver logs it, so a
        kernel out-of-memory message that names the pid names the part too).
        """
        import faiss

        _reset_peak_rss()
        faiss.omp_set_num_threads(1)
        for shard in self.verify_shards:
            store.check_shard_array(self.folder, shard, self.layer)
        fs = store.FeatureStore(self.folder)
        utt_ids, layer = self.utt_ids, self.layer
        rows = fs.index.loc[[(u, layer) for u in utt_ids]]
        total = int(rows.n_frames.sum())
        rng = np.random.default_rng(self.seed)
        keep = np.sort(rng.choice(total, size=min(self.budget, total), replace=False))
        # Gather only the kept frames, utterance by utterance, from the memory maps, straight into
        # one preallocated float32 array (a list of parts and a concatenate would hold them twice).
        starts = np.concatenate([[0], np.cumsum(rows.n_frames.to_numpy())])
        d = fs.get(utt_ids[0], layer).shape[1] if utt_ids else 1
        self.x = np.empty((len(keep), d), np.float32)
        for i, u in enumerate(utt_ids):
            lo, hi = np.searchsorted(keep, [starts[i], starts[i + 1]])
            if hi > lo:
                self.x[lo:hi] = fs.get(u, layer)[keep[lo:hi] - starts[i]]
        self.total = total
        return len(self.x), total, os.getpid()

    def peak_rss_mb(self) -> float:
        """Peak resident memory of this actor's process since the actor started (see ``_reset_peak_rss``)."""
        try:
            status = Path("/proc/self/status").read_text()
            return int(status.split("VmHWM:")[1].split()[0]) / 1024  # kB
        except (OSError, IndexError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def start_seeding(self, n: int, seed: list[int]) -> int:
        """Hold this actor's share of the seeding sample (n of its rows) for ``kmeans.kmeanspp_seed``."""
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(self.x), size=min(n, len(self.x)), replace=False))
        self.seeding = kmeans.SeedShard(self.x[rows], rng)
        return len(rows)

    def seeding_call(self, method: str, *args: Any) -> Any:
        return getattr(self.seeding, method)(*args)

    def partial_stats(self, centroids: np.ndarray) -> kmeans.PartialStats:
        return kmeans.partial_stats(self.x, centroids, self.gpu)


def _split_evenly(utt_ids: list[str], n_frames: dict[str, int], n_parts: int) -> list[list[str]]:
    """Greedy balance of frame counts over the parts (largest utterances first), deterministic."""
    parts: list[list[str]] = [[] for _ in range(n_parts)]
    load = [0] * n_parts
    for u in sorted(utt_ids, key=lambda u: (-n_frames[u], u)):
        j = int(np.argmin(load))
        parts[j].append(u)
        load[j] += n_frames[u]
    return [p for p in parts if p]


def _verify_duty(shards_of_part: list[list[int]]) -> list[list[int]]:
    """Which part checks which shard's checksum: every shard once, by the least busy part that reads it.

    The parts are split by utterance, so most shards are read by several parts; hashing each once
    spreads the checksums over the actors instead of repeating them.
    """
    duty: list[list[int]] = [[] for _ in shards_of_part]
    readers: dict[int, list[int]] = {}
    for i, shards in enumerate(shards_of_part):
        for shard in shards:
            readers.setdefault(shard, []).append(i)
    for shard in sorted(readers):
        j = min(readers[shard], key=lambda i: (len(duty[i]), i))
        duty[j].append(shard)
    return duty


class PartLostError(GmptlError, RuntimeError):
    """A k-means actor died (its process killed) more often than ``runtime.actor_restarts`` allows."""


class LabellingError(GmptlError, RuntimeError):
    """The labelling pass stopped (a lost node or actor past its restarts, a task error)."""


class _Replaced(Exception):
    """A part's actor was replaced during a call that builds on state of earlier calls (a seeding)."""


def _without_frames(error: BaseException) -> BaseException:
    """``error`` with no traceback left anywhere in its chain, so that it keeps no frame alive (nor a
    frame's locals, such as a dataset whose executor holds actor handles)."""
    seen: list[BaseException] = []
    todo = [error]
    while todo:
        e = todo.pop()
        if any(e is s for s in seen):
            continue
        seen.append(e)
        e.__traceback__ = None
        todo += [
            c for c in (getattr(e, "cause", None), e.__cause__, e.__context__) if isinstance(c, BaseException)
        ]
    return error


def _get(ref: Any) -> Any:
    """``ray.get``; an actor's user-facing error (a corrupt shard) is raised as itself, so the CLI prints
    its message, not a remote traceback."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, GmptlError):
            raise e.cause from e
        raise


class _Parts:
    """The fit's ``FrameShard`` actors, one per part of the frames; one that dies is replaced.

    The fit replaces actors itself rather than through Ray's ``max_restarts``/``max_task_retries``:
    Ray reruns a restarted actor's constructor and retries only the pending call, but the actor has
    lost what earlier calls built (its loaded frames, a k-means++ seeding in progress), so the retried
    call would fail or answer from other state. Here a replacement first reloads its part (the same
    utterances, budget and seed: the same frames); then a stateless call (``partial_stats``: its
    statistics depend only on the frames and the centroids sent) is sent to it again, while a call
    that builds on earlier ones raises ``_Replaced`` for the caller to start that work again on every
    part. The actor class is built with Ray's restarts off (``max_restarts=0``) so the two never mix.
    """

    def __init__(self, actor_cls: Any, specs: list[dict[str, Any]], names: list[str], max_restarts: int):
        self.actor_cls, self.specs, self.names, self.max_restarts = actor_cls, specs, names, max_restarts
        self.restarts = [0] * len(specs)
        self.created: list[Any] = []  # every actor started, replacements too: kill_all kills them all
        self.actors: list[Any] = []
        self.loaded: list[tuple[int, int]] = []

    def _new(self, i: int) -> Any:
        actor = self.actor_cls.remote(**self.specs[i])
        self.created.append(actor)
        return actor

    def start(self) -> list[tuple[int, int]]:
        """Start one actor per part and load the parts in parallel: (frames loaded, frames of the part) each."""
        import ray

        self.actors = [self._new(i) for i in range(len(self.specs))]
        refs = [a.load.remote() for a in self.actors]
        got = []
        for i, ref in enumerate(refs):
            try:
                got.append(self._loaded(i, _get(ref)))
            except ray.exceptions.RayActorError as err:
                got.append(self._replace(i, err))
        self.loaded = got
        return got

    def _loaded(self, i: int, reply: tuple[int, int, int]) -> tuple[int, int]:
        n, total, pid = reply
        log.debug("k-means %s: %d of %d frames loaded, actor pid %d", self.names[i], n, total, pid)
        return n, total

    def _replace(self, i: int, err: Exception) -> tuple[int, int]:
        """A new actor for part i, its part loaded, after its actor died; PartLostError past the bound."""
        import ray

        while True:
            if self.restarts[i] >= self.max_restarts:
                raise PartLostError(
                    f"the k-means actor of {self.names[i]} died {self.restarts[i] + 1} times, more than "
                    f"runtime.actor_restarts={self.max_restarts} allows ({type(err).__name__}: {err}). If "
                    "it ran out of memory, lower clustering.max_frames or raise clustering.num_workers; if "
                    "its node went away, rerun when the cluster is whole"
                ) from err
            self.restarts[i] += 1
            log.warning("k-means %s: its actor died (%s); starting replacement %d of at most %d",
                        self.names[i], type(err).__name__, self.restarts[i], self.max_restarts)  # fmt: skip
            ray.kill(self.actors[i])  # dead already, or a process Ray lost touch with: never left running
            self.actors[i] = self._new(i)
            try:
                got = self._loaded(i, _get(self.actors[i].load.remote()))
            except ray.exceptions.RayActorError as e:
                err = e
                continue
            # The part is a fixed (utterances, budget, seed): a different count is a bug, not a fault.
            assert not self.loaded or got == self.loaded[i], (got, self.loaded[i])
            return got

    def call(self, method: str, args: Sequence[tuple], resume: bool = True) -> list:
        """``method(*args[i])`` on the actor of every part i, in parallel; the replies in part order.

        A part whose actor died is replaced; with ``resume`` the call is sent again to the replacement,
        without it ``_Replaced`` is raised (after the replacement loaded its part).
        """
        import ray

        refs = [getattr(a, method).remote(*ar) for a, ar in zip(self.actors, args, strict=True)]
        out = []
        for i, ref in enumerate(refs):
            while True:
                try:
                    out.append(_get(ref))
                    break
                except ray.exceptions.RayActorError as err:
                    self._replace(i, err)
                    if not resume:
                        raise _Replaced from err
                    ref = getattr(self.actors[i], method).remote(*args[i])
        return out

    def kill_all(self) -> None:
        import ray

        for actor in self.created:
            ray.kill(actor)


def _shard_names(folder: Path, shards: list[int], layer: int, show: int = 4) -> str:
    names = [store.shard_array(folder, s, layer).name for s in shards]
    more = f" and {len(names) - show} more" if len(names) > show else ""
    return ", ".join(names[:show]) + more


@dataclass
class _Seeded:
    rng: np.random.Generator  # the codebook's generator, as seeding left it (Lloyd re-seeds with it)
    centroids: np.ndarray  # (K, D) float32
    sizes: list[int]  # seeding sample rows per part
    potentials: list[float]  # per k-means++ start, on the seeding sample; the lowest is kept
    examined: float | None  # share of the rows a seeding step examined (the rest were pruned)


def _seed_codebook(parts: _Parts, k: int, cfg: ClusterConfig, loaded: list[tuple[int, int]]) -> _Seeded:
    """k-means++ (or random) seeding of one codebook on the actors; raises ``_Replaced`` if one died.

    The seeding sample stays on the actors, each holding its share (k-means++ needs points, not
    statistics): the driver only sees candidate rows and potentials, and each step's (pruned)
    distance computations run on every actor at once. Its generator is made here, so a seeding
    started again after a replacement draws the same numbers.
    """
    rng = np.random.default_rng([cfg.seed, k])
    n_loaded = sum(n for n, _ in loaded)
    n_seed = min(n_loaded, max(cfg.init_points_per_centroid * k, cfg.init_min_points))
    sizes = parts.call(
        "start_seeding",
        [(round(n_seed * n / n_loaded) + 1, [cfg.seed, k, i]) for i, (n, _) in enumerate(loaded)],
        resume=False,
    )

    def call(method: str, args: Sequence[tuple]) -> list:
        return parts.call("seeding_call", [(method, *a) for a in args], resume=False)

    examined, potentials = None, []
    if cfg.init == "random":
        picked = np.sort(rng.choice(sum(sizes), size=k, replace=False))
        centroids = kmeans.shard_rows(call, sizes, picked)
    else:
        trials = 2 + int(np.log(k)) if cfg.init == "greedy-kmeans++" else 1
        centroids = kmeans.kmeanspp_seed(
            call, sizes, k, rng, n_local_trials=trials, starts=cfg.init_starts, on_start=potentials.append
        )
        log.debug("k=%d seeding potential of each start: %s", k, ", ".join(f"{p:.6g}" for p in potentials))
        n_examined, n_full = np.sum(call("pruning", [()] * len(loaded)), axis=0)
        examined = float(n_examined / max(n_full, 1))
    return _Seeded(rng, centroids, sizes, potentials, examined)


def fit_codebooks(
    features_folder: Path,
    train_utts: list[str],
    layer: int,
    cfg: ClusterConfig,
    runtime: RuntimeConfig,
    out: Path,
) -> dict[str, Any]:
    """Fit one codebook per K on the training frames; write centroids and kmeans.json into ``out``.

    Raises:
        PartLostError: one part's actor died more than ``runtime.actor_restarts`` times.
        store.CorruptShardError: a feature shard no longer matches its extraction checksum.
    """
    import ray

    from gmptl.runtime import ensure_ray

    ensure_ray(runtime)
    t0 = time.perf_counter()
    fs = store.FeatureStore(features_folder)
    missing = sorted(set(train_utts) - set(fs.utterances()))
    if missing:
        raise ValueError(
            f"{len(missing)} training utterances have no features in {features_folder}: {missing[:5]}"
        )
    n_frames = {u: int(fs.index.loc[(u, layer), "n_frames"]) for u in train_utts}
    total = sum(n_frames.values())
    utt_parts = _split_evenly(train_utts, n_frames, cfg.num_workers)
    budget = min(cfg.max_frames, total)
    shares = [round(budget * sum(n_frames[u] for u in p) / total) for p in utt_parts]
    shares[-1] = budget - sum(shares[:-1])  # exact budget
    shards_of = [sorted({int(fs.index.loc[(u, layer), "shard"]) for u in p}) for p in utt_parts]
    duty = _verify_duty(shards_of)
    gpu = cfg.num_gpus_per_worker > 0
    Actor = ray.remote(num_cpus=cfg.num_cpus_per_worker, num_gpus=cfg.num_gpus_per_worker, max_restarts=0)(
        FrameShard
    )
    specs = [
        {"folder": str(features_folder), "utt_ids": p, "layer": layer, "budget": s, "seed": [cfg.seed, i],
         "gpu": gpu, "verify_shards": duty[i]}
        for i, (p, s) in enumerate(zip(utt_parts, shares, strict=True))
    ]  # fmt: skip
    names = [
        f"part {i} of {len(utt_parts)} ({len(p)} utterances in {features_folder}: "
        f"{_shard_names(features_folder, shards_of[i], layer)})"
        for i, p in enumerate(utt_parts)
    ]
    parts = _Parts(Actor, specs, names, runtime.actor_restarts)
    # Killed however the fit ends (an error, a lost part, an interrupt, a Tune trial stopped mid-fit):
    # no actor may hold its frames (and CPUs) for the rest of the session. A trial whose process is
    # killed outright takes its actors with it: Ray ends the actors a dead process owned.
    try:
        loaded = parts.start()
        n_loaded = sum(n for n, _ in loaded)
        log.info(
            "k-means: %d of %d training frames loaded on %d actors (layer %d)",
            n_loaded,
            total,
            len(loaded),
            layer,
        )
        if n_loaded < max(cfg.k):
            raise ValueError(
                f"only {n_loaded} training frames for K={max(cfg.k)}: lower clustering.k or add data"
            )

        def stats_of(c: np.ndarray) -> kmeans.PartialStats:
            ref = ray.put(np.ascontiguousarray(c, dtype=np.float32))
            return kmeans.merge(parts.call("partial_stats", [(ref,)] * len(loaded)))

        out.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {
            "layer": layer,
            "n_train_frames": total,
            "n_fit_frames": n_loaded,
            "codebooks": {},
        }
        for k in cfg.k:
            t_seed = time.perf_counter()
            while True:
                try:
                    seeded = _seed_codebook(parts, k, cfg, loaded)
                    break
                except _Replaced:
                    log.warning("k=%d: seeding again from its start on every part", k)
            t_k = time.perf_counter()
            centroids, history = kmeans.iterate(
                stats_of,
                seeded.centroids,
                cfg.n_iter,
                seeded.rng,
                on_iter=lambda r, k=k: log.debug(
                    "k=%d iter %d objective %.6g imbalance %.3f reseeded %d",
                    k,
                    r["iter"],
                    r["objective"],
                    r["imbalance"],
                    r["n_reseeded"],
                ),  # fmt: skip
                tol=cfg.tol,
            )
            final = stats_of(centroids)
            files.save_npy(out / paths.centroids_file(layer, k), centroids)
            report["codebooks"][str(k)] = {
                "file": paths.centroids_file(layer, k),
                "history": history,
                "final_objective": final.inertia,
                "final_imbalance": kmeans.imbalance(final.counts),
                "clusters_used": int((final.counts > 0).sum()),
                "n_iter_run": len(history),
                "seed_sample": int(sum(seeded.sizes)),
                "seed_rows_examined": seeded.examined,  # only the last start's
                "seed_potentials": seeded.potentials,
                "seed_s": t_k - t_seed,
                "fit_s": time.perf_counter() - t_k,
            }
            # Per iteration at DEBUG (the run's log file); the terminal gets one line per codebook.
            done = report["codebooks"][str(k)]
            log.info("k=%d: %d iterations, objective %.6g -> %.6g, %d clusters used, imbalance %.3f (%.1f s)",
                     k, done["n_iter_run"], history[0]["objective"] if history else done["final_objective"],
                     done["final_objective"], done["clusters_used"], done["final_imbalance"],
                     done["seed_s"] + done["fit_s"])  # fmt: skip
        # Memory sizing for a cluster: what the largest actor needed for its share of the frames.
        report["actor_peak_rss_mb"] = parts.call("peak_rss_mb", [()] * len(loaded))
        report["actor_restarts"] = list(parts.restarts)  # per part: replacements after its actor died
    finally:
        parts.kill_all()
    report["wall_s"] = time.perf_counter() - t0
    report["config"] = to_dict(cfg)
    files.write_json(out / paths.KMEANS_JSON, report)
    return report


class ShardLabeller:
    """Ray Data actor: loads every codebook once; labels one feature shard per call."""

    def __init__(
        self, features_folder: str, centroids: dict[int, np.ndarray], layer: int, out: str, gpu: bool = False
    ):
        import faiss

        faiss.omp_set_num_threads(1)
        self.gpu = gpu
        self.features_folder = Path(features_folder)
        self.centroids = centroids
        self.layer = layer
        self.out = Path(out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: dict[str, list] = {"shard": [], "k": [], "n_frames": []}
        for shard in batch["shard"]:
            shard = int(shard)
            record = json.loads(store.shard_json(self.features_folder, shard).read_text())
            x = np.load(store.shard_array(self.features_folder, shard, self.layer), mmap_mode="r")
            if len(x) != sum(record["n_frames"]):
                raise ValueError(
                    f"feature shard {shard}: {len(x)} frames, commit record says {sum(record['n_frames'])}"
                )
            for k, c in self.centroids.items():
                labels = kmeans.assign(x, c, self.gpu)[0].astype(np.int32)
                path = label_shard(self.out, shard, k)
                files.save_npy(path, labels)
                rows["shard"].append(shard)
                rows["k"].append(k)
                rows["n_frames"].append(len(labels))
        return {key: np.asarray(v) for key, v in rows.items()}


def assign_labels(
    features_folder: Path, centroids: dict[int, np.ndarray], layer: int, utt_parts: pd.Series,
    cfg: ClusterConfig, runtime: RuntimeConfig, out: Path,
) -> pd.DataFrame:  # fmt: skip
    """Label every frame of the utterances in ``utt_parts`` (utt_id -> train/validation/test).

    Returns the label index (utt_id, part, shard, offset, n_frames), also written to out/index.parquet.
    """
    import ray

    from gmptl.runtime import actor_fault_bounds, ensure_ray

    ensure_ray(runtime)
    out.mkdir(parents=True, exist_ok=True)
    fs = store.FeatureStore(features_folder)
    index = fs.index.xs(layer, level="layer").reset_index()
    index = index[index.utt_id.isin(utt_parts.index)].copy()
    shards = sorted(index.shard.unique().tolist())
    # Checksums first, one Ray task per shard: in the labelling actors a corrupt shard would reach the
    # driver only as Ray Data's "UDF failed" wrapper, without its type.
    check = ray.remote(num_cpus=cfg.num_cpus_per_worker)(store.check_shard_array)
    for ref in [check.remote(features_folder, s, layer) for s in shards]:
        _get(ref)
    ds = ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=max(1, len(shards)))
    ds = ds.map_batches(
        ShardLabeller,
        fn_constructor_kwargs={"features_folder": str(features_folder), "centroids": centroids, "layer": layer,
                               "out": str(out), "gpu": cfg.num_gpus_per_worker > 0},
        batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(cfg.num_workers, len(shards))),
        num_cpus=cfg.num_cpus_per_worker,
        **({"num_gpus": cfg.num_gpus_per_worker} if cfg.num_gpus_per_worker > 0 else {}),
        **actor_fault_bounds(runtime),
    )  # fmt: skip
    failed: BaseException | None = None
    try:
        for _ in ds.iter_rows():
            pass
    except Exception as e:
        failed = _without_frames(e)
    if failed is not None:
        # Ray Data ends a failed run's actors by dropping its handles to them, not with ray.kill; the
        # error's traceback holds the executor's frames, so while the error is kept (a fold job's
        # future, a Tune trial's result) the actors would keep their CPUs. So: an error without
        # frames, no dataset, and a collection of the executor's reference cycles, which refcounting
        # alone leaves in place (measured: without it the actors outlived the error).
        del ds
        gc.collect()
        if isinstance(failed, GmptlError):
            raise failed
        raise LabellingError(
            f"frame labelling of {len(shards)} feature shards into {out} stopped ({type(failed).__name__}): an actor "
            f"or node lost more often than runtime.actor_restarts={runtime.actor_restarts} allows, or a shard "
            f"that cannot be labelled. The codebooks and features are kept: run the same command again. "
            f"Cause: {str(failed).strip()[:600]}"
        ) from failed
    # The label count of every utterance must equal its feature frame count.
    for shard, group in index.groupby("shard"):
        for k in centroids:
            n = len(np.load(label_shard(out, shard, k), mmap_mode="r"))
            record_total = int(fs.index[fs.index.shard == shard].xs(layer, level="layer").n_frames.sum())
            if n != record_total:
                bad = group.utt_id.tolist()[:3]
                raise ValueError(
                    f"labels of shard {shard} (utterances {bad} ...) have {n} frames, features {record_total}"
                )
    index["part"] = index.utt_id.map(utt_parts)
    files.write_parquet(index, out / paths.LABELS_INDEX)
    return index


def cluster_layer(cfg: Config) -> int:
    """The transformer layer (1-based) whose frames are clustered: clustering.layer, else the first extracted."""
    return cfg.clustering.layer if cfg.clustering.layer is not None else cfg.features.layers[0]


def _done(folder: Path, marker: str) -> dict[str, Any] | None:
    return files.read_marker(folder / marker)


def cluster_step(ctx: Any) -> dict[str, Any]:
    """Pipeline step ``cluster``: one codebook per K, fitted on the fold's training speakers only."""
    cfg, fold = ctx.cfg, ctx.fold
    out = paths.clusters_dir(cfg, fold.index)
    if (done := _done(out, paths.KMEANS_JSON)) is not None:
        return done
    train = fold.select(ctx.df, "train").utt_id.tolist()
    return fit_codebooks(
        paths.features_dir(cfg, fold.index), train, cluster_layer(cfg), cfg.clustering, cfg.runtime, out
    )


def label_step(ctx: Any) -> dict[str, Any]:
    """Pipeline step ``label``: frame pseudo-labels for the fold's train, validation and (for analysis) test
    utterances, with their cluster quality; labels.json is written last."""
    cfg, df, fold = ctx.cfg, ctx.df, ctx.fold
    out = paths.labels_dir(cfg, fold.index)
    if (done := _done(out, paths.LABELS_JSON)) is not None:
        return done
    layer = cluster_layer(cfg)
    cdir = paths.clusters_dir(cfg, fold.index)
    centroids = {k: np.load(cdir / paths.centroids_file(layer, k)) for k in cfg.clustering.k}
    part = fold.part_of(df)
    parts = pd.Series(part.to_numpy(), index=df.utt_id)[part.to_numpy() != ""]
    index = assign_labels(
        paths.features_dir(cfg, fold.index), centroids, layer, parts, cfg.clustering, cfg.runtime, out
    )
    quality, counts = label_quality(paths.corpus_root(cfg), cfg.clustering.k, out, index)
    report = {"layer": layer, "n_utterances": int(len(index)), "quality": quality, "counts": counts}
    files.write_json(out / paths.LABELS_JSON, report)
    return report
