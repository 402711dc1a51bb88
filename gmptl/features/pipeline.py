"""``gmptl extract``: manifest -> frame-feature shards, as a streaming Ray Data pipeline.

    shard plan (driver, deterministic) -> decode + resample (Ray tasks)
      -> backbone forward (actor pool, model loaded once per actor) -> shard files + commit record

The driver plans shards of ``features.shard_max_utts`` utterances sorted by
length (so forward batches inside a shard pad little), skips shards already
committed for the same config hash, and sends the rest through Ray Data. Each
actor writes its shard itself, atomically (arrays first, commit record last),
so no process ever holds the corpus's features, a crashed actor's half-written
shard is recomputed on retry (Ray Data restarts actors and retries their tasks),
and a rerun after an interruption computes only the missing shards.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gmptl import files
from gmptl.config import FeatureConfig, MfccConfig, ModelConfig, RuntimeConfig, to_dict
from gmptl.errors import GmptlError
from gmptl.features import store

log = logging.getLogger(__name__)

# Test hook: a path; the first actor to see it absent creates it and dies mid-shard (after writing
# part of its arrays), to prove crashed workers neither lose nor duplicate utterances.
FAULT_ENV = "GMPTL_FAULT_CRASH_ONCE"


class ExtractionError(GmptlError, RuntimeError):
    """The Ray Data pass stopped (a lost node or actor past its restarts, a task error); committed shards stay."""


@dataclass
class ExtractResult:
    folder: Path
    n_shards: int
    n_computed: int
    n_cached: int
    n_recomputed: int  # shards found corrupt or incomplete, recomputed
    n_utterances: int
    audio_s: float
    wall_s: float
    encode_s: float = 0.0  # summed over actors: the compute time, without actor start-up and model load
    n_workers: int = 0


def plan_shards(manifest: pd.DataFrame, shard_max_utts: int) -> list[dict[str, Any]]:
    """Deterministic shard plan: utterances by (duration, utt_id), cut every shard_max_utts."""
    ordered = manifest.sort_values(["duration_s", "utt_id"], kind="stable")
    shards = []
    for i, start in enumerate(range(0, len(ordered), shard_max_utts)):
        part = ordered.iloc[start : start + shard_max_utts]
        shards.append({"shard": i, "utt_ids": part.utt_id.tolist(), "paths": part.path.tolist()})
    return shards


def _decode(row: dict[str, Any], sample_rate_hz: int) -> dict[str, Any]:
    from gmptl.data.audio import load_audio

    waves = [load_audio(p, sample_rate_hz) for p in row["paths"]]
    return {
        "shard": row["shard"],
        "utt_ids": list(row["utt_ids"]),
        "wave": np.concatenate(waves),  # one flat array + lengths: a shape Arrow stores without pickling
        "lengths": np.array([len(w) for w in waves], dtype=np.int64),
    }


class ShardEncoder:
    """Ray Data actor: loads the backbone once, encodes and writes one shard per call."""

    def __init__(self, model_cfg: dict, features_cfg: dict, folder: str, sample_rate_hz: int, n_threads: int,
                 mfcc_cfg: dict | None = None):  # fmt: skip
        import torch

        from gmptl.features.extractor import FeatureExtractor

        torch.set_num_threads(n_threads)
        self.features_cfg = FeatureConfig.model_validate(features_cfg)
        model = ModelConfig.model_validate(model_cfg)
        self.extractor: Any
        if mfcc_cfg is not None:
            from gmptl.features.mfcc import MfccExtractor
            from gmptl.models.backbone import backbone_config, frame_geometry

            m = MfccConfig.model_validate(mfcc_cfg)
            geo = frame_geometry(backbone_config(model))  # one MFCC vector per frame of this model
            self.extractor = MfccExtractor(geo, sample_rate_hz, m.n_mfcc, m.n_mels, m.deltas)
        else:
            self.extractor = FeatureExtractor(model, self.features_cfg, sample_rate_hz)
        self.folder = Path(folder)
        self.sample_rate_hz = sample_rate_hz

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"shard": [], "n_utts": [], "n_frames": [], "audio_s": [], "encode_s": []}
        for i in range(len(batch["shard"])):
            shard = int(batch["shard"][i])
            utt_ids = [str(u) for u in batch["utt_ids"][i]]
            wave = np.asarray(batch["wave"][i], dtype=np.float32)
            bounds = np.concatenate([[0], np.cumsum(np.asarray(batch["lengths"][i]))])
            waves = [wave[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            t0 = time.perf_counter()
            feats = self.extractor.encode(waves, dtype=self.features_cfg.dtype)
            self._maybe_crash(shard, feats)
            record = store.write_shard(self.folder, shard, utt_ids, feats, self.features_cfg.dtype)
            out["shard"].append(shard)
            out["n_utts"].append(len(utt_ids))
            out["n_frames"].append(int(sum(record["n_frames"])))
            out["audio_s"].append(float(bounds[-1]) / self.sample_rate_hz)
            out["encode_s"].append(time.perf_counter() - t0)
        return {k: np.asarray(v) for k, v in out.items()}

    def _maybe_crash(self, shard: int, feats: list[dict[int, np.ndarray]]) -> None:
        marker = os.environ.get(FAULT_ENV)
        if marker and not os.path.exists(marker):
            Path(marker).write_text(str(shard))
            layer = next(iter(feats[0]))
            np.save(store.shard_array(self.folder, shard, layer), feats[0][layer][:1])  # a torn write
            os._exit(1)


def _n_workers(cfg: FeatureConfig) -> int:
    import ray

    if cfg.num_workers:
        return cfg.num_workers
    res = ray.cluster_resources()
    if cfg.num_gpus_per_worker > 0:
        return max(1, int(res.get("GPU", 0) / cfg.num_gpus_per_worker))
    # Leave one CPU to the decode tasks: an actor pool that claims every CPU starves them and hangs.
    return max(1, int((res.get("CPU", 1) - 1) / cfg.num_cpus_per_worker))


def _check_cpu_budget(cfg: FeatureConfig, n_workers: int) -> None:
    """Ray Data waits forever, without an error, when actors leave no CPU for the decode tasks."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    claimed = n_workers * cfg.num_cpus_per_worker
    if claimed + cfg.decode_num_cpus > cpus:
        raise ValueError(
            f"features.num_workers={n_workers} x features.num_cpus_per_worker={cfg.num_cpus_per_worker} claims "
            f"{claimed:g} of the cluster's {cpus:g} CPUs, leaving less than features.decode_num_cpus="
            f"{cfg.decode_num_cpus:g} for the decode tasks (Ray Data would wait forever); lower one of them"
        )


def extract_features(
    manifest: pd.DataFrame,
    model_cfg: ModelConfig,
    features_cfg: FeatureConfig,
    runtime_cfg: RuntimeConfig,
    folder: Path,
    sample_rate_hz: int = 16000,
    verify: bool = False,
    mfcc: MfccConfig | None = None,
) -> ExtractResult:
    """Encode every manifest utterance into ``folder`` (see module docstring); resumable.

    With ``mfcc``, the frames are MFCC vectors aligned to ``model_cfg``'s frames (``features.mfcc.LAYER``)
    instead of the backbone's hidden states.
    """
    import ray

    from gmptl.runtime import actor_fault_bounds, ensure_ray

    t0 = time.perf_counter()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plan = plan_shards(manifest, features_cfg.shard_max_utts)
    todo, n_recomputed = [], 0
    for item in plan:
        problem = store.shard_problem(folder, item["shard"], item["utt_ids"], verify=verify)
        if problem is None:
            continue
        if problem != "missing":
            log.warning("shard %d: %s; recomputing", item["shard"], problem)
            n_recomputed += 1
        todo.append(item)
    log.info("features: %d shards planned, %d to compute, in %s", len(plan), len(todo), folder)

    encode_s, n_workers = 0.0, 0
    if todo:
        ensure_ray(runtime_cfg)
        n_workers = min(_n_workers(features_cfg), len(todo))
        _check_cpu_budget(features_cfg, n_workers)
        remote_args: dict[str, Any] = {"num_cpus": features_cfg.num_cpus_per_worker}
        remote_args |= actor_fault_bounds(runtime_cfg)
        if features_cfg.num_gpus_per_worker > 0:
            remote_args["num_gpus"] = features_cfg.num_gpus_per_worker
        if FAULT_ENV in os.environ:
            remote_args["runtime_env"] = {"env_vars": {FAULT_ENV: os.environ[FAULT_ENV]}}
        ds = ray.data.from_items(todo, override_num_blocks=len(todo))
        ds = ds.map(
            _decode, fn_kwargs={"sample_rate_hz": sample_rate_hz}, num_cpus=features_cfg.decode_num_cpus
        )
        ds = ds.map_batches(
            ShardEncoder,
            fn_constructor_kwargs={
                "model_cfg": to_dict(model_cfg),
                "features_cfg": to_dict(features_cfg),
                "folder": str(folder),
                "sample_rate_hz": sample_rate_hz,
                "n_threads": max(1, int(features_cfg.num_cpus_per_worker)),
                "mfcc_cfg": to_dict(mfcc) if mfcc is not None else None,
            },
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n_workers),
            **remote_args,
        )
        try:
            for row in ds.iter_rows():
                encode_s += float(row["encode_s"])
                log.info(
                    "shard %d: %d utterances, %d frames, %.0f audio-s/s",
                    row["shard"], row["n_utts"], row["n_frames"], row["audio_s"] / max(row["encode_s"], 1e-9),
                )  # fmt: skip
        except ray.exceptions.RayError as e:
            # A node lost while its actors were unreachable uses up their task retries before Ray declares
            # the node dead and restarts them elsewhere; Ray Data then raises. Say what is kept and what to do.
            done = sum(store.shard_problem(folder, it["shard"], it["utt_ids"]) is None for it in plan)
            raise ExtractionError(
                f"feature extraction into {folder} stopped ({type(e).__name__}): {done} of {len(plan)} shards are "
                f"committed and kept; run the same command again to compute the rest (an actor or node lost more "
                f"often than runtime.actor_restarts={runtime_cfg.actor_restarts} allows ends the step). Cause: {e}"
            ) from e
    # Every planned shard must now be committed and intact; anything else is an error, never a gap.
    for item in plan:
        problem = store.shard_problem(folder, item["shard"], item["utt_ids"])
        if problem is not None:
            raise RuntimeError(f"feature shard {item['shard']} in {folder} is {problem} after extraction")
    index = store.build_index(folder, len(plan))
    result = ExtractResult(
        folder=folder, n_shards=len(plan), n_computed=len(todo), n_cached=len(plan) - len(todo),
        n_recomputed=n_recomputed, n_utterances=int(index.utt_id.nunique()),
        audio_s=float(manifest.duration_s.sum()), wall_s=time.perf_counter() - t0, encode_s=encode_s,
        n_workers=n_workers,
    )  # fmt: skip
    step = {
        **asdict(result),
        "folder": str(folder),
        "model": to_dict(model_cfg),
        "features": to_dict(features_cfg),
        "mfcc": to_dict(mfcc) if mfcc is not None else None,
    }
    files.write_json(folder / "extract.json", step)
    return result


def extract_step(ctx: Any) -> ExtractResult:
    """Pipeline step ``extract``: frame features of ``model.backbone`` (every utterance, shared by all
    folds) or, with ``features.source=mtl``, of the fold's stage-0 model (the utterances the fold uses)."""
    from gmptl import paths
    from gmptl.models.factory import BACKBONE_DIR

    cfg, df, fold = ctx.cfg, ctx.df, ctx.fold
    model_cfg, rows, index = cfg.model, df, None
    model_dir = paths.extraction_model_dir(cfg, fold.index)
    if model_dir is not None:
        model_cfg = ModelConfig(backbone=str(model_dir / BACKBONE_DIR), offline=True)
        rows = df[fold.part_of(df).to_numpy() != ""]
        index = fold.index
    # verify: every cached shard's checksum is checked before k-means and labels read it (a damaged
    # one is recomputed); hashing costs seconds per GB, far less than clustering on corrupt frames.
    return extract_features(
        rows, model_cfg, cfg.features, cfg.runtime, paths.features_dir(cfg, index), cfg.data.sample_rate_hz,
        verify=True,
    )  # fmt: skip
