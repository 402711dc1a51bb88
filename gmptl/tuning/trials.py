"""Pure trial bookkeeping for ``gmptl tune`` (no Ray): what a trial holds, and what it reports.

- :func:`derive_concurrency`: trials at once from the cluster's resources and what one trial's
  Ray Train runs hold (its folds in parallel x the stage's workers x CPUs/GPUs per worker).
- :class:`FoldMeans`: a trial trains several folds at once; their per-epoch reports become one
  report per epoch (the fold means, and ``objective``: the mean of each fold's best score so far).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from gmptl import steps
from gmptl.config import Config
from gmptl.runtime import how_many_fit, stage_demand

log = logging.getLogger(__name__)

OBJECTIVE = "objective"
# Validation (and training) metrics a trial reports as fold means, when the stage has them.
REPORTED = ("val_uar", "val_war", "val_macro_f1", "val_loss", "train_loss")


def trial_demand(cfg: Config, n_folds: int, trial_steps: bool) -> tuple[float, float]:
    """(CPUs, GPUs) one trial's Ray Train runs hold at once: its folds in parallel x the stage's workers."""
    stages = [cfg.tune.stage]
    if trial_steps:  # the trial may also train the stages before it
        stages = [s for s in steps.needed(cfg, cfg.tune.stage) if s in steps.train_stages()]
    cpu, gpu = stage_demand(cfg, stages)
    return n_folds * cpu + cfg.tune.trial_cpus, n_folds * gpu


def derive_concurrency(
    cfg: Config, n_folds: int, resources: dict[str, float], trial_steps: bool = False
) -> int:
    """Trials at once: tune.max_concurrent, else as many as the cluster's CPUs (and GPUs) hold."""
    if cfg.tune.max_concurrent is not None:
        return cfg.tune.max_concurrent
    cpu, gpu = trial_demand(cfg, n_folds, trial_steps)
    fits = how_many_fit(resources, cpu, gpu)
    if fits < 1:
        log.warning(
            "one trial needs %.2f CPUs and %.0f GPUs (%d folds in parallel) but the cluster has %s: its folds "
            "take turns (lower tune.folds or stages.%s.num_workers)", cpu, gpu, n_folds, resources,
            cfg.tune.stage,
        )  # fmt: skip
    return max(1, min(fits, cfg.tune.num_samples))


class FoldMeans:
    """Per-epoch fold reports -> one report per epoch, once every fold has reported it.

    A fold's value at epoch e is its latest report up to e (a fold that stopped early on its own
    patience keeps its last one; a fold resumed from a checkpoint uses its first report until it
    catches up). ``objective`` is the fold mean of each fold's best ``metric`` up to e.

    A fold's *last* epoch (``max_epochs`` reached, or ``patience`` epochs without a better score)
    is reported only once its run has ended: after it, the stage exports its best model and writes
    stage.json, and a stop ASHA decides on that report must not cut this short.
    """

    def __init__(self, folds: list[int], metric: str, mode: str, max_epochs: int, patience: int | None):
        self.folds, self.metric, self.mode = folds, metric, mode
        self.max_epochs, self.patience = max_epochs, patience
        self.epochs: dict[int, dict[int, dict[str, float]]] = {f: {} for f in folds}
        self.finished: set[int] = set()
        self.reported = 0

    def add(self, fold: int, metrics: dict[str, float]) -> None:
        self.epochs[fold][int(metrics["epoch"])] = metrics

    def finish(self, fold: int, history: list[dict[str, Any]]) -> None:
        """A fold's run ended: its stage.json history fills any epoch not forwarded (cached, resumed)."""
        for h in history:
            self.epochs[fold].setdefault(int(h["epoch"]), h)
        self.finished.add(fold)

    def _at(self, fold: int, e: int) -> tuple[dict[str, float], float] | None:
        eps = sorted(self.epochs[fold])
        if not eps:
            return None
        upto = [x for x in eps if x <= e] or eps[:1]
        vals = [self.epochs[fold][x][self.metric] for x in upto if self.metric in self.epochs[fold][x]]
        if not vals:
            return None
        best = max(vals) if self.mode == "max" else min(vals)
        return self.epochs[fold][upto[-1]], best

    def _last(self, fold: int, e: int) -> bool:
        """Whether ``fold``'s run ends after epoch ``e`` (gmptl.training.stages.should_stop, and max epochs)."""
        m = self.epochs[fold][e]
        stale = self.patience is not None and e - m.get("best_epoch", e) >= self.patience
        return e >= self.max_epochs or stale

    def _reached(self, fold: int, e: int) -> bool:
        top = max(self.epochs[fold], default=0)
        return fold in self.finished or top > e or (top == e and not self._last(fold, e))

    def ready(self) -> list[dict[str, float]]:
        """Reports for every epoch that each fold has reached since the last call."""
        out = []
        while True:
            e = self.reported + 1
            if not any(max(self.epochs[f], default=0) >= e for f in self.folds):
                return out
            if not all(self._reached(f, e) for f in self.folds):
                return out
            at = {f: self._at(f, e) for f in self.folds}
            if any(v is None for v in at.values()):
                return out
            rep: dict[str, float] = {"epoch": e}
            rep[OBJECTIVE] = float(np.mean([at[f][1] for f in self.folds]))
            for k in REPORTED:
                if all(k in at[f][0] for f in self.folds):
                    rep[k] = float(np.mean([at[f][0][k] for f in self.folds]))
            for f in self.folds:
                rep[f"{self.metric}_fold{f}"] = float(at[f][0][self.metric])
                rep[f"epoch_fold{f}"] = float(max(self.epochs[f]))  # epochs this fold has trained
            self.reported = e
            out.append(rep)
