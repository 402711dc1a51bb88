"""Every artifact path of a run, in one place.

Each step's outputs live under a folder keyed by a hash of the config sections
that produced them, so a changed config can never pick up a stale result::

    <output_dir>/synthetic_corpus/<synth hash>/         the generated corpus (data.corpus=synthetic)
    <output_dir>/data/<data hash>/manifest.parquet      + manifest.report.json, manifest.config.yaml
    <output_dir>/folds/<data+folds hash>/folds.json
    <output_dir>/features/<data+model[+stage-0 fold model] hash>/<features hash>/   shards + index.parquet
    <output_dir>/clusters/<features+folds+clustering hash>/fold<i>/   L<layer>_k<K>.npy, kmeans.json
    <output_dir>/labels/<same hash>/fold<i>/             frame-label shards, index.parquet, labels.json
    <output_dir>/train/<stage>/<hash>/fold<i>/          stage.json, best/ (model folder), figures
    <output_dir>/ray_results/<stage>-fold<i>-<hash>/    Ray Train checkpoints (runtime.storage_path)
    <output_dir>/mlflow.db, mlartifacts/                MLflow (tracking.uri unset)
    <output_dir>/config.yaml                            the resolved config of the last run
"""

from __future__ import annotations

from pathlib import Path

from gmptl.config import Config, config_hash, config_hash_of, to_dict


def corpus_root(cfg: Config) -> Path:
    """``data.root``, or for the synthetic corpus its generated folder under output_dir."""
    if cfg.data.root:
        return Path(cfg.data.root)
    return Path(cfg.output_dir) / "synthetic_corpus" / config_hash(cfg.data.synth)


def manifest_path(cfg: Config) -> Path:
    return Path(cfg.output_dir) / "data" / config_hash(cfg.data) / "manifest.parquet"


def folds_path(cfg: Config) -> Path:
    return Path(cfg.output_dir) / "folds" / config_hash(cfg.data, cfg.folds) / "folds.json"


def features_dir(cfg: Config, fold: int | None = None) -> Path:
    """Frame features: one folder for all folds (features.source=pretrained) or one per fold's stage-0 model."""
    # Resource settings (worker counts) do not change the features; the device does (bf16 on GPU).
    content = cfg.features.model_dump(exclude={"num_workers", "num_cpus_per_worker", "num_gpus_per_worker"})
    content["on_gpu"] = cfg.features.num_gpus_per_worker > 0
    source = [to_dict(cfg.data), to_dict(cfg.model)]
    if cfg.features.source == "mtl":
        if fold is None:
            raise ValueError(
                "features.source=mtl: features belong to one fold's stage-0 model; pass the fold"
            )
        source.append(str(stage_dir(cfg, fold, "mtl")))
    return Path(cfg.output_dir) / "features" / config_hash_of(source) / config_hash_of(content)


def extraction_model_dir(cfg: Config, fold: int | None) -> Path | None:
    """The model folder features are extracted with: the fold's stage-0 best model, or None (model.backbone)."""
    return stage_dir(cfg, fold, "mtl") / "best" if cfg.features.source == "mtl" and fold is not None else None


def clusters_dir(cfg: Config, fold: int) -> Path:
    """Codebooks of one fold: keyed on the features they were fitted on and the clustering section."""
    feats = features_dir(cfg, fold)
    key = config_hash_of([str(feats), to_dict(cfg.folds), to_dict(cfg.clustering)])
    return Path(cfg.output_dir) / "clusters" / key / f"fold{fold}"


def labels_dir(cfg: Config, fold: int) -> Path:
    return (
        clusters_dir(cfg, fold).parent.parent.parent
        / "labels"
        / clusters_dir(cfg, fold).parent.name
        / f"fold{fold}"
    )


def resolved_config_path(cfg: Config) -> Path:
    return Path(cfg.output_dir) / "config.yaml"


# Settings that change how fast a stage trains, not what it learns: left out of its hash.
_RESOURCE_KEYS = {
    "loader_workers",
    "audio_cache_mb",
    "max_failures",
    "checkpoints_to_keep",
    "num_cpus_per_worker",
}


def stage_dir(cfg: Config, fold: int, stage: str) -> Path:
    """One training stage of one fold, keyed on its data, model, stage settings and upstream outputs."""
    s = getattr(cfg.stages, stage)
    upstream: list[str] = []
    if stage == "gmp":
        upstream.append(str(labels_dir(cfg, fold)))
    init = getattr(s, "init", "pretrained")
    if init != "pretrained":
        upstream.append(str(stage_dir(cfg, fold, init)))
    content = s.model_dump(mode="json", exclude=_RESOURCE_KEYS)
    key = config_hash_of(
        [to_dict(cfg.data), to_dict(cfg.folds), to_dict(cfg.model), stage, content, upstream]
    )
    return Path(cfg.output_dir) / "train" / stage / key / f"fold{fold}"


def storage_path(cfg: Config) -> str:
    """Where Ray Train persists checkpoints: runtime.storage_path, else <output_dir>/ray_results (absolute)."""
    if cfg.runtime.storage_path:
        return cfg.runtime.storage_path
    return str((Path(cfg.output_dir) / "ray_results").resolve())
