"""``gmptl run``: the cross-validated experiment, step by step, each step cached by config hash.

Steps: synthetic corpus (when ``data.corpus`` is ``synthetic``) -> manifest ->
folds -> per fold: stage 0 (MTL) -> frame features of the fold's stage-0 model
(or of ``model.backbone`` for all folds, ``features.source=pretrained``) ->
multi-scale k-means on the training speakers' frames -> frame pseudo-labels ->
stage 1 (GMP) -> stage 2 (AM-Softmax). Test evaluation and the report join with
issue 5. Each step reads the previous step's outputs from ``gmptl.paths`` and is
skipped when its outputs for the same config hash exist.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gmptl import paths
from gmptl.config import STAGE_NAMES, Config, ModelConfig, config_hash, save_config, to_dict
from gmptl.data.corpora.iemocap import read_synthetic_marker
from gmptl.data.folds import Fold, fold_table, make_folds, write_folds
from gmptl.data.manifest import read_manifest
from gmptl.data.prepare import prepare_manifest, report_path_for
from gmptl.data.synth import synthesize_corpus
from gmptl.errors import ConfigError
from gmptl.features.pipeline import ExtractResult
from gmptl.models.factory import BACKBONE_DIR

log = logging.getLogger(__name__)


@dataclass
class RunOutputs:
    corpus_root: Path
    manifest: Path
    folds: Path
    summary: dict[str, Any]
    fold_rows: list[dict[str, Any]]
    steps: dict[str, str]  # step -> "ran" | "cached"
    extract: list[ExtractResult]
    trained: dict[str, list[dict[str, Any]]]  # stage -> stage.json of each fold
    report: dict[str, Any] | None = None


def ensure_synthetic_corpus(cfg: Config, root: Path) -> str:
    """Generate the synthetic corpus unless ``root`` already holds one with the same settings."""
    marker = read_synthetic_marker(root)
    wanted = to_dict(cfg.data.synth)
    if marker is not None:
        found = {k: marker.get(k) for k in wanted}
        if found == wanted:
            return "cached"
        raise ConfigError(
            f"data.root={root} holds a synthetic corpus made with {found}, but data.synth is {wanted}; "
            f"point data.root elsewhere or leave it unset (the default folder is keyed on data.synth)"
        )
    if root.exists() and any(root.iterdir()):
        raise ConfigError(
            f"data.root={root} is not empty and is not a synthetic corpus; refusing to write into it"
        )
    res = synthesize_corpus(root, cfg.data.synth)
    log.info("synthesised %d utterances (%.2f h) into %s", res.n_utterances, res.hours, root)
    return "ran"


def step_prepare(cfg: Config, steps: dict[str, str]) -> tuple[Path, dict[str, Any]]:
    """Synthetic corpus (if asked for) and manifest; cached by the data hash."""
    root = paths.corpus_root(cfg)
    if cfg.data.corpus == "synthetic":
        steps["synth"] = ensure_synthetic_corpus(cfg, root)
    manifest = paths.manifest_path(cfg)
    report = report_path_for(manifest)
    if manifest.is_file() and report.is_file():
        steps["prepare"] = "cached"
        return manifest, json.loads(report.read_text())["summary"]
    steps["prepare"] = "ran"
    return manifest, prepare_manifest(cfg.data, root, manifest, full_config=cfg).summary.as_dict()


def step_extract(
    cfg: Config, df: pd.DataFrame, steps: dict[str, str], fold: Fold | None = None
) -> ExtractResult:
    """Frame features (model.backbone, or the fold's stage-0 model); shard-level resume.

    With ``features.source=mtl`` only the utterances the fold uses (train, validation, test) are encoded.
    """
    from gmptl.features.pipeline import extract_features

    model_cfg = cfg.model
    rows = df
    model_dir = paths.extraction_model_dir(cfg, fold.index if fold else None)
    if model_dir is not None:
        assert fold is not None
        model_cfg = ModelConfig(backbone=str(model_dir / BACKBONE_DIR), offline=True)
        rows = df[fold.part_of(df).to_numpy() != ""]
    res = extract_features(
        rows,
        model_cfg,
        cfg.features,
        cfg.runtime,
        paths.features_dir(cfg, fold.index if fold else None),
        cfg.data.sample_rate_hz,
    )
    steps["extract" + (f"[{fold.name}]" if model_dir is not None else "")] = (
        "cached" if res.n_computed == 0 else "ran"
    )
    return res


def cluster_layer(cfg: Config) -> int:
    return cfg.clustering.layer if cfg.clustering.layer is not None else cfg.features.layers[0]


def _cached(steps: dict[str, str], step: str, manifest: Path) -> dict[str, Any] | None:
    """A step's JSON manifest if it finished before (the step is then skipped), else None."""
    steps[step] = "cached" if manifest.is_file() else "ran"
    return json.loads(manifest.read_text()) if manifest.is_file() else None


def step_cluster(cfg: Config, df: pd.DataFrame, fold: Fold, steps: dict[str, str]) -> dict[str, Any]:
    """One codebook per K, fitted on this fold's training speakers only."""
    from gmptl.clustering.pipeline import fit_codebooks

    out = paths.clusters_dir(cfg, fold.index)
    if (done := _cached(steps, f"cluster[{fold.name}]", out / "kmeans.json")) is not None:
        return done
    train = fold.select(df, "train").utt_id.tolist()
    return fit_codebooks(
        paths.features_dir(cfg, fold.index), train, cluster_layer(cfg), cfg.clustering, cfg.runtime, out
    )


def step_label(cfg: Config, df: pd.DataFrame, fold: Fold, steps: dict[str, str]) -> dict[str, Any]:
    """Frame pseudo-labels for the fold's train, validation and (for analysis) test utterances."""
    from gmptl.clustering.pipeline import assign_labels

    out = paths.labels_dir(cfg, fold.index)
    if (done := _cached(steps, f"label[{fold.name}]", out / "labels.json")) is not None:
        return done
    layer = cluster_layer(cfg)
    cdir = paths.clusters_dir(cfg, fold.index)
    centroids = {k: np.load(cdir / f"L{layer}_k{k}.npy") for k in cfg.clustering.k}
    part = fold.part_of(df)
    parts = pd.Series(part.to_numpy(), index=df.utt_id)[part.to_numpy() != ""]
    index = assign_labels(
        paths.features_dir(cfg, fold.index), centroids, layer, parts, cfg.clustering, cfg.runtime, out
    )
    quality, counts = label_quality(cfg, df, out, index)
    report = {"layer": layer, "n_utterances": int(len(index)), "quality": quality, "counts": counts}
    (out / "labels.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def label_quality(
    cfg: Config, df: pd.DataFrame, out: Path, index: pd.DataFrame
) -> tuple[dict[str, Any], dict[str, dict[str, list[int]]]]:
    """Per K and part: usage, entropy, and (synthetic corpus) purity/NMI against the true frame emotion.

    Also returns the frames per cluster (K -> part -> counts), drawn as the run's cluster-usage figure.
    """
    from gmptl.clustering.pipeline import LabelStore
    from gmptl.clustering.quality import contingency, frame_truth, purity_nmi, usage
    from gmptl.data.synth import EMOTIONS, SEGMENTS_FILE, read_segments

    root = paths.corpus_root(cfg)
    segments = read_segments(root) if (root / SEGMENTS_FILE).is_file() else None
    labels = LabelStore(out)
    quality: dict[str, Any] = {}
    all_counts: dict[str, dict[str, list[int]]] = {}
    for k in cfg.clustering.k:
        for part_name, group in index.groupby("part"):
            counts = np.zeros(k, np.int64)
            table = np.zeros((k, len(EMOTIONS)), np.int64)
            for utt in group.utt_id:
                lab = labels.get(utt, k)
                counts += np.bincount(lab, minlength=k)
                if segments is not None:
                    truth = frame_truth(segments[utt], len(lab), 0.02, 0.025, list(EMOTIONS))
                    table += contingency(lab, truth, k, len(EMOTIONS))
            row: dict[str, Any] = usage(counts)
            if segments is not None:
                row |= purity_nmi(table)
            quality.setdefault(str(k), {})[part_name] = row
            all_counts.setdefault(str(k), {})[part_name] = counts.tolist()
            log.info("fold labels k=%d %s: %s", k, part_name, {a: round(b, 3) for a, b in row.items()})
    return quality, all_counts


def train_folds(cfg: Config, stage: str, fold_sel: str = "all") -> list[dict[str, Any]]:
    """``gmptl train``: one stage on the selected folds (data steps run or come from cache)."""
    from gmptl.training.pipeline import train_stage

    steps: dict[str, str] = {}
    manifest, _ = step_prepare(cfg, steps)
    df = read_manifest(manifest)
    folds = make_folds(df, cfg.folds)
    write_folds(df, folds, cfg.folds, paths.folds_path(cfg))
    start_ray(cfg)
    if fold_sel == "all":
        chosen = folds
    else:
        if not fold_sel.isdigit() or int(fold_sel) >= len(folds):
            raise ConfigError(f"--fold {fold_sel!r}: expected `all` or an index in 0..{len(folds) - 1}")
        chosen = [folds[int(fold_sel)]]
    return [train_stage(cfg, df, fold, stage) for fold in chosen]


STEPS = ("folds", "mtl", "extract", "cluster", "label", "gmp", "utterance", "evaluate")


def step_evaluate(cfg: Config, df: pd.DataFrame, fold: Fold, steps: dict[str, str]) -> dict[str, Any]:
    """The fold's stage-2 model on its test speakers (touched once, here): a Ray task, on a GPU if training used one."""
    import ray

    from gmptl.evaluation.evaluate import evaluate_model
    from gmptl.evaluation.report import fold_entry
    from gmptl.runtime import ensure_ray
    from gmptl.training.pipeline import class_names, items_of

    out = paths.test_dir(cfg, fold.index)
    if (done := _cached(steps, f"evaluate[{fold.name}]", out / "test.json")) is not None:
        return done
    s = cfg.stages.utterance
    test = fold.select(df, "test")
    labels = class_names(df)
    ensure_ray(cfg.runtime)
    # The resources of one training worker, so an evaluation fits beside the folds still training.
    task = ray.remote(evaluate_model).options(num_cpus=s.num_cpus_per_worker, num_gpus=1 if s.use_gpu else 0)
    ev = ray.get(
        task.remote(
            str(paths.stage_dir(cfg, fold.index, "utterance") / "best"),
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
    pd.DataFrame(
        {"utt_id": ev.utt_ids, "true": [labels[i] for i in ev.true], "pred": [labels[i] for i in ev.pred]}
        | {f"p_{lab}": ev.probabilities[:, j] for j, lab in enumerate(labels)}
    ).to_parquet(out / "predictions.parquet", index=False)
    entry = fold_entry(fold.index, s.seed, list(fold.test_speakers), ev.confusion)
    (out / "test.json").write_text(json.dumps(entry, indent=2) + "\n")
    log.info(
        "fold %d test: WAR %.3f UAR %.3f (n=%d)", fold.index, entry["war"], entry["uar"], entry["n_test"]
    )
    return entry


def _parent_run(cfg: Config):  # noqa: ANN202
    """The experiment's MLflow parent run (continued on a rerun); each fold's stage runs are its children."""
    if not cfg.tracking.enabled:
        return None
    from gmptl import tracking

    uri = tracking.resolve_uri(cfg)
    tracking.check_reachable(uri)
    h = config_hash(cfg)
    return tracking.Run.open(cfg.tracking, uri, run_key=f"experiment-{h}", run_name=f"experiment {h}",
                             params=to_dict(cfg), tags={"gmptl.config_hash": h})  # fmt: skip


def frame_track_pngs(cfg: Config, df: pd.DataFrame, fold: Fold, folder: Path, n: int = 3) -> list[str]:
    """The frame-level emotion track under the waveform for ``n`` test utterances of ``fold``.

    On the synthetic corpus the utterances whose emotion changes part-way are drawn first (their
    true segments are known); the stage-2 model's windows are the training crop length.
    """
    from gmptl.data.synth import SEGMENTS_FILE, read_segments
    from gmptl.inference.predict import Predictor

    test = fold.select(df, "test")
    root = paths.corpus_root(cfg)
    order = list(test.utt_id)
    if (root / SEGMENTS_FILE).is_file():
        segments = read_segments(root)
        order.sort(key=lambda u: len({seg[2] for seg in segments.get(u, [])}) < 2)  # changing ones first
    predictor = Predictor(
        paths.stage_dir(cfg, fold.index, "utterance") / "best",
        window_s=cfg.stages.utterance.crop_s,
        device="cpu",
    )
    by_id = test.set_index("utt_id")
    names = []
    for utt in order[:n]:
        path = str(by_id.loc[utt, "path"])
        wave = predictor.load(path)
        pred = predictor.predict([wave], [path])[0]
        name = f"track_fold{fold.index}_{utt}.png"
        predictor.plot(wave, pred, folder / name)
        names.append(name)
    return names


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
    from gmptl.evaluation.plots import cluster_usage_png, confusion_png, fold_bars_png, stage_curves_png
    from gmptl.evaluation.report import build_report, write_report

    report = build_report(labels, entries, config_hash(cfg))
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
    write_report(report, folder, "\n" + "\n\n".join(figures) + "\n")
    save_config(cfg, folder / "config.yaml")
    return report


def _stage_needed(cfg: Config, until: str) -> set[str]:
    """Training stages the run needs up to ``until`` (stage 0 only when features come from it or stage 1/2 start from it)."""
    upto = set(STEPS[: STEPS.index(until) + 1])
    if "evaluate" in upto:
        upto.add("utterance")
    stages = {s for s in ("gmp", "utterance") if s in upto}
    if "utterance" in stages and cfg.stages.utterance.init != "gmp":
        stages.discard("gmp")
        if cfg.stages.utterance.init == "mtl":
            stages.add("mtl")
    if "gmp" in stages and cfg.stages.gmp.init == "mtl":
        stages.add("mtl")
    needs_labels = "gmp" in stages or until in ("extract", "cluster", "label")
    if needs_labels and cfg.features.source == "mtl" or until == "mtl":
        stages.add("mtl")
    return stages


def start_ray(cfg: Config) -> None:
    """Join or start Ray, then check every node sees output_dir and storage_path (multi-node clusters)."""
    from gmptl.runtime import check_shared_storage, ensure_ray

    ensure_ray(cfg.runtime)
    check_shared_storage(
        {"output_dir": str(paths.output_dir(cfg)), "runtime.storage_path": paths.storage_path(cfg)}
    )


def seed_configs(cfg: Config) -> list[Config]:
    """One config per entry of ``seeds`` (clustering.seed and every stage's seed set to it), else [cfg]."""
    if cfg.seeds is None:
        return [cfg]
    out = []
    for seed in cfg.seeds:
        d = to_dict(cfg) | {"seeds": None}
        d["clustering"]["seed"] = seed
        for stage in STAGE_NAMES:
            d["stages"][stage]["seed"] = seed
        out.append(Config.model_validate(d))
    return out


def fold_parallelism(cfg: Config, stages: set[str], n_jobs: int) -> int:
    """How many (fold, seed) jobs run at once: ``runtime.parallel_folds``, or as many as the cluster holds.

    A job needs, while it trains, its largest stage's workers x CPUs (x GPUs with use_gpu). The data
    steps (extraction, k-means, labels) run one job at a time: each already spreads over the cluster.
    """
    if cfg.runtime.parallel_folds is not None:
        return max(1, min(cfg.runtime.parallel_folds, n_jobs))
    if not stages or n_jobs == 1:
        return 1
    import ray

    have = ray.cluster_resources()
    fits = [n_jobs]
    for stage in stages:
        s = getattr(cfg.stages, stage)
        fits.append(math.floor(have.get("CPU", 0.0) / (s.num_workers * s.num_cpus_per_worker) + 1e-6))
        if s.use_gpu:
            fits.append(math.floor(have.get("GPU", 0.0) / s.num_workers + 1e-6))
    return max(1, min(fits))


def run_experiment(cfg: Config, until: str = "evaluate", only_folds: list[int] | None = None) -> RunOutputs:
    """Run the steps in order up to ``until`` (see STEPS), each cached by config hash.

    Per fold (and per seed in ``seeds``): stage 0 (when needed) -> features -> k-means -> labels ->
    stage 1 -> stage 2 -> test evaluation. Folds run concurrently when the cluster has room
    (:func:`fold_parallelism`); their data steps take turns. Steps a configuration does not need are
    skipped: with stages.utterance.init=pretrained (plain fine-tuning) nothing before stage 2 runs.
    ``only_folds`` restricts the run to those fold indices (a search on one fold); the report then
    covers those folds only.
    """
    from gmptl.training.pipeline import train_stage

    if until not in STEPS:
        raise ConfigError(f"until={until!r}: expected one of {list(STEPS)}")
    steps: dict[str, str] = {}
    save_config(cfg, paths.resolved_config_path(cfg))
    manifest, summary = step_prepare(cfg, steps)
    df = read_manifest(manifest)
    folds_file = paths.folds_path(cfg)
    folds = make_folds(df, cfg.folds)  # cheap; always rebuilt and re-checked for leakage
    steps["folds"] = "cached" if folds_file.is_file() else "ran"
    write_folds(df, folds, cfg.folds, folds_file)
    if only_folds is not None:
        unknown = sorted(set(only_folds) - {f.index for f in folds})
        if unknown:
            raise ConfigError(f"folds {unknown} do not exist: this config has folds 0..{len(folds) - 1}")
        folds = [f for f in folds if f.index in set(only_folds)]
    stages = _stage_needed(cfg, until)
    need_labels = until in ("extract", "cluster", "label") or "gmp" in stages
    if stages or need_labels:
        start_ray(cfg)
    extract: list[ExtractResult] = []
    parent = _parent_run(cfg) if stages else None
    jobs = [(fold, c) for c in seed_configs(cfg) for fold in folds]
    seeded = cfg.seeds is not None
    data_lock = threading.Lock()

    def run_fold(fold: Fold, c: Config) -> dict[str, Any]:
        """One (fold, seed): its steps in order; returns what it trained, extracted and evaluated."""
        tag = fold.name + (f",seed{c.stages.utterance.seed}" if seeded else "")
        got: dict[str, Any] = {"trained": {}, "extract": [], "entry": None, "labels": None}

        def train(stage: str) -> None:
            done = (paths.stage_dir(c, fold.index, stage) / "stage.json").is_file()
            got["trained"][stage] = train_stage(c, df, fold, stage, parent=parent)
            steps[f"{stage}[{tag}]"] = "cached" if done else "ran"

        if "mtl" in stages:
            train("mtl")
        if need_labels and until != "mtl":
            with data_lock:  # each data step spreads over the whole cluster: one fold at a time
                if c.features.source == "mtl":
                    got["extract"].append(step_extract(c, df, steps, fold))
                if until != "extract":
                    step_cluster(c, df, fold, steps)
                    if until != "cluster":
                        got["labels"] = step_label(c, df, fold, steps)
        for stage in ("gmp", "utterance"):
            if stage in stages:
                train(stage)
        if until == "evaluate":
            got["entry"] = step_evaluate(c, df, fold, steps)
        return got

    if need_labels and cfg.features.source == "pretrained":
        for c in seed_configs(cfg)[:1]:  # features of a fixed backbone do not depend on the seed
            extract.append(step_extract(c, df, steps))
    width = fold_parallelism(cfg, stages, len(jobs))
    if width > 1:
        log.info("running %d fold jobs, %d at a time", len(jobs), width)
        with ThreadPoolExecutor(width, thread_name_prefix="fold") as pool:
            results = list(pool.map(lambda job: run_fold(*job), jobs))
    else:
        results = [run_fold(fold, c) for fold, c in jobs]
    trained: dict[str, list[dict[str, Any]]] = {}
    entries: list[dict[str, Any]] = []
    label_reports = [got["labels"] for got in results if got["labels"] is not None]
    for got in results:
        for stage, m in got["trained"].items():
            trained.setdefault(stage, []).append(m)
        extract += got["extract"]
        if got["entry"] is not None:
            entries.append(got["entry"])
    report = None
    if entries:
        from gmptl.training.pipeline import class_names

        folder = paths.run_dir(cfg)
        folder.mkdir(parents=True, exist_ok=True)
        tracks = frame_track_pngs(seed_configs(cfg)[0], df, folds[0], folder)
        report = write_run_report(cfg, class_names(df), entries, trained, label_reports, tracks)
        if parent is not None:
            folder = paths.run_dir(cfg)
            parent.log_metrics({k: report[k] for k in ("war_mean", "war_std", "uar_mean", "uar_std")}, step=0)
            for f in report["folds"]:
                parent.log_metrics({"test_war": f["war"], "test_uar": f["uar"]}, step=f["fold"])
            for f in sorted(folder.iterdir()):
                if f.suffix in (".json", ".md", ".png", ".yaml"):
                    parent.log_artifact(f)
            parent.finish()
    elif parent is not None:
        parent.finish()  # stopped early (--until): the parent run ends with what ran
    log.info("run %s: %s", config_hash(cfg), steps)
    return RunOutputs(
        paths.corpus_root(cfg),
        manifest,
        folds_file,
        summary,
        fold_table(df, folds),
        steps,
        extract,
        trained,
        report,
    )
