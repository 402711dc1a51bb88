"""Benchmark: feature extraction, Ray Data pipeline vs a sequential one-utterance-at-a-time loop.

Run by hand: ``.venv/bin/python bench/bench_extract.py [--n 48] [--backbone base] [--repeats 1]``.
The sequential loop is how fairseq's ``dump_hubert_feature.py`` works: read one file,
forward it alone, write its features. Both sides use the same model and write fp16
features. ``two_processes`` runs that loop in two plain processes (one thread each, half
the utterances each, no Ray): the ceiling two single-core workers can reach on this
machine, so Ray's own cost is the gap between it and ``ray_steady_state``. Ray's fixed start-up (``ray.init``) is reported apart from the pipeline time,
which does include actor start and model load. Prints a table; writes
``bench/results/bench_extract.json``. ``ray_steady_state`` is the summed actor encode time
divided by the number of actors: the pipeline's throughput once its fixed start-up is paid.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def sequential(df, model_cfg, feat_cfg, threads: int, out: Path) -> float:
    import torch

    from gmptl.data.audio import load_audio
    from gmptl.features.extractor import FeatureExtractor

    torch.set_num_threads(threads)
    ext = FeatureExtractor(model_cfg, feat_cfg)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for utt, path in zip(df.utt_id, df.path, strict=True):
        feats = ext.encode([load_audio(path)])[0]
        for layer, arr in feats.items():
            np.save(out / f"{utt}.L{layer}.npy", arr.astype(np.float16))
    return time.perf_counter() - t0


def _half(args) -> float:
    df, model_cfg, feat_cfg, out = args
    return sequential(df, model_cfg, feat_cfg, 1, out)


def two_processes(df, model_cfg, feat_cfg, out: Path) -> float:
    """The 1-thread loop in two processes at once, utterances dealt alternately (balanced lengths).

    Each process times its own loop after building its model (as ``sequential``); the two
    loops overlap, so the slower one is the wall time.
    """
    import multiprocessing as mp

    halves = [(df.iloc[i::2], model_cfg, feat_cfg, out / str(i)) for i in range(2)]
    with mp.get_context("spawn").Pool(2) as pool:
        return max(pool.map(_half, halves, chunksize=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=48, help="utterances of the synthetic corpus")
    ap.add_argument("--backbone", default="base")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--layers", default=None, help="features.layers, e.g. [3]; default: the config's")
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                    help="more config overrides for both sides, e.g. features.batch_max_audio_s=1")  # fmt: skip
    ap.add_argument("--ray-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for the local Ray (e.g. RAY_worker_niceness=0), set before ray.init")  # fmt: skip
    args = ap.parse_args()

    import os

    import ray

    from gmptl.config import SynthConfig, load_config
    from gmptl.data.manifest import read_manifest
    from gmptl.data.prepare import prepare_manifest
    from gmptl.data.synth import synthesize_corpus
    from gmptl.features.pipeline import extract_features

    tmp = Path(tempfile.mkdtemp())
    synthesize_corpus(tmp / "c", SynthConfig(n_utterances=args.n, seed=0))
    cfg = load_config(
        None,
        ["data.corpus=iemocap", f"data.root={tmp / 'c'}", f"model.backbone={args.backbone}",
         "features.shard_max_utts=4", f"features.num_workers={args.workers}",
         "features.num_cpus_per_worker=0.75", *([f"features.layers={args.layers}"] if args.layers else []), *args.sets],
    )  # fmt: skip
    df = read_manifest(prepare_manifest(cfg.data, tmp / "c", tmp / "m.parquet").manifest_path)
    audio_s = float(df.duration_s.sum())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    runs: dict[str, list[float]] = {
        "sequential_1_core": [],
        f"sequential_{cores}_cores": [],
        "two_processes": [],
        "ray_pipeline": [],
        "ray_steady_state": [],
    }
    for kv in args.ray_env:
        key, _, value = kv.partition("=")
        os.environ[key] = value
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - t0
    for r in range(args.repeats):
        runs["sequential_1_core"].append(sequential(df, cfg.model, cfg.features, 1, tmp / f"s1_{r}"))
        runs[f"sequential_{cores}_cores"].append(
            sequential(df, cfg.model, cfg.features, cores, tmp / f"sN_{r}")
        )
        runs["two_processes"].append(two_processes(df, cfg.model, cfg.features, tmp / f"p2_{r}"))
        t0 = time.perf_counter()
        res = extract_features(df, cfg.model, cfg.features, cfg.runtime, tmp / f"ray_{r}")
        runs["ray_pipeline"].append(time.perf_counter() - t0)
        # Compute time per worker (actors run in parallel): excludes actor start-up and model load.
        runs["ray_steady_state"].append(res.encode_s / res.n_workers)
    ray.shutdown()

    base = statistics.median(runs["sequential_1_core"])
    print(f"{args.n} utterances, {audio_s:.0f} s of audio, backbone {args.backbone} (layers "
          f"{cfg.features.layers}), {cores} cores, Ray env {args.ray_env or 'default'}, "
          f"{args.workers} Ray workers; ray.init {ray_init_s:.1f} s (not included)")  # fmt: skip
    print(f"{'method':<22} {'wall s (median)':>16} {'audio-s / wall-s':>17} {'vs 1-core loop':>15}")
    table = {}
    for name, times in runs.items():
        med = statistics.median(times)
        table[name] = {"wall_s": med, "rtf": audio_s / med, "speedup_vs_1core": base / med, "runs": times}
        print(f"{name:<22} {med:>16.1f} {audio_s / med:>17.2f} {base / med:>15.2f}")
    out = Path(__file__).parent / "results" / "bench_extract.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"n": args.n, "audio_s": audio_s, "backbone": args.backbone, "cores": cores,
                               "workers": args.workers, "layers": cfg.features.layers, "ray_env": args.ray_env, "sets": args.sets, "ray_init_s": ray_init_s, "results": table}, indent=2))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
