"""One trial of a search: the code that runs inside a Ray Tune actor.

:func:`run_trial` trains the searched stage on each of the search's folds, one Ray Train run per fold
in parallel threads. Each run gets a :class:`ForwardReports` callback that forwards the workers'
per-epoch report (one all-reduced dict, rank 0's) through a Ray queue to the trial, which reports to
Tune, per epoch, the fold mean of each fold's best score so far (``objective``) and the current
validation metrics (:class:`~gmptl.tuning.trials.FoldMeans`). A trial that trains every fold to its end
leaves ``trials/<id>.json`` in the search folder. With MLflow, the trial logs its params and the
per-epoch fold means to its own run, a child of the search's parent run.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import ray.train

from gmptl import locks, paths, steps, tracking
from gmptl.config import load_config
from gmptl.errors import GmptlError
from gmptl.tuning.space import SearchSpace
from gmptl.tuning.trials import FoldMeans


class SearchError(GmptlError):
    """A search could not run to the end (a trial failed, or it was interrupted)."""


def trial_outbox(folder: str | Path, trial_id: str) -> Path:
    """Where a trial's MLflow entries wait while the server is down: beside its marker in the search folder."""
    return Path(folder) / "trials" / f"{paths.safe_name(trial_id)}.{paths.MLFLOW_OUTBOX}"


def trial_run_key(search: str, trial_id: str) -> str:
    """The MLflow run key of a trial (opened by the trial, closed by the driver)."""
    return f"tune-{search}-{trial_id}"


def trial_params(values: dict[str, Any], trial_id: str, folds: list[int]) -> dict[str, Any]:
    return dict(values) | {"trial_id": trial_id, "tune_folds": str(folds)}


def trial_tags(search: str, trial_id: str) -> dict[str, str]:
    return {"gmptl.tune.search": search, "gmptl.tune.trial_id": trial_id}


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


def run_trial(params: dict[str, Any], job: dict[str, Any]) -> None:
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
        run = tracking.Run.open(cfg.tracking, uri, run_key=trial_run_key(name, trial_id),
                                run_name=f"trial {trial_id}", params=trial_params(space.decode(params), trial_id, folds),
                                tags=trial_tags(name, trial_id), parent=tracking.Run(uri, job["mlflow"]["parent"]))  # fmt: skip
        run = run.with_outbox(trial_outbox(job["folder"], trial_id))  # an outage does not end the trial
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
            marker = Path(job["folder"]) / "trials" / f"{paths.safe_name(trial_id)}.json"
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
