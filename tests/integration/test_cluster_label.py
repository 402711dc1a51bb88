"""Distributed k-means on Ray actors and frame-label assignment through Ray Data."""

import json

import numpy as np
import pytest

from gmptl.clustering import kmeans
from gmptl.clustering.labels import LabelStore, label_shard
from gmptl.clustering.pipeline import LabellingError, assign_labels, fit_codebooks
from gmptl.config import load_config
from gmptl.data.folds import make_folds
from gmptl.features import store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def extracted(small_corpus, small_features):
    """The shared 20-utterance corpus's features (layer 2 is clustered), a k-means config, fold 0."""
    cfg = load_config(
        None,
        ["data.corpus=iemocap", f"data.root={small_corpus.tmp / 'corpus'}", "model.backbone=tiny",
         "features.layers=[2]", "clustering.k=[4,16]", "clustering.n_iter=8", "clustering.tol=0",
         "clustering.max_frames=100000"],
    )  # fmt: skip
    df = small_corpus.df
    fold = make_folds(df, cfg.folds)[0]
    return small_features.folder, cfg, df, fold


def test_codebooks_deterministic_and_equal_to_the_reference(extracted, tmp_path):
    feat_dir, cfg, df, fold = extracted
    train = fold.select(df, "train").utt_id.tolist()
    rep = fit_codebooks(feat_dir, train, 2, cfg.clustering, cfg.runtime, tmp_path / "a")
    fs = store.FeatureStore(feat_dir)
    n_train_frames = sum(len(fs.get(u, 2)) for u in train)
    assert (
        rep["n_fit_frames"] == rep["n_train_frames"] == n_train_frames
    )  # budget above the total: all frames
    for k in (4, 16):
        c = np.load(tmp_path / "a" / f"L2_k{k}.npy")
        assert c.shape == (k, 64) and np.isfinite(c).all()
        hist = rep["codebooks"][str(k)]["history"]
        assert len(hist) == rep["codebooks"][str(k)]["n_iter_run"] == 8  # tol=0: every iteration
        assert hist[-1]["objective"] <= hist[0]["objective"]
    assert all(0 < rep["codebooks"][str(k)]["seed_rows_examined"] <= 1 for k in (4, 16))
    assert len(rep["actor_peak_rss_mb"]) == cfg.clustering.num_workers
    assert all(50 < m < 4096 for m in rep["actor_peak_rss_mb"])
    # Same seed, same frames: identical codebooks (CPU k-means is deterministic).
    fit_codebooks(feat_dir, train, 2, cfg.clustering, cfg.runtime, tmp_path / "b")
    np.testing.assert_array_equal(
        np.load(tmp_path / "a" / "L2_k16.npy"), np.load(tmp_path / "b" / "L2_k16.npy")
    )
    # The distributed objective equals the single-process computation on the same centroids.
    x = np.concatenate([np.asarray(fs.get(u, 2), np.float32) for u in train])
    c16 = np.load(tmp_path / "a" / "L2_k16.npy")
    assert kmeans.partial_stats(x, c16).inertia == pytest.approx(
        rep["codebooks"]["16"]["final_objective"], rel=1e-6
    )
    # Only training speakers' frames were used: the budget counts exactly their frames.
    assert n_train_frames < sum(len(fs.get(u, 2)) for u in df.utt_id)


def test_budget_is_exact_and_seeded(extracted, tmp_path):
    feat_dir, cfg, df, fold = extracted
    train = fold.select(df, "train").utt_id.tolist()
    small = cfg.clustering.model_copy(update={"max_frames": 1000})
    rep = fit_codebooks(feat_dir, train, 2, small, cfg.runtime, tmp_path / "s")
    assert rep["n_fit_frames"] == 1000 < rep["n_train_frames"]
    # k-means++ seeds on max(init_points_per_centroid x K, init_min_points) of the loaded frames.
    assert [rep["codebooks"][k]["seed_sample"] for k in ("4", "16")] == [1000, 1000]
    # clustering.init_starts reaches the seeding: 3 starts by default (which is kept: test_kmeans).
    assert cfg.clustering.init_starts == 3
    assert [len(set(rep["codebooks"][k]["seed_potentials"])) for k in ("4", "16")] == [3, 3]
    unfloored = small.model_copy(update={"init_min_points": 0, "k": [16], "init_starts": 1})
    rep = fit_codebooks(feat_dir, train, 2, unfloored, cfg.runtime, tmp_path / "u")
    book = rep["codebooks"]["16"]
    assert 20 * 16 <= book["seed_sample"] <= 20 * 16 + cfg.clustering.num_workers
    assert len(book["seed_potentials"]) == 1


def test_labels_match_frame_counts_for_every_utterance(extracted, tmp_path):
    feat_dir, cfg, df, fold = extracted
    train = fold.select(df, "train").utt_id.tolist()
    fit_codebooks(feat_dir, train, 2, cfg.clustering, cfg.runtime, tmp_path / "c")
    centroids = {k: np.load(tmp_path / "c" / f"L2_k{k}.npy") for k in (4, 16)}
    part = fold.part_of(df)
    parts = __import__("pandas").Series(part.to_numpy(), index=df.utt_id)
    index = assign_labels(feat_dir, centroids, 2, parts, cfg.clustering, cfg.runtime, tmp_path / "l")
    assert sorted(index.part.unique()) == ["test", "train", "validation"] and len(index) == len(df) == 20
    fs, ls = store.FeatureStore(feat_dir), LabelStore(tmp_path / "l")
    for utt in df.utt_id:
        feats = np.asarray(fs.get(utt, 2), np.float32)
        for k, c in centroids.items():
            lab = ls.get(utt, k)
            assert len(lab) == len(feats)
            np.testing.assert_array_equal(lab, kmeans.assign(feats, c)[0])
    # A label shard that lost frames is an error naming the utterance, never silently short.
    shard = int(index.shard.iloc[0])
    path = tmp_path / "l" / f"shard_{shard:05d}.k4.npy"
    np.save(path, np.load(path)[:-5])
    last = index[index.shard == shard].sort_values("offset").utt_id.iloc[-1]
    with pytest.raises(ValueError, match=f"utterance {last}: "):
        ls.get(last, 4)
    assert json.loads((feat_dir / "extract.json").read_text())["n_utterances"] == 20


def test_a_failed_fit_leaves_no_actor_holding_cpus(extracted, tmp_path):
    import time

    import ray

    feat_dir, cfg, df, fold = extracted
    train = fold.select(df, "train").utt_id.tolist()
    free = ray.available_resources().get("CPU", 0.0)
    too_many = cfg.clustering.model_copy(update={"k": [4, 10**7], "max_frames": 10**8})
    with pytest.raises(ValueError, match="training frames for K=10000000"):
        fit_codebooks(feat_dir, train, 2, too_many, cfg.runtime, tmp_path / "c")
    deadline = time.monotonic() + 30  # ray.kill is asynchronous
    while ray.available_resources().get("CPU", 0.0) < free and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0.0) >= free  # the actors' CPUs came back


def test_a_labelling_pass_that_fails_says_what_is_kept_and_what_to_do(extracted, tmp_path):
    feat_dir, cfg, df, fold = extracted
    train = fold.select(df, "train").utt_id.tolist()
    centroids = {4: np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)}
    out = tmp_path / "l"
    for shard in range(64):  # a folder where each label shard goes: every write fails
        label_shard(out, shard, 4).mkdir(parents=True)
    parts = __import__("pandas").Series("train", index=train)
    with pytest.raises(LabellingError, match=r"frame labelling of \d+ feature shards into .* stopped") as err:
        assign_labels(feat_dir, centroids, 2, parts, cfg.clustering, cfg.runtime, out)
    assert "run the same command again" in str(err.value) and str(out) in str(err.value)
