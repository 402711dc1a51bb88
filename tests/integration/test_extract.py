"""Feature extraction on Ray Data: shapes, resume, corruption, and a worker killed mid-run."""

import json
import shutil

import numpy as np
import pytest

from gmptl.data.audio import load_audio
from gmptl.features import store
from gmptl.features.extractor import FeatureExtractor
from gmptl.features.pipeline import extract_features

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def run(cfg, df, folder, **kw):
    return extract_features(df, cfg.model, cfg.features, cfg.runtime, folder, **kw)


def test_extract_then_resume_then_repair(ray_session, small_corpus, small_features, tmp_path):
    cfg, df = small_corpus.cfg, small_corpus.df
    res = small_features.result  # the first run: every shard computed
    assert (res.n_shards, res.n_computed, res.n_cached, res.n_utterances) == (5, 5, 0, 20)
    fs = store.FeatureStore(small_features.folder)
    ext = FeatureExtractor(cfg.model, cfg.features)
    for utt, path in zip(df.utt_id[:6], df.path[:6], strict=True):
        wave = load_audio(path)
        expect = ext.encode([wave])[0]
        for layer in (2, 4):
            got = fs.get(utt, layer)
            assert got.shape == (ext.n_frames(len(wave)), 64) and got.dtype == np.float16
            np.testing.assert_allclose(got.astype(np.float32), expect[layer], rtol=2e-2, atol=2e-2)
    assert fs.utterances() == sorted(df.utt_id)

    # The shared folder stays intact for the other tests: resume and repair a copy of it (a copied folder
    # keeps its shards: nothing in it names its own path).
    shutil.copytree(small_features.folder, tmp_path / "f")
    again = run(cfg, df, tmp_path / "f")  # nothing to do: every shard is committed
    assert (again.n_computed, again.n_cached) == (0, 5)

    # A torn array and a lost commit record: exactly those two shards are recomputed.
    arr = store.shard_array(tmp_path / "f", 1, 2)
    arr.write_bytes(arr.read_bytes()[:100])
    store.shard_json(tmp_path / "f", 3).unlink()
    repaired = run(cfg, df, tmp_path / "f")
    assert (repaired.n_computed, repaired.n_recomputed) == (2, 1)
    planned = json.loads(store.shard_json(tmp_path / "f", 1).read_text())["utt_ids"]
    assert store.shard_problem(tmp_path / "f", 1, planned) is None

    # Same-size corruption: invisible to the size check, caught by the checksum when verifying.
    arr = store.shard_array(tmp_path / "f", 0, 4)
    blob = bytearray(arr.read_bytes())
    blob[-10:] = b"\x00" * 10
    arr.write_bytes(bytes(blob))
    assert run(cfg, df, tmp_path / "f").n_computed == 0
    assert run(cfg, df, tmp_path / "f", verify=True).n_recomputed == 1


def test_actor_killed_mid_run_loses_and_duplicates_nothing(small_features):
    """``small_features`` was extracted with an encoder actor killed mid-shard, after a torn write."""
    assert small_features.crash_marker.is_file()  # an actor really died mid-shard (after a torn write)
    index = store.FeatureStore(small_features.folder).index.reset_index()
    assert small_features.result.n_utterances == 20
    counts = index.groupby(["utt_id", "layer"]).size()
    assert (counts == 1).all() and len(counts) == 40  # every utterance exactly once, per layer


def test_actor_restarts_and_retries_are_bounded(ray_session, small_corpus, tmp_path, monkeypatch):
    """Ray Data's default restarts a dying actor and retries its task for ever; the pool gets the config's bound."""
    import ray

    cfg, df = small_corpus.cfg, small_corpus.df
    seen = {}

    def capture(self, fn, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop after planning")

    monkeypatch.setattr(ray.data.Dataset, "map_batches", capture)
    bounded = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"actor_restarts": 2})})
    with pytest.raises(RuntimeError, match="stop after planning"):
        run(bounded, df, tmp_path / "f")
    assert seen["max_restarts"] == 2 and seen["max_task_retries"] == 2
