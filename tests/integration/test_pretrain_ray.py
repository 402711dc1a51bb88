"""`gmptl pretrain` end to end on a small synthetic corpus: MFCC targets, Ray k-means, masked prediction on
Ray Train; a resumed pre-training equals an uninterrupted one; continued pre-training from a model folder."""

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gmptl import files, paths
from gmptl.cli import main
from gmptl.config import ModelConfig, load_config
from gmptl.models.backbone import build_backbone
from gmptl.models.factory import read_model_json
from gmptl.training.worker import FAULT_ENV

pytestmark = pytest.mark.integration

JOB = "jobs/pretrain_demo.yaml"
SMALL = [
    "data.synth.n_utterances=24",
    "data.synth.n_sessions=2",
    "clustering.max_frames=5000",
    "clustering.n_iter=3",
    "pretrain.iterations=[{targets: mfcc, k: [8]}]",
    "pretrain.validation_fraction=0.2",
    "pretrain.train.epochs=2",
    "pretrain.train.batch_size=8",
    "pretrain.train.crop_s=1.0",
    "pretrain.train.mask_length=2",
    "pretrain.train.max_failures=0",
    "pretrain.train.num_cpus_per_worker=1",
]


def _pretrain(out, *more):
    sets = [f"output_dir={out}", *SMALL, *more]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["pretrain", JOB, *[a for s in sets for a in ("--set", s)]])
    cfg = load_config(JOB, sets)
    return rc, printed.getvalue(), cfg


@pytest.fixture(scope="module")
def pretrained(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    rc, printed, cfg = _pretrain(out)
    assert rc == 0, printed[-3000:]
    return cfg, printed, files.read_marker(paths.pretrain_dir(cfg) / paths.PRETRAIN_JSON)


def test_pretrain_writes_a_backbone_with_its_provenance_and_curves(pretrained):
    cfg, printed, report = pretrained
    model_dir = paths.pretrain_dir(cfg) / "model"
    assert f"model: {model_dir}" in printed and "iteration 1 (mfcc): masked accuracy K=8" in printed
    it = report["iterations"][0]
    assert it["k"] == [8] and it["kmeans"]["codebooks"]["8"]["clusters_used"] >= 2
    assert 0 <= it["train"]["masked_acc"]["8"] <= 1
    assert {"entropy_bits", "nmi"} <= set(
        it["targets_quality"]["8"]["train"]
    )  # synthetic: NMI vs frame truth
    history = it["train"]["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all("val_masked_acc_k8" in h for h in history)
    assert (paths.pretrain_iteration_dir(cfg, 0) / "train" / "curves.png").is_file()
    meta = read_model_json(model_dir)
    prov = meta["pretrain"]
    assert prov["config_hash"] == paths.pretrain_hash(cfg) and prov["n_utterances"] == 24
    assert prov["audio_hours"] > 0 and prov["masked_acc"] == it["train"]["masked_acc"]
    build_backbone(ModelConfig(backbone=str(model_dir)))  # what model.backbone does with it
    # Parent and iteration runs in MLflow; a second call finds everything cached.
    from mlflow.tracking import MlflowClient

    from gmptl.tracking import resolve_uri

    client = MlflowClient(tracking_uri=resolve_uri(cfg))
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    names = {r.info.run_name: r for r in runs}
    assert {f"pretrain {paths.pretrain_hash(cfg)}", "pretrain iter 1"} <= set(names)
    assert all(r.info.status == "FINISHED" for r in runs)
    rc, again, _ = _pretrain(cfg.output_dir)
    assert rc == 0 and "pretrain (cached)" in again


@pytest.mark.faults  # an injected worker failure and two more fits: `make test-faults`
def test_a_resumed_pretraining_equals_an_uninterrupted_one(pretrained, tmp_path, monkeypatch):
    cfg, _, report = pretrained
    whole = report["iterations"][0]["train"]
    # A copy of the fixture's folder without its training and model: the corpus, MFCC frames, k-means and
    # labels are reused from its caches, so only masked prediction runs again (interrupted, then resumed).
    out = tmp_path / "out"
    shutil.copytree(cfg.output_dir, out)
    copy = load_config(JOB, [f"output_dir={out}", *SMALL])
    shutil.rmtree(paths.pretrain_iteration_dir(copy, 0) / "train")
    for d in [paths.pretrain_dir(copy) / "model", *Path(paths.storage_path(copy)).glob("pretrain-*")]:
        shutil.rmtree(d)
    (paths.pretrain_dir(copy) / paths.PRETRAIN_JSON).unlink()
    # The arrays of the data steps (feature shards, centroids, labels); the feature index is re-verified.
    cached = {f: f.stat().st_mtime_ns for f in paths.pretrain_iteration_dir(copy, 0).rglob("*.npy")}
    assert len(cached) >= 3
    monkeypatch.setenv(FAULT_ENV, f"1:{tmp_path / 'fired'}")
    rc, printed, _ = _pretrain(out)
    assert rc != 0 and (tmp_path / "fired").is_file(), printed[-3000:]
    rc, printed, _ = _pretrain(out)  # the same command resumes after epoch 1
    assert rc == 0, printed[-3000:]
    assert {f: f.stat().st_mtime_ns for f in cached} == cached  # features, k-means, labels: from the caches
    resumed = files.read_marker(paths.pretrain_dir(copy) / paths.PRETRAIN_JSON)["iterations"][0]["train"]
    for a, b in zip(whole["history"], resumed["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_masked_acc_k8", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    wa, wb = (load_file(f"{t['model_dir']}/heads.safetensors") for t in (whole, resumed))
    for k in wa:
        assert np.allclose(wa[k].numpy(), wb[k].numpy(), atol=1e-5), k


def test_continued_pretraining_starts_from_a_model_folder(pretrained, tmp_path):
    from gmptl.features.extractor import FeatureExtractor
    from gmptl.features.store import FeatureStore

    start = paths.pretrain_dir(pretrained[0]) / "model"
    rc, printed, cfg = _pretrain(
        tmp_path, f"model.backbone={start}", "pretrain.iterations=[{targets: 2, k: [8]}]",
        "pretrain.train.epochs=1", "pretrain.train.freeze_cnn=true",
        "features.batch_max_audio_s=0.5",  # one utterance per forward: no padding in mini's group-norm CNN
    )  # fmt: skip
    assert rc == 0, printed[-3000:]
    # The targets are clusters of layer 2 of the given model ...
    store = FeatureStore(paths.pretrain_iteration_dir(cfg, 0) / "features")
    utt = store.utterances()[0]
    from gmptl.data.audio import load_audio
    from gmptl.data.prepare import prepare_folds

    df = prepare_folds(cfg).df
    wave = load_audio(df.set_index("utt_id").loc[utt, "path"], 16000)
    ext = FeatureExtractor(ModelConfig(backbone=str(start)), cfg.features.model_copy(update={"layers": [2]}))
    # (the stored features are float16)
    assert np.allclose(store.get(utt, 2), ext.encode([wave])[0][2], atol=2e-2)  # float16 storage
    # ... and training continued from its weights (the frozen CNN is exactly the starting model's).
    before = build_backbone(ModelConfig(backbone=str(start))).feature_extractor.state_dict()
    after = build_backbone(ModelConfig(backbone=str(paths.pretrain_dir(cfg) / "model"))).feature_extractor
    for k, v in after.state_dict().items():
        assert torch.equal(v, before[k]), k
