"""Ray Train glue: the per-worker training function of every stage (Train V2 API).

Each worker rebuilds the validated config from the job dict, takes its disjoint
share of the batches, runs :func:`gmptl.training.loop.run_epoch`, all-reduces the
epoch's sums, and reports. Rank 0 alone writes the checkpoint (the whole model
as safetensors, optimizer, scheduler, ``state.json``) and logs to MLflow.
A restarted run (same run name, or a retry after a worker failure) resumes from
``ray.train.get_checkpoint()`` at the next epoch.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gmptl.config import Config
from gmptl.data.batching import length_batches
from gmptl.models.factory import build_model, configure_training
from gmptl.models.posconv import use_on_gpu
from gmptl.progress import epoch_line
from gmptl.training import data as tdata
from gmptl.training.checkpoint import load_checkpoint, save_checkpoint
from gmptl.training.loop import EpochStats, all_reduce_stats, lr_lambda, run_epoch
from gmptl.training.stages import make_stage, should_stop, stage_config, track_best

log = logging.getLogger(__name__)

# Test hook, read by the driver and passed in the job: "EPOCH:MARKER" makes rank 0 fail once after
# reporting EPOCH (the marker file records that it fired).
FAULT_ENV = "GMPTL_FAULT_TRAIN_AFTER_EPOCH"


def _items(rows: list[dict[str, Any]]) -> list[tdata.Item]:
    return [tdata.Item(**r) for r in rows]


def _frame_labels(job: dict[str, Any]) -> tdata.FrameLabels | None:
    if not job.get("labels_dir"):
        return None
    from gmptl.clustering.labels import LabelStore

    store = LabelStore(Path(job["labels_dir"]))
    ks = job["ks"]
    return lambda utt: {f"k{k}": store.get(utt, k) for k in ks}


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _maybe_fail(spec: str | None, epoch: int, rank: int) -> None:
    if not spec or rank != 0:
        return
    at, _, marker = spec.partition(":")
    if int(at) == epoch and not Path(marker).exists():
        Path(marker).write_text("fired\n")
        raise RuntimeError(f"{FAULT_ENV}: injected failure after epoch {epoch}")


def train_loop_per_worker(job: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = Config.model_validate(job["config"])
    stage_cfg = stage_config(cfg, job["stage"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    bf16 = device.type == "cuda"
    labels: list[str] = job["labels"]
    stage = make_stage(job["stage"], stage_cfg, len(labels), job.get("ks"))

    train_items, val_items = _items(job["train"]), _items(job["validation"])
    if job["stage"] == "utterance" and stage_cfg.class_weights:
        from gmptl.training.losses import class_weights

        counts = torch.bincount(torch.tensor([it.emotion for it in train_items]), minlength=len(labels))
        stage.weight = class_weights(counts).to(device)

    torch.manual_seed(stage_cfg.seed)  # heads: identical on every rank and on every restart
    model = build_model(cfg.model, stage.head_spec(), job.get("init_dir"))
    configure_training(model, stage_cfg)
    # In bf16, cuDNN runs the positional convolution's shape (grouped, kernel 128) without tensor cores: it
    # took half of an utterance-stage step on an H200. FFTs compute the same convolution in float32.
    use_on_gpu(model.backbone, device)
    geo = tdata.Geometry(*job["geometry"])
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    inner = model.module if hasattr(model, "module") else model

    sr = cfg.data.sample_rate_hz
    crop = int(stage_cfg.crop_s * sr) if stage_cfg.crop_s else None
    labels_of = _frame_labels(job)
    # The cache lives in this process: DataLoader worker processes would each fill a copy that dies
    # with the epoch's loader, so with loader_workers > 0 audio is re-read every epoch.
    cache_budget = int(stage_cfg.audio_cache_mb) * 2**20 if stage_cfg.loader_workers == 0 else 0
    train_ds = tdata.UtteranceDataset(train_items, sr, geo, crop, labels_of, cache_limit_bytes=cache_budget)
    val_share = sorted(range(len(val_items)), key=lambda i: val_items[i].n_samples)[rank::world]
    val_ds = tdata.UtteranceDataset(
        [val_items[i] for i in val_share], sr, geo, None, labels_of, cache_limit_bytes=cache_budget
    )

    eff_len = [min(it.n_samples, crop) if crop else it.n_samples for it in train_items]
    per_worker = stage_cfg.worker_batch()
    n_batches = len(tdata.plan_batches(eff_len, per_worker, stage_cfg.batching, np.random.default_rng(0),
                                       stage_cfg.bucket_pool_batches))  # fmt: skip
    steps_per_epoch = math.ceil(math.ceil(n_batches / world) / stage_cfg.grad_accum_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage_cfg.lr, weight_decay=stage_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(stage_cfg.epochs * steps_per_epoch, stage_cfg.warmup_fraction)
    )

    metric, mode = stage.selection
    state: dict[str, Any] = {"epoch": 0, "best_score": None, "best_epoch": None, "since_best": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_checkpoint(d, inner, optimizer, scheduler)
        log.info("rank %d: resumed after epoch %d", rank, state["epoch"])

    run = None
    if rank == 0 and job.get("mlflow"):
        from gmptl.tracking import Outbox, Run, quick_http

        quick_http(job["mlflow"]["uri"])  # this process logs between epochs: no minutes of retries
        run = Run(job["mlflow"]["uri"], job["mlflow"]["run_id"], Outbox(job["mlflow"]["outbox"]))

    for epoch in range(state["epoch"] + 1, stage_cfg.epochs + 1):
        if should_stop(state, stage_cfg.patience):
            break
        # Every rank draws from the same plan (seed, epoch) and takes its own batches; crops, gains,
        # masks and dropout draw from (seed, epoch, rank): an epoch replays exactly after a restart.
        plan = tdata.plan_batches(eff_len, per_worker, stage_cfg.batching,
                                  np.random.default_rng([stage_cfg.seed, epoch]), stage_cfg.bucket_pool_batches)  # fmt: skip
        mine, n_repeated = tdata.shard_batches(plan, rank, world)
        rng = np.random.default_rng([stage_cfg.seed, epoch, rank, 1])
        reqs = tdata.crop_requests(train_items, crop, geo.hop, stage_cfg.gain_db, rng)
        torch.manual_seed(_seed(stage_cfg.seed, epoch, rank, 2))
        mask_gen = torch.Generator().manual_seed(_seed(stage_cfg.seed, epoch, rank, 3))
        loader = torch.utils.data.DataLoader(
            [[reqs[i] for i in b] for b in mine],
            batch_size=None,
            collate_fn=train_ds.collate,
            num_workers=stage_cfg.loader_workers,
        )
        lr = scheduler.get_last_lr()[0]
        train_stats = all_reduce_stats(
            run_epoch(
                model,
                loader,
                stage,
                device,
                optimizer=optimizer,
                scheduler=scheduler,
                mask_gen=mask_gen,
                bf16=bf16,
            )  # fmt: skip
        )
        val_batches = length_batches(
            [val_items[i].n_samples for i in val_share], int(stage_cfg.eval_batch_max_audio_s * sr)
        )
        val_loader = ([tdata.Request(i) for i in b] for b in val_batches)
        # Evaluate the unwrapped module: DDP's forward would start collectives that ranks with
        # different numbers of validation batches never match.
        # A fixed validation mask (same frames every epoch): masked-prediction accuracy is comparable over epochs.
        val_masks = torch.Generator().manual_seed(_seed(stage_cfg.seed, rank, 4))
        val_stats: EpochStats = all_reduce_stats(
            run_epoch(
                inner, (val_ds.collate(r) for r in val_loader), stage, device, bf16=bf16, mask_gen=val_masks
            )
        )
        m = {"epoch": epoch, "lr": lr, "repeated_batches": n_repeated}
        m |= train_stats.metrics("train_", labels, sr) | val_stats.metrics("val_", labels, sr)
        score = m[metric]
        track_best(state, epoch, score, mode)
        m |= {"score": score, "best_score": state["best_score"], "best_epoch": state["best_epoch"]}
        state.setdefault("history", []).append({k: v for k, v in m.items() if isinstance(v, (int, float))})
        m["val_confusion"] = val_stats.confusion.tolist() if val_stats.confusion is not None else []
        if run is not None:
            # MLflow down: the epoch's metrics wait in the stage's outbox (they also go to Ray Train's results
            # and stage.json) and training goes on.
            run.log_metrics({k: v for k, v in m.items() if isinstance(v, (int, float))}, step=epoch)
        if rank == 0:
            print(
                epoch_line(job["stage"], job.get("where", job["fold"]), stage_cfg.epochs, m, metric),
                flush=True,
            )
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(tmp, inner, optimizer, scheduler, state)
                ray.train.report(m, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(m, checkpoint=None)
        _maybe_fail(job.get("fault"), epoch, rank)
