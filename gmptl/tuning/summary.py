"""The summary of a search (every trial, the best one, the compute ASHA saved) and its figure.

Read on the driver after ``Tuner.fit``: :func:`summarize` turns Tune's results (and the marker
files trials and the scheduler leave in the search folder) into ``summary.json``;
:func:`parallel_coordinates_png` draws ``parallel_coordinates.png``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from gmptl import paths
from gmptl.config import Config
from gmptl.tuning.space import SearchSpace
from gmptl.tuning.trials import OBJECTIVE, REPORTED


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
        elif (base_yaml.parent / "trials" / f"{paths.safe_name(tid)}.json").is_file():
            status = "completed"
        elif (base_yaml.parent / "stopped" / f"{paths.safe_name(tid)}.json").is_file():
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
