"""``gmptl train --stage mtl|gmp|utterance``: one stage of one fold on Ray Train, logged to MLflow.

Inputs: the manifest, the fold, the stage's upstream outputs (GMP labels for
stage 1; the previous stage's model folder when ``init`` names one). Outputs,
under ``paths.stage_dir``::

    stage.json      what the next step reads: config hash, inputs, best epoch and score,
                    validation metrics at the best epoch, the epoch history, run names, and how
                    many metric points waited for MLflow (``mlflow_points_waited``)
    best/           the best epoch's model folder (backbone/ safetensors, heads, model.json)
    confusion.png   validation confusion matrix of the best epoch (emotion stages)
    curves.png      loss and validation metrics per epoch

The Ray Train run is named ``<stage>-fold<i>-<hash>``: running the same config
again resumes from its latest checkpoint in ``storage_path``; a finished stage
(stage.json present) is not retrained. What MLflow did not take while its server was
down waits in the stage folder's outbox (``paths.MLFLOW_OUTBOX``) and is sent by the
next call that reaches MLflow, by the stage's end, or by the rerun (even of a finished
stage): no run is left RUNNING once the server answers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gmptl import files, paths, steps, tracking
from gmptl.config import Config, config_hash, save_config, to_dict
from gmptl.data.folds import Fold
from gmptl.errors import GmptlError
from gmptl.models.backbone import backbone_config, frame_geometry
from gmptl.models.factory import BACKBONE_DIR, SERModel, build_model, save_model
from gmptl.training import data as tdata
from gmptl.training.checkpoint import load_checkpoint
from gmptl.training.stages import make_stage, stage_config
from gmptl.training.worker import FAULT_ENV

log = logging.getLogger(__name__)

STANDARD_ORDER = ("neutral", "happy", "sad", "angry")


class TrainingError(GmptlError):
    """A stage could not start or its workers failed."""


def class_names(df: pd.DataFrame) -> list[str]:
    """Emotion classes in a fixed order: the 4-class standard first, then any others sorted (none when unlabeled)."""
    present = set(df.emotion.dropna().unique())
    return [e for e in STANDARD_ORDER if e in present] + sorted(present - set(STANDARD_ORDER))


def items_of(df: pd.DataFrame, labels: list[str], sr: int) -> list[tdata.Item]:
    """Manifest rows as training items: class and gender indices, length in samples at ``sr``.

    An unlabeled manifest's rows get -1 for both (only pre-training reads it, and it uses neither).
    """
    idx = {e: i for i, e in enumerate(labels)}
    return [
        tdata.Item(
            u, p, int(round(d * sr)), -1 if pd.isna(e) else idx[e], -1 if pd.isna(g) else int(g != "F")
        )
        for u, p, d, e, g in zip(df.utt_id, df.path, df.duration_s, df.emotion, df.gender, strict=True)
    ]


def _rows(df: pd.DataFrame, labels: list[str], sr: int) -> list[dict[str, Any]]:
    return [asdict(it) for it in items_of(df, labels, sr)]


def _upstream(cfg: Config, fold: Fold, stage: str) -> tuple[str | None, str | None]:
    """(init model folder, labels folder) this stage reads; an error names the command that makes what is missing."""
    missing = steps.missing_inputs(cfg, stage, fold.index)
    if missing:
        step = steps.get(missing[0])
        where = step.folder(cfg, fold.index)
        make = (f"gmptl train CONFIG --stage {step.name} --fold {fold.index}" if step.kind == "train"
                else f"gmptl run CONFIG --until {step.name}")  # fmt: skip
        raise TrainingError(
            f"stage {stage} (fold {fold.index}) reads the output of step {step.name}, which is not at {where}; "
            f"run `{make}` first"
            + (f" (or set stages.{stage}.init=pretrained)" if step.kind == "train" else "")
        )
    init = getattr(getattr(cfg.stages, stage), "init", "pretrained")
    init_dir = None if init == "pretrained" else str(paths.best_model_dir(cfg, fold.index, init))
    labels_dir = str(paths.labels_dir(cfg, fold.index)) if "label" in steps.get(stage).needs(cfg) else None
    return init_dir, labels_dir


def train_step(ctx: Any) -> dict[str, Any]:
    """Pipeline step body of every training stage (``ctx.step`` names it): :func:`train_stage` on ``ctx.fold``."""
    return train_stage(ctx.cfg, ctx.df, ctx.fold, ctx.step, parent=ctx.parent)


def train_stage(
    cfg: Config,
    df: pd.DataFrame,
    fold: Fold,
    stage: str,
    parent: tracking.Run | None = None,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Train ``stage`` on ``fold`` (resuming if interrupted); returns the contents of stage.json.

    ``callbacks`` go to the Ray Train RunConfig (a Tune trial passes its report callback here).
    """
    if stage not in steps.train_stages():
        raise TrainingError(f"--stage {stage!r}: expected one of {steps.train_stages()}")
    out = paths.stage_dir(cfg, fold.index, stage)
    if (done := files.read_marker(out / paths.STAGE_JSON)) is not None:
        log.info("stage %s fold %d: finished before (%s)", stage, fold.index, out)
        settle_outbox(cfg, out)
        return done
    init_dir, labels_dir = _upstream(cfg, fold, stage)
    labels = class_names(df)
    train_df, val_df = fold.select(df, "train"), fold.select(df, "validation")
    if train_df.empty or val_df.empty:
        raise TrainingError(
            f"fold {fold.index} ({fold.name}) has {len(train_df)} training and {len(val_df)} validation utterances"
        )
    run_name = paths.stage_run_name(cfg, fold.index, stage)
    run = None
    if cfg.tracking.enabled:
        uri = tracking.resolve_uri(cfg)
        tracking.check_reachable(uri)  # before any worker starts
        run = tracking.Run.open(
            cfg.tracking, uri, run_key=run_name, run_name=f"{stage} fold{fold.index}",
            params=to_dict(cfg) | {"job": {"stage": stage, "fold": fold.index, "fold_name": fold.name,
                                           "n_train": len(train_df), "n_validation": len(val_df)}},
            tags={"gmptl.stage": stage, "gmptl.fold": str(fold.index), "gmptl.config_hash": config_hash(cfg)},
            parent=parent,
        )  # fmt: skip
        run.log_manifest(paths.manifest_path(cfg), len(df), config_hash(cfg.data), "training")
    ks = list(cfg.clustering.k) if stage == "gmp" else []
    return fit_stage(
        cfg, stage, train_df, val_df, labels=labels, ks=ks, init_dir=init_dir, labels_dir=labels_dir, out=out,
        run_name=run_name, run=run, fold=fold.index, where=f"fold {fold.index}",
        manifest={"fold_name": fold.name}, callbacks=callbacks,
    )  # fmt: skip


def fit_stage(
    cfg: Config,
    stage: str,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    *,
    labels: list[str],
    ks: list[int],
    init_dir: str | None,
    labels_dir: str | None,
    out: Path,
    run_name: str,
    run: tracking.Run | None,
    fold: int | None,
    where: str,
    manifest: dict[str, Any] | None = None,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """One Ray Train fit of ``stage`` (any stage, pre-training included) on these utterances, resumed from
    ``run_name``'s checkpoints; the best epoch becomes the model folder ``out/best`` and ``out/stage.json``
    (plus ``manifest``) is written last. Returns the contents of stage.json."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from gmptl.runtime import ensure_ray
    from gmptl.training.worker import train_loop_per_worker

    s = stage_config(cfg, stage)
    sr = cfg.data.sample_rate_hz
    if run is not None:
        # What an earlier attempt could not send goes first; its final status is not sent: this attempt
        # ends the run.
        run = run.with_outbox(out / paths.MLFLOW_OUTBOX)
        run.outbox.flush(run.uri, supersede_status=True)
    hop, rf = frame_geometry(backbone_config(cfg.model, Path(init_dir) / BACKBONE_DIR if init_dir else None))
    job = {
        "config": to_dict(cfg),
        "stage": stage,
        "fold": fold,
        "where": where,
        "labels": labels,
        "train": _rows(train_df, labels, sr),
        "validation": _rows(val_df, labels, sr),
        "ks": ks,
        "labels_dir": labels_dir,
        "init_dir": init_dir,
        "geometry": [hop, rf],
        "mlflow": {"uri": run.uri, "run_id": run.run_id, "outbox": str(run.outbox.path)} if run else None,
        "fault": os.environ.get(FAULT_ENV),
    }
    metric, mode = make_stage(stage, s, len(labels), ks or None).selection
    ensure_ray(cfg.runtime)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=job,
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker={"CPU": s.num_cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=paths.storage_path(cfg),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=s.checkpoints_to_keep,
                checkpoint_score_attribute="score",
                checkpoint_score_order=mode,
            ),
            failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
            callbacks=callbacks,
        ),
    )
    log.info("stage %s %s: %d train / %d validation utterances, run %s", stage, where,
             len(train_df), len(val_df), run_name)  # fmt: skip
    try:
        result = trainer.fit()
    except Exception as e:
        if run:
            run.finish("FAILED")  # through the outbox: an MLflow outage does not hide the stage's error
        raise TrainingError(
            f"stage {stage} {where} failed: {e}\n(rerun the same command to resume from the last "
            f"checkpoint in {paths.storage_path(cfg)}/{run_name})"
        ) from e
    return _finish(cfg, stage, fold, where, out, result, metric, mode, labels, job, run, manifest or {})


def _send_outbox(outbox: tracking.Outbox, uri: str) -> None:
    """Send what waits in a stage's outbox and remove it, or say how much still waits and until when."""
    outbox.send_or_keep(uri, "when this stage runs again")


def settle_outbox(cfg: Config, out: Path) -> None:
    """A finished stage (its marker written) whose run's end MLflow did not take: send what waits in ``out``'s
    outbox now, so that a rerun leaves no run RUNNING. An unreachable server leaves it for the next rerun."""
    outbox = tracking.Outbox(out / paths.MLFLOW_OUTBOX)
    if not (waiting := outbox.counts()["waiting"]):
        outbox.clear()  # all sent by a process killed before it removed the file
        return
    if not cfg.tracking.enabled:
        log.warning("%d entries for MLflow wait in %s, unsent: tracking.enabled=false", waiting, outbox.path)
        return
    uri = tracking.resolve_uri(cfg)
    try:
        tracking.check_reachable(uri)
    except tracking.TrackingError as e:
        log.warning("%d entries for MLflow wait in %s, unsent: %s", waiting, outbox.path, e)
        return
    _send_outbox(outbox, uri)


def _close_stage_run(run: tracking.Run, out: Path, figures: dict[str, str], best_epoch: int) -> None:
    """Log the finished stage's artifacts and end its MLflow run FINISHED. All of it goes to the outbox first,
    then is sent in order: what MLflow does not take now (or a kill part-way) waits there for the rerun,
    the end last, so the run never reads FINISHED without its artifacts."""
    assert run.outbox is not None, "fit_stage gives the stage's run its outbox"
    run.defer(
        *[run.artifact_entry(f) for f in (out / "config.yaml", out / paths.STAGE_JSON, *figures.values())],
        run.artifact_entry(out / paths.BEST_MODEL, "best_model"),
        run.tags_entry({"gmptl.best_epoch": str(best_epoch)}),
        run.status_entry("FINISHED"),
    )
    _send_outbox(run.outbox, run.uri)


def _best(result: Any, metric: str, mode: str) -> tuple[Any, dict[str, Any]]:
    pairs = [(c, m) for c, m in (result.best_checkpoints or []) if m and m.get("score") is not None]
    if not pairs:
        raise TrainingError(f"{result.path}: the run reported no checkpoint with a score")
    pick = max if mode == "max" else min
    return pick(pairs, key=lambda cm: cm[1]["score"])


def _finish(cfg: Config, stage: str, fold: int | None, where: str, out: Path, result: Any, metric: str, mode: str,
            labels: list[str], job: dict[str, Any], run: tracking.Run | None, more: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Export the best epoch as a model folder, draw the figures, write stage.json, log artifacts."""
    from gmptl.plots import confusion_png, curves_png

    ckpt, best = _best(result, metric, mode)
    last_state: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        stage_obj = make_stage(stage, stage_config(cfg, stage), len(labels), job["ks"] or None)
        model: SERModel = build_model(cfg.model, stage_obj.head_spec(), job["init_dir"])
        with ckpt.as_directory() as d:
            load_checkpoint(d, model)
        extra = {"stage": stage, "best_epoch": best["epoch"],
                 "config_hash": config_hash(cfg), "sample_rate_hz": cfg.data.sample_rate_hz}  # fmt: skip
        if labels:  # none when pre-training on unlabeled audio
            extra["labels"] = labels
        if fold is not None:
            extra["fold"] = fold
        if stage == "utterance":
            extra |= {"loss": cfg.stages.utterance.loss, "scale": cfg.stages.utterance.scale}
        save_model(model.eval(), Path(tmp) / paths.BEST_MODEL, extra)
        if result.checkpoint is not None:
            with result.checkpoint.as_directory() as d:
                last_state = json.loads((Path(d) / "state.json").read_text())
        out.mkdir(parents=True, exist_ok=True)
        for old in out.iterdir():  # an earlier finish cut short; the outbox still waits to be sent
            if old.name == paths.MLFLOW_OUTBOX:
                continue
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
        shutil.move(str(Path(tmp) / paths.BEST_MODEL), out / paths.BEST_MODEL)
    history = last_state.get("history", [])
    figures = {"curves": str(curves_png(history, out / "curves.png", f"{stage} {where}"))} if history else {}
    if best.get("val_confusion"):
        cm = np.asarray(best["val_confusion"])
        figures["confusion"] = str(confusion_png(cm, labels, out / "confusion.png",
                                                 f"{stage} {where} validation (epoch {best['epoch']})"))  # fmt: skip
    manifest = {
        "stage": stage,
        "fold": fold,
        **more,
        "config_hash": config_hash(cfg),
        "inputs": {"init_dir": job["init_dir"], "labels_dir": job["labels_dir"]},
        "n_train": len(job["train"]),
        "n_validation": len(job["validation"]),
        "labels": labels,
        "selection": {"metric": metric, "mode": mode},
        "best_epoch": best["epoch"],
        "best_score": best["score"],
        "best_metrics": {k: v for k, v in best.items() if isinstance(v, (int, float))},
        "epochs_run": last_state.get("epoch"),
        "history": history,
        "model_dir": str(out / paths.BEST_MODEL),
        "figures": figures,
        "ray_run": str(result.path),
        "mlflow_run_id": run.run_id if run else None,
        "mlflow_points_waited": run.outbox.counts()["metric_points"] if run and run.outbox else None,
    }
    if manifest["mlflow_points_waited"]:
        log.warning("stage %s %s: %d metric points waited for MLflow in %s", stage, where,
                    manifest["mlflow_points_waited"], run.outbox.path)  # fmt: skip
    save_config(cfg, out / "config.yaml")
    files.write_json(out / paths.STAGE_JSON, manifest)
    if run:
        _close_stage_run(run, out, figures, best["epoch"])
    log.info("stage %s %s: best epoch %d, %s=%.4f -> %s", stage, where, best["epoch"], metric,
             best["score"], out)  # fmt: skip
    return manifest
