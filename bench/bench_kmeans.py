"""Benchmark: multi-scale k-means, ours (Ray actors, 1 and 2) vs fairseq's recipe vs faiss.Kmeans.

Run by hand, e.g. at HuBERT-base scale (hours on 2 cores for the fairseq recipe at K=4096):
    .venv/bin/python bench/bench_kmeans.py --n 500000 --d 768 --ks 64,512,4096
or a quick check: ``--n 50000 --d 64 --ks 64,512 --fairseq-n-init 3``.

Data: a realistic mixture (1000 anisotropic Gaussian components of random sizes,
float32), written as a gmptl feature store (fp16) for our job; the same points in
float32 for the others. Every method gets the same iteration budget where it has
one; inertia is always recomputed on the *full* set with the same code. fairseq's
``learn_kmeans.py`` recipe: MiniBatchKMeans(k-means++, batch 10 000, n_init 20,
max_iter 100, tol 0, max_no_improvement 100, reassignment_ratio 0). Peak memory is
the max RSS of the largest process: for our job the largest actor's (VmHWM since the actor
started, reported by the job), for the in-process methods the points they hold plus their RSS growth, sampled
from /proc; the driver's growth is a column of its own.
Prints a table; writes ``bench/results/bench_kmeans.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def mixture(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (1000, d)).astype(np.float32)
    scales = rng.uniform(0.3, 2.0, (1000, d)).astype(np.float32)
    weights = rng.dirichlet(np.full(1000, 0.5))
    comp = rng.choice(1000, size=n, p=weights)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 50_000):
        c = comp[s : s + 50_000]
        x[s : s + 50_000] = centres[c] + scales[c] * rng.normal(size=(len(c), d)).astype(np.float32)
    return x


def write_store(x: np.ndarray, folder: Path, frames_per_utt: int = 250) -> list[str]:
    from gmptl.features import store

    folder.mkdir(parents=True)
    utts, shard, start = [], 0, 0
    while start < len(x):
        ids, feats = [], []
        for _ in range(64):
            if start >= len(x):
                break
            ids.append(f"u{len(utts):07d}")
            feats.append({1: x[start : start + frames_per_utt]})
            utts.append(ids[-1])
            start += frames_per_utt
        store.write_shard(folder, shard, ids, feats, "float16")
        shard += 1
    store.build_index(folder, shard)
    return utts


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 1024**2


class RssGrowth:
    """Peak growth of this process's resident memory inside a ``with`` block, sampled every 20 ms.

    ru_maxrss cannot separate a method's memory from the arrays this driver already holds
    (both float32 copies of the points), so each in-process method is charged its growth.
    """

    def __enter__(self) -> RssGrowth:
        self.base, self.peak, self._stop = rss_mb(), 0.0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb() - self.base)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb() - self.base)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500_000)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--ks", default="64,512,4096")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--fairseq-n-init", type=int, default=20)
    ap.add_argument("--fairseq-max-iter", type=int, default=100)
    ap.add_argument("--skip-fairseq", action="store_true")
    ap.add_argument("--actors", default="1,2", help="our job's actor counts to time (2 is the reference row)")
    ap.add_argument("--methods", default="ours,faiss,fairseq",
                    help="which methods to run; a long fairseq row can be run alone and merged by hand")  # fmt: skip
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                    help="more config overrides for our job, e.g. clustering.init_points_per_centroid=60")  # fmt: skip
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_kmeans.json"))
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    methods = set(args.methods.split(","))
    if args.skip_fairseq:
        methods.discard("fairseq")
    if unknown := methods - {"ours", "faiss", "fairseq"}:
        ap.error(f"--methods: unknown {sorted(unknown)}; choose from ours, faiss, fairseq")

    import faiss
    import ray
    from sklearn.cluster import MiniBatchKMeans

    from gmptl.clustering import kmeans
    from gmptl.clustering.pipeline import fit_codebooks
    from gmptl.config import load_config

    x = mixture(args.n, args.d, 0)
    tmp = Path(tempfile.mkdtemp())
    utts = write_store(x, tmp / "feats")
    xq = x.astype(np.float16).astype(np.float32)  # the points our job sees (fp16 storage)

    def inertia(c: np.ndarray) -> float:
        return kmeans.partial_stats(x, c).inertia

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []

    def timed(fn, *a):
        # Wall and this process's CPU seconds: the reference methods run in-process, so CPU
        # time shows whether anything else competed for the cores while they ran.
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        out = fn(*a)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        return out, time.perf_counter() - t0, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)

    for k in ks:
        for workers in (
            [] if "ours" not in methods else sorted({int(a) for a in args.actors.split(",")} | {2})
        ):
            cfg = load_config(None, [f"clustering.k=[{k}]", f"clustering.max_frames={args.n}",
                                     f"clustering.n_iter={args.iters}", f"clustering.num_workers={workers}",
                                     "clustering.num_cpus_per_worker=1", *args.sets]).clustering  # fmt: skip
            t0 = time.perf_counter()
            with RssGrowth() as mem:
                fit_codebooks(tmp / "feats", utts, 1, cfg, load_config().runtime, tmp / f"ours_{k}_{workers}")
            wall = time.perf_counter() - t0
            c = np.load(tmp / f"ours_{k}_{workers}" / f"L1_k{k}.npy")
            report = json.loads((tmp / f"ours_{k}_{workers}" / "kmeans.json").read_text())
            book = report["codebooks"][str(k)]
            # Largest process: an actor (its share of the frames); the driver's growth is reported too.
            rows.append({"k": k, "method": f"ours_{workers}_actor", "wall_s": wall, "inertia": inertia(c),
                         "seed_s": book["seed_s"], "lloyd_s": book["fit_s"], "n_iter_run": book["n_iter_run"],
                         "seed_rows_examined": book["seed_rows_examined"],
                         "largest_process_mb": max(report["actor_peak_rss_mb"]),
                         "driver_growth_mb": mem.peak})  # fmt: skip
        if "faiss" in methods:
            km = faiss.Kmeans(args.d, k, niter=args.iters, seed=1234, max_points_per_centroid=10**9)
            with RssGrowth() as mem:
                _, wall, cpu = timed(km.train, xq)
            rows.append({"k": k, "method": "faiss.Kmeans", "wall_s": wall, "cpu_s": cpu,
                         "inertia": inertia(km.centroids), "largest_process_mb": xq.nbytes / 1024**2 + mem.peak,
                         "driver_growth_mb": mem.peak})  # fmt: skip
        if "fairseq" in methods:
            # learn_kmeans.py's estimator, argument for argument (compute_labels=False included).
            mb = MiniBatchKMeans(n_clusters=k, init="k-means++", max_iter=args.fairseq_max_iter, batch_size=10_000,
                                 tol=0.0, max_no_improvement=100, n_init=args.fairseq_n_init, init_size=None,
                                 reassignment_ratio=0.0, compute_labels=False, verbose=1, random_state=0)  # fmt: skip
            with RssGrowth() as mem:
                _, wall, cpu = timed(mb.fit, x)
            rows.append({"k": k, "method": f"fairseq_minibatch(n_init={args.fairseq_n_init})", "wall_s": wall,
                         "cpu_s": cpu, "steps": int(mb.n_steps_), "epochs": float(mb.n_iter_),
                         "largest_process_mb": x.nbytes / 1024**2 + mem.peak, "driver_growth_mb": mem.peak,
                         "inertia": inertia(mb.cluster_centers_.astype(np.float32))})  # fmt: skip
        print(f"k={k} done", flush=True)
    ray.shutdown()

    print(f"\n{args.n} x {args.d} points, at most {args.iters} Lloyd iterations, 2 cores; driver peak RSS "
          f"{peak_rss_mb():.0f} MB (holds the float32 copy for the reference methods)")  # fmt: skip
    print(
        "largest MB: peak RSS of the largest process (ours: an actor; in-process methods: the float32 "
        "points they are given + their growth); driver +MB: peak growth of this process during the fit"
    )
    print(f"{'K':>6} {'method':<30} {'wall s':>9} {'inertia (full set)':>20} {'vs ours_2':>10} "
          f"{'largest MB':>11} {'driver +MB':>11}")  # fmt: skip
    for k in ks:
        ours = next((r for r in rows if r["k"] == k and r["method"] == "ours_2_actor"), None)
        for r in (r for r in rows if r["k"] == k):
            r["inertia_vs_ours_2"] = r["inertia"] / ours["inertia"] if ours else None
            vs = f"{r['inertia_vs_ours_2']:>10.4f}" if ours else f"{'-':>10}"
            print(f"{k:>6} {r['method']:<30} {r['wall_s']:>9.1f} {r['inertia']:>20.6g} {vs} "
                  f"{r['largest_process_mb']:>11.0f} {r['driver_growth_mb']:>11.0f}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
