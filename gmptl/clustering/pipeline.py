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

label: a Ray Data pass over the feature shards assigns every frame of every
utterance in the fold to its nearest centroid for every K and writes int32 label
arrays shard by shard, with the feature shard's offsets; a label count that
differs from the utterance's frame count is an error naming the utterance.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gmptl import files, paths
from gmptl.clustering import kmeans
from gmptl.clustering.labels import label_quality, label_shard
from gmptl.config import ClusterConfig, Config, RuntimeConfig, to_dict
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
    """Ray actor: a disjoint part of the fold's training frames, sampled to its budget."""

    def __init__(
        self, folder: str, utt_ids: list[str], layer: int, budget: int, seed: list[int], gpu: bool = False
    ):
        import faiss

        _reset_peak_rss()
        faiss.omp_set_num_threads(1)
        self.gpu = gpu
        fs = store.FeatureStore(Path(folder))
        rows = fs.index.loc[[(u, layer) for u in utt_ids]]
        total = int(rows.n_frames.sum())
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(total, size=min(budget, total), replace=False))
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

    def count(self) -> tuple[int, int]:
        return len(self.x), self.total

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


def fit_codebooks(
    features_folder: Path,
    train_utts: list[str],
    layer: int,
    cfg: ClusterConfig,
    runtime: RuntimeConfig,
    out: Path,
) -> dict[str, Any]:
    """Fit one codebook per K on the training frames; write centroids and kmeans.json into ``out``."""
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
    parts = _split_evenly(train_utts, n_frames, cfg.num_workers)
    budget = min(cfg.max_frames, total)
    shares = [round(budget * sum(n_frames[u] for u in p) / total) for p in parts]
    shares[-1] = budget - sum(shares[:-1])  # exact budget
    gpu = cfg.num_gpus_per_worker > 0
    Actor = ray.remote(num_cpus=cfg.num_cpus_per_worker, num_gpus=cfg.num_gpus_per_worker)(FrameShard)
    actors = [
        Actor.remote(str(features_folder), p, layer, s, [cfg.seed, i], gpu)
        for i, (p, s) in enumerate(zip(parts, shares, strict=True))
    ]
    # Killed however the fit ends: an error, or a Tune trial stopped mid-fit, must not leave actors
    # holding their frames (and CPUs) for the rest of the session.
    try:
        counts = ray.get([a.count.remote() for a in actors])
        n_loaded = sum(c for c, _ in counts)
        log.info(
            "k-means: %d of %d training frames loaded on %d actors (layer %d)",
            n_loaded,
            total,
            len(actors),
            layer,
        )
        if n_loaded < max(cfg.k):
            raise ValueError(
                f"only {n_loaded} training frames for K={max(cfg.k)}: lower clustering.k or add data"
            )

        def stats_of(c: np.ndarray) -> kmeans.PartialStats:
            ref = ray.put(np.ascontiguousarray(c, dtype=np.float32))
            return kmeans.merge(ray.get([a.partial_stats.remote(ref) for a in actors]))

        out.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {
            "layer": layer,
            "n_train_frames": total,
            "n_fit_frames": n_loaded,
            "codebooks": {},
        }
        for k in cfg.k:
            rng = np.random.default_rng([cfg.seed, k])
            t_seed = time.perf_counter()
            n_seed = min(n_loaded, max(cfg.init_points_per_centroid * k, cfg.init_min_points))
            # The seeding sample stays on the actors, each holding its share (k-means++ needs points,
            # not statistics): the driver only sees candidate rows and potentials, and each step's
            # (pruned) distance computations run on every actor at once.
            sizes = ray.get(
                [
                    a.start_seeding.remote(round(n_seed * c / n_loaded) + 1, [cfg.seed, k, i])
                    for i, (a, (c, _)) in enumerate(zip(actors, counts, strict=True))
                ]
            )

            def call(method: str, args: list[tuple]) -> list:
                return ray.get(
                    [a.seeding_call.remote(method, *ar) for a, ar in zip(actors, args, strict=True)]
                )

            seed_examined, seed_potentials = None, []
            if cfg.init == "random":
                picked = np.sort(rng.choice(sum(sizes), size=k, replace=False))
                centroids = kmeans.shard_rows(call, sizes, picked)
            else:
                trials = 2 + int(np.log(k)) if cfg.init == "greedy-kmeans++" else 1
                centroids = kmeans.kmeanspp_seed(
                    call,
                    sizes,
                    k,
                    rng,
                    n_local_trials=trials,
                    starts=cfg.init_starts,
                    on_start=seed_potentials.append,
                )
                log.info(
                    "k=%d seeding potential of each start: %s",
                    k,
                    ", ".join(f"{p:.6g}" for p in seed_potentials),
                )
                examined, full = np.sum(call("pruning", [()] * len(actors)), axis=0)
                seed_examined = float(examined / max(full, 1))
            t_k = time.perf_counter()
            centroids, history = kmeans.iterate(
                stats_of,
                centroids,
                cfg.n_iter,
                rng,
                on_iter=lambda r, k=k: log.info(
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
                "seed_sample": int(sum(sizes)),
                # Share of the rows a seeding step examined (the rest were pruned; only the last start's).
                "seed_rows_examined": seed_examined,
                "seed_potentials": seed_potentials,  # per start, on the seeding sample; the lowest is kept
                "seed_s": t_k - t_seed,
                "fit_s": time.perf_counter() - t_k,
            }
        # Memory sizing for a cluster: what the largest actor needed for its share of the frames.
        report["actor_peak_rss_mb"] = ray.get([a.peak_rss_mb.remote() for a in actors])
    finally:
        for a in actors:
            ray.kill(a)
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
    for _ in ds.iter_rows():
        pass
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
