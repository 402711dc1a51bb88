"""Benchmark: synthetic-corpus generation and manifest preparation speed.

Run by hand: ``.venv/bin/python bench/bench_data.py [--n 400] [--repeats 3]``.
Prints a table and writes ``bench/results/bench_data.json``. The whole process is
pinned to one core (the target: 400 utterances in under 30 s on one core),
so prepare's thread pool runs on that core too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core for generation
    from gmptl.config import SynthConfig, load_config
    from gmptl.data.prepare import prepare_manifest
    from gmptl.data.synth import synthesize_corpus

    synth_s, prep_s, audio_h = [], [], 0.0
    for r in range(args.repeats):
        tmp = Path(tempfile.mkdtemp())
        t0 = time.perf_counter()
        res = synthesize_corpus(tmp / "c", SynthConfig(n_utterances=args.n, seed=r))
        synth_s.append(time.perf_counter() - t0)
        audio_h = res.hours
        cfg = load_config(None, ["data.corpus=iemocap", f"data.root={tmp / 'c'}"])
        t0 = time.perf_counter()
        prepare_manifest(cfg.data, tmp / "c", tmp / "m.parquet")
        prep_s.append(time.perf_counter() - t0)
        shutil.rmtree(tmp)
    rows = {
        "synth_400_one_core_s": statistics.median(synth_s),
        "synth_audio_s_per_wall_s": audio_h * 3600 / statistics.median(synth_s),
        "prepare_s": statistics.median(prep_s),
        "prepare_utt_per_s": args.n / statistics.median(prep_s),
    }
    print(
        f"{'metric':<28} {'median':>10}   (n={args.n}, repeats={args.repeats}, audio {audio_h * 60:.1f} min)"
    )
    for k, v in rows.items():
        print(f"{k:<28} {v:>10.2f}")
    out = Path(__file__).parent / "results" / "bench_data.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"n": args.n, "repeats": args.repeats, "runs": {"synth_s": synth_s, "prepare_s": prep_s},
                               **rows}, indent=2))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
