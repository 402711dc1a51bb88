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
    <output_dir>/pretrain/<hash of iterations 1..n>/iter<n>/   features/, clusters/, labels/, train/
    <output_dir>/pretrain/<hash of all iterations>/      model/ (the pre-trained model folder), pretrain.json
    <output_dir>/ray_results/<stage>-fold<i>-<hash>/    Ray Train checkpoints (runtime.storage_path)
    <output_dir>/mlflow.db, mlartifacts/                MLflow (tracking.uri unset)
    <output_dir>/config.yaml                            the resolved config of the last run
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from gmptl.config import Config, absolute, absolute_value, config_hash, config_hash_of, to_dict

# The file each step writes last into its folder: the step is done when it exists (gmptl.steps).
STAGE_JSON = "stage.json"
FEATURES_INDEX = "index.parquet"
KMEANS_JSON = "kmeans.json"
LABELS_JSON = "labels.json"
LABELS_INDEX = "index.parquet"
TEST_JSON = "test.json"
PRETRAIN_JSON = "pretrain.json"
# What MLflow could not take yet (gmptl.tracking.Outbox), in the folder of the stage that logged it.
MLFLOW_OUTBOX = "mlflow_outbox.jsonl"
# The model folder a training stage keeps: its selected epoch, in the stage's folder.
BEST_MODEL = "best"


def backbone_folder(name_or_path: str) -> str:
    """Where the weights of ``model.backbone`` are: a gmptl model folder keeps them in ``backbone/``."""
    local = Path(name_or_path).expanduser()
    if (local / "model.json").is_file() and (local / "backbone" / "config.json").is_file():
        return str(local / "backbone")
    return name_or_path


_WEIGHT_FILES = ("config.json", "*.safetensors", "*.bin")
_fingerprints: dict[tuple, str] = {}


def backbone_fingerprint(name_or_path: str) -> str | None:
    """SHA-256 of a local backbone folder's config and weight files; None for a preset or hub id.

    Part of every cache key that depends on the backbone: its path alone would keep serving features and
    stages computed from the old weights after a folder is rebuilt in place (``make backbone``). Hashed
    once per process and file state (path, size, mtime), so a 1 GB checkpoint costs a second once.
    """
    folder = Path(backbone_folder(name_or_path)).expanduser()
    if not folder.is_dir():
        return None
    weights = sorted(f for pattern in _WEIGHT_FILES for f in folder.glob(pattern) if f.is_file())
    state = tuple((f.name, st.st_size, st.st_mtime_ns) for f in weights for st in [f.stat()])
    if (folder, state) not in _fingerprints:
        digest = hashlib.sha256()
        for f in weights:
            digest.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    digest.update(chunk)
        _fingerprints[folder, state] = digest.hexdigest()[:16]
    return _fingerprints[folder, state]


def _model_key(cfg: Config) -> dict:
    """The model section as cache keys see it: its settings and, for a local backbone, its weights."""
    key = to_dict(cfg.model)
    if (fingerprint := backbone_fingerprint(cfg.model.backbone)) is not None:
        key["backbone_sha256"] = fingerprint
    return key


def centroids_file(layer: int, k: int) -> str:
    """The codebook of K centroids fitted on transformer layer ``layer`` (1-based), in a clusters folder."""
    return f"L{layer}_k{k}.npy"


_UNSAFE_CHARS = re.compile(r"[^\w.-]")  # \w: letters, digits and _ (Unicode); no separators, NUL, spaces


def safe_name(text: object, max_bytes: int = 100) -> str:
    """An id (utterance, speaker, fold, trial, job) as ONE safe file-name component.

    Every id that becomes part of a file or folder name goes through here, so no id can make gmptl
    write outside its folder. Letters, digits, ``_``, ``-`` and ``.`` are kept; anything else (``/``,
    ``\\``, ``:``, NUL and other control characters, spaces) becomes ``_``; leading and trailing dots
    become ``_`` (no ``..``, no hidden file). An id that is already safe, not empty and at most
    ``max_bytes`` bytes (UTF-8) is returned unchanged; any other gets ``-`` and 8 hex digits of the
    SHA-256 of the original text appended (and is cut to fit ``max_bytes``), so two ids that differ
    stay two names: ``"a/b"`` -> ``"a_b-<hash>"``, ``".."`` -> ``"__-<hash>"``, ``""`` -> ``"_-<hash>"``.
    """
    raw = str(text)
    name = _UNSAFE_CHARS.sub("_", raw)
    name = re.sub(r"^\.+|\.+$", lambda m: "_" * len(m.group()), name)
    if name == raw and name and len(name.encode()) <= max_bytes:
        return name
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    while len(name.encode()) > max(max_bytes - 9, 1):
        name = name[:-1]
    return f"{name or '_'}-{digest}"


def output_dir(cfg: Config) -> Path:
    """``output_dir`` made absolute: Ray workers run in other working directories."""
    return Path(absolute(cfg.output_dir))


def _rel(cfg: Config, path: Path) -> str:
    """A path as it enters a hash: relative to output_dir, so a moved output folder keeps its caches."""
    return str(path.relative_to(output_dir(cfg)))


def corpus_root(cfg: Config) -> Path:
    """``data.root``, or for the synthetic corpus its generated folder under output_dir."""
    if cfg.data.root:
        return Path(absolute(cfg.data.root))
    return output_dir(cfg) / "synthetic_corpus" / config_hash(cfg.data.synth)


def manifest_path(cfg: Config) -> Path:
    return output_dir(cfg) / "data" / config_hash(cfg.data) / "manifest.parquet"


def folds_path(cfg: Config) -> Path:
    return output_dir(cfg) / "folds" / config_hash(cfg.data, cfg.folds) / "folds.json"


def features_dir(cfg: Config, fold: int | None = None) -> Path:
    """Frame features: one folder for all folds (features.source=pretrained) or one per fold's stage-0 model."""
    # Resource settings (worker counts) do not change the features; the device does (bf16 on GPU).
    content = cfg.features.model_dump(exclude={"num_workers", "num_cpus_per_worker", "num_gpus_per_worker"})
    content["on_gpu"] = cfg.features.num_gpus_per_worker > 0
    source = [to_dict(cfg.data), _model_key(cfg)]
    if cfg.features.source == "mtl":
        if fold is None:
            raise ValueError(
                "features.source=mtl: features belong to one fold's stage-0 model; pass the fold"
            )
        source.append(_rel(cfg, stage_dir(cfg, fold, "mtl")))
    return output_dir(cfg) / "features" / config_hash_of(source) / config_hash_of(content)


def extraction_model_dir(cfg: Config, fold: int | None) -> Path | None:
    """The model folder features are extracted with: the fold's stage-0 best model, or None (model.backbone)."""
    return best_model_dir(cfg, fold, "mtl") if cfg.features.source == "mtl" and fold is not None else None


def clusters_dir(cfg: Config, fold: int) -> Path:
    """Codebooks of one fold: keyed on the features they were fitted on and the clustering section."""
    feats = features_dir(cfg, fold)
    key = config_hash_of([_rel(cfg, feats), to_dict(cfg.folds), to_dict(cfg.clustering)])
    return output_dir(cfg) / "clusters" / key / f"fold{fold}"


def labels_dir(cfg: Config, fold: int) -> Path:
    return (
        clusters_dir(cfg, fold).parent.parent.parent
        / "labels"
        / clusters_dir(cfg, fold).parent.name
        / f"fold{fold}"
    )


def resolved_config_path(cfg: Config) -> Path:
    return output_dir(cfg) / "config.yaml"


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
        upstream.append(_rel(cfg, labels_dir(cfg, fold)))
    init = getattr(s, "init", "pretrained")
    if init != "pretrained":
        upstream.append(_rel(cfg, stage_dir(cfg, fold, init)))
    content = s.model_dump(mode="json", exclude=_RESOURCE_KEYS)
    key = config_hash_of([to_dict(cfg.data), to_dict(cfg.folds), _model_key(cfg), stage, content, upstream])
    return output_dir(cfg) / "train" / stage / key / f"fold{fold}"


def best_model_dir(cfg: Config, fold: int, stage: str) -> Path:
    """The model folder a stage keeps for one fold (its selected epoch): what later stages, evaluation,
    predict and export load."""
    return stage_dir(cfg, fold, stage) / BEST_MODEL


def _pretrain_key(cfg: Config, upto: int) -> str:
    """What pre-training iterations 1..upto+1 learn from: the audio, the starting model, the targets, the
    training settings (without resource keys), the feature and k-means settings that shape the targets."""
    p = cfg.pretrain
    features = cfg.features.model_dump(
        mode="json", exclude={"layers", "num_workers", "num_cpus_per_worker", "num_gpus_per_worker"}
    )
    clustering = cfg.clustering.model_dump(
        mode="json", exclude={"k", "layer", "num_workers", "num_cpus_per_worker", "num_gpus_per_worker"}
    )
    return config_hash_of(
        [to_dict(cfg.data), _model_key(cfg), to_dict(p.mfcc), p.init, p.validation_fraction,
         p.train.model_dump(mode="json", exclude=_RESOURCE_KEYS), features, clustering,
         [it.model_dump(mode="json") for it in p.iterations[: upto + 1]]]
    )  # fmt: skip


def pretrain_iteration_dir(cfg: Config, i: int) -> Path:
    """Pre-training iteration ``i`` (0-based): keyed on everything up to it, so adding an iteration reuses the
    earlier ones."""
    return output_dir(cfg) / "pretrain" / _pretrain_key(cfg, i) / f"iter{i + 1}"


def pretrain_dir(cfg: Config) -> Path:
    """The finished pre-training: ``model/`` and pretrain.json (the folder of its last iteration)."""
    return pretrain_iteration_dir(cfg, len(cfg.pretrain.iterations) - 1).parent


def pretrain_hash(cfg: Config) -> str:
    """The pre-training's identity, recorded in the model it writes (a stored model is checked against it)."""
    return pretrain_dir(cfg).name


def stage_run_name(cfg: Config, fold: int, stage: str) -> str:
    """The Ray Train run (and MLflow run key) of one stage of one fold: resuming finds it by this name."""
    return f"{stage}-fold{fold}-{stage_dir(cfg, fold, stage).parent.name}"


def storage_path(cfg: Config) -> str:
    """Where Ray Train persists checkpoints: runtime.storage_path, else <output_dir>/ray_results (absolute)."""
    if cfg.runtime.storage_path:
        return absolute_value("runtime.storage_path", cfg.runtime.storage_path)
    return str(output_dir(cfg) / "ray_results")


def run_dir(cfg: Config) -> Path:
    """The report of one experiment config: report.json, report.md, figures."""
    return output_dir(cfg) / "runs" / config_hash(cfg)


def log_file(cfg: Config) -> Path:
    """The log of the commands run on this config: gmptl's own log and every Ray worker's output."""
    return run_dir(cfg) / "gmptl.log"


def test_dir(cfg: Config, fold: int) -> Path:
    """Test-speaker evaluation of a fold's stage-2 model (keyed like the model itself)."""
    return stage_dir(cfg, fold, "utterance") / "test"
