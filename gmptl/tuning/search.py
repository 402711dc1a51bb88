"""``gmptl tune``: a Ray Tune search over one training stage, with ASHA early stopping.

Inputs: a config (YAML + ``--set``) and a search space (:mod:`gmptl.tuning.space`).
Outputs, under ``<output_dir>/tune/<space>-<hash>/`` (the hash covers the config, the
``tune`` section and the space, so a changed search never resumes a different one)::

    base.yaml                 the config every trial starts from (paths made absolute)
    space.yaml                a copy of the search space
    best.yaml                 the best trial's configuration: `gmptl run best.yaml` runs it
    summary.json              every trial (params, status, epochs, score history), the best trial,
                              how many ASHA stopped, epochs run against the epochs of a full search
    parallel_coordinates.png  params against the score, one line per trial

and the Tune experiment under ``runtime.storage_path`` (``tune-<name>``): running the same
command again continues an interrupted search (``Tuner.restore``) or, once finished,
only rewrites the summary.

A trial is a function trainable that trains the stage on its folds with
:func:`gmptl.training.pipeline.train_stage`, one Ray Train run per fold in parallel
threads. Each run gets a Ray Train callback that forwards the workers' per-epoch
report (one all-reduced dict, rank 0's) through a Ray queue to the trial, which
reports to Tune, per epoch, the fold mean of each fold's best score so far
(``objective``) and the current validation metrics. ASHA (``time_attr=epoch``) stops a
trial by ending its actor: the Ray Train controllers the trial started are actors it
owns, so Ray ends them and their workers with it; the stopped fold keeps its last
checkpoint in ``storage_path`` and a later run of the same config resumes from it.

MLflow (through :mod:`gmptl.tracking` only, with an explicit URI: none of Ray's MLflow
integration, which has ignored the tracking URI, lost artifacts and raced creating the
experiment on a new SQLite store): a parent run per search (created on the driver before
any trial starts, which also creates the experiment), a child run per trial (its sampled
params and the per-epoch fold-mean metrics, logged by the trial), and per fold the
stage's own run as a child of the trial's run (full config, per-epoch metrics, model).
After the search the driver sets each trial run's status (FINISHED, KILLED for trials
ASHA stopped, FAILED) and logs the summary files to the parent run.

This module is the driver (the search's setup, ``Tuner.fit``, the MLflow parent run and closing
the trials' runs); the trial that runs in a Tune actor is :mod:`gmptl.tuning.trial`, the summary
and its figure :mod:`gmptl.tuning.summary`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler

from gmptl import paths, steps, tracking
from gmptl.config import Config, absolutize, config_hash_of, save_config, to_dict
from gmptl.errors import ConfigError
from gmptl.tuning.space import SearchSpace, load_space, plan
from gmptl.tuning.summary import parallel_coordinates_png, summarize
from gmptl.tuning.trial import SearchError, run_trial, trial_outbox, trial_params, trial_run_key, trial_tags
from gmptl.tuning.trials import OBJECTIVE, derive_concurrency

log = logging.getLogger(__name__)


@dataclass
class SearchOutputs:
    folder: Path
    summary: dict[str, Any]
    best_yaml: Path | None
    mlflow_uri: str | None
    parent_run_id: str | None


def search_name(cfg: Config, space: SearchSpace) -> str:
    """``<space file stem>-<hash>``: what the trials' results depend on (not paths, tracking or resources)."""
    tree = to_dict(cfg)
    for k in ("output_dir", "runtime", "tracking"):
        tree.pop(k)
    for k in ("max_concurrent", "trial_cpus"):
        tree["tune"].pop(k)
    return f"{space.name}-{config_hash_of([tree, space.as_dict()['params']])}"


def fold_indices(cfg: Config, n_folds: int) -> list[int]:
    if cfg.tune.folds == "all":
        return list(range(n_folds))
    bad = [f for f in cfg.tune.folds if f >= n_folds]
    if bad:
        raise ConfigError(
            f"tune.folds={cfg.tune.folds}: folds {bad} do not exist (this config has 0..{n_folds - 1})"
        )
    return list(cfg.tune.folds)


def _require_searcher(cfg: Config) -> None:
    """A model-based searcher's package must be installed (checked before anything runs)."""
    from importlib.util import find_spec

    name = cfg.tune.searcher
    if name != "random" and find_spec(name) is None:
        raise ConfigError(
            f"tune.searcher={name} needs the `{name}` package, which is not installed: `pip install {name}` "
            "(or --set tune.searcher=random, which is not model-based)"
        )


def _searcher(cfg: Config, concurrency: int) -> Any:
    name = cfg.tune.searcher
    if name == "random":  # takes its own limit (Tune's max_concurrent_trials only wraps a Searcher)
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(max_concurrent=concurrency, random_state=cfg.tune.seed)
    if name == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=cfg.tune.seed)
    from ray.tune.search.hyperopt import HyperOptSearch

    return HyperOptSearch(random_state_seed=cfg.tune.seed)


def _param_space(space: SearchSpace) -> dict[str, Any]:
    from ray import tune

    out: dict[str, Any] = {}
    for p in space.params:
        if p.kind == "loguniform":
            out[p.key] = tune.loguniform(p.low, p.high)
        elif p.kind == "uniform":
            out[p.key] = tune.uniform(p.low, p.high)
        elif p.kind == "choice":
            out[p.key] = tune.choice(p.search_values())
        else:
            out[p.key] = tune.grid_search(p.search_values())
    return out


class RecordingASHA(ASHAScheduler):
    """ASHA that leaves ``<folder>/stopped/<trial id>.json`` for each trial it stops.

    Tune reports a trial ASHA stopped and one an interruption ended alike (TERMINATED, done); the
    files tell them apart, also after ``Tuner.restore`` (the scheduler is restored with the search).
    """

    def __init__(self, folder: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.folder = folder

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == self.STOP:
            path = Path(self.folder) / "stopped" / f"{paths.safe_name(trial.trial_id)}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"trial_id": trial.trial_id, "epoch": result.get("epoch")}) + "\n")
        return decision


def _trial(params: dict[str, Any], job: dict[str, Any]) -> None:
    """The Tune trainable (:func:`gmptl.tuning.trial.run_trial`). Tune names the trainable after this
    function and ``Tuner.restore`` only resumes a search with a trainable of the same name: keep it."""
    run_trial(params, job)


def _trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)


def run_search(config: str | Path | None, space_file: str | Path, sets: list[str] | tuple[str, ...] = (),
               num_samples: int | None = None) -> SearchOutputs:  # fmt: skip
    """Run (or resume) the search of ``space_file`` on ``config``; write best.yaml and the summary.

    Raises:
        ConfigError / SpaceError: invalid config or space (before anything runs).
        SearchError: interrupted (rerun to resume) or no trial reported a score.
    """
    from ray import tune

    from gmptl.data.prepare import require_labels
    from gmptl.experiment import run_experiment
    from gmptl.runtime import ensure_ray

    user_sets = list(sets) + ([f"tune.num_samples={num_samples}"] if num_samples is not None else [])
    # Trials run in their own working directories: every local path is made absolute first.
    space = load_space(space_file, config, user_sets)
    cfg = absolutize(space.base(config, user_sets))
    require_labels(cfg.data)  # before Ray starts
    tc = cfg.tune
    stage_cfg = getattr(cfg.stages, tc.stage)
    if tc.grace_period > stage_cfg.epochs:
        raise ConfigError(
            f"tune.grace_period={tc.grace_period} is more than stages.{tc.stage}.epochs={stage_cfg.epochs}: "
            "ASHA would never stop a trial"
        )
    name = search_name(cfg, space)
    folder = paths.output_dir(cfg) / "tune" / name
    folder.mkdir(parents=True, exist_ok=True)
    base_yaml = save_config(cfg, folder / "base.yaml")
    shutil.copyfile(space.path, folder / "space.yaml")
    _require_searcher(cfg)

    ensure_ray(cfg.runtime)
    driver_steps, trial_steps = plan(space, cfg)
    out = run_experiment(cfg, until="folds")
    folds = fold_indices(cfg, len(out.fold_rows))
    if driver_steps != ["folds"]:
        log.info("search %s: computing %s for folds %s before the search (shared by every trial)",
                 name, driver_steps, folds)  # fmt: skip
        run_experiment(cfg, until=driver_steps, only_folds=folds)

    uri = parent = None
    if cfg.tracking.enabled:
        uri = tracking.resolve_uri(cfg)
        tracking.check_reachable(uri)
        # What the end of an earlier run of this search could not send goes first.
        tracking.Outbox(folder / paths.MLFLOW_OUTBOX).settle(uri)
        # Created here, before any trial: this also creates the experiment (no race between trials).
        parent = tracking.Run.open(cfg.tracking, uri, run_key=f"tune-{name}", run_name=f"tune {name}",
                                   params={"tune": to_dict(tc), "space": space.as_dict()["params"],
                                           "base": to_dict(cfg)},
                                   tags={"gmptl.tune.search": name, "gmptl.tune.space": str(space.path)})  # fmt: skip
        parent = parent.with_outbox(folder / paths.MLFLOW_OUTBOX)

    concurrency = derive_concurrency(cfg, len(folds), ray.cluster_resources(), bool(trial_steps))
    log.info("search %s: %d trials, %d at once, folds %s, searcher %s, ASHA grace %d rf %d", name,
             tc.num_samples, concurrency, folds, tc.searcher, tc.grace_period, tc.reduction_factor)  # fmt: skip
    job = {
        "base_yaml": str(base_yaml),
        "space": space,
        "search": name,
        "folder": str(folder),
        "folds": folds,
        "trial_steps": trial_steps,
        "mlflow": {"uri": uri, "parent": parent.run_id} if parent else None,
    }
    trainable = tune.with_resources(tune.with_parameters(_trial, job=job), {"cpu": tc.trial_cpus})
    exp_dir = f"{paths.storage_path(cfg).rstrip('/')}/tune-{name}"
    t0 = time.monotonic()
    if tune.Tuner.can_restore(exp_dir):
        log.info("search %s: continuing the experiment in %s", name, exp_dir)
        tuner = tune.Tuner.restore(exp_dir, trainable=trainable, resume_unfinished=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(space),
            tune_config=tune.TuneConfig(
                metric=OBJECTIVE,
                mode=tc.direction,
                search_alg=_searcher(cfg, concurrency),
                scheduler=RecordingASHA(str(folder), time_attr="epoch", max_t=stage_cfg.epochs,
                                        grace_period=tc.grace_period, reduction_factor=tc.reduction_factor),
                num_samples=tc.num_samples,
                max_concurrent_trials=None if tc.searcher == "random" else concurrency,
                reuse_actors=False,  # a stopped trial's actor must end: its Ray Train runs end with it
                trial_name_creator=_trial_dirname,
                trial_dirname_creator=_trial_dirname,
            ),
            # The JSON/CSV result loggers are named explicitly: the summary reads every trial's metrics
            # from them, and TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1 (set to quiet Tune elsewhere) drops them.
            run_config=tune.RunConfig(name=f"tune-{name}", storage_path=paths.storage_path(cfg), verbose=1,
                                      callbacks=[JsonLoggerCallback(), CSVLoggerCallback()]),
        )  # fmt: skip
    grid = tuner.fit()
    summary = summarize(cfg, space, grid, folds, base_yaml)
    expected = tc.num_samples * (len(space.grid()) if tc.searcher == "random" else 1)
    if summary["n_unfinished"] or summary["n_trials"] < expected:
        raise SearchError(
            f"search {name} was interrupted ({summary['n_trials'] - summary['n_unfinished']} of {expected} "
            f"trials finished); run the same command again to continue it ({exp_dir})"
        )
    summary |= {"name": name, "experiment": exp_dir, "wall_s": round(time.monotonic() - t0, 1),
                "max_concurrent": concurrency}  # fmt: skip
    best_yaml = None
    if summary["best"] is not None:
        best = space.apply(space.base(config, user_sets), summary["best"]["params"], "best trial")
        best_yaml = save_config(best, folder / "best.yaml")
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    png = parallel_coordinates_png(summary, space, folder / "parallel_coordinates.png")
    if parent is not None:
        # An outage here must not lose the search: what MLflow does not take waits in the search folder.
        tracking.best_effort(
            "the trials' final status", _close_runs, cfg, space, summary, folds, parent, folder
        )
        files = [folder / "summary.json", png, folder / "space.yaml"] + ([best_yaml] if best_yaml else [])
        entries = [parent.artifact_entry(f) for f in files]
        entries.append(parent.metrics_entry({k: summary[k] for k in ("n_trials", "n_stopped_early", "n_failed",
                                             "epochs_run", "epochs_budget", "compute_saved")}, 0))  # fmt: skip
        if summary["best"] is not None:
            entries.append(parent.metrics_entry({f"best_{OBJECTIVE}": summary["best"][OBJECTIVE]}, 0))
            entries.append(parent.tags_entry({"gmptl.tune.best_trial": summary["best"]["trial_id"]}))
        parent.defer(*entries, parent.status_entry("FINISHED"))
        parent.outbox.send_or_keep(parent.uri, "when this search runs again")
    if summary["best"] is None:
        raise SearchError(f"search {name}: no trial reported a score; see {exp_dir} for the trials' errors")
    return SearchOutputs(folder, summary, best_yaml, uri, parent.run_id if parent else None)


def _close_runs(cfg: Config, space: SearchSpace, summary: dict[str, Any], folds: list[int],
                parent: tracking.Run, folder: Path) -> None:  # fmt: skip
    """Final status of each trial's run (and of the stage runs a stopped trial left RUNNING)."""
    status = {"completed": "FINISHED", "stopped_early": "KILLED", "failed": "FAILED"}
    uri = parent.uri
    for t in summary["trials"]:
        # The epochs MLflow missed while the trial ran wait in its outbox (not the end: it is set here).
        tracking.Outbox(trial_outbox(folder, t["trial_id"])).settle(uri)
        run = tracking.Run.open(cfg.tracking, uri, run_key=trial_run_key(summary["name"], t["trial_id"]),
                                run_name=f"trial {t['trial_id']}", params=trial_params(t["params"], t["trial_id"], folds),
                                tags=trial_tags(summary["name"], t["trial_id"]), parent=parent)  # fmt: skip
        run.set_tags({"gmptl.tune.status": t["status"],
                      "gmptl.tune.stopped_early": str(t["status"] == "stopped_early").lower()})  # fmt: skip
        run.finish(status[t["status"]])
        if t["status"] != "stopped_early":
            continue
        # A stopped trial's actor (and with it its Ray Train runs) was ended mid-run: its stage runs
        # cannot close themselves. Every fold had reported, so each has its run.
        tcfg = space.apply(cfg, t["params"])
        for f in folds:
            if not steps.get(cfg.tune.stage).done(tcfg, f):
                key = paths.stage_run_name(tcfg, f, cfg.tune.stage)
                tracking.Run.open(
                    cfg.tracking, uri, run_key=key, run_name=f"{cfg.tune.stage} fold{f}"
                ).finish("KILLED")
