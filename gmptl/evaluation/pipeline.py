"""Pipeline step ``evaluate`` and the run report: the test speakers scored once, then the cross-validation
report with its figures.

Inputs: a fold's stage-2 model folder (``paths.best_model_dir(..., "utterance")``) and the manifest.
Outputs: ``paths.test_dir``: ``test.json`` (written last) and ``predictions.parquet``; the run report
(``paths.run_dir``): ``report.json``, ``report.md``, the figures and the resolved ``config.yaml``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gmptl import files, paths
from gmptl.config import Config, config_hash, save_config

log = logging.getLogger(__name__)


def evaluate_step(ctx: Any) -> dict[str, Any]:
    """The fold's stage-2 model on its test speakers (touched once, here): a Ray task, on a GPU if training used one."""
    import ray

    from gmptl.evaluation.evaluate import evaluate_model
    from gmptl.evaluation.report import fold_entry
    from gmptl.runtime import ensure_ray
    from gmptl.training.pipeline import class_names, items_of, settle_outbox

    cfg, df, fold = ctx.cfg, ctx.df, ctx.fold
    out = paths.test_dir(cfg, fold.index)
    if (done := files.read_marker(out / paths.TEST_JSON)) is not None:
        settle_outbox(cfg, out)  # test metrics MLflow missed when this fold was scored
        return done
    s = cfg.stages.utterance
    test = fold.select(df, "test")
    labels = class_names(df)
    ensure_ray(cfg.runtime)
    # The resources of one training worker, so an evaluation fits beside the folds still training.
    task = ray.remote(evaluate_model).options(num_cpus=s.num_cpus_per_worker, num_gpus=1 if s.use_gpu else 0)
    ev = ray.get(
        task.remote(
            str(paths.best_model_dir(cfg, fold.index, "utterance")),
            items_of(test, labels, cfg.data.sample_rate_hz),
            cfg.data.sample_rate_hz,
            s.eval_batch_max_audio_s,
            "cuda" if s.use_gpu else "cpu",
        )
    )
    if ev.labels != labels:
        raise ValueError(
            f"fold {fold.index}: the model's classes {ev.labels} differ from the manifest's {labels}"
        )
    out.mkdir(parents=True, exist_ok=True)
    predictions = pd.DataFrame(
        {"utt_id": ev.utt_ids, "true": [labels[i] for i in ev.true], "pred": [labels[i] for i in ev.pred]}
        | {f"p_{lab}": ev.probabilities[:, j] for j, lab in enumerate(labels)}
    )
    files.write_parquet(predictions, out / "predictions.parquet")
    entry = fold_entry(fold.index, s.seed, list(fold.test_speakers), ev.confusion)
    _log_on_stage_run(cfg, fold.index, entry, out)
    files.write_json(out / paths.TEST_JSON, entry)
    log.info(
        "fold %d test: WAR %.3f UAR %.3f (n=%d)", fold.index, entry["war"], entry["uar"], entry["n_test"]
    )
    return entry


def _log_on_stage_run(cfg: Config, fold: int, entry: dict[str, Any], out: Path) -> None:
    """The fold's test metrics on the MLflow run of the stage-2 model they score.

    MLflow being down does not fail the evaluation: the metrics wait in the test folder's outbox, and the
    next run of this step sends them (``settle_outbox``).
    """
    if not cfg.tracking.enabled:
        return
    from gmptl import tracking

    stage = json.loads((paths.stage_dir(cfg, fold, "utterance") / paths.STAGE_JSON).read_text())
    if stage.get("mlflow_run_id"):
        outbox = tracking.Outbox(out / paths.MLFLOW_OUTBOX)
        run = tracking.Run(tracking.resolve_uri(cfg), stage["mlflow_run_id"], outbox)
        run.log_metrics({f"test_{k}": entry[k] for k in ("war", "uar", "macro_f1")}, step=0)


def write_run_report(
    cfg: Config,
    labels: list[str],
    entries: list[dict[str, Any]],
    trained: dict[str, list[dict[str, Any]]] | None = None,
    label_reports: list[dict[str, Any]] | None = None,
    tracks: list[str] | None = None,
) -> dict[str, Any]:
    """report.json / report.md and the figures in ``paths.run_dir``.

    Figures: the summed test confusion matrix, per-fold WAR/UAR, each stage's training curves
    across folds (``trained``: stage -> stage.json per fold) and the GMP cluster usage per K on
    the training speakers (``label_reports``: labels.json per fold).
    """
    from gmptl.evaluation.report import build_report, write_report
    from gmptl.plots import cluster_usage_png, confusion_png, fold_bars_png, stage_curves_png

    report = build_report(labels, entries, config_hash(cfg))
    report["transductive"] = cfg.folds.transductive
    folder = paths.run_dir(cfg)
    confusion_png(np.asarray(report["confusion_sum"]), labels, folder / "confusion_sum.png",
                  "test speakers, summed over folds")  # fmt: skip
    fold_bars_png(report, folder / "folds_war_uar.png")
    figures = ["![confusion](confusion_sum.png)", "![folds](folds_war_uar.png)"]
    for stage, manifests in (trained or {}).items():
        runs = [(f"fold {m['fold']}", m["history"]) for m in manifests if m.get("history")]
        if runs:
            metric = manifests[0]["selection"]["metric"]
            stage_curves_png(runs, metric, folder / f"curves_{stage}.png", f"stage {stage}: training curves")
            figures.append(f"![{stage}](curves_{stage}.png)")
    usage = {int(k): [np.asarray(r["counts"][str(k)]["train"]) for r in label_reports or [] if "counts" in r]
             for k in cfg.clustering.k}  # fmt: skip
    if label_reports and all(len(v) == len(label_reports) for v in usage.values()):
        cluster_usage_png(usage, folder / "cluster_usage.png", "GMP cluster usage, training speakers")
        figures.append("![cluster usage](cluster_usage.png)")
    figures += [f"![{t}]({t})" for t in tracks or []]
    if cfg.folds.transductive:
        figures.insert(
            0, "**Transductive:** model.backbone may have been pre-trained on test speakers' audio."
        )
    write_report(report, folder, "\n" + "\n\n".join(figures) + "\n")
    save_config(cfg, folder / "config.yaml")
    return report
