"""k-means pieces (assign / partial_stats / merge / update / seeding) and the reference Lloyd driver."""

import faiss
import numpy as np
import pytest

import gmptl.clustering.kmeans as km
from gmptl.clustering.kmeans import (
    PartialStats,
    assign,
    imbalance,
    kmeanspp_init,
    lloyd,
    merge,
    partial_stats,
    update,
)


def mixture(n: int, d: int, n_comp: int, seed: int, spread: float = 4.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_comp, d)) * spread
    return (means[rng.integers(0, n_comp, n)] + rng.standard_normal((n, d))).astype(np.float32)


def brute_force(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(N, K) float64 squared distances."""
    return ((x[:, None, :].astype(np.float64) - c[None, :, :].astype(np.float64)) ** 2).sum(-1)


def test_assign_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    c = rng.standard_normal((50, 16)).astype(np.float32)
    labels, dist = assign(x, c)
    assert labels.dtype == np.int64 and labels.shape == (3000,)
    assert dist.dtype == np.float32 and dist.shape == (3000,)
    d2 = brute_force(x, c)
    best = np.sort(d2, axis=1)
    untied = best[:, 1] - best[:, 0] > 1e-3
    assert untied.mean() > 0.95
    np.testing.assert_array_equal(labels[untied], d2.argmin(1)[untied])
    np.testing.assert_allclose(dist, best[:, 0], rtol=1e-4, atol=1e-4)
    # Where tied, faiss's choice is still (one of) the nearest.
    np.testing.assert_allclose(d2[np.arange(3000), labels], best[:, 0], rtol=1e-4, atol=1e-4)


def test_assign_empty_and_bad_shapes():
    c = np.zeros((4, 3), np.float32)
    labels, dist = assign(np.zeros((0, 3), np.float32), c)
    assert labels.shape == (0,) and dist.shape == (0,)
    with pytest.raises(ValueError, match="dimension"):
        assign(np.zeros((5, 4), np.float32), c)
    with pytest.raises(ValueError, match="2-D"):
        assign(np.zeros(5, np.float32), c)


def test_merged_shards_equal_one_shot(monkeypatch):
    # Small blocks so that the blockwise accumulation is exercised too.
    monkeypatch.setattr(km, "BLOCK_VALUES", 700 * 24)
    x = mixture(5000, 24, 10, seed=1)
    c = x[np.random.default_rng(2).choice(len(x), 32, replace=False)]
    shards = [x[:1234], x[1234:1300], x[1300:]]
    merged = merge([PartialStats.zeros(32, 24)] + [partial_stats(s, c) for s in shards])
    whole = partial_stats(x, c)
    assert whole.sums.dtype == np.float64 and whole.counts.dtype == np.int64
    np.testing.assert_allclose(merged.sums, whole.sums, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    assert merged.inertia == pytest.approx(whole.inertia, rel=1e-12)
    assert merged.n == whole.n == 5000 and whole.counts.sum() == 5000
    # And the statistics are right, not just consistent: compare with brute force.
    labels = brute_force(x, c).argmin(1)
    sums = np.zeros((32, 24))
    np.add.at(sums, labels, x.astype(np.float64))
    np.testing.assert_allclose(whole.sums, sums, rtol=1e-10, atol=1e-8)
    np.testing.assert_array_equal(whole.counts, np.bincount(labels, minlength=32))
    with pytest.raises(ValueError, match="at least one"):
        merge([])


def test_lloyd_update_never_increases_objective():
    x = mixture(6000, 16, 12, seed=3)
    shards = np.array_split(x, 4)
    centroids, history = lloyd(shards, k=20, n_iter=15, rng=np.random.default_rng(4))
    assert [h["iter"] for h in history] == list(range(15))
    assert all(h["n_reseeded"] == 0 for h in history)
    obj = [h["objective"] for h in history]
    final = partial_stats(x, centroids).inertia
    for before, after in zip(obj, obj[1:] + [final], strict=True):
        assert after <= before * (1 + 1e-6)
    assert obj[-1] < obj[0]
    assert all(1.0 <= h["imbalance"] <= 20 for h in history)


def test_empty_clusters_are_reseeded():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2000, 8)).astype(np.float32)
    x[:1000] = x[0]  # half the dataset is one point (faiss's own nasty case)
    centroids = np.concatenate(
        [
            x[[0, 0]],  # a duplicate centroid: faiss breaks the tie, the other one stays empty
            x[1000:1006],
            x[1006:1014] + 1000.0,  # far from everything: empty
        ]
    )
    stats = partial_stats(x, centroids)
    assert (stats.counts == 0).sum() >= 9
    new, n_reseeded = update(stats, centroids, rng)
    assert n_reseeded == (stats.counts == 0).sum()
    assert new.dtype == np.float32 and new.shape == centroids.shape
    assert np.isfinite(new).all()
    assert len(np.unique(new, axis=0)) == len(new)
    # Iterating on keeps every centroid finite and distinct while the splits sort themselves out.
    for _ in range(10):
        stats = partial_stats(x, new)
        new, n_reseeded = update(stats, new, rng)
        assert np.isfinite(new).all() and len(np.unique(new, axis=0)) == len(new)
    assert stats.counts.sum() == 2000


def test_split_is_faiss_like():
    k, d = 3, 6
    sums = np.zeros((k, d))
    sums[0] = 10 * np.arange(1, d + 1)  # cluster 0: 10 points with mean (1, ..., 6)
    sums[2] = 3 * np.ones(d)  # cluster 2: a singleton, never split while cluster 0 can be
    stats = PartialStats(sums, np.array([10, 0, 1]), 1.0, 11)
    new, n = update(stats, np.ones((k, d), np.float32), np.random.default_rng(0))
    assert n == 1
    mean = np.arange(1, d + 1, dtype=np.float32)
    # The two copies are the centroid times (1 +/- 1/1024), alternating sign over coordinates.
    sign = np.array([1, -1] * (d // 2), np.float32)
    np.testing.assert_allclose(new[1], mean * (1 + sign / 1024), rtol=1e-6)
    np.testing.assert_allclose(new[0], mean * (1 - sign / 1024), rtol=1e-6)
    np.testing.assert_array_equal(new[2], np.full(d, 3.0, np.float32))


def test_split_of_an_all_zero_centroid_still_separates():
    # A multiplicative perturbation leaves 0 at 0; the split must still give distinct centroids.
    stats = PartialStats(np.zeros((2, 4)), np.array([5, 0]), 0.0, 5)
    new, n = update(stats, np.full((2, 4), 3.0, np.float32), np.random.default_rng(0))
    assert n == 1 and np.isfinite(new).all() and not np.array_equal(new[0], new[1])
    np.testing.assert_allclose(new[0], -new[1])


def test_reseed_from_sample_uses_far_sample_points():
    rng = np.random.default_rng(6)
    x = mixture(1000, 4, 3, seed=6)
    c = np.concatenate([x[:3], x[:2] + 500.0])
    stats = partial_stats(x, c)
    assert (stats.counts[3:] == 0).all()
    new, n = update(stats, c, rng, sample=x)
    assert n == 2
    rows = {r.tobytes() for r in x}
    assert all(r.tobytes() in rows for r in new[3:])
    assert len(np.unique(new, axis=0)) == 5


def test_agrees_with_faiss_kmeans():
    # Well-separated components: there k-means++ seeding should match or beat faiss's random
    # seeding. (On overlapping ones, spread=2, either can win by a few % depending on the seed.)
    x = mixture(20000, 32, 64, seed=7, spread=4.0)
    k = 64
    ref = faiss.Kmeans(32, k, niter=20, seed=1234, max_points_per_centroid=10**9)
    ref.train(x)
    faiss_obj = partial_stats(x, ref.centroids).inertia
    centroids, history = lloyd(np.array_split(x, 3), k, n_iter=20, rng=np.random.default_rng(1234))
    ours = partial_stats(x, centroids).inertia
    assert ours <= 1.01 * faiss_obj
    assert history[0]["objective"] > history[-1]["objective"]


def test_same_start_same_trajectory_as_faiss():
    # From the same starting centroids our Lloyd iterations are faiss's, objective for objective.
    x = mixture(20000, 32, 64, seed=7, spread=2.0)
    init = kmeanspp_init(x, 64, np.random.default_rng(0))
    ref = faiss.Kmeans(32, 64, niter=20, seed=1234, max_points_per_centroid=10**9)
    ref.train(x, init_centroids=init)
    centroids, history = lloyd(np.array_split(x, 3), 64, 20, np.random.default_rng(0), init=init)
    # faiss 1.15 stops once the objective stops changing, so its list can be shorter.
    assert 10 <= len(ref.obj) <= 20
    np.testing.assert_allclose([h["objective"] for h in history[: len(ref.obj)]], ref.obj, rtol=1e-5)
    np.testing.assert_allclose(centroids, ref.centroids, atol=1e-4)


def test_random_init_runs_and_shards_do_not_change_the_result():
    x = mixture(3000, 8, 6, seed=8)
    a, ha = lloyd(x, 6, 8, np.random.default_rng(9), init="random")
    b, hb = lloyd(np.array_split(x, 5), 6, 8, np.random.default_rng(9), init="random")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert ha[-1]["objective"] == pytest.approx(hb[-1]["objective"], rel=1e-9)
    with pytest.raises(ValueError, match="init"):
        lloyd(x, 6, 1, np.random.default_rng(0), init="nope")  # type: ignore[arg-type]


def test_determinism():
    x = mixture(4000, 12, 8, seed=10)
    a, ha = lloyd(x, 16, 6, np.random.default_rng(11))
    b, hb = lloyd(x, 16, 6, np.random.default_rng(11))
    c, _ = lloyd(x, 16, 6, np.random.default_rng(12))
    np.testing.assert_array_equal(a, b)
    assert ha == hb
    assert not np.array_equal(a, c)


def test_kmeanspp_init_returns_distinct_sample_rows():
    x = mixture(2000, 8, 5, seed=13)
    x[:500] = x[0]  # heavy duplication must not produce repeated seeds
    c = kmeanspp_init(x, 100, np.random.default_rng(14))
    assert c.shape == (100, 8) and c.dtype == np.float32
    assert len(np.unique(c, axis=0)) == 100
    rows = {r.tobytes() for r in x}
    assert all(r.tobytes() in rows for r in c)
    np.testing.assert_array_equal(c, kmeanspp_init(x, 100, np.random.default_rng(14)))


def _greedy_reference(x, k, rng, trials):
    """Greedy k-means++ the slow, obvious way: each candidate's potential from exact differences."""
    chosen = [int(rng.integers(len(x)))]
    min_d2 = ((x - x[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        cumsum = np.cumsum(min_d2, dtype=np.float64)
        cands = [int(np.searchsorted(cumsum, rng.random() * cumsum[-1], side="right")) for _ in range(trials)]
        trial = [np.minimum(min_d2, ((x - x[c]) ** 2).sum(1)) for c in cands]
        best = int(np.argmin([t.sum(dtype=np.float64) for t in trial]))
        chosen.append(cands[best])
        min_d2 = trial[best]
    return x[chosen]


def test_greedy_kmeanspp_picks_the_candidate_with_the_lowest_potential():
    # The candidates are ranked with one GEMM (|x|^2 + |c|^2 - 2<x,c>); the choice must be the exact one.
    x = mixture(3000, 16, 12, seed=21)
    got = kmeanspp_init(x, 40, np.random.default_rng(22), n_local_trials=5)
    np.testing.assert_array_equal(got, _greedy_reference(x, 40, np.random.default_rng(22), 5))
    dup = x.copy()
    dup[:1500] = dup[0]  # half the points identical: still k distinct rows, never a duplicate centre
    c = kmeanspp_init(dup, 60, np.random.default_rng(23), n_local_trials=6)
    assert len(np.unique(c, axis=0)) == 60


def _sharded(x, bounds, seed):
    """SeedShards over consecutive row ranges, each with its own generator (as the Ray actors)."""
    parts = [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    shards = [km.SeedShard(p, np.random.default_rng([seed, i])) for i, p in enumerate(parts)]
    return km.local_call(shards), [len(s) for s in shards]


def test_sharded_kmeanspp_draws_in_proportion_to_squared_distance():
    # k=2: P(second centre = row r) = mean over the uniform first centre f of d2(f, r) / sum d2(f, .).
    # Rows sit on three shards of unequal size, one empty: a wrong shard weighting shifts the mass.
    x = np.array([[0.0], [1.0], [3.0], [7.0], [7.5], [20.0]], np.float32)
    d2 = (x - x.T) ** 2
    want = (d2 / d2.sum(1, keepdims=True)).mean(0)
    runs, rng = 6000, np.random.default_rng(0)
    got = np.zeros(len(x))
    for t in range(runs):
        call, sizes = _sharded(x, [0, 1, 1, 4, 6], seed=t)
        second = km.kmeanspp_seed(call, sizes, 2, rng)[1]
        got[int(np.flatnonzero(x[:, 0] == second[0])[0])] += 1
    np.testing.assert_allclose(got / runs, want, atol=0.02)  # binomial sd <= 0.0065


@pytest.mark.parametrize("trials", [1, 6])
def test_sharded_kmeanspp_distinct_deterministic_and_as_good(trials):
    x = mixture(6000, 16, 40, seed=31)
    x[::2] = x[0]  # half the points identical, spread over every shard
    bounds = [0, 1000, 3500, 6000]
    call, sizes = _sharded(x, bounds, seed=1)
    c = km.kmeanspp_seed(call, sizes, 80, np.random.default_rng(2), n_local_trials=trials)
    assert c.shape == (80, 16) and len(np.unique(c, axis=0)) == 80
    rows = {r.tobytes() for r in x}
    assert all(r.tobytes() in rows for r in c)
    call, sizes = _sharded(x, bounds, seed=1)
    again = km.kmeanspp_seed(call, sizes, 80, np.random.default_rng(2), n_local_trials=trials)
    np.testing.assert_array_equal(c, again)
    # Same distribution as one in-process sample: the starting potential is no worse on average.
    pot = [partial_stats(x, km.kmeanspp_seed(*_sharded(x, bounds, s), 80, np.random.default_rng(s),
                                             n_local_trials=trials)).inertia for s in range(4)]  # fmt: skip
    ref = [partial_stats(x, kmeanspp_init(x, 80, np.random.default_rng(s), trials)).inertia for s in range(4)]
    assert np.mean(pot) < 1.15 * np.mean(ref)


def test_greedy_take_gives_duplicates_exactly_zero_weight():
    # |x|^2 + |c|^2 - 2<x,c> in float32 can leave duplicates of c slightly above 0.
    rng = np.random.default_rng(5)
    x = (10.0 * rng.standard_normal((400, 64))).astype(np.float32)
    x[4::4] = x[1]
    dup = np.zeros(len(x), bool)
    dup[1], dup[4::4] = True, True
    shard = km.SeedShard(x, np.random.default_rng(6))
    shard.add(x[2], 1)
    shard.score(x[[1, 3]])
    rows, d2, _ = shard._pending
    assert dup[rows].sum() == dup.sum()  # every duplicate of x[1] is examined (none is pruned)
    # Whether the GEMM rounds these to exactly 0 depends on the CPU and BLAS: make the rounding happen,
    # as the worst case of float32 cancellation would (far above it: 1e-3 against |x|^2 ~ 6400).
    d2[dup[rows], 0] = np.maximum(d2[dup[rows], 0], 0) + 1e-3
    shard.take(0, 1)
    assert (shard.min_d2[dup] == 0).all()
    assert shard.min_d2[2] == 0 and (shard.min_d2[~dup & (np.arange(len(x)) != 2)] > 0).all()
    exact = np.minimum(brute_force(x, x[[2]])[:, 0], brute_force(x, x[[1]])[:, 0])
    np.testing.assert_allclose(shard.min_d2, exact, rtol=1e-4, atol=1e-3)


def test_sharded_kmeanspp_errors_when_shards_run_out_of_distinct_rows():
    x = np.repeat(np.eye(3, dtype=np.float32), 5, axis=0)  # 3 distinct rows over 2 shards
    call, sizes = _sharded(x, [0, 7, 15], seed=0)
    with pytest.raises(ValueError, match="only 3 distinct rows"):
        km.kmeanspp_seed(call, sizes, 4, np.random.default_rng(0), n_local_trials=3)


def test_kmeanspp_init_errors():
    x = np.random.default_rng(15).standard_normal((10, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="only 10 rows"):
        kmeanspp_init(x, 11, np.random.default_rng(0))
    dup = np.repeat(x[:3], 4, axis=0)
    with pytest.raises(ValueError, match="only 3 distinct rows"):
        kmeanspp_init(dup, 4, np.random.default_rng(0))
    assert len(np.unique(kmeanspp_init(dup, 3, np.random.default_rng(0)), axis=0)) == 3
    with pytest.raises(ValueError, match="k must be at least 1"):
        kmeanspp_init(x, 0, np.random.default_rng(0))
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        kmeanspp_init(bad, 2, np.random.default_rng(0))


def test_float16_input(monkeypatch):
    monkeypatch.setattr(km, "BLOCK_VALUES", 256 * 16)
    x16 = mixture(1500, 16, 4, seed=16).astype(np.float16)
    x32 = x16.astype(np.float32)
    c = x32[:10] + 0.01
    l16, d16 = assign(x16, c)
    l32, d32 = assign(x32, c)
    np.testing.assert_array_equal(l16, l32)
    np.testing.assert_array_equal(d16, d32)
    s16, s32 = partial_stats(x16, c), partial_stats(x32, c)
    np.testing.assert_array_equal(s16.sums, s32.sums)
    np.testing.assert_array_equal(s16.counts, s32.counts)
    assert s16.inertia == s32.inertia
    centroids, _ = lloyd([x16[:700], x16[700:]], 4, 3, np.random.default_rng(0))
    assert centroids.dtype == np.float32 and np.isfinite(centroids).all()


def test_imbalance():
    assert imbalance(np.array([5, 5, 5, 5])) == pytest.approx(1.0)
    assert imbalance(np.array([20, 0, 0, 0])) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        imbalance(np.zeros(3, np.int64))


def test_greedy_kmeanspp_starts_lower_than_plain():
    from gmptl.clustering.kmeans import kmeanspp_init, partial_stats

    rng = np.random.default_rng(3)
    centres = rng.normal(0, 4, (200, 16)).astype(np.float32)
    x = (centres[rng.integers(0, 200, 20000)] + rng.normal(size=(20000, 16))).astype(np.float32)
    plain = [partial_stats(x, kmeanspp_init(x, 128, np.random.default_rng(s))).inertia for s in range(3)]
    greedy = [
        partial_stats(x, kmeanspp_init(x, 128, np.random.default_rng(s), n_local_trials=6)).inertia
        for s in range(3)
    ]
    assert max(greedy) < min(plain)
    c = kmeanspp_init(x, 128, np.random.default_rng(0), n_local_trials=6)
    assert len(np.unique(c, axis=0)) == 128  # still distinct rows of the sample


def test_gpu_request_without_faiss_gpu_is_an_error_not_a_fallback():
    if km.gpu_available():
        pytest.skip("this faiss has a GPU: the error path cannot happen here")
    x = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)
    with pytest.raises(RuntimeError, match="faiss-gpu"):
        km.partial_stats(x, x[:4], gpu=True)


@pytest.mark.gpu
def test_gpu_statistics_equal_cpu():
    if not km.gpu_available():
        pytest.skip("needs faiss-gpu and a CUDA device")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 64)).astype(np.float32)
    c = x[rng.choice(len(x), 256, replace=False)]
    a, b = km.partial_stats(x, c), km.partial_stats(x, c, gpu=True)
    assert (a.counts != b.counts).sum() <= 5  # float ties may resolve differently
    assert b.inertia == pytest.approx(a.inertia, rel=1e-4)


def test_shard_rows_maps_global_indices_across_shards():
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    shards = [km.SeedShard(x[a:b], np.random.default_rng(0)) for a, b in [(0, 10), (10, 10), (10, 50)]]
    idx = np.array([0, 9, 10, 33, 49])
    np.testing.assert_array_equal(km.shard_rows(km.local_call(shards), [10, 0, 40], idx), x[idx])


def test_iterate_stops_after_two_steps_below_tol():
    x = mixture(3000, 8, 40, seed=2, spread=2.0)  # its descent pauses once, then resumes
    start = x[np.random.default_rng(0).choice(len(x), 30, replace=False)]

    def run(tol):
        return km.iterate(lambda c: partial_stats(x, c), start.copy(), 30, np.random.default_rng(1), tol=tol)

    full_c, full = run(0.0)
    obj = np.array([h["objective"] for h in full])
    assert len(full) == 30
    steps = (obj[:-1] - obj[1:]) / obj[:-1]  # steps[i]: relative drop from iteration i to i + 1
    tol = 3e-3
    small = steps < tol
    pairs = small[1:] & small[:-1]
    assert (steps[:3] >= tol).all() and pairs.any(), "data must converge inside 30 iterations"
    stop = int(np.argmax(pairs)) + 2  # the iteration whose objective ends the second small step
    lone = small & ~np.r_[pairs, False] & ~np.r_[False, pairs]
    assert lone.any() and int(np.argmax(lone)) + 1 < stop, (
        "a lone small step before the plateau must not stop it"
    )
    c, hist = run(tol)
    # The same trajectory cut at the plateau; that iteration's update is still applied.
    assert [h["objective"] for h in hist] == obj[: stop + 1].tolist()
    c_ref, _ = km.iterate(lambda c: partial_stats(x, c), start.copy(), stop + 1, np.random.default_rng(1))
    np.testing.assert_array_equal(c, c_ref)
    with pytest.raises(ValueError, match="tol"):
        run(-1.0)


def test_iterate_does_not_stop_right_after_reseeding():
    # Stats that never improve, with an empty cluster at every update: the loop must go on.
    def stats_of(c):
        return PartialStats(np.ones((2, 3)), np.array([5, 0]), 10.0, 5)

    _, hist = km.iterate(stats_of, np.zeros((2, 3), np.float32), 6, np.random.default_rng(0), tol=0.5)
    assert len(hist) == 6 and all(h["n_reseeded"] == 1 for h in hist)
    _, hist = km.iterate(
        lambda c: PartialStats(np.ones((2, 3)), np.array([3, 2]), 10.0, 5),
        np.zeros((2, 3), np.float32), 6, np.random.default_rng(0), tol=0.5,
    )  # fmt: skip
    assert len(hist) == 3  # flat objective, nothing re-seeded: two small steps, stops at the third
    # One re-seeding, in the update of iteration 1: no stop while it is among the last three iterations.
    calls = iter(range(100))
    _, hist = km.iterate(
        lambda c: PartialStats(np.ones((2, 3)), np.array([5, 0]) if next(calls) == 1 else np.array([3, 2]), 10.0, 5),
        np.zeros((2, 3), np.float32), 9, np.random.default_rng(0), tol=0.5,
    )  # fmt: skip
    assert [h["n_reseeded"] for h in hist] == [0, 1, 0, 0, 0]


@pytest.mark.parametrize("trials", [1, 4])
def test_kmeanspp_starts_keep_the_lowest_potential_start(trials):
    x = mixture(3000, 8, 30, seed=12)
    bounds, k = [0, 1200, 3000], 30
    # Three single starts by hand, on the same shards and generators, reset in between.
    call, sizes = _sharded(x, bounds, seed=4)
    rng = np.random.default_rng(5)
    singles = []
    for s in range(3):
        if s:
            call("reset", [()] * len(sizes))
        singles.append(km._seed_once(call, sizes, k, rng, trials))
    pots = [p for _, p in singles]
    # The reported potential is the sample's inertia against those centres.
    for c, p in singles:
        assert p == pytest.approx(partial_stats(x, c).inertia, rel=1e-4)
    assert len(set(pots)) == 3 and int(np.argmin(pots)) != 0, "the first start must not already be the best"
    call, sizes = _sharded(x, bounds, seed=4)
    best = km.kmeanspp_seed(call, sizes, k, np.random.default_rng(5), n_local_trials=trials, starts=3)
    np.testing.assert_array_equal(best, singles[int(np.argmin(pots))][0])
    with pytest.raises(ValueError, match="starts"):
        km.kmeanspp_seed(call, sizes, k, np.random.default_rng(5), starts=0)


@pytest.mark.parametrize("trials", [1, 5])
def test_pruned_seeding_equals_the_full_pass(trials):
    # Separated components: once each holds a centre, most rows cannot move for a new one.
    x = mixture(4000, 12, 25, seed=21, spread=6.0)
    x[::7] = x[3]  # duplicates must still end at exactly zero
    out = {}
    for prune in (True, False):
        shards = [km.SeedShard(p, np.random.default_rng([8, i]), prune=prune) for i, p in
                  enumerate(np.array_split(x, 3))]  # fmt: skip
        c = km.kmeanspp_seed(
            km.local_call(shards), [len(s) for s in shards], 60, np.random.default_rng(9), trials
        )
        out[prune] = c, np.concatenate([s.min_d2 for s in shards]), shards
    np.testing.assert_array_equal(out[True][0], out[False][0])
    np.testing.assert_allclose(out[True][1], out[False][1], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out[True][1], brute_force(x, out[True][0]).min(1), rtol=1e-4, atol=1e-3)
    assert (out[True][0] == x[3]).all(axis=1).any()  # the duplicated row is a centre ...
    assert (out[True][1][::7] == 0).all()  # ... so all its copies are at exactly 0
    frac = sum(s.rows_examined for s in out[True][2]) / sum(s.rows_total for s in out[True][2])
    assert frac < 0.5, f"pruning examined {frac:.0%} of the rows"
    assert all(s.rows_examined == s.rows_total for s in out[False][2])
