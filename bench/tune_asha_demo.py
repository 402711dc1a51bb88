"""ASHA on the demo: a 4-trial stage-2 search on jobs/demo.yaml, and the compute early stopping saved.

    .venv/bin/python bench/tune_asha_demo.py [--samples 4] [--space tune_spaces/utterance.yaml] [--set k=v ...]

Runs the search of `gmptl tune` (fold 0; everything before stage 2 is computed once, before the search), then prints
how many trials ASHA stopped, the epochs run against the epochs of every trial running to the end, the
wall time and the best configuration, and writes bench/results/tune_asha_demo.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from gmptl.tuning.search import run_search


def run(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="jobs/demo.yaml")
    ap.add_argument("--space", default="tune_spaces/utterance.yaml")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    cmd = ["tune", args.config, "--space", args.space, "--samples", str(args.samples)]
    cmd += [a for s in args.sets for a in ("--set", s)]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.monotonic()
    s = run_search(args.config, args.space, args.sets, args.samples).summary
    result = {
        "command": "gmptl " + " ".join(cmd),
        **{k: s[k] for k in ("name", "searcher", "n_trials", "n_stopped_early", "n_completed", "n_failed",
                             "epochs_run", "epochs_budget", "compute_saved", "max_concurrent", "best")},
        "search_wall_s": s["wall_s"],
        "total_wall_s": round(time.monotonic() - t0, 1),
        "trials": [{k: t[k] for k in ("trial_id", "status", "epochs_run", "epochs_max", "objective", "params")}
                   for t in s["trials"]],
    }  # fmt: skip
    print("\n| trial | status | epochs | score |\n|---|---|---:|---:|")
    for t in result["trials"]:
        print(
            f"| {t['trial_id']} | {t['status']} | {t['epochs_run']}/{t['epochs_max']} | {t['objective'] if t['objective'] is None else round(t['objective'], 4)} |"
        )
    print(f"\nASHA stopped {result['n_stopped_early']} of {result['n_trials']} trials; epochs run "
          f"{result['epochs_run']} of {result['epochs_budget']} ({100 * result['compute_saved']:.0f} % saved); "
          f"search {result['search_wall_s']:.0f} s, total {result['total_wall_s']:.0f} s")  # fmt: skip
    out = Path("bench/results/tune_asha_demo.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    run()
