"""Feature extraction on Ray Data: shapes, resume, corruption, and a worker killed mid-run."""

import json

import numpy as np
import pytest

from gmptl.config import SynthConfig, load_config
from gmptl.data.audio import load_audio
from gmptl.data.manifest import read_manifest
from gmptl.data.prepare import prepare_manifest
from gmptl.data.synth import synthesize_corpus
from gmptl.features import store
from gmptl.features.extractor import FeatureExtractor
from gmptl.features.pipeline import FAULT_ENV, extract_features

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("extract")
    synthesize_corpus(tmp / "corpus", SynthConfig(n_utterances=20, seed=5))
    cfg = load_config(
        None,
        ["data.corpus=iemocap", f"data.root={tmp / 'corpus'}", "model.backbone=tiny", "features.layers=[2,4]",
         "features.shard_max_utts=4", "features.num_workers=2"],
    )  # fmt: skip
    df = read_manifest(prepare_manifest(cfg.data, tmp / "corpus", tmp / "m.parquet").manifest_path)
    return tmp, cfg, df


def run(cfg, df, folder, **kw):
    return extract_features(df, cfg.model, cfg.features, cfg.runtime, folder, **kw)


def test_extract_then_resume_then_repair(ray_session, setup, tmp_path):
    _, cfg, df = setup
    res = run(cfg, df, tmp_path / "f")
    assert (res.n_shards, res.n_computed, res.n_cached, res.n_utterances) == (5, 5, 0, 20)
    fs = store.FeatureStore(tmp_path / "f")
    ext = FeatureExtractor(cfg.model, cfg.features)
    for utt, path in zip(df.utt_id[:6], df.path[:6], strict=True):
        wave = load_audio(path)
        expect = ext.encode([wave])[0]
        for layer in (2, 4):
            got = fs.get(utt, layer)
            assert got.shape == (ext.n_frames(len(wave)), 64) and got.dtype == np.float16
            np.testing.assert_allclose(got.astype(np.float32), expect[layer], rtol=2e-2, atol=2e-2)
    assert fs.utterances() == sorted(df.utt_id)

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


def test_actor_killed_mid_run_loses_and_duplicates_nothing(ray_session, setup, tmp_path, monkeypatch):
    _, cfg, df = setup
    marker = tmp_path / "crashed"
    monkeypatch.setenv(FAULT_ENV, str(marker))
    res = run(cfg, df, tmp_path / "f")
    assert marker.is_file()  # an actor really died mid-shard (after a torn write)
    index = store.FeatureStore(tmp_path / "f").index.reset_index()
    assert res.n_utterances == 20
    counts = index.groupby(["utt_id", "layer"]).size()
    assert (counts == 1).all() and len(counts) == 40  # every utterance exactly once, per layer


def test_actor_restarts_and_retries_are_bounded(ray_session, setup, tmp_path, monkeypatch):
    """Ray Data's default restarts a dying actor and retries its task for ever; the pool gets the config's bound."""
    import ray

    _, cfg, df = setup
    seen = {}

    def capture(self, fn, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop after planning")

    monkeypatch.setattr(ray.data.Dataset, "map_batches", capture)
    bounded = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"actor_restarts": 2})})
    with pytest.raises(RuntimeError, match="stop after planning"):
        run(bounded, df, tmp_path / "f")
    assert seen["max_restarts"] == 2 and seen["max_task_retries"] == 2
