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
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler

from gmptl import paths, steps, tracking
from gmptl.config import Config, absolutize, config_hash_of, load_config, save_config, to_dict
from gmptl.errors import ConfigError, GmptlError
from gmptl.tuning import locks
from gmptl.tuning.space import SearchSpace, load_space, plan
from gmptl.tuning.trials import OBJECTIVE, REPORTED, FoldMeans, derive_concurrency

log = logging.getLogger(__name__)


class SearchError(GmptlError):
    """A search could not run to the end (a trial failed, or it was interrupted)."""


@dataclass
class SearchOutputs:
    folder: Path
    summary: dict[str, Any]
    best_yaml: Path | None
    mlflow_uri: str | None
    parent_run_id: str | None


# ----------------------------------------------------------------------------- driver


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
            path = Path(self.folder) / "stopped" / f"{trial.trial_id}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"trial_id": trial.trial_id, "epoch": result.get("epoch")}) + "\n")
        return decision


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

    from gmptl.experiment import run_experiment
    from gmptl.runtime import ensure_ray

    user_sets = list(sets) + ([f"tune.num_samples={num_samples}"] if num_samples is not None else [])
    # Trials run in their own working directories: every local path is made absolute first.
    space = load_space(space_file, config, user_sets)
    cfg = absolutize(space.base(config, user_sets))
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
        # Created here, before any trial: this also creates the experiment (no race between trials).
        parent = tracking.Run.open(cfg.tracking, uri, run_key=f"tune-{name}", run_name=f"tune {name}",
                                   params={"tune": to_dict(tc), "space": space.as_dict()["params"],
                                           "base": to_dict(cfg)},
                                   tags={"gmptl.tune.search": name, "gmptl.tune.space": str(space.path)})  # fmt: skip

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
        _close_runs(cfg, space, summary, folds, parent)
        files = [folder / "summary.json", png, folder / "space.yaml"] + ([best_yaml] if best_yaml else [])
        for f in files:
            parent.log_artifact(f)
        parent.log_metrics({k: summary[k] for k in ("n_trials", "n_stopped_early", "n_failed", "epochs_run",
                                                     "epochs_budget", "compute_saved")}, step=0)  # fmt: skip
        if summary["best"] is not None:
            parent.log_metrics({f"best_{OBJECTIVE}": summary["best"][OBJECTIVE]}, step=0)
            parent.set_tags({"gmptl.tune.best_trial": summary["best"]["trial_id"]})
        parent.finish()
    if summary["best"] is None:
        raise SearchError(f"search {name}: no trial reported a score; see {exp_dir} for the trials' errors")
    return SearchOutputs(folder, summary, best_yaml, uri, parent.run_id if parent else None)


def summarize(
    cfg: Config, space: SearchSpace, grid: Any, folds: list[int], base_yaml: Path
) -> dict[str, Any]:
    """Every trial (params, status, history), the best one, and the compute ASHA saved."""
    tc = cfg.tune
    better = max if tc.direction == "max" else min
    trials = []
    for r in grid:
        tid = Path(r.path).name
        df = r.metrics_dataframe
        hist: list[dict[str, Any]] = []
        if df is not None and OBJECTIVE in df:
            keep = [
                c for c in df.columns if c in ("epoch", OBJECTIVE, *REPORTED) or c.startswith("epoch_fold")
            ]
            hist = [{k: v for k, v in row.items() if v == v} for row in df[keep].to_dict("records")]
        # A trial that trained every fold to its end wrote trials/<id>.json, one that ASHA stopped has
        # stopped/<id>.json; a trial with neither was ended by an interruption (Tune marks all of them done).
        if r.error:
            status = "failed"
        elif (base_yaml.parent / "trials" / f"{tid}.json").is_file():
            status = "completed"
        elif (base_yaml.parent / "stopped" / f"{tid}.json").is_file():
            status = "stopped_early"
        else:
            status = "unfinished"
        params = space.decode(r.config)
        epochs = getattr(space.apply(cfg, r.config).stages, tc.stage).epochs
        last = hist[-1] if hist else {}
        run = sum(int(last.get(f"epoch_fold{f}", last.get("epoch", 0))) for f in folds)
        best = better(hist, key=lambda h: h[OBJECTIVE]) if hist else None
        trials.append({
            "trial_id": tid, "params": params, "status": status, "epochs_run": run,
            "epochs_max": epochs * len(folds), OBJECTIVE: best[OBJECTIVE] if best else None,
            "best_epoch": int(best["epoch"]) if best else None, "history": hist,
            "error": str(r.error).splitlines()[0][:500] if r.error else None,
        })  # fmt: skip
    scored = [t for t in trials if t[OBJECTIVE] is not None]
    best_t = better(scored, key=lambda t: t[OBJECTIVE]) if scored else None
    budget = sum(t["epochs_max"] for t in trials)
    ran = sum(t["epochs_run"] for t in trials)
    return {
        "stage": tc.stage,
        "metric": tc.metric,
        "mode": tc.direction,
        "objective": f"mean over folds {folds} of each fold's best {tc.metric} so far",
        "folds": folds,
        "searcher": tc.searcher,
        "asha": {
            "grace_period": tc.grace_period,
            "reduction_factor": tc.reduction_factor,
            "time_attr": "epoch",
        },
        "n_trials": len(trials),
        "n_completed": sum(t["status"] == "completed" for t in trials),
        "n_stopped_early": sum(t["status"] == "stopped_early" for t in trials),
        "n_failed": sum(t["status"] == "failed" for t in trials),
        "n_unfinished": sum(t["status"] == "unfinished" for t in trials),
        "epochs_run": ran,
        "epochs_budget": budget,
        "compute_saved": round(1 - ran / budget, 4) if budget else 0.0,
        "best": None
        if best_t is None
        else {k: best_t[k] for k in ("trial_id", "params", OBJECTIVE, "best_epoch")},
        "trials": trials,
    }


def _close_runs(cfg: Config, space: SearchSpace, summary: dict[str, Any], folds: list[int],
                parent: tracking.Run) -> None:  # fmt: skip
    """Final status of each trial's run (and of the stage runs a stopped trial left RUNNING)."""
    status = {"completed": "FINISHED", "stopped_early": "KILLED", "failed": "FAILED"}
    uri = parent.uri
    for t in summary["trials"]:
        run = tracking.Run.open(cfg.tracking, uri, run_key=_trial_run_key(summary["name"], t["trial_id"]),
                                run_name=f"trial {t['trial_id']}", params=_trial_params(t["params"], t["trial_id"], folds),
                                tags=_trial_tags(summary["name"], t["trial_id"]), parent=parent)  # fmt: skip
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


def _trial_run_key(search: str, trial_id: str) -> str:
    return f"tune-{search}-{trial_id}"


def _trial_params(values: dict[str, Any], trial_id: str, folds: list[int]) -> dict[str, Any]:
    return dict(values) | {"trial_id": trial_id, "tune_folds": str(folds)}


def _trial_tags(search: str, trial_id: str) -> dict[str, str]:
    return {"gmptl.tune.search": search, "gmptl.tune.trial_id": trial_id}


def parallel_coordinates_png(summary: dict[str, Any], space: SearchSpace, path: Path) -> Path:
    """One line per trial across the searched params and the score; dashed = stopped by ASHA."""
    from gmptl.plots import pyplot, save_figure

    plt = pyplot()
    trials = [t for t in summary["trials"] if t[OBJECTIVE] is not None]
    cols = [*space.keys, OBJECTIVE]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(cols)), 4.2))
    scores = np.array([t[OBJECTIVE] for t in trials], float)
    lo, hi = (scores.min(), scores.max()) if len(scores) else (0.0, 1.0)
    cmap = plt.get_cmap("viridis")
    for j, key in enumerate(cols):
        ax.axvline(j, color="0.7", lw=0.8)
        if key == OBJECTIVE:
            labels = [f"{lo:.3f}", f"{hi:.3f}"]
        else:
            p = space.param(key)
            labels = ([f"{p.low:.3g}", f"{p.high:.3g}"] if p.kind in ("loguniform", "uniform")
                      else [v if isinstance(v, str) else json.dumps(v) for v in p.values])  # fmt: skip
        for k, lab in enumerate(labels):
            ax.text(j, k / max(len(labels) - 1, 1), lab, fontsize=7, ha="left", va="center")

    def pos(key: str, v: Any) -> float:
        if key == OBJECTIVE:
            return (v - lo) / (hi - lo) if hi > lo else 0.5
        p = space.param(key)
        if p.kind == "loguniform":
            return (math.log(v) - math.log(p.low)) / (math.log(p.high) - math.log(p.low))
        if p.kind == "uniform":
            return (v - p.low) / (p.high - p.low)
        idx = [json.dumps(x) for x in p.values].index(json.dumps(v))
        return idx / max(len(p.values) - 1, 1)

    for t in trials:
        ys = [pos(k, t[OBJECTIVE] if k == OBJECTIVE else t["params"][k]) for k in cols]
        c = cmap((t[OBJECTIVE] - lo) / (hi - lo) if hi > lo else 0.5)
        ax.plot(range(len(cols)), ys, color=c, lw=1.6, ls="--" if t["status"] == "stopped_early" else "-",
                marker="o", ms=3, label=t["trial_id"])  # fmt: skip
    names = [(c.split(".", 1)[-1] if c.startswith("stages.") else c)
             + (" (log)" if c != OBJECTIVE and space.param(c).kind == "loguniform" else "") for c in cols]  # fmt: skip
    ax.set_xticks(range(len(cols)), names,
                  rotation=20, ha="right", fontsize=8)  # fmt: skip
    ax.set_yticks([])
    ax.set_ylim(-0.08, 1.08)
    ax.set_title(f"{summary.get('name', '')}: {summary['objective']} ({summary['mode']}); dashed = stopped by ASHA",
                 fontsize=8)  # fmt: skip
    fig.tight_layout()
    return save_figure(plt, fig, path)


# ----------------------------------------------------------------------------- trial (runs in a Tune actor)


class ForwardReports(ray.train.UserCallback):
    """Runs in a Ray Train controller: forwards each epoch's report (rank 0's, all-reduced) to the trial."""

    def __init__(self, queue: Any, fold: int):
        self.queue = queue
        self.fold = fold

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        numbers = {
            k: v for k, v in metrics[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.queue.put((self.fold, numbers))


def _trial(params: dict[str, Any], job: dict[str, Any]) -> None:
    """One trial: the stage on each of the search's folds (parallel Ray Train runs), reported per epoch."""
    from queue import Empty

    from ray import tune
    from ray.util.queue import Queue

    from gmptl.data.folds import make_folds
    from gmptl.data.manifest import read_manifest
    from gmptl.experiment import run_experiment, select_folds
    from gmptl.training.pipeline import train_stage

    space: SearchSpace = job["space"]
    cfg = space.apply(load_config(job["base_yaml"]), params, f"trial of {job['search']}")
    stage, folds, name = cfg.tune.stage, job["folds"], job["search"]
    trial_id = tune.get_context().get_trial_id()
    run = None
    if job["mlflow"]:
        uri = job["mlflow"]["uri"]
        run = tracking.Run.open(cfg.tracking, uri, run_key=_trial_run_key(name, trial_id),
                                run_name=f"trial {trial_id}", params=_trial_params(space.decode(params), trial_id, folds),
                                tags=_trial_tags(name, trial_id), parent=tracking.Run(uri, job["mlflow"]["parent"]))  # fmt: skip
    if job["trial_steps"]:  # the space changes steps before the stage: this trial computes its own
        upstream = steps.upstream(cfg, stage)
        with locks.hold(cfg, [d for f in folds for d in steps.folders(cfg, f, upstream)]):
            run_experiment(cfg, until=job["trial_steps"], only_folds=folds)
    df = read_manifest(paths.manifest_path(cfg))  # the driver prepared it (and checked the folds)
    by_index = {f.index: f for f in select_folds(make_folds(df, cfg.folds), folds)}
    queue = Queue(actor_options={"num_cpus": 0})
    results: dict[int, Any] = {}

    def train(f: int) -> None:
        try:
            with locks.hold(cfg, [paths.stage_dir(cfg, f, stage)]):  # same point sampled twice: train once
                results[f] = train_stage(cfg, df, by_index[f], stage, parent=run,
                                         callbacks=[ForwardReports(queue, f)])  # fmt: skip
        except BaseException as e:  # noqa: BLE001 - re-raised in the trial's thread
            results[f] = e

    threads = {f: threading.Thread(target=train, args=(f,), name=f"fold{f}", daemon=True) for f in folds}
    for t in threads.values():
        t.start()
    s = getattr(cfg.stages, stage)
    means = FoldMeans(folds, cfg.tune.metric, cfg.tune.direction, s.epochs, s.patience)
    while True:
        ended = {f for f, t in threads.items() if not t.is_alive()} - means.finished
        try:  # every report a run made before its thread ended is in the queue by now
            items = [queue.get(timeout=1.0)]
            items += queue.get_nowait_batch(queue.qsize())
        except Empty:
            items = []
        for f, m in items:
            means.add(f, m)
        if ended and not items:
            for f in ended:
                if isinstance(results.get(f), BaseException):
                    raise SearchError(f"trial {trial_id} fold {f}: {results[f]}") from results[f]
                means.finish(f, results[f].get("history", []))
        if len(means.finished) == len(folds):  # before the last reports, which ASHA may answer with a stop
            done = {"trial_id": trial_id, "params": space.decode(params), "folds": folds,
                    "epochs": {f: max(means.epochs[f], default=0) for f in folds}}  # fmt: skip
            marker = Path(job["folder"]) / "trials" / f"{trial_id}.json"
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps(done, indent=2) + "\n")
        for rep in means.ready():
            if run is not None:  # first: ASHA may end this actor inside tune.report
                run.log_metrics({k: v for k, v in rep.items() if k != "epoch"}, step=int(rep["epoch"]))
            tune.report(rep)
        if len(means.finished) == len(folds):
            break
    queue.shutdown()
    if run is not None:
        run.finish()
