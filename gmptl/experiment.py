"""``gmptl run``: the cross-validated experiment, as the steps of :mod:`gmptl.steps` over folds and seeds.

The setup step (corpus, manifest, folds) runs once; then, per (fold, seed), every step the target
needs runs in pipeline order, each cached under a folder keyed by the hash of the config that
produced it (a finished step is skipped, an interrupted one resumes). Folds train concurrently when
the cluster holds them; steps that spread over the whole cluster (extraction, k-means, labels) take
turns. The step bodies live with their packages; this module only sequences them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gmptl import locks, paths, steps
from gmptl.config import STAGE_NAMES, Config, config_hash, derive, save_config, to_dict
from gmptl.data.folds import Fold, fold_table
from gmptl.data.prepare import Prepared, prepare_folds, require_labels
from gmptl.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class RunOutputs:
    corpus_root: Path
    manifest: Path
    folds: Path | None  # None when no step needed folds (pre-training)
    summary: dict[str, Any]
    fold_rows: list[dict[str, Any]]
    steps: dict[str, str]  # step -> "ran" | "cached"
    extract: list[Any]  # gmptl.features.pipeline.ExtractResult, one per features folder
    trained: dict[str, list[dict[str, Any]]]  # stage -> stage.json of each (fold, seed)
    report: dict[str, Any] | None = None


def start_ray(cfg: Config) -> None:
    """Join or start Ray, then check every node sees output_dir and storage_path (multi-node clusters)."""
    from gmptl.runtime import check_shared_storage, ensure_ray

    ensure_ray(cfg.runtime)
    check_shared_storage(
        {"output_dir": str(paths.output_dir(cfg)), "runtime.storage_path": paths.storage_path(cfg)}
    )


def beside(work: Callable[[], T], main: Callable[[], object]) -> T:
    """``work()`` in a thread while ``main()`` runs in this one (Ray's start stays on the main thread, where
    it installs its SIGTERM handler); returns ``work``'s value once both are done.

    An error of either is raised once the other has finished too (a rerun in the same process never finds
    the first attempt still writing); ``work``'s error first. Ctrl-C does not wait: the thread is a daemon.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as e:  # handed to the caller below
            box["error"] = e

    thread = threading.Thread(target=run, name="prepare", daemon=True)
    thread.start()
    try:
        main()
    except Exception:
        thread.join()
        if "error" in box:
            raise box["error"] from None
        raise
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def seed_configs(cfg: Config) -> list[Config]:
    """One config per entry of ``seeds`` (clustering.seed and every stage's seed set to it), else [cfg]."""
    if cfg.seeds is None:
        return [cfg]
    return [
        derive(
            cfg, {"seeds": None, "clustering.seed": seed} | {f"stages.{s}.seed": seed for s in STAGE_NAMES}
        )
        for seed in cfg.seeds
    ]


def select_folds(folds: list[Fold], only: list[int] | None) -> list[Fold]:
    """``folds`` restricted to the indices ``only`` (all when None); an unknown index is a ConfigError."""
    if only is None:
        return folds
    unknown = sorted(set(only) - {f.index for f in folds})
    if unknown:
        raise ConfigError(f"folds {unknown} do not exist: this config has folds 0..{len(folds) - 1}")
    return [f for f in folds if f.index in set(only)]


def _parent_run(cfg: Config, prep: Prepared):  # noqa: ANN202
    """The experiment's MLflow parent run (continued on a rerun), named after the job (tracking.experiment)
    and the config hash; each fold's stage runs are its children."""
    if not cfg.tracking.enabled:
        return None
    from gmptl import tracking

    uri = tracking.resolve_uri(cfg)
    tracking.check_reachable(uri)
    h = config_hash(cfg)
    # What the end of an earlier run of this config could not send (its report, its artifacts) goes first.
    outbox = tracking.Outbox(paths.run_dir(cfg) / paths.MLFLOW_OUTBOX)
    outbox.settle(uri)
    run = tracking.Run.open(cfg.tracking, uri, run_key=f"experiment-{h}", run_name=f"{cfg.tracking.experiment} {h}",
                            params=to_dict(cfg), tags={"gmptl.config_hash": h})  # fmt: skip
    run.log_manifest(prep.manifest_path, len(prep.df), config_hash(cfg.data), "cross-validation")
    return run.with_outbox(outbox.path)


def close_parent_run(parent: Any, cfg: Config, report: dict[str, Any] | None) -> None:
    """The run report's metrics and files on the parent run, then its end, in that order through the run's
    outbox: what MLflow does not take now waits in the run folder for the next run of this config."""
    entries = []
    if report is not None:
        folder = paths.run_dir(cfg)
        entries.append(
            parent.metrics_entry({k: report[k] for k in ("war_mean", "war_std", "uar_mean", "uar_std")}, 0)
        )
        # Per fold under its own keys: one key logged at several steps would show the last fold's value.
        for f in report["folds"]:
            tag = f"fold{f['fold']}" + (f"_seed{f['seed']}" if cfg.seeds is not None else "")
            entries.append(
                parent.metrics_entry({f"{tag}_test_war": f["war"], f"{tag}_test_uar": f["uar"]}, 0)
            )
        entries += [parent.artifact_entry(f) for f in sorted(folder.iterdir())
                    if f.suffix in (".json", ".md", ".png", ".yaml")]  # fmt: skip
    parent.defer(
        *entries, parent.status_entry("FINISHED")
    )  # a run stopped early (--until) ends with what ran
    parent.outbox.send_or_keep(parent.uri, "when this config runs again")


def plan(cfg: Config, until: str | list[str] = "evaluate") -> list[str]:
    """The steps ``gmptl run --until`` runs for this config, in order (the setup step ``folds`` first)."""
    return steps.needed(cfg, until)


def run_experiment(
    cfg: Config, until: str | list[str] = "evaluate", only_folds: list[int] | None = None
) -> RunOutputs:
    """Run every step ``until`` needs (one step name, or several targets), per fold and seed, each cached.

    ``only_folds`` restricts the run to those fold indices (a search on one fold); the report then
    covers those folds only. Steps a configuration does not need are skipped: with
    stages.utterance.init=pretrained (plain fine-tuning) nothing before stage 2 runs.
    """
    for name in [until] if isinstance(until, str) else until:
        if name not in steps.names():
            raise ConfigError(f"until={name!r}: expected one of {steps.names()}")
    order = plan(cfg, until)
    with_folds = "folds" in order
    if with_folds:
        require_labels(cfg.data)  # before anything is loaded or written
    from gmptl.models.backbone import check_sample_rate

    check_sample_rate(cfg.model, cfg.data.sample_rate_hz)
    status: dict[str, str] = {}
    save_config(cfg, paths.resolved_config_path(cfg))

    def prepare() -> Prepared:
        # Another `gmptl run` on this output_dir waits for the corpus and manifest, then finds them cached.
        with locks.hold(cfg, [paths.corpus_root(cfg), paths.manifest_path(cfg).parent]):
            return prepare_folds(cfg, status, with_folds=with_folds)

    todo = [steps.get(n) for n in order if steps.get(n).kind != "setup"]
    # The corpus is prepared while Ray starts: seconds each, and neither needs the other.
    prep = beside(prepare, lambda: start_ray(cfg)) if todo else prepare()
    folds = select_folds(prep.folds, only_folds) if with_folds else []
    if any(s.kind == "train" for s in todo):
        from gmptl.pretraining.provenance import check_speaker_independent

        check_speaker_independent(cfg, sorted({s for f in folds for s in f.test_speakers}))
    training = [s.name for s in todo if s.kind == "train"]
    parent = _parent_run(cfg, prep) if training else None
    # Steps that read only the manifest (pre-training) run once per seed, with no fold.
    jobs = [(fold, c) for c in seed_configs(cfg) for fold in (folds or [None])]
    data_turns = threading.Lock()
    seeded = cfg.seeds is not None

    def run_job(fold: Fold | None, c: Config) -> dict[str, Any]:
        """One (fold, seed): its steps in order; step name -> what the step returned."""
        tag = (fold.name if fold else "all") + (f",seed{c.stages.utterance.seed}" if seeded else "")
        index = fold.index if fold else 0  # a fold-less step's folder does not depend on it
        got: dict[str, Any] = {}
        for step in todo:
            key = step.name if step.shared(c) else f"{step.name}[{tag}]"
            ctx = steps.StepContext(c, prep.df, fold, step.name, parent)
            # The step's folder is locked while it runs: a second process (another run on this output_dir,
            # a Tune trial) waits, then finds the step cached instead of writing the same files.
            # A data step spreads over the whole cluster: the jobs of this run take turns.
            turns = data_turns if step.kind in ("data", "pretrain") else contextlib.nullcontext()
            with turns, locks.hold(c, steps.folders(c, index, [step.name])):
                done = step.done(c, index)
                got[step.name] = step.run(ctx)
            # setdefault: a shared step (one folder for all folds) is reported as the job that ran it saw it
            status.setdefault(key, "cached" if done else "ran")
        return got

    width = 1
    if training:
        import ray

        from gmptl.runtime import fold_parallelism

        width = fold_parallelism(cfg, training, len(jobs), ray.cluster_resources())
    if width > 1:
        log.info("running %d fold jobs, %d at a time", len(jobs), width)
        with ThreadPoolExecutor(width, thread_name_prefix="fold") as pool:
            results = list(pool.map(lambda job: run_job(*job), jobs))
    else:
        results = [run_job(fold, c) for fold, c in jobs]
    return _collect(cfg, prep, folds, status, results, parent)


def _collect(cfg: Config, prep: Prepared, folds: list[Fold], status: dict[str, str],
             results: list[dict[str, Any]], parent: Any) -> RunOutputs:  # fmt: skip
    """Gather what the jobs returned; with test results, write the run report and close the parent run."""
    trained: dict[str, list[dict[str, Any]]] = {}
    extract: dict[str, Any] = {}
    for got in results:
        for name, value in got.items():
            if steps.get(name).kind == "train":
                trained.setdefault(name, []).append(value)
        if "extract" in got:
            extract.setdefault(str(got["extract"].folder), got["extract"])
    entries = [got["evaluate"] for got in results if "evaluate" in got]
    report = _report(cfg, prep, folds, entries, trained, [got["label"] for got in results if "label" in got])
    if parent is not None:
        close_parent_run(parent, cfg, report)
    log.info("run %s: %s", config_hash(cfg), status)
    return RunOutputs(prep.corpus_root, prep.manifest_path, prep.folds_path, prep.summary,
                      fold_table(prep.df, prep.folds), status, list(extract.values()), trained, report)  # fmt: skip


def _report(cfg: Config, prep: Prepared, folds: list[Fold], entries: list[dict[str, Any]],
            trained: dict[str, list[dict[str, Any]]], label_reports: list[dict[str, Any]]) -> dict[str, Any] | None:  # fmt: skip
    if not entries:
        return None
    from gmptl.evaluation.pipeline import write_run_report
    from gmptl.inference.tracks import frame_track_pngs
    from gmptl.training.pipeline import class_names

    folder = paths.run_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    tracks = frame_track_pngs(seed_configs(cfg)[0], prep.df, folds[0], folder)
    return write_run_report(cfg, class_names(prep.df), entries, trained, label_reports, tracks)


def train_folds(cfg: Config, stage: str, fold_sel: str = "all") -> list[dict[str, Any]]:
    """``gmptl train``: one stage on the selected folds (the setup step runs or comes from cache)."""
    prep = prepare_folds(cfg)
    from gmptl.training.pipeline import train_stage  # torch and Ray: after the corpus checks

    start_ray(cfg)
    if fold_sel == "all":
        chosen = prep.folds
    else:
        if not fold_sel.isdigit() or int(fold_sel) >= len(prep.folds):
            raise ConfigError(f"--fold {fold_sel!r}: expected `all` or an index in 0..{len(prep.folds) - 1}")
        chosen = [prep.folds[int(fold_sel)]]
    return [train_stage(cfg, prep.df, fold, stage) for fold in chosen]
