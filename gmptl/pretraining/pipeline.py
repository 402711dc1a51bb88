"""``gmptl pretrain``: HuBERT-style self-supervised pre-training, iteration by iteration, on Ray.

Each iteration is the GMP steps applied to unlabeled audio, with the same functions:

    frames (MFCC, or a layer of the previous iteration's model)   gmptl.features.pipeline.extract_features
      -> k-means, one codebook per K                               gmptl.clustering.pipeline.fit_codebooks
      -> frame targets for every utterance                         gmptl.clustering.pipeline.assign_labels
      -> masked prediction of the targets on Ray Train             gmptl.training.pipeline.fit_stage ("pretrain")

Labels in the manifest are ignored (an ``unlabeled`` corpus has none), and no folds are built. A share of the utterances (``pretrain.validation_fraction``) is held
out: k-means never sees it, and masked-prediction accuracy is measured on it. Every part is cached in
the iteration's folder (``paths.pretrain_iteration_dir``) and resumes where it stopped; the last
iteration's best model becomes ``<pretrain_dir>/model``, a model folder ``model.backbone`` accepts, with
its provenance in ``model.json`` (``pretrain``), and ``pretrain.json`` is written last.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gmptl import files, paths, tracking
from gmptl.config import Config, ModelConfig, config_hash, to_dict
from gmptl.errors import GmptlError
from gmptl.features.mfcc import LAYER as MFCC_LAYER

log = logging.getLogger(__name__)

MODEL_DIR = "model"


class PretrainError(GmptlError):
    """Pre-training cannot run as configured."""


def split_utterances(utt_ids: list[str], fraction: float, seed: int) -> pd.Series:
    """utt_id -> "train" | "validation": a seeded ``fraction`` held out (at least one each way)."""
    ids = sorted(utt_ids)
    if len(ids) < 2:
        raise PretrainError(f"pre-training needs at least 2 utterances, the manifest has {len(ids)}")
    n_val = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    held = set(np.random.default_rng(seed).permutation(len(ids))[:n_val].tolist())
    return pd.Series(["validation" if i in held else "train" for i in range(len(ids))], index=ids)


def _iteration(cfg: Config, df: pd.DataFrame, parts: pd.Series, i: int, parent: Any) -> dict[str, Any]:
    """Iteration ``i`` (0-based): targets, k-means, labels, masked prediction; each part cached."""
    from gmptl.clustering.labels import label_quality
    from gmptl.clustering.pipeline import assign_labels, fit_codebooks
    from gmptl.features.pipeline import extract_features
    from gmptl.training.pipeline import class_names, fit_stage, settle_outbox

    it = cfg.pretrain.iterations[i]
    folder = paths.pretrain_iteration_dir(cfg, i)
    previous = paths.pretrain_iteration_dir(cfg, i - 1) / "train" / paths.BEST_MODEL if i > 0 else None
    name = f"iter {i + 1}"
    report: dict[str, Any] = {
        "iteration": i + 1,
        "targets": it.targets,
        "k": list(it.k),
        "folder": str(folder),
    }

    # 1. The frames the targets are clustered from.
    if it.targets == "mfcc":
        source_model, layer, mfcc = cfg.model, MFCC_LAYER, cfg.pretrain.mfcc
    else:
        source_model = (
            ModelConfig(backbone=str(previous), offline=True) if previous is not None else cfg.model
        )
        layer, mfcc = int(it.targets), None
    features = cfg.features.model_copy(update={"layers": [layer] if mfcc is None else [1]})
    t0 = time.perf_counter()
    ext = extract_features(df, source_model, features, cfg.runtime, folder / "features", cfg.data.sample_rate_hz,
                           verify=True, mfcc=mfcc)  # fmt: skip
    report["extract"] = {"wall_s": ext.wall_s, "computed_shards": ext.n_computed, "audio_s": ext.audio_s,
                         "audio_s_per_s": ext.audio_s / max(ext.wall_s, 1e-9) if ext.n_computed else None}  # fmt: skip
    log.info("pretrain %s: frames of %s in %.0f s", name, "MFCC" if mfcc else f"layer {layer}",
             time.perf_counter() - t0)  # fmt: skip

    # 2. Codebooks on the training share only; 3. targets for every utterance.
    ccfg = cfg.clustering.model_copy(update={"k": list(it.k), "layer": None})
    kdir, ldir = folder / "clusters", folder / "labels"
    kmeans = files.read_marker(kdir / paths.KMEANS_JSON)
    if kmeans is None:
        train_ids = parts[parts == "train"].index.tolist()
        kmeans = fit_codebooks(folder / "features", train_ids, layer, ccfg, cfg.runtime, kdir)
    quality = files.read_marker(ldir / paths.LABELS_JSON)
    if quality is None:
        centroids = {k: np.load(kdir / paths.centroids_file(layer, k)) for k in it.k}
        index = assign_labels(folder / "features", centroids, layer, parts, ccfg, cfg.runtime, ldir)
        q, counts = label_quality(paths.corpus_root(cfg), list(it.k), ldir, index)
        quality = {"layer": layer, "n_utterances": int(len(index)), "quality": q, "counts": counts}
        files.write_json(ldir / paths.LABELS_JSON, quality)
    report["kmeans"] = {"wall_s": kmeans.get("wall_s"),
                        "codebooks": {k: {"clusters_used": v["clusters_used"], "fit_s": v["fit_s"]}
                                      for k, v in kmeans["codebooks"].items()}}  # fmt: skip
    report["targets_quality"] = quality["quality"]

    # 4. Masked prediction of the targets.
    train_dir = folder / "train"
    stage = files.read_marker(train_dir / paths.STAGE_JSON)
    t_train = time.perf_counter()
    if stage is None:
        run_name = f"pretrain-iter{i + 1}-{folder.parent.name}"
        run = None
        if parent is not None:
            run = tracking.Run.open(
                cfg.tracking, parent.uri, run_key=run_name, run_name=f"pretrain {name}",
                params=to_dict(cfg) | {"job": {"stage": "pretrain", "iteration": i + 1,
                                               "n_train": int((parts == "train").sum()),
                                               "n_validation": int((parts == "validation").sum())}},
                tags={"gmptl.stage": "pretrain", "gmptl.iteration": str(i + 1)}, parent=parent,
            )  # fmt: skip
        init = str(previous) if cfg.pretrain.init == "previous" and previous is not None else None
        train_df = df[df.utt_id.map(parts) == "train"]
        val_df = df[df.utt_id.map(parts) == "validation"]
        stage = fit_stage(
            cfg, "pretrain", train_df, val_df, labels=class_names(df), ks=list(it.k), init_dir=init,
            labels_dir=str(ldir), out=train_dir, run_name=run_name, run=run, fold=None, where=name,
            manifest={"iteration": i + 1, "train_wall_s": None},
        )  # fmt: skip
        stage["train_wall_s"] = time.perf_counter() - t_train
        files.write_json(train_dir / paths.STAGE_JSON, stage)
    else:
        settle_outbox(cfg, train_dir)  # what MLflow missed at the end of the finished iteration
    best = stage["best_metrics"]
    report["train"] = {
        "best_epoch": stage["best_epoch"],
        "epochs_run": stage["epochs_run"],
        "masked_acc": {k: best.get(f"val_masked_acc_k{k}") for k in it.k},
        "unmasked_acc": {k: best.get(f"val_unmasked_acc_k{k}") for k in it.k},
        "audio_s_per_s": best.get("train_audio_s_per_s"),
        "wall_s": stage.get("train_wall_s"),
        "history": stage.get("history", []),
        "model_dir": stage["model_dir"],
    }
    return report


def pretrain_step(ctx: Any) -> dict[str, Any]:
    """Pipeline step ``pretrain``: every iteration of ``pretrain.iterations`` on the manifest's audio."""
    cfg, df = ctx.cfg, ctx.df
    out = paths.pretrain_dir(cfg)
    if (done := files.read_marker(out / paths.PRETRAIN_JSON)) is not None:
        return done
    return run_pretraining(cfg, df, ctx.parent)


def _parent_run(cfg: Config, df: pd.DataFrame) -> Any:
    if not cfg.tracking.enabled:
        return None
    uri = tracking.resolve_uri(cfg)
    tracking.check_reachable(uri)
    h = paths.pretrain_hash(cfg)
    run = tracking.Run.open(cfg.tracking, uri, run_key=f"pretrain-{h}", run_name=f"pretrain {h}",
                            params=to_dict(cfg), tags={"gmptl.config_hash": config_hash(cfg), "gmptl.stage": "pretrain"})  # fmt: skip
    run.log_manifest(paths.manifest_path(cfg), len(df), config_hash(cfg.data), "pre-training")
    return run


def check_iterations(cfg: Config) -> None:
    """Every layer an iteration takes its targets from exists in the model it is taken from (all iterations
    train the architecture of model.backbone), checked before anything runs."""
    from gmptl.models.backbone import backbone_config

    depth = int(backbone_config(cfg.model).num_hidden_layers)
    for i, it in enumerate(cfg.pretrain.iterations):
        if isinstance(it.targets, int) and it.targets > depth:
            raise PretrainError(
                f"pretrain.iterations[{i}].targets={it.targets}: model.backbone={cfg.model.backbone} has {depth} "
                f"transformer layers (numbered 1..{depth}); take the targets from one of them"
            )


def run_pretraining(cfg: Config, df: pd.DataFrame, parent: Any = None) -> dict[str, Any]:
    """All iterations, then the model folder and pretrain.json (see module docstring)."""
    check_iterations(cfg)
    if df.empty:
        raise PretrainError("the manifest has no utterances to pre-train on")
    t0 = time.perf_counter()
    parts = split_utterances(df.utt_id.tolist(), cfg.pretrain.validation_fraction, cfg.pretrain.train.seed)
    run = parent or _parent_run(cfg, df)
    iterations = []
    for i in range(len(cfg.pretrain.iterations)):
        iterations.append(_iteration(cfg, df, parts, i, run))
    out = paths.pretrain_dir(cfg)
    audio_h = float(df.duration_s.sum()) / 3600
    last = iterations[-1]["train"]
    provenance = {
        "config_hash": paths.pretrain_hash(cfg),
        "corpus": cfg.data.corpus,
        "root": str(paths.corpus_root(cfg).resolve()),
        "synth": to_dict(cfg.data.synth) if cfg.data.corpus == "synthetic" else None,
        "audio_hours": audio_h,
        "n_utterances": int(len(df)),
        "speakers": sorted(df.speaker.astype(str).unique().tolist()),
        "iterations": [
            {
                "targets": r["targets"],
                "k": r["k"],
                "masked_acc": r["train"]["masked_acc"],
                "best_epoch": r["train"]["best_epoch"],
            }
            for r in iterations
        ],  # fmt: skip
        "masked_acc": last["masked_acc"],
        "model": to_dict(cfg.model),
    }
    _write_model(Path(last["model_dir"]), out / MODEL_DIR, provenance)
    report = {"model_dir": str(out / MODEL_DIR), **provenance, "iterations": iterations,
              "wall_s": time.perf_counter() - t0, "config": to_dict(cfg)}  # fmt: skip
    if run is not None:
        for r in iterations:
            for k, acc in r["train"]["masked_acc"].items():
                if acc is not None:
                    tracking.best_effort("pre-training metrics", run.log_metrics,
                                         {f"iter{r['iteration']}_val_masked_acc_k{k}": acc}, step=0)  # fmt: skip
        if parent is None:
            tracking.best_effort(f"the end of run {run.run_id}", run.finish, "FINISHED")
    files.write_json(out / paths.PRETRAIN_JSON, report)
    log.info("pretrain: %.2f h of audio, %d iterations -> %s", audio_h, len(iterations), out / MODEL_DIR)
    return report


def copy_model(src: str | Path, dest: str | Path) -> Path:
    """Replace ``dest`` with a copy of the model folder ``src`` (staged beside it, then renamed)."""
    dest = Path(dest).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        staged = Path(tmp) / "model"
        shutil.copytree(src, staged)
        if dest.exists():
            shutil.rmtree(dest)
        staged.rename(dest)
    return dest


def _write_model(best: Path, dest: Path, provenance: dict[str, Any]) -> None:
    """Copy the last iteration's best model folder to ``dest`` with ``pretrain`` provenance in its model.json."""
    from gmptl.models.factory import MODEL_JSON, read_model_json

    meta = read_model_json(best)
    meta["pretrain"] = provenance
    meta.pop("labels", None)  # the manifest's emotion names mean nothing to a pre-trained model
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        staged = Path(tmp) / "model"
        shutil.copytree(best, staged)
        files.write_json(staged / MODEL_JSON, meta)
        if dest.exists():
            shutil.rmtree(dest)
        staged.rename(dest)
