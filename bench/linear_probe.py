"""How much emotion a linear classifier finds in each layer of a model, on a job's own folds.

The model stays frozen: every utterance goes through it whole, each hidden layer is pooled over time
(mean, and mean with standard deviation), and a standardised logistic regression is fitted and chosen
exactly as in `baseline_logmel.py` (C on the fold's validation speakers, scored on its test speakers).
Set beside that reference and beside the run's own test UAR, it tells apart a representation that holds
no more emotion than log-mel statistics (the corpus and protocol are the limit) from a classifier that
uses less of it than a linear probe does (the fine-tuning recipe is the limit).

    .venv/bin/python bench/linear_probe.py jobs/demo.yaml                    # the pre-trained model.backbone
    .venv/bin/python bench/linear_probe.py jobs/demo.yaml --stage utterance  # each fold's trained model

`--stage` reads each fold's best model of that stage from the job's output_dir (run `gmptl run` first).
Prints a table and writes bench/results/linear_probe.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from baseline_logmel import fold_scores


def pooled_layers(model, waves: list[np.ndarray]) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Feature name -> (utterances, dim): each hidden layer pooled by mean, and by mean with std."""
    import torch

    from gmptl.models.backbone import input_norm, normalize_input

    mode = input_norm(model.config)
    out: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for w in waves:
            x = torch.from_numpy(w)[None]
            x = normalize_input(x, torch.tensor([x.shape[1]]), mode)
            for i, h in enumerate(model(x, output_hidden_states=True).hidden_states):
                h = h[0].numpy()
                out.setdefault(f"layer {i}, mean", []).append(h.mean(0))
                out.setdefault(f"layer {i}, mean+std", []).append(np.concatenate([h.mean(0), h.std(0)]))
    return {k: np.stack(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--stage", default=None, help="probe each fold's trained model of this stage")
    args = ap.parse_args()

    import torch

    from gmptl import paths
    from gmptl.config import load_config
    from gmptl.data.audio import AudioBounds, load_audio
    from gmptl.data.prepare import prepare_folds
    from gmptl.models.backbone import load_pretrained

    torch.set_num_threads(1)
    cfg = load_config(args.config, args.set)
    prep = prepare_folds(cfg)
    df = prep.df
    sr = cfg.data.sample_rate_hz
    bounds = AudioBounds.from_config(cfg.data)
    waves = [load_audio(p, sr, bounds) for p in df.path]
    y = df.emotion.to_numpy()
    classes = sorted(set(y))
    t0 = time.perf_counter()
    scores: dict[str, list[float]] = {}
    shared = None if args.stage else pooled_layers(load_pretrained(cfg.model.backbone).eval(), waves)
    for fold in prep.folds:
        if args.stage:
            folder = paths.best_model_dir(cfg, fold.index, args.stage)
            if not folder.is_dir():
                raise SystemExit(f"error: {folder} does not exist: run `gmptl run {args.config}` first")
            feats = pooled_layers(load_pretrained(str(folder)).eval(), waves)
        else:
            feats = shared
        part = fold.part_of(df).to_numpy()
        for name, x in feats.items():
            scores.setdefault(name, []).append(fold_scores(x, y, part, classes)["test_uar"])
    what = f"each fold's `{args.stage}` model" if args.stage else f"model.backbone={cfg.model.backbone}"
    print(
        f"linear probe of {what}, frozen, on {args.config} ({len(df)} utterances, {time.perf_counter() - t0:.0f} s)"
    )
    names = [f.name for f in prep.folds]
    print("| features | " + " | ".join(names) + " | mean ± std |")
    print("|---|" + "---:|" * (len(names) + 1))
    rows = []
    for name, uar in scores.items():
        mean, std = statistics.mean(uar), statistics.pstdev(uar)
        rows.append({"features": name, "test_uar": uar, "mean": mean, "std": std})
        print(f"| {name} | " + " | ".join(f"{u:.3f}" for u in uar) + f" | {mean:.3f} ± {std:.3f} |")
    out = Path(__file__).parent / "results" / "linear_probe.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"config": args.config, "sets": args.set, "stage": args.stage, "folds": names, "rows": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
