"""A classical reference on a job's own folds: log-mel statistics and logistic regression.

Each utterance becomes one vector (per mel band: mean, standard deviation, 10th and 90th percentile of
the log-mel energies, and the log duration); a standardised logistic regression is trained on each
fold's training speakers, its regularisation C chosen on the fold's validation speakers (never on the
test speakers), and scored on the test speakers. It shows what the corpus and protocol allow without
any learned representation: a GMP-TL run that scores below it on the same folds has not learned the
emotion cues a hand-made feature finds.

    .venv/bin/python bench/baseline_logmel.py jobs/demo.yaml [--set KEY=VALUE ...]

Runs the job's setup step (the synthetic corpus, the manifest and the folds, cached in its output_dir
as `gmptl run` caches them), prints a table and writes bench/results/baseline_logmel.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def fold_scores(x: np.ndarray, y: np.ndarray, part: np.ndarray, classes: list[str]) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from gmptl.training.metrics import confusion_matrix, summarize

    codes = np.array([classes.index(c) for c in y])

    def fit_score(c: float, where: str) -> tuple[dict, float]:
        train = part == "train"
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        clf.fit(x[train], codes[train])
        sel = part == where
        cm = confusion_matrix(codes[sel], clf.predict(x[sel]), len(classes))
        return summarize(cm, classes), c

    # The C with the best validation UAR (the smaller C on ties: the stronger regularisation).
    val = [fit_score(c, "validation") for c in C_GRID]
    best_c = max(val, key=lambda r: (r[0]["uar"], -r[1]))[1]
    test, _ = fit_score(best_c, "test")
    return {
        "C": best_c,
        "val_uar": max(r[0]["uar"] for r in val),
        "test_war": test["war"],
        "test_uar": test["uar"],
        "n_train": int((part == "train").sum()),
        "n_test": int((part == "test").sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    from gmptl.config import load_config
    from gmptl.data.audio import AudioBounds, load_audio
    from gmptl.data.logmel import log_mel_stats
    from gmptl.data.prepare import prepare_folds

    cfg = load_config(args.config, args.set)
    prep = prepare_folds(cfg)
    df = prep.df
    t0 = time.perf_counter()
    bounds = AudioBounds.from_config(cfg.data)
    sr = cfg.data.sample_rate_hz
    x = np.stack([log_mel_stats(load_audio(p, sr, bounds), sr) for p in df.path])
    feature_s = time.perf_counter() - t0
    y = df.emotion.to_numpy()
    classes = sorted(set(y))
    rows = []
    for fold in prep.folds:
        part = fold.part_of(df).to_numpy()
        rows.append({"fold": fold.index, "name": fold.name, **fold_scores(x, y, part, classes)})

    print(
        f"log-mel statistics + logistic regression on {args.config} ({len(df)} utterances, features {feature_s:.0f} s)"
    )
    print("| fold | name | n_train | n_test | C (chosen on validation) | val UAR | test WAR | test UAR |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['fold']} | {r['name']} | {r['n_train']} | {r['n_test']} | {r['C']:g} | {r['val_uar']:.3f} "
              f"| {r['test_war']:.3f} | {r['test_uar']:.3f} |")  # fmt: skip
    mean = {k: statistics.mean(r[k] for r in rows) for k in ("test_war", "test_uar")}
    std = {k: statistics.pstdev(r[k] for r in rows) for k in ("test_war", "test_uar")}
    print(f"| **mean ± std** | | | | | | {mean['test_war']:.3f} ± {std['test_war']:.3f} "
          f"| {mean['test_uar']:.3f} ± {std['test_uar']:.3f} |")  # fmt: skip
    out = Path(__file__).parent / "results" / "baseline_logmel.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"config": args.config, "sets": args.set, "folds": rows, "mean": mean, "std": std}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
