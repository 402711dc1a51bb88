"""One validated config tree for every gmptl command.

Input: a YAML file (optional) plus dotted ``--set key=value`` overrides.
Output: a frozen :class:`Config`. Unknown keys, wrong types and cross-field
violations are :class:`ConfigError` s that name the key and where it came from
(the file or the command line).

One YAML reader (:func:`read_yaml`) serves configs, search spaces and ablations; one
function (:func:`derive`) makes every config from another (a seed, a trial, an
ablation); :data:`PATH_KEYS` lists the keys that hold local paths (:func:`absolutize`).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import threading
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gmptl.errors import ConfigError

CorpusName = Literal[
    "synthetic", "iemocap", "ravdess", "cremad", "emodb", "msp_podcast", "emobox", "generic", "unlabeled"
]
CORPUS_NAMES: tuple[str, ...] = typing.get_args(CorpusName)


class _Section(BaseModel):
    # strict: "5" is not an int and 1 is not a bool; extra="forbid": a typo is an error; no float key
    # accepts .inf or .nan (a learning rate or crop length of inf passes every bound and ruins a run).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class SynthConfig(_Section):
    """The built-in synthetic corpus (used when ``data.corpus`` is ``synthetic``)."""

    n_utterances: int = Field(400, ge=8, description="Utterances to generate.")
    seed: int = Field(0, description="Generator seed; the corpus is a pure function of its settings.")
    n_sessions: int = Field(
        5, ge=2, le=99, description="Sessions, each with one female and one male speaker."
    )
    emotion_strength: float = Field(
        1.0, ge=0.0, le=1.0, description="1 = full acted-emotion cues, 0 = every emotion sounds neutral."
    )
    change_fraction: float = Field(
        0.2, ge=0.0, le=1.0, description="Fraction of utterances whose emotion changes part-way."
    )


class DataConfig(_Section):
    """Which corpus, where it is, how labels map, and what bad input does."""

    corpus: CorpusName = Field(
        "synthetic",
        description="Corpus loader; `synthetic` generates the built-in demo corpus; `unlabeled` is any folder "
        "of audio files, for `gmptl pretrain` only.",
    )
    root: str | None = Field(
        None,
        description="Corpus root folder. Required for every corpus but `synthetic` "
        "(whose default is `<output_dir>/synthetic_corpus/<hash of data.synth>`).",
    )
    label_map: dict[str, str] | None = Field(
        None,
        description="Native label -> class name. Labels of the corpus not in the map are excluded "
        "(counted). Default: the corpus's 4-class map (neutral, happy, sad, angry).",
    )
    drop_labels: list[str] = Field(
        default_factory=list,
        description="Open-vocabulary corpora (emobox, generic): labels that are known but excluded; "
        "any label neither here nor in label_map is an error.",
    )
    metadata_file: str | None = Field(
        None,
        description="Label/metadata file relative to root: the CSV/JSONL for `generic` (required) and "
        "`emobox`, MSP-Podcast's labels CSV, CREMA-D's demographics CSV; for `unlabeled`, a list of audio "
        "paths (one per line) to use instead of every audio file under root.",
    )
    speaker_table: str | None = Field(
        None,
        description="emobox: CSV (key,speaker,gender) for JSONL lines that carry no speaker/gender.",
    )
    sample_rate_hz: int = Field(16000, gt=0, description="Audio is resampled to this rate when read.")
    on_bad_audio: Literal["error", "skip"] = Field(
        "error", description="`error`: stop at the first bad file; `skip`: leave it out and report it."
    )
    max_bad_fraction: float = Field(
        0.01, ge=0.0, lt=1.0, description="With `skip`, fail anyway when more than this fraction is bad."
    )
    min_duration_s: float = Field(
        0.1,
        ge=0.0,
        description="Shorter audio files are bad audio (checked from the header in prepare and when audio is "
        "read); one frame of the model is 0.025 s.",
    )
    max_duration_s: float | None = Field(
        60.0,
        gt=0.0,
        description="Longer audio files are bad audio (a clip is encoded whole); null = no limit.",
    )
    num_workers: int = Field(0, ge=0, description="Threads that decode audio in prepare; 0 = one per CPU.")
    synth: SynthConfig = Field(default_factory=SynthConfig)

    @field_validator("metadata_file", "speaker_table")
    @classmethod
    def _inside_root(cls, value: str | None, info: Any) -> str | None:
        """Relative to root and staying under it: a corpus config never reads files outside its corpus."""
        if value is None:
            return value
        norm = posixpath.normpath(value.replace("\\", "/"))
        if posixpath.isabs(norm) or norm == ".." or norm.startswith("../"):
            raise ValueError(
                f"data.{info.field_name}={value!r} leaves the corpus root: give a path relative to data.root, "
                "inside it (copy or link the file into the corpus folder)"
            )
        return value

    @model_validator(mode="after")
    def _root_required(self) -> DataConfig:
        if self.corpus != "synthetic" and not self.root:
            raise ValueError(
                f"data.root is required for corpus {self.corpus!r} (it has no safe default); "
                f"set it with --set data.root=/path/to/{self.corpus}"
            )
        return self


class OfficialSplits(_Section):
    train: list[str] = Field(default_factory=lambda: ["Train"], description="Split names used for training.")
    validation: list[str] = Field(default_factory=lambda: ["Development"], description="Validation splits.")
    test: list[str] = Field(default_factory=lambda: ["Test1"], description="Test splits.")


class FoldsConfig(_Section):
    """Speaker-independent cross-validation (docs/method.md, evaluation protocol)."""

    scheme: Literal["loso", "lospk", "speaker_kfold", "official"] = Field(
        "loso",
        description="`loso` leave-one-session-out; `lospk` leave-one-speaker-out; `speaker_kfold` k folds "
        "over speakers; `official` the corpus's own split column (MSP-Podcast).",
    )
    n_folds: int | None = Field(None, ge=2, description="Folds for `speaker_kfold` (required there).")
    validation: Literal["speakers", "official", "test"] = Field(
        "speakers",
        description="`speakers`: hold out whole training speakers for model selection; `official`: the "
        "corpus's validation split (scheme official). `test` is rejected: it selects on the test fold.",
    )
    n_validation_speakers: int = Field(1, ge=1, description="Speakers held out of training per fold.")
    seed: int = Field(0, description="Seed for validation-speaker choice and k-fold assignment.")
    transductive: bool = Field(
        False,
        description="Allow a model.backbone pre-trained on audio of this run's test speakers (refused otherwise); "
        "the report then says the evaluation is transductive.",
    )
    official: OfficialSplits = Field(default_factory=OfficialSplits)

    @model_validator(mode="after")
    def _protocol(self) -> FoldsConfig:
        if self.validation == "test":
            raise ValueError(
                "folds.validation=test would select models on the test fold, which inflates every "
                "reported number; use folds.validation=speakers (whole training speakers held out)"
            )
        if self.scheme == "speaker_kfold" and self.n_folds is None:
            raise ValueError(
                "folds.n_folds is required when folds.scheme=speaker_kfold (e.g. --set folds.n_folds=5)"
            )
        if self.scheme != "speaker_kfold" and self.n_folds is not None:
            raise ValueError(
                f"folds.n_folds only applies to scheme speaker_kfold, not {self.scheme!r}; remove it"
            )
        if self.validation == "official" and self.scheme != "official":
            raise ValueError("folds.validation=official needs folds.scheme=official")
        return self


PRESETS = ("tiny", "mini", "base", "large")
PRESET_DEPTH = {"tiny": 4, "mini": 2, "base": 12, "large": 24}
PRESET_SAMPLE_RATE_HZ = 16000  # every preset is a HuBERT / wav2vec 2.0 / WavLM layout for 16 kHz audio


class ModelConfig(_Section):
    """The self-supervised speech encoder that stage 0 starts from."""

    backbone: str = Field(
        "facebook/hubert-base-ls960",
        description="A preset with random weights (`tiny` for CPU tests; `mini`, the 2-layer group-norm model "
        "the demo pre-trains; `base`, `large`: HuBERT base/large shapes), a hub id, a local folder written by "
        "`save_pretrained`, or a gmptl model folder (`gmptl pretrain`'s output, a stage's `best/`).",
    )
    architecture: Literal["hubert", "wav2vec2", "wavlm"] = Field(
        "hubert", description="Encoder family of a preset (hub ids and folders carry their own)."
    )
    offline: bool = Field(
        True, description="Never reach the model hub: hub ids must already be in the local cache."
    )
    init_seed: int = Field(
        0, description="Seed of a preset's random weights: every worker must build the same model."
    )
    input_norm: Literal["auto", "none", "peak", "std"] = Field(
        "auto",
        description="How each waveform is scaled before the CNN: `peak` (max |x| = 1), `std` (zero mean, unit "
        "variance), `none`; `auto` = what the backbone was trained with (recorded in its config; `mini`: peak; "
        "hub checkpoints: none, or std where their preprocessor says do_normalize).",
    )

    @field_validator("backbone")
    @classmethod
    def _local_folder_absolute(cls, value: str) -> str:
        """A model folder given by a relative path is made absolute: Ray workers run in other working
        directories. Presets and hub ids stay as they are."""
        local = Path(value).expanduser()
        if value not in PRESETS and local.is_dir() and not local.is_absolute():
            return str(local.resolve())
        return value


class FeatureConfig(_Section):
    """Frame features for the GMP k-means."""

    source: Literal["mtl", "pretrained"] = Field(
        "mtl",
        description="`mtl`: each fold's stage-0 (emotion + gender) model, which is what makes the pseudo-labels "
        "gender-augmented; `pretrained`: model.backbone as is, shared by all folds.",
    )
    layers: list[int] = Field(
        default_factory=lambda: [10],
        description="Transformer layers to keep, 1-based: 1 = first transformer layer = transformers' "
        "hidden_states[1] (hidden_states[0] is the input to the first layer).",
    )
    dtype: Literal["float16", "float32"] = Field(
        "float16", description="Storage dtype of the feature shards."
    )
    max_chunk_s: float | None = Field(
        None,
        gt=0,
        description="Utterances longer than this are encoded in chunks whose frames line up exactly with a "
        "whole-utterance pass; null = always whole.",
    )
    batch_max_audio_s: float = Field(
        160.0, gt=0, description="Audio seconds per forward batch (utterances grouped by length)."
    )
    shard_max_utts: int = Field(256, ge=1, description="Utterances per feature shard (the unit of resume).")
    num_workers: int = Field(
        0, ge=0, description="Extraction actors; 0 = as many as the cluster's CPUs/GPUs allow."
    )
    num_cpus_per_worker: float = Field(
        0.5,
        gt=0,
        description="CPUs per extraction actor; keep below 1 on small machines (a pool that claims "
        "every CPU starves Ray Data's read tasks and hangs).",
    )
    num_gpus_per_worker: float = Field(
        0.0, ge=0, description="GPUs per extraction actor (bf16 autocast on GPU); 0 = CPU."
    )
    decode_num_cpus: float = Field(0.5, gt=0, description="CPUs per audio decode/resample task.")

    @model_validator(mode="after")
    def _layers(self) -> FeatureConfig:
        if not self.layers or min(self.layers) < 1 or len(set(self.layers)) != len(self.layers):
            raise ValueError(
                f"features.layers={self.layers}: give distinct 1-based transformer layers (1 = first layer)"
            )
        return self


class ClusterConfig(_Section):
    """Multi-scale k-means over the fold's training frames."""

    k: list[int] = Field(
        default_factory=lambda: [64, 512, 4096],
        description="Codebook sizes fitted together over the same loaded frames; one GMP label stream each.",
    )
    layer: int | None = Field(
        None, ge=1, description="Feature layer to cluster (1-based); null = features.layers[0]."
    )
    max_frames: int = Field(
        1_000_000,
        ge=1,
        description="Frames sampled (seeded, uniformly) from the fold's training frames for fitting.",
    )
    n_iter: int = Field(20, ge=1, description="The most Lloyd iterations per codebook.")
    tol: float = Field(
        1e-4,
        ge=0,
        description="Stop a codebook's Lloyd loop after two iterations in a row that each lower the objective "
        "by less than this fraction (0 = always n_iter, as faiss).",
    )
    init: Literal["greedy-kmeans++", "kmeans++", "random"] = Field(
        "greedy-kmeans++",
        description="Seeding: greedy k-means++ (2 + ln K candidates per centre, as scikit-learn), plain "
        "k-means++, or `random` (faiss's default).",
    )
    init_points_per_centroid: int = Field(
        20, ge=1, description="k-means++ seeds on min(frames, max(this x K, init_min_points)) sampled frames."
    )
    init_min_points: int = Field(
        30_000,
        ge=0,
        description="Floor of the seeding sample, which 20 x K frames would leave too small at small K "
        "(scikit-learn's init_size is 30 000).",
    )
    init_starts: int = Field(
        3,
        ge=1,
        description="k-means++ starts per codebook; the one with the lowest potential on the seeding sample "
        "is kept (like scikit-learn's n_init, but ranked before Lloyd, which ends in the order the starts "
        "began).",
    )
    seed: int = Field(0, description="Seed of frame sampling, seeding and empty-cluster re-seeding.")
    num_workers: int = Field(
        2,
        ge=1,
        description="Ray actors, each holding a disjoint part of the sampled frames. One that dies (out of "
        "memory, a lost node) is replaced by one that reloads the same part, up to runtime.actor_restarts "
        "times per part; the fit then continues and its codebooks equal an undisturbed fit's.",
    )
    num_cpus_per_worker: float = Field(0.5, gt=0, description="CPUs per k-means actor.")
    num_gpus_per_worker: float = Field(
        0.0,
        ge=0,
        description="GPUs per k-means and labelling actor: the assignments run on faiss-gpu (needs the gpu "
        "extra; an error, never a silent CPU fallback, when faiss has no GPU).",
    )

    @model_validator(mode="after")
    def _ks(self) -> ClusterConfig:
        if not self.k or min(self.k) < 2 or len(set(self.k)) != len(self.k):
            raise ValueError(f"clustering.k={self.k}: give distinct codebook sizes >= 2")
        return self


class _Reserved(_Section):
    """A section whose keys arrive with the stage that uses them."""


TUNE_METRICS = ("val_uar", "val_war", "val_macro_f1", "val_loss")


class TuneConfig(_Section):
    """`gmptl tune`: a Ray Tune search (ASHA early stopping) over one training stage."""

    stage: Literal["mtl", "gmp", "utterance"] = Field(
        "utterance",
        description="The stage each trial trains and whose validation metric is optimised; the steps "
        "before it come from cache (computed once before the search when the space only touches this stage).",
    )
    metric: Literal["val_uar", "val_war", "val_macro_f1", "val_loss"] = Field(
        "val_uar",
        description="Validation metric optimised: a trial's score after epoch e is the mean over its folds "
        "of each fold's best value up to e (the epoch the stage keeps). Stage `gmp` has only `val_loss`.",
    )
    mode: Literal["max", "min"] | None = Field(
        None, description="null = derived: `min` for val_loss, `max` for the others."
    )
    folds: Literal["all"] | list[int] = Field(
        default_factory=lambda: [0],
        description="Folds each trial trains (in parallel, one Ray Train run each): indices (0-based), or "
        "`all` for the mean over every fold.",
    )
    searcher: Literal["optuna", "hyperopt", "random"] = Field(
        "optuna",
        description="`optuna` (TPE) or `hyperopt` (TPE): model-based, need their package installed; "
        "`random`: Ray Tune's random/grid sampler (the only one that expands `grid`).",
    )
    num_samples: int = Field(
        8, ge=1, description="Trials (with `grid` params: repetitions of the whole grid, as Ray Tune)."
    )
    max_concurrent: int | None = Field(
        None,
        ge=1,
        description="Trials at once; null = as many as the cluster's CPUs/GPUs hold, each trial needing its "
        "folds x the stage's num_workers x num_cpus_per_worker (and GPUs with use_gpu).",
    )
    grace_period: int = Field(1, ge=1, description="ASHA: epochs every trial runs before it can be stopped.")
    reduction_factor: int = Field(
        2, ge=2, description="ASHA: 1/this of the trials at a rung go on to the next (rungs at grace x rf^k)."
    )
    seed: int = Field(0, description="Seed of the searcher's sampling.")
    trial_cpus: float = Field(
        0.01,
        gt=0,
        description="CPUs reserved for a trial's own process, which only waits on its Ray Train runs "
        "(the training workers reserve theirs through stages.<stage>.*).",
    )

    @model_validator(mode="after")
    def _metric(self) -> TuneConfig:
        if self.stage == "gmp" and self.metric != "val_loss":
            raise ValueError(
                f"tune.metric={self.metric}: stage gmp has no emotion output to score; use tune.metric=val_loss"
            )
        want = "min" if self.metric == "val_loss" else "max"
        if self.mode is not None and self.mode != want:
            raise ValueError(
                f"tune.mode={self.mode} with tune.metric={self.metric}: it is `{want}` (or null)"
            )
        if isinstance(self.folds, list) and (
            not self.folds or min(self.folds) < 0 or len(set(self.folds)) != len(self.folds)
        ):
            raise ValueError(f"tune.folds={self.folds}: give distinct fold indices (0-based) or `all`")
        return self

    @property
    def direction(self) -> str:
        """`max` or `min`: tune.mode, or derived from the metric."""
        return self.mode or ("min" if self.metric == "val_loss" else "max")


class RuntimeConfig(_Section):
    """Where Ray runs and where training persists its checkpoints."""

    address: str | None = Field(
        None,
        description="Ray cluster to join (`auto`, `ray://host:10001`); null = start a local in-process Ray.",
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the local Ray (null = all of this machine's)."
    )
    object_store_mb: int | None = Field(
        None, ge=64, description="Object store of the local Ray (null = Ray's default)."
    )
    dashboard: bool = Field(
        True,
        description="Start the Ray dashboard (127.0.0.1 only) with a local Ray: it serves the state API Ray "
        "Train polls; false starts faster (tests) but Ray Train then logs state-API warnings.",
    )
    storage_path: str | None = Field(
        None,
        description="Ray Train checkpoints and run state (shared storage or s3:// on a multi-node cluster); "
        "null = `<output_dir>/ray_results`.",
    )
    parallel_folds: int | None = Field(
        None,
        ge=1,
        description="Folds trained at once; null = as many as the cluster's CPUs (and GPUs) hold, each "
        "fold's training needing the largest stage's num_workers x num_cpus_per_worker (1 = one after another).",
    )
    actor_restarts: int = Field(
        3,
        ge=0,
        description="How often a Ray actor (extraction, labels, batch prediction; each k-means part) that died "
        "(out of memory, a lost node) is replaced and its work retried before the step fails with the error; "
        "Ray's own default retries for ever, so an actor that dies on the same file every time would never end.",
    )


class TrackingConfig(_Section):
    """MLflow: where runs are logged."""

    uri: str | None = Field(
        None,
        description="MLflow tracking URI: `sqlite:///path.db` or `http(s)://server:5000`; null = "
        "`sqlite:///<output_dir>/mlflow.db` (embedded). A `file:` store is refused by MLflow 3.",
    )
    experiment: str = Field("gmptl", min_length=1, description="MLflow experiment name.")
    enabled: bool = Field(True, description="false = log nothing to MLflow (metrics still in Ray results).")

    @model_validator(mode="after")
    def _uri(self) -> TrackingConfig:
        from gmptl.tracking import check_uri, redact_uri  # tracking imports this module

        if self.uri is not None and not re.match(r"^(sqlite:///|https?://|databricks)", self.uri):
            raise ValueError(
                f"tracking.uri={redact_uri(self.uri)!r}: use sqlite:///path/to/mlflow.db or http(s)://host:port "
                "(MLflow 3 refuses `file:` stores)"
            )
        # Credentials in the URI would be written to config.yaml and MLflow's parameters: refused here,
        # before anything is written (MLflow reads them from the environment instead).
        check_uri(self.uri)
        return self


class TrainConfig(_Section):
    """What every training stage shares (starting hyperparameters: docs/method.md)."""

    lr: float = Field(5e-5, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    epochs: int = Field(20, ge=1, description="Maximum epochs (early stopping may end sooner).")
    batch_size: int = Field(
        32, ge=1, description="Utterances per optimizer step, summed over workers and accumulation steps."
    )
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null = off.")
    warmup_fraction: float = Field(
        0.1, ge=0, lt=1, description="Linear warm-up over this fraction of the steps, then linear decay to 0."
    )
    crop_s: float | None = Field(
        10.0, gt=0, description="Random crop length in training; evaluation always sees whole utterances."
    )
    batching: Literal["bucket", "random"] = Field(
        "bucket",
        description="`bucket`: batches of similar-length utterances (little padding); `random`: plain shuffle.",
    )
    bucket_pool_batches: int = Field(
        50, ge=1, description="Bucketing sorts by length within pools of this many batches, then shuffles."
    )
    eval_batch_max_audio_s: float = Field(
        120.0, gt=0, description="Padded audio seconds per evaluation batch (whole utterances)."
    )
    freeze_cnn: bool = Field(True, description="Freeze the CNN feature encoder.")
    freeze_layers: int = Field(0, ge=0, description="Also freeze the first N transformer layers.")
    dropout: float | None = Field(
        None, ge=0, lt=1, description="Set every dropout of the backbone to this; null = keep the backbone's."
    )
    mask_prob: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="HuBERT-style time masking: probability that a frame starts a masked span (0 = off).",
    )
    mask_length: int = Field(10, ge=1, description="Frames per masked span.")
    gain_db: float = Field(
        0.0, ge=0, description="Random gain of +-this many dB on training crops (0 = off)."
    )
    patience: int | None = Field(
        5, ge=1, description="Stop after this many epochs without a better validation score; null = never."
    )
    seed: int = Field(0, description="Seed of crops, batching, masking and head initialisation.")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel DDP ranks).")
    num_cpus_per_worker: float = Field(1.0, gt=0, description="CPUs per training worker.")
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL, bf16 autocast.")
    loader_workers: int = Field(0, ge=0, description="DataLoader processes per worker that read audio.")
    audio_cache_mb: int = Field(
        1024,
        ge=0,
        description="Decoded audio each worker keeps in memory across epochs (0 = re-read every epoch).",
    )
    max_failures: int = Field(1, ge=0, description="Restarts of the worker group after a worker fails.")
    checkpoints_to_keep: int = Field(2, ge=1, description="Epoch checkpoints kept in storage_path.")

    def worker_batch(self) -> int:
        """Utterances per micro-batch on one worker (batch_size split over workers and accumulation)."""
        return max(1, self.batch_size // (self.num_workers * self.grad_accum_steps))


class MTLStageConfig(TrainConfig):
    """Stage 0: emotion + gender multi-task fine-tuning from the pre-trained backbone."""

    alpha: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Loss = alpha * CE(emotion) + (1 - alpha) * CE(gender); 1 = no gender task.",
    )
    pooling: Literal["mean", "attentive"] = Field("mean", description="Pooling over valid frames.")


class GMPStageConfig(TrainConfig):
    """Stage 1: predict the multi-scale frame pseudo-labels (one head per K)."""

    lr: float = Field(1e-4, gt=0, description="Peak learning rate of AdamW.")
    init: Literal["pretrained", "mtl"] = Field(
        "pretrained",
        description="Start from model.backbone (the paper's setting) or the fold's stage-0 model.",
    )
    head_dim: int = Field(256, ge=1, description="Hidden size of each frame head: Linear, tanh, Linear to K.")
    mask_prob: float = Field(0.065, ge=0, lt=1, description="Time masking (HuBERT's p); 0 = off.")
    loss_on: Literal["masked", "all"] = Field(
        "masked", description="Frame cross-entropy on masked frames only (HuBERT) or on every valid frame."
    )


class UtteranceStageConfig(TrainConfig):
    """Stage 2: utterance emotion with a cosine classifier and AM-Softmax."""

    lr: float = Field(3e-5, gt=0, description="Peak learning rate of AdamW.")
    init: Literal["gmp", "mtl", "pretrained"] = Field(
        "gmp",
        description="Start from the fold's stage-1 model (GMP-TL), or stage 0, or model.backbone (= plain "
        "fine-tuning baseline).",
    )
    loss: Literal["amsoftmax", "ce"] = Field(
        "amsoftmax", description="AM-Softmax on cosines, or cross-entropy on a linear layer (ablation)."
    )
    scale: float = Field(30.0, gt=0, description="AM-Softmax scale s.")
    margin: float = Field(0.35, ge=0, lt=1, description="AM-Softmax margin m.")
    pooling: Literal["mean", "attentive"] = Field("mean", description="Pooling over valid frames.")
    class_weights: bool = Field(False, description="Weight the loss by inverse class frequency.")


class StagesConfig(_Section):
    mtl: MTLStageConfig = Field(default_factory=MTLStageConfig)
    gmp: GMPStageConfig = Field(default_factory=GMPStageConfig)
    utterance: UtteranceStageConfig = Field(default_factory=UtteranceStageConfig)


STAGE_NAMES = ("mtl", "gmp", "utterance")


class PretrainStageConfig(TrainConfig):
    """Masked frame prediction, HuBERT's objective, in every iteration of `gmptl pretrain`."""

    lr: float = Field(5e-4, gt=0, description="Peak learning rate of AdamW.")
    crop_s: float | None = Field(2.0, gt=0, description="Random crop length in training.")
    freeze_cnn: bool = Field(
        False, description="Freeze the CNN feature encoder (false: pre-training learns it)."
    )
    patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs without a lower validation loss; null = never."
    )
    mask_prob: float = Field(
        0.8, gt=0, lt=1, description="Probability that a frame starts a masked span (HuBERT: 0.8)."
    )
    mask_length: int = Field(10, ge=1, description="Frames per masked span (HuBERT: 10).")
    head_dim: int = Field(256, ge=1, description="Hidden size of each frame head: Linear, tanh, Linear to K.")
    unmasked_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the cross-entropy on unmasked frames next to the masked frames' (HuBERT: 0).",
    )


class PretrainIteration(_Section):
    """One HuBERT iteration: cluster frames into targets, then train masked prediction of them."""

    targets: Literal["mfcc"] | int = Field(
        "mfcc",
        description="`mfcc`: MFCC frames (with deltas) framed like the backbone's CNN; an integer L: transformer "
        "layer L (1-based) of the previous iteration's model (of model.backbone in the first iteration).",
    )
    k: list[int] = Field(
        default_factory=lambda: [100], description="Codebook sizes: one target stream per K."
    )

    @model_validator(mode="after")
    def _check(self) -> PretrainIteration:
        if not self.k or min(self.k) < 2 or len(set(self.k)) != len(self.k):
            raise ValueError(f"k={self.k}: give distinct codebook sizes >= 2")
        if isinstance(self.targets, int) and self.targets < 1:
            raise ValueError(f"targets={self.targets}: transformer layers are numbered from 1")
        return self


class MfccConfig(_Section):
    """The first iteration's targets: MFCC with deltas, one vector per backbone frame."""

    n_mfcc: int = Field(13, ge=1, le=80, description="Cepstral coefficients per frame.")
    n_mels: int = Field(40, ge=2, le=256, description="Mel bands the coefficients are computed from.")
    deltas: bool = Field(True, description="Append first and second differences (13 -> 39 dimensions).")


class PretrainConfig(_Section):
    """`gmptl pretrain`: self-supervised masked prediction on the audio of `data` (labels are ignored)."""

    iterations: list[PretrainIteration] = Field(
        default_factory=lambda: [PretrainIteration(), PretrainIteration(targets=6, k=[500])],
        min_length=1,
        description="The HuBERT iterations, in order (default: MFCC K=100, then layer 6 K=500, as HuBERT base).",
    )
    init: Literal["backbone", "previous"] = Field(
        "backbone",
        description="Where each iteration's weights start: model.backbone (random for a preset, as HuBERT "
        "does; a model folder or hub id continues it) or the previous iteration's model.",
    )
    validation_fraction: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="Share of the utterances held out to measure masked-prediction accuracy.",
    )
    mfcc: MfccConfig = Field(default_factory=MfccConfig)
    train: PretrainStageConfig = Field(default_factory=PretrainStageConfig)


class Config(_Section):
    """The root of the config tree."""

    output_dir: str = Field("out/demo", description="Everything a run writes goes under this folder.")
    seeds: list[int] | None = Field(
        None,
        min_length=1,
        description="`gmptl run` repeats every fold once per seed (each sets clustering.seed and every "
        "stages.<stage>.seed); the report aggregates over folds and seeds. null = the configured seeds, once.",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    folds: FoldsConfig = Field(default_factory=FoldsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    clustering: ClusterConfig = Field(default_factory=ClusterConfig)
    stages: StagesConfig = Field(default_factory=StagesConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="after")
    def _cross_section(self) -> Config:
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(
                f"seeds={self.seeds} lists a seed twice: two identical jobs would train into the same folders; "
                "list each seed once"
            )
        if self.clustering.layer is not None and self.clustering.layer not in self.features.layers:
            raise ValueError(
                f"clustering.layer={self.clustering.layer} is not among features.layers={self.features.layers}"
            )
        if max(self.clustering.k) > self.clustering.max_frames:
            raise ValueError(f"clustering.max_frames={self.clustering.max_frames} is below the largest K")
        if self.model.backbone in PRESETS and self.data.sample_rate_hz != PRESET_SAMPLE_RATE_HZ:
            raise ValueError(
                f"data.sample_rate_hz={self.data.sample_rate_hz}: the {self.model.backbone!r} preset's CNN is "
                f"built for {PRESET_SAMPLE_RATE_HZ} Hz audio (its frames would not be 20 ms apart); set "
                f"data.sample_rate_hz={PRESET_SAMPLE_RATE_HZ} (audio is resampled when read)"
            )
        depth = PRESET_DEPTH.get(self.model.backbone)
        if depth is not None and max(self.features.layers) > depth:
            raise ValueError(
                f"features.layers={self.features.layers}: the {self.model.backbone!r} preset has {depth} "
                f"transformer layers (numbered 1..{depth})"
            )
        if self.folds.scheme == "official" and self.data.corpus not in ("msp_podcast", "generic"):
            raise ValueError(
                f"folds.scheme=official needs a corpus with an official split column (msp_podcast, or a "
                f"generic corpus with a `split` column); data.corpus is {self.data.corpus!r}"
            )
        return self


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _parse_scalar(text: str, item: str = "") -> Any:
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else ""
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(
            f"--set {item!r}: the value is not valid YAML ({problem}); quote it, e.g. --set 'key=\"{text}\"'"
        ) from None


def _apply_override(tree: dict[str, Any], item: str) -> str:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set data.root=/data/IEMOCAP")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError(f"--set {item!r}: {key!r} is not a dotted config key such as folds.scheme")
    _put(tree, key, _parse_scalar(raw, item), f"--set {item!r}")
    return key


def _put(tree: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set a dotted key in a raw config tree, creating the sections on the way."""
    node = tree
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _format_errors(err: ValidationError, source: str, override_keys: set[str]) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        where = (
            "--set"
            if any(loc == k or loc.startswith(k + ".") or k.startswith(loc + ".") for k in override_keys)
            else source
        )
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown config key {loc!r}; see `gmptl config --keys` for the valid keys")
        elif e["type"] == "value_error":
            msg = str(e.get("ctx", {}).get("error", e["msg"]))
            lines.append(f"{where}: {msg}" if not loc else f"{where}: {loc}: {msg}")
        else:
            lines.append(f"{where}: {loc}: {e['msg']} (got {e['input']!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """The one YAML reader of gmptl (configs, search spaces, ablations): YAML 1.2 floats (``1e-4`` is a
    number), UTF-8, and errors that name the file and the line.

    Raises:
        ConfigError: a missing or unreadable file, text that is not UTF-8, or invalid YAML.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{what} file {p} does not exist" + (" (it is a folder)" if p.is_dir() else ""))
    try:
        text = p.read_bytes().decode("utf-8-sig")  # a byte-order mark is not content
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save the {what} file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the {what} file: {e.strerror}") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}, line {mark.line + 1}" if mark is not None else str(p)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None


def _validate(tree: dict[str, Any], source: str, override_keys: set[str]) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source, override_keys)) from None


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    updates: dict[str, Any] | None = None,
) -> Config:
    """Read YAML (optional), apply dotted overrides, validate strictly.

    Args:
        path: a YAML file whose top level is a mapping, or None for the defaults.
        overrides: ``key=value`` strings (``--set``); values are parsed as YAML scalars/lists.
        updates: dotted key -> value, applied after the file and before ``overrides`` (a search
            space's ``tune:`` settings).
    Raises:
        ConfigError: unreadable file, bad override syntax, unknown key, wrong type,
            or a cross-field rule; the message names the key and its source.
    """
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        loaded = read_yaml(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}"
            )
        tree = loaded
    for key, value in (updates or {}).items():
        _put(tree, key, value, source)
    override_keys = {_apply_override(tree, item) for item in overrides}
    return _validate(tree, source, override_keys)


def _set_dotted(tree: dict[str, Any], key: str, value: Any, source: str) -> None:
    node = tree
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            what = "is a value, not a section" if part in node else "is not a config section"
            raise ConfigError(f"{source}: {key}: {'.'.join(parts[: i + 1])} {what}")
        node = child
    node[parts[-1]] = value


def derive(cfg: Config, updates: dict[str, Any], source: str = "derived config") -> Config:
    """A new validated config: ``cfg`` with dotted keys set to (already parsed) values.

    The one way to make a config from another (a fold's seed, a trial's sampled point, an ablation,
    absolute paths). ``updates`` maps dotted keys (``stages.utterance.lr``) to values; keys apply in order.

    Raises:
        ConfigError: an unknown key, a wrong type or a broken cross-field rule, naming ``source`` and the key.
    """
    tree = to_dict(cfg)
    for key, value in updates.items():
        _set_dotted(tree, key, value, source)
    return _validate(tree, source, set())


def get_key(cfg: Config, key: str) -> Any:
    """The value of a dotted key (``stages.utterance.lr``)."""
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


# Keys whose values are local file-system paths (or, for some, URIs that may hold one): the one list that
# `absolutize`, the job-submission checks and the MLflow default read.
PATH_KEYS = ("output_dir", "data.root", "runtime.storage_path", "tracking.uri", "model.backbone")


def local_path(key: str, value: str | None) -> tuple[str, str] | None:
    """(prefix, path) when the value of path key ``key`` names a local file or folder, else None.

    ``tracking.uri`` holds one as ``sqlite:///<path>``; a ``scheme://`` URI (s3, http, ...) holds none;
    ``model.backbone`` holds one when it names an existing folder (else it is a preset or a hub id).
    """
    if not value:
        return None
    if key == "model.backbone":
        return ("", value) if value not in PRESETS and Path(value).expanduser().is_dir() else None
    if key == "tracking.uri":
        return ("sqlite:///", value.removeprefix("sqlite:///")) if value.startswith("sqlite:///") else None
    return None if "://" in value else ("", value)


def absolute(value: str) -> str:
    """A local path with ``~`` expanded, made absolute (relative to the working directory)."""
    return str(Path(value).expanduser().resolve())


def absolute_value(key: str, value: str | None) -> str | None:
    """The value of path key ``key`` with its local path (if it holds one) absolute and ``~`` expanded;
    a URI without a local path, or None, comes back as it is."""
    split = local_path(key, value)
    return value if split is None else split[0] + absolute(split[1])


def absolutize(cfg: Config) -> Config:
    """``cfg`` with every local path of :data:`PATH_KEYS` absolute and ``~`` expanded.

    Ray workers, Tune trials and cluster jobs run in other working directories: a relative path there
    names another place.
    """
    updates = {key: absolute_value(key, get_key(cfg, key)) for key in PATH_KEYS}
    return derive(cfg, {k: v for k, v in updates.items() if v != get_key(cfg, k)}, "absolute paths")


def non_absolute_paths(cfg: Config) -> dict[str, str]:
    """The path keys whose local path is not absolute, key -> value. ``~`` counts as not absolute: on a
    cluster it names the home folder of the user the job runs as, which is not this one."""
    out = {}
    for key in PATH_KEYS:
        split = local_path(key, get_key(cfg, key))
        if split is not None and not Path(split[1]).is_absolute():
            out[key] = get_key(cfg, key)
    return out


def to_dict(section: BaseModel) -> dict[str, Any]:
    return section.model_dump(mode="json")


def config_hash_of(value: Any) -> str:
    """A short stable hash of JSON-able data."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def config_hash(*sections: BaseModel) -> str:
    """A short stable hash of config sections: artifact folders are keyed on it."""
    return config_hash_of([to_dict(s) for s in sections])


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the fully resolved config as YAML (loadable by :func:`load_config`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: concurrent runs (folds, Tune trials) may save the same file; a reader never sees half of it.
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, p)
    return p


def _type_name(ann: Any) -> str:
    """A readable, pipe-free type for the key table: `one of a/b`, `str or null`, `list[str]`."""
    args = typing.get_args(ann)
    if typing.get_origin(ann) is Literal:
        return "one of " + "/".join(str(a) for a in args)
    if typing.get_origin(ann) in (types.UnionType, typing.Union):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if args and isinstance(args[0], type) and issubclass(args[0], BaseModel):  # a list of sections
        return f"list of {{{', '.join(args[0].model_fields)}}}"
    if args:
        return f"{typing.get_origin(ann).__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(ann, "__name__", str(ann))


def iter_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Every config key as (dotted key, type, default, description), for docs and `gmptl config --keys`."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if ann is _Reserved:
                rows.append((key, "section", "{}", "Reserved: keys arrive with the stage that uses them."))
            else:
                rows.extend(iter_keys(ann, key + "."))
            continue
        default = field.get_default(call_default_factory=True)
        dumped = json.dumps(default, default=lambda o: o.model_dump(mode="json"))  # a list of sections
        rows.append((key, _type_name(ann), dumped, field.description or ""))
    return rows
