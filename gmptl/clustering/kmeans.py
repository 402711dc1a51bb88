"""k-means split into the pieces a distributed job needs. Pure math: numpy and faiss, no ray/mlflow/torch.

One Lloyd iteration is ``partial_stats`` on every shard (on the workers, each holding a
disjoint shard of the points), ``merge`` of the returned statistics and ``update`` (both
on the driver). A worker only ever returns per-centroid sums and counts, whose size is
independent of its number of points, so no per-point array crosses the network and no
process needs all the features in RAM.

Conventions: points and centroids are float32 (faiss's type; float16 and float64 points
are converted block by block); sums are accumulated in float64 so that the result does
not depend on how the points are sharded beyond float64 rounding; labels are int64.
Randomness always comes from an ``np.random.Generator`` argument. ``lloyd`` is a
single-process reference driver built from the same pieces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

# Values (rows x D) handled at once: 65536 rows at D=64, 5461 at HuBERT's D=768. Bounds the
# float32 copy of a float16 block (16 MiB) and the float64 + int64 temporaries of the
# accumulation (64 MiB) whatever the feature dimension.
BLOCK_VALUES = 1 << 22

# Relative size of the symmetric perturbation that separates the two halves of a split
# cluster; faiss's value (EPS in faiss/Clustering.cpp).
SPLIT_EPS = 1.0 / 1024.0


def _check_points(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    return x


def _check_centroids(centroids: np.ndarray, d: int) -> np.ndarray:
    c = _check_points(centroids, "centroids")
    if c.shape[0] < 1:
        raise ValueError("centroids must have at least one row")
    if c.shape[1] != d:
        raise ValueError(f"centroids have dimension {c.shape[1]} but the points have {d}")
    return np.ascontiguousarray(c, dtype=np.float32)


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a GPU (faiss-gpu, not faiss-cpu)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


_GPU_RESOURCES: list = []  # one StandardGpuResources per process: it owns scratch memory and streams


def _flat_index(centroids32: np.ndarray, gpu: bool = False) -> faiss.Index:
    """Exact L2 index over the centroids; on the GPU when asked (never silently on the CPU instead)."""
    index = faiss.IndexFlatL2(centroids32.shape[1])
    if gpu:
        if not gpu_available():
            raise RuntimeError(
                "clustering.num_gpus_per_worker > 0 but this faiss has no GPU support or sees no GPU: install "
                "faiss-gpu (`pip install 'gmptl[gpu]'` and uninstall faiss-cpu) or set it to 0"
            )
        if not _GPU_RESOURCES:
            _GPU_RESOURCES.append(faiss.StandardGpuResources())
        index = faiss.index_cpu_to_gpu(_GPU_RESOURCES[0], 0, index)
    index.add(centroids32)
    return index


def _blocks(x: np.ndarray) -> Iterable[np.ndarray]:
    """Yield consecutive C-contiguous float32 row blocks of x (a view when x already is float32)."""
    rows = max(1, BLOCK_VALUES // max(1, x.shape[1]))
    for start in range(0, x.shape[0], rows):
        yield np.ascontiguousarray(x[start : start + rows], dtype=np.float32)


def _search(index: faiss.IndexFlatL2, xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist, lab = index.search(xb, 1)
    # faiss computes |x|^2 + |c|^2 - 2<x, c> and clamps the rounding negatives to 0.
    return lab[:, 0].astype(np.int64, copy=False), dist[:, 0]


def _sq_dist_to(points32: np.ndarray, y32: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[i] = |points32[i] - y32|^2 computed from differences, so identical rows give exactly 0.

    faiss's SIMD kernel is single-threaded but memory-bound: ~2 ms for 200k x 64, about
    2.5x faster than the |x|^2 - 2<x, y> + |y|^2 matrix-vector form, which also is not
    exactly 0 for duplicates (k-means++ must not pick a duplicate of a chosen centre).
    All three arrays must be C-contiguous float32.
    """
    n, d = points32.shape
    faiss.fvec_L2sqr_ny(faiss.swig_ptr(out), faiss.swig_ptr(y32), faiss.swig_ptr(points32), d, n)
    return out


def _draw(weights: np.ndarray, cumsum: np.ndarray, rng: np.random.Generator) -> int:
    """Index i drawn with probability weights[i] / sum(weights); requires sum(weights) > 0.

    ``side="right"`` returns the first i with cumsum[i] > r, hence weights[i] > 0: a zero
    weight (a point that is already a centre) is never drawn.
    """
    r = rng.random() * float(cumsum[-1])
    i = min(int(np.searchsorted(cumsum, r, side="right")), len(weights) - 1)
    # r can round up to the total; step back to the last positive weight.
    while weights[i] <= 0:
        i -= 1
    return i


def assign(x: np.ndarray, centroids: np.ndarray, gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every point (exact, faiss flat L2 search).

    Args:
        x: (N, D) points, float32 (float16/float64 accepted: converted to float32 in blocks
            of ``BLOCK_VALUES // D`` rows, so memory stays bounded).
        centroids: (K, D) float32 centroids (other float dtypes are converted).
        gpu: search on GPU 0 with faiss-gpu (an error when faiss has no GPU).

    Returns:
        labels: (N,) int64, index of the nearest centroid.
        sq_dist: (N,) float32, squared L2 distance to it (clamped at 0 by faiss).
    """
    x = _check_points(x, "x")
    c = _check_centroids(centroids, x.shape[1])
    labels = np.empty(x.shape[0], np.int64)
    sq_dist = np.empty(x.shape[0], np.float32)
    index = _flat_index(c, gpu)
    start = 0
    for xb in _blocks(x):
        labels[start : start + len(xb)], sq_dist[start : start + len(xb)] = _search(index, xb)
        start += len(xb)
    return labels, sq_dist


@dataclass
class PartialStats:
    """What one shard contributes to a Lloyd iteration; small (K x D) whatever the shard size.

    Attributes:
        sums: (K, D) float64, sum of the points assigned to each centroid.
        counts: (K,) int64, number of points assigned to each centroid.
        inertia: sum over the points of the squared distance to their centroid (float64).
        n: number of points seen.
    """

    sums: np.ndarray
    counts: np.ndarray
    inertia: float
    n: int

    @classmethod
    def zeros(cls, k: int, d: int) -> PartialStats:
        """Statistics of an empty shard: the neutral element of ``merge``."""
        return cls(np.zeros((k, d), np.float64), np.zeros(k, np.int64), 0.0, 0)


def partial_stats(x: np.ndarray, centroids: np.ndarray, gpu: bool = False) -> PartialStats:
    """Assign a shard's points and accumulate per-centroid sums, counts and inertia.

    Args:
        x: (N, D) points of one shard, float32 (float16/float64 converted blockwise).
        centroids: (K, D) float32 centroids.
        gpu: run the assignment on GPU 0 with faiss-gpu.

    Returns:
        PartialStats with sums (K, D) float64, counts (K,) int64, the inertia (sum of the
        float32 squared distances, accumulated in float64) and n = N.
    """
    x = _check_points(x, "x")
    c = _check_centroids(centroids, x.shape[1])
    k, d = c.shape
    stats = PartialStats.zeros(k, d)
    index = _flat_index(c, gpu)
    # Column offsets for the flattened bincount below: point i, dim j -> bin labels[i] * D + j.
    cols = np.arange(d, dtype=np.int64)
    inertia = 0.0
    for xb in _blocks(x):
        labels, sq_dist = _search(index, xb)
        # One bincount over (label, dimension) bins: exact float64 sums like np.add.at but ~3x
        # faster (~20 ms for 65536 x 64 into 4096 x 64 bins).
        bins = (labels[:, None] * d + cols).ravel()
        stats.sums += np.bincount(bins, weights=xb.astype(np.float64).ravel(), minlength=k * d).reshape(k, d)
        stats.counts += np.bincount(labels, minlength=k)
        inertia += float(sq_dist.sum(dtype=np.float64))
    stats.inertia = inertia
    stats.n = int(x.shape[0])
    return stats


def merge(stats: Iterable[PartialStats]) -> PartialStats:
    """Elementwise sum of the statistics of disjoint shards.

    Args:
        stats: one or more PartialStats with the same (K, D).

    Returns:
        PartialStats equal (up to float64 rounding of the sums) to ``partial_stats`` on the
        concatenation of the shards.
    """
    it = iter(stats)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("merge needs at least one PartialStats") from None
    out = PartialStats(
        first.sums.astype(np.float64), first.counts.astype(np.int64), float(first.inertia), int(first.n)
    )
    for s in it:
        if s.sums.shape != out.sums.shape:
            raise ValueError(f"cannot merge statistics of shape {s.sums.shape} into {out.sums.shape}")
        out.sums += s.sums
        out.counts += s.counts
        out.inertia += float(s.inertia)
        out.n += int(s.n)
    return out


def imbalance(counts: np.ndarray) -> float:
    """faiss's imbalance factor k * sum(c^2) / (sum c)^2: 1 for equal clusters, up to k.

    Args:
        counts: (K,) cluster sizes (any integer or float dtype).
    """
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        raise ValueError("imbalance of clusters that hold no points is undefined")
    return float(len(c) * np.square(c).sum() / total**2)


def update(
    stats: PartialStats,
    prev: np.ndarray,
    rng: np.random.Generator,
    sample: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """New centroids from merged statistics; empty clusters are re-seeded.

    Without ``sample`` (the default) an empty cluster is re-seeded as faiss does: a cluster
    is drawn with probability proportional to (count - 1) (a singleton cannot be split; plain
    counts are used if no cluster has two points), its centroid is copied into the empty slot
    and the two copies are pushed apart by multiplying alternate coordinates by
    (1 +/- ``SPLIT_EPS``), and its count is shared between them so that later draws in the same
    call see the split. With ``sample`` (points the driver holds, e.g. the seeding sample) an
    empty cluster is instead moved to a sample point drawn with probability proportional to
    its squared distance to the nearest centroid (k-means++ style); it falls back to the
    split when every sample point coincides with a centroid.

    Args:
        stats: merged PartialStats (sums (K, D) float64, counts (K,) int64).
        prev: (K, D) the centroids the statistics were computed with. Only checked against
            the statistics' shape and, when the centroid to split is exactly zero (where a
            multiplicative perturbation does nothing), its RMS coordinate sizes the
            perturbation.
        rng: source of the random draws (used only when a cluster is empty).
        sample: optional (M, D) points used for the k-means++-style re-seeding above.

    Returns:
        centroids: (K, D) float32, sums / counts for the non-empty clusters.
        n_reseeded: number of clusters that were empty and re-seeded.
    """
    prev = np.asarray(prev)
    k, d = stats.sums.shape
    if prev.shape != (k, d):
        raise ValueError(f"prev centroids have shape {prev.shape}, the statistics are for {(k, d)}")
    counts = np.asarray(stats.counts, dtype=np.int64).copy()
    if counts.sum() <= 0:
        raise ValueError("no point was assigned to any centroid: cannot update")
    nonempty = counts > 0
    centroids64 = np.zeros((k, d), np.float64)
    # Divide in float64, round once to float32.
    centroids64[nonempty] = stats.sums[nonempty] / counts[nonempty, None]
    centroids = centroids64.astype(np.float32)
    empty = np.flatnonzero(~nonempty)
    if empty.size == 0:
        return centroids, 0
    todo = list(empty)
    if sample is not None:
        todo = _reseed_from_sample(centroids, nonempty, todo, sample, rng)
    if todo:
        _split_clusters(centroids, counts, todo, prev, rng)
    return centroids, int(empty.size)


def _split_clusters(
    centroids: np.ndarray, counts: np.ndarray, empty: list[int], prev: np.ndarray, rng: np.random.Generator
) -> None:
    """faiss's split_clusters, in place on centroids (K, D) float32 and counts (K,) int64."""
    d = centroids.shape[1]
    # faiss alternates the sign over the coordinates so the two copies move apart in every dimension.
    sign = np.where(np.arange(d) % 2 == 0, 1.0, -1.0)
    prev_rms = float(np.sqrt(np.mean(np.square(prev, dtype=np.float64)))) if prev.size else 0.0
    fallback_scale = prev_rms if np.isfinite(prev_rms) and prev_rms > 0 else 1.0
    for ci in empty:
        # faiss draws cluster j with probability (count_j - 1) / (n - k): big clusters get split.
        weights = np.maximum(counts - 1, 0)
        if weights.sum() == 0:
            weights = counts.copy()
        cj = _draw(weights, np.cumsum(weights), rng)
        c = centroids[cj].astype(np.float64)
        delta = SPLIT_EPS * sign * (c if np.any(c != 0) else fallback_scale)
        centroids[ci] = c + delta
        centroids[cj] = c - delta
        # As in faiss: assume the split cluster divides evenly.
        counts[ci] = counts[cj] // 2
        counts[cj] -= counts[ci]


def _reseed_from_sample(
    centroids: np.ndarray,
    nonempty: np.ndarray,
    empty: list[int],
    sample: np.ndarray,
    rng: np.random.Generator,
) -> list[int]:
    """Move empty centroids to D^2-drawn sample points, in place; returns those left to split."""
    s = _check_points(sample, "sample")
    if s.shape[1] != centroids.shape[1]:
        raise ValueError(f"sample has dimension {s.shape[1]}, centroids have {centroids.shape[1]}")
    s = np.ascontiguousarray(s, dtype=np.float32)
    if s.shape[0] == 0:
        return empty
    _, d2 = assign(s, centroids[nonempty])
    d2 = d2.astype(np.float64)
    live = np.flatnonzero(nonempty).tolist()
    buf = np.empty(s.shape[0], np.float32)
    for pos, ci in enumerate(empty):
        while True:
            cumsum = np.cumsum(d2)
            if cumsum[-1] <= 0:
                return empty[pos:]
            p = _draw(d2, cumsum, rng)
            # d2 comes from faiss's |x|^2 + |c|^2 - 2<x, c> form, which can leave a duplicate of a
            # centroid slightly above 0; check the drawn point exactly before using it.
            to_live = np.empty(len(live), np.float32)
            _sq_dist_to(np.ascontiguousarray(centroids[live]), s[p], to_live)
            if to_live.min() > 0:
                break
            d2[p] = 0.0
        centroids[ci] = s[p]
        live.append(ci)
        np.minimum(d2, _sq_dist_to(s, s[p], buf), out=d2)
    return []


# GEMM-form distances (|x|^2 + |c|^2 - 2<x, c>) below this fraction of |x|^2 + |c|^2 are
# recomputed from differences: rounding can leave a duplicate of a centre there instead of at
# exactly 0 (float32 GEMM error is ~1e-6 of the norms), and a duplicate must get weight 0.
EXACT_BELOW = 1e-3

# Margin of the triangle-inequality test, as a fraction of |z|^2 + |c|^2: the GEMM-form
# candidate-to-centre distances carry ~1e-6 of that in float32 rounding, so a row is skipped
# only when the bound holds with a hundredfold margin.
PRUNE_SLACK = 1e-4


class SeedShard:
    """One holder's part of the k-means++ seeding sample (the driver process, or a Ray actor).

    k-means++ needs every sample point's squared distance to its nearest chosen centre
    (``min_d2``). Each shard keeps that vector for its own points, so the driver only ever
    receives candidate rows (L x D), per-candidate potentials (L,) and the shard's total
    potential, whatever the sample size; with several shards the per-step work runs in parallel.
    ``kmeanspp_seed`` drives the shards.

    A step only looks at the rows a candidate z can move. Each row remembers its nearest
    centre c (``nearest``); if |z - c| >= 2 sqrt(min_d2) then |x - z| >= sqrt(min_d2) by the
    triangle inequality and the row keeps its distance. So a step computes z's distances to
    the chosen centres (L x i, small) and then distances only for the rows that fail that test.
    Once the centres cover the data most rows pass it (7 % of the rows examined per step on
    average at K=4096 on bench_kmeans's mixture), which makes a step a fraction of a pass over
    the sample; skipped rows are exactly the ones that could not change.

    Plain k-means++ computes distances from differences (faiss's SIMD kernel). Greedy
    k-means++ ranks its L candidates with one GEMM over the examined rows and keeps the chosen
    candidate's column from it, after recomputing from differences every entry small enough to
    be a rounding-disguised duplicate.
    """

    def __init__(self, points: np.ndarray, rng: np.random.Generator, prune: bool = True):
        self.s = np.ascontiguousarray(_check_points(points, "sample"), dtype=np.float32)
        if not np.isfinite(self.s).all():
            raise ValueError("sample contains NaN or infinite values")
        self.rng = rng
        self.prune = prune
        self._sq_norms = np.einsum("ij,ij->i", self.s, self.s)
        self.reset()

    def __len__(self) -> int:
        return len(self.s)

    def reset(self) -> None:
        """Forget the chosen centres (a new seeding start); the row draws continue from ``rng``."""
        n, d = self.s.shape
        self.min_d2 = np.full(n, np.inf, np.float32)
        self.nearest = np.zeros(n, np.int64)  # index of the nearest chosen centre
        self._centres = np.empty((16, d), np.float32)
        self._c_norms = np.empty(16, np.float32)
        self._n_centres = 0
        self._potential = np.inf
        self._pending: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # from the last ``score``
        self.rows_examined = 0  # over all steps: the pruning's effect, for the job's report
        self.rows_total = 0

    def rows(self, idx: Sequence[int]) -> np.ndarray:
        return self.s[np.asarray(idx, dtype=np.int64)]

    def pruning(self) -> tuple[int, int]:
        """(rows examined, rows a full pass per step would have examined) since the last reset."""
        return self.rows_examined, self.rows_total

    def add(self, centre: np.ndarray, n_draw: int) -> tuple[float, np.ndarray]:
        """A centre was chosen: update min_d2 exactly; return (potential, n_draw D^2-drawn rows)."""
        c = np.ascontiguousarray(centre, dtype=np.float32)
        rows = self._rows_near(c[None])
        if rows.size:
            sub = self._subset(rows)
            self._lower(rows, _sq_dist_to(sub, c, np.empty(len(rows), np.float32)))
        self._push(c)
        return self._after_update(n_draw)

    def score(self, cands: np.ndarray) -> np.ndarray:
        """Potential of this shard, (L,) float64, if candidate j were added; remembers the distances."""
        c = np.ascontiguousarray(cands, dtype=np.float32)
        rows = self._rows_near(c)
        sub = self._subset(rows)
        d2 = self._sq_norms[rows, None] + np.einsum("ij,ij->i", c, c)[None, :] - 2.0 * (sub @ c.T)
        np.maximum(d2, 0.0, out=d2)
        self._pending = (rows, d2, c)
        if not len(self.s):
            return np.zeros(len(c), np.float64)
        # Only examined rows can lower the potential; score() always follows a first add().
        return self._potential - np.maximum(self.min_d2[rows, None] - d2, 0.0).sum(axis=0, dtype=np.float64)

    def take(self, j: int, n_draw: int) -> tuple[float, np.ndarray]:
        """Candidate j of the last ``score`` was chosen: ``add`` it, reusing the scored distances."""
        if self._pending is None:
            raise RuntimeError("take() before score()")
        rows, d2, cands = self._pending
        self._pending = None
        c = cands[j]
        if rows.size:
            col = np.ascontiguousarray(d2[:, j])
            small = np.flatnonzero(col <= EXACT_BELOW * (self._sq_norms[rows] + float(c @ c)))
            if small.size:
                near = np.ascontiguousarray(self.s[rows[small]])
                col[small] = _sq_dist_to(near, c, np.empty(len(near), np.float32))
            self._lower(rows, col)
        self._push(c)
        return self._after_update(n_draw)

    def _rows_near(self, cands: np.ndarray) -> np.ndarray:
        """Rows whose squared distance to some candidate may be below their min_d2 (sorted)."""
        n = len(self.s)
        self.rows_total += n
        i = self._n_centres
        if not self.prune or i == 0:
            self.rows_examined += n
            return np.arange(n)
        cent, c_norms = self._centres[:i], self._c_norms[:i]
        z_norms = np.einsum("ij,ij->i", cands, cands)
        # A lower bound of |z - c|^2 for every (candidate, centre) pair, rounding included.
        low = z_norms[:, None] + c_norms[None, :] - 2.0 * (cands @ cent.T)
        low -= PRUNE_SLACK * (z_norms[:, None] + c_norms[None, :])
        # Row x can move only if |z - c(x)|^2 < 4 min_d2(x) for some candidate z: for the nearest
        # candidate to c(x), so one (i,) minimum replaces an (L, n) comparison.
        rows = np.flatnonzero(low.min(axis=0)[self.nearest] < 4.0 * self.min_d2)
        self.rows_examined += len(rows)
        return rows

    def _subset(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (sorted); the sample itself, not a copy, when nothing was pruned."""
        return self.s if len(rows) == len(self.s) else np.ascontiguousarray(self.s[rows])

    def _lower(self, rows: np.ndarray, d2: np.ndarray) -> None:
        """The centre about to be pushed is at d2 from the given rows: keep it where it is closer."""
        closer = d2 < self.min_d2[rows]
        self.min_d2[rows[closer]] = d2[closer]
        self.nearest[rows[closer]] = self._n_centres

    def _push(self, c: np.ndarray) -> None:
        if self._n_centres == len(self._centres):
            grown = np.empty((2 * len(self._centres), self.s.shape[1]), np.float32)
            grown[: self._n_centres] = self._centres
            self._centres = grown
            self._c_norms = np.concatenate([self._c_norms, np.empty_like(self._c_norms)])
        self._centres[self._n_centres] = c
        self._c_norms[self._n_centres] = float(c @ c)
        self._n_centres += 1

    def _after_update(self, n_draw: int) -> tuple[float, np.ndarray]:
        d = self.s.shape[1]
        if not len(self.s):
            return 0.0, np.zeros((0, d), np.float32)
        # float64 prefix sums: float32 ones lose the small weights far along a 200k-long sum.
        cumsum = np.cumsum(self.min_d2, dtype=np.float64)
        self._potential = float(cumsum[-1])
        if self._potential <= 0:
            return 0.0, np.zeros((0, d), np.float32)
        return self._potential, self.s[[_draw(self.min_d2, cumsum, self.rng) for _ in range(n_draw)]]


# The driver's view of the shards: (method name, one argument tuple per shard) -> one result per
# shard. Local shards call the methods in turn; the Ray job calls its actors in parallel.
ShardCall = Callable[[str, Sequence[tuple]], list]


def local_call(shards: Sequence[SeedShard]) -> ShardCall:
    return lambda method, args: [getattr(s, method)(*a) for s, a in zip(shards, args, strict=True)]


def shard_rows(call: ShardCall, sizes: Sequence[int], rows: np.ndarray) -> np.ndarray:
    """Rows of the shards' virtual concatenation, for sorted global indices ``rows``, in that order."""
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    parts = call(
        "rows",
        [(rows[(rows >= lo) & (rows < hi)] - lo,) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)],
    )
    return np.concatenate(parts).astype(np.float32, copy=False)


def kmeanspp_seed(
    call: ShardCall,
    sizes: Sequence[int],
    k: int,
    rng: np.random.Generator,
    n_local_trials: int = 1,
    starts: int = 1,
    on_start: Callable[[float], None] | None = None,
) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) over a sample split into ``SeedShard``s.

    The first centre is a uniform row; each next one is drawn with probability proportional to
    the squared distance to the nearest centre chosen so far. A global D^2 draw is a shard drawn
    in proportion to its potential, then a row within it drawn by its own D^2: every shard
    draws its candidates locally and the driver (``rng``) picks, per candidate, whose to use.
    Rows equal to a chosen centre have weight exactly 0, so the k centres are distinct rows.
    One round trip per step for plain k-means++, two for greedy.

    Args:
        call: runs a ``SeedShard`` method on every shard (``local_call`` or the Ray job's).
        sizes: rows per shard.
        k: number of centres, 1 <= k <= number of distinct rows.
        rng: the driver's draws (first centre, shard choice); shards draw rows with their own.
        n_local_trials: 1 = plain k-means++; L > 1 = greedy k-means++ (scikit-learn's default,
            with L = 2 + ln k): draw L candidates per step and keep the one that lowers the
            potential most. Markedly better starts at large k.
        starts: seed this many times (the shards are reset in between) and keep the start
            with the lowest potential on the sample (scikit-learn's ``n_init`` keeps the start
            with the lowest inertia after its iterations; ranking seeds is far cheaper, and at
            K=512 five single starts ended after Lloyd in the order of their starting inertia).
        on_start: called with each start's potential on the sample, in order.

    Returns:
        (k, D) float32 centres, each a row of the sample.
    """
    n = int(sum(sizes))
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k > n:
        raise ValueError(f"k={k} centroids requested but the sample has only {n} rows")
    if starts < 1:
        raise ValueError(f"starts must be at least 1, got {starts}")
    best, best_pot = None, np.inf
    for s in range(starts):
        if s:
            call("reset", [()] * len(sizes))
        centres, pot = _seed_once(call, sizes, k, rng, max(1, n_local_trials))
        if on_start is not None:
            on_start(pot)
        if best is None or pot < best_pot:
            best, best_pot = centres, pot
    return best


def _seed_once(
    call: ShardCall, sizes: Sequence[int], k: int, rng: np.random.Generator, trials: int
) -> tuple[np.ndarray, float]:
    """One k-means++ start (see ``kmeanspp_seed``): (k, D) centres and the sample's potential."""
    n = int(sum(sizes))
    first = shard_rows(call, sizes, np.array([rng.integers(n)]))[0]
    centres = [np.asarray(first, np.float32)]
    replies = call("add", [(first, trials)] * len(sizes))
    for i in range(1, k):
        pots = np.array([p for p, _ in replies], np.float64)
        if pots.sum() <= 0:
            # Every row equals one of the i centres chosen, which are pairwise distinct.
            raise ValueError(f"the sample has only {i} distinct rows, fewer than k={k} centroids")
        # Candidate j comes from shard `pick[j]` (by potential), as that shard's j-th local draw.
        if len(pots) == 1:
            pick = np.zeros(trials, np.int64)
        else:
            pick = np.minimum(np.searchsorted(np.cumsum(pots), rng.random(trials) * pots.sum(), side="right"),
                              len(pots) - 1)  # fmt: skip
            while (pots[pick] <= 0).any():  # rounding at the top end: step back to a live shard
                pick = np.where(pots[pick] <= 0, pick - 1, pick)
        cands = np.stack([replies[a][1][j] for j, a in enumerate(pick)])
        if trials == 1:
            centres.append(cands[0])
            replies = call("add", [(cands[0], trials)] * len(sizes))
            continue
        best = int(np.argmin(np.sum(call("score", [(cands,)] * len(sizes)), axis=0)))
        centres.append(cands[best])
        replies = call("take", [(best, trials)] * len(sizes))
    return np.stack(centres), float(sum(p for p, _ in replies))


def kmeanspp_init(
    sample: np.ndarray, k: int, rng: np.random.Generator, n_local_trials: int = 1, starts: int = 1
) -> np.ndarray:
    """k-means++ seeding on one in-process sample: ``kmeanspp_seed`` over a single ``SeedShard``.

    Cost is up to k passes over the sample, fewer as the triangle-inequality test of
    ``SeedShard`` skips rows (34 s for k=4096, greedy, on 41k x 768 with one core), so pass a
    subsample (e.g. 20 * k rows) for bigger samples.

    Args:
        sample: (N, D) points, float32 (other float dtypes are converted once). Must be finite.
        k, rng, n_local_trials, starts: as in ``kmeanspp_seed`` (rng also draws the rows).

    Returns:
        (k, D) float32 centres, each a row of ``sample``.

    Raises:
        ValueError: k < 1, k > N, the sample has fewer than k distinct rows, or non-finite values.
    """
    shard = SeedShard(sample, rng)
    return kmeanspp_seed(local_call([shard]), [len(shard)], k, rng, n_local_trials, starts)


def _as_shards(x_or_shards: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(x_or_shards, np.ndarray):
        shards = [x_or_shards]
    else:
        shards = list(x_or_shards)
    if not shards:
        raise ValueError("no shards given")
    shards = [_check_points(s, f"shard {i}") for i, s in enumerate(shards)]
    dims = {s.shape[1] for s in shards}
    if len(dims) != 1:
        raise ValueError(f"shards have different dimensions: {sorted(dims)}")
    return shards


def _gather_rows(shards: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Rows of the virtual concatenation of the shards, in the order given, as float32."""
    offsets = np.cumsum([0] + [len(s) for s in shards])
    shard_of = np.searchsorted(offsets, rows, side="right") - 1
    out = np.empty((len(rows), shards[0].shape[1]), np.float32)
    for i, s in enumerate(shards):
        sel = shard_of == i
        out[sel] = s[rows[sel] - offsets[i]]
    return out


def lloyd(
    x_or_shards: np.ndarray | Sequence[np.ndarray],
    k: int,
    n_iter: int,
    rng: np.random.Generator,
    init: Literal["kmeans++", "random"] | np.ndarray = "kmeans++",
) -> tuple[np.ndarray, list[dict[str, float | int]]]:
    """Single-process reference driver: seeding, then n_iter Lloyd iterations over the shards.

    Each iteration is what the distributed job does: ``partial_stats`` per shard, ``merge``,
    ``update``. As in faiss, an iteration's objective is the inertia of the assignment to
    the centroids *before* that iteration's update, and the returned centroids are those
    after the last update (so their own inertia is not in the history).

    Args:
        x_or_shards: (N, D) array or list of (N_i, D) arrays (disjoint shards), float32 or float16.
        k: number of centroids (at most the total number of rows).
        n_iter: number of Lloyd iterations (0 returns the seeds).
        rng: source of all randomness; the same seed gives the same centroids.
        init: "kmeans++" (``kmeanspp_init`` on all rows), "random" (k distinct rows, as
            faiss does) or a (k, D) array of starting centroids (faiss's ``init_centroids``).

    Returns:
        centroids: (K, D) float32.
        history: one dict per iteration with "iter" (0-based), "objective" (inertia, float),
            "imbalance" (float) and "n_reseeded" (int).
    """
    shards = _as_shards(x_or_shards)
    n = sum(len(s) for s in shards)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of points ({n})")
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    if isinstance(init, np.ndarray):
        if init.shape != (k, shards[0].shape[1]):
            raise ValueError(f"init centroids have shape {init.shape}, expected {(k, shards[0].shape[1])}")
        centroids = np.array(init, dtype=np.float32)
    elif init == "kmeans++":
        centroids = kmeanspp_init(np.concatenate([np.asarray(s, np.float32) for s in shards]), k, rng)
    elif init == "random":
        centroids = _gather_rows(shards, np.sort(rng.choice(n, size=k, replace=False)))
    else:
        raise ValueError(f"unknown init {init!r}: expected 'kmeans++' or 'random'")
    return iterate(lambda c: merge(partial_stats(s, c) for s in shards), centroids, n_iter, rng)


def iterate(
    stats_of: Callable[[np.ndarray], PartialStats],
    centroids: np.ndarray,
    n_iter: int,
    rng: np.random.Generator,
    on_iter: Callable[[dict[str, float | int]], None] | None = None,
    tol: float = 0.0,
) -> tuple[np.ndarray, list[dict[str, float | int]]]:
    """The Lloyd loop, whoever computes the statistics (local shards here, Ray actors in the job).

    Args:
        stats_of: centroids (K, D) float32 -> merged PartialStats over all points.
        centroids: (K, D) float32 starting centroids.
        n_iter: the most iterations; rng: for re-seeding empty clusters; on_iter: called with
            each history row.
        tol: stop after two iterations in a row whose objectives are each less than ``tol``
            (relative) below the previous one's (that iteration's update is still applied). Two,
            because Lloyd's descent often pauses for one iteration and then resumes. 0 runs all
            ``n_iter`` iterations, as faiss does.
    Returns:
        (centroids after the last update, history rows as documented in ``lloyd``).
    """
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    history: list[dict[str, float | int]] = []
    for it in range(n_iter):
        stats = stats_of(centroids)
        centroids, n_reseeded = update(stats, centroids, rng)
        row = {
            "iter": it,
            "objective": stats.inertia,
            "imbalance": imbalance(stats.counts),
            "n_reseeded": n_reseeded,
        }
        history.append(row)
        if on_iter is not None:
            on_iter(row)
        # An iteration's objective measures the previous update; Lloyd only lowers it, so two small
        # steps in a row are a plateau. Not near a re-seeding: a split pair starts out on top of its
        # parent (a small step) and only moves apart in the iterations after.
        last = [h["objective"] for h in history[-3:]]
        if (
            tol > 0
            and it >= 2
            and all(h["n_reseeded"] == 0 for h in history[-3:])
            and all(last[j] - last[j + 1] <= tol * last[j] for j in (0, 1))
        ):
            break
    return centroids, history
