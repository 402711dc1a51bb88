"""Benchmark: length-bucketed vs random training batches (padding waste and training throughput).

Run by hand: ``.venv/bin/python bench/bench_batching.py [--n 2000] [--backbone tiny|base]
[--steps 20] [--batch-size 8] [--repeats 3] [--threads 0]``. With the defaults (tiny backbone)
it takes about two minutes on an otherwise idle 2-core CPU; other processes on the machine make
the throughput numbers noisy (the JSON records the load average before and after).

Lengths: IEMOCAP's 5531-utterance four-class subset has mean ~4.5 s, median ~3.5 s and
range ~0.6-34 s; we draw ``--n`` lengths (seeded) from a log-normal with that median and
mean (mu = ln 3.5, sigma = sqrt(2 ln(4.5 / 3.5)) ~ 0.71), clipped to [0.6, 34] s, at 16 kHz.

1. Padding waste (no model): ``gmptl.training.data.plan_batches`` over all ``--n`` lengths,
   ``bucket`` (pools of ``--pool-batches`` batches) and ``random``, batch sizes 16 and 32, whole
   utterances and 10 s crops (the default training crop, ``crop_s``: a longer utterance is cut to the crop
   length, as the trainer plans it). Waste = 1 - real samples / padded slots over one epoch (all
   batches), as ``EpochStats`` reports it; the median over ``--epochs`` epochs, each planned with
   its own generator.
2. Throughput: real training steps of ``gmptl.training.loop.run_epoch`` (single process, CPU,
   ``torch.set_num_threads`` = every available core unless ``--threads``): the stage-0 (MTL) model
   with its emotion and gender heads, ``configure_training`` (frozen CNN) and AdamW, on random-noise
   waveforms (no audio files) cut to ``--crop-s``. Both modes train on the same
   ``--steps * --batch-size`` utterances (the first lengths drawn); in each repeat both modes plan
   with the same generator seed, and the modes alternate which one runs first. One untimed warm-up
   epoch (two batches of the longest utterances) comes first. Reported: median audio-seconds
   (real, unpadded) per wall-second and the ratio bucket / random; also the best run of each mode
   (other load on the machine only ever slows a run down). The throughput subset is
   usually smaller than one bucketing pool, so there bucketing sorts the whole subset.

Prints markdown tables; writes ``bench/results/bench_batching.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import numpy as np

SR = 16_000
MODES = ("bucket", "random")


def iemocap_like_lengths(n: int, seed: int) -> np.ndarray:
    """``n`` utterance lengths in samples: log-normal (median 3.5 s, mean 4.5 s) clipped to [0.6, 34] s."""
    rng = np.random.default_rng(seed)
    mu, sigma = np.log(3.5), np.sqrt(2 * np.log(4.5 / 3.5))
    sec = np.clip(rng.lognormal(mu, sigma, n), 0.6, 34.0)
    return np.rint(sec * SR).astype(np.int64)


def epoch_waste(lengths: np.ndarray, batches: list[list[int]]) -> float:
    """1 - real / padded slots summed over all batches of one epoch."""
    import torch

    from gmptl.training.data import padding_waste

    real = slots = 0
    for b in batches:
        r, s = padding_waste(torch.from_numpy(lengths[b]))
        real, slots = real + r, slots + s
    return 1.0 - real / slots


def padding_table(lengths: np.ndarray, epochs: int, pool_batches: int, seed: int) -> list[dict]:
    from gmptl.training.data import plan_batches

    rows = []
    for crop_s in (None, 10.0):
        eff = lengths if crop_s is None else np.minimum(lengths, int(crop_s * SR))
        for bs in (16, 32):
            for mode in MODES:
                wastes = []
                for e in range(epochs):
                    plan = plan_batches(
                        eff.tolist(), bs, mode, np.random.default_rng([seed, e]), pool_batches
                    )
                    wastes.append(epoch_waste(eff, plan))
                rows.append(
                    {"crop_s": crop_s, "batch_size": bs, "mode": mode,
                     "waste_median": statistics.median(wastes), "waste_epochs": wastes}
                )  # fmt: skip
    return rows


def throughput(lengths: np.ndarray, args: argparse.Namespace, threads: int) -> tuple[list[dict], dict]:
    import torch

    from gmptl.config import load_config
    from gmptl.models.factory import build_model, configure_training
    from gmptl.training.data import plan_batches
    from gmptl.training.loop import run_epoch
    from gmptl.training.stages import make_stage

    torch.set_num_threads(threads)
    layers = "[2]" if args.backbone == "tiny" else "[10]"
    cfg = load_config(None, [f"model.backbone={args.backbone}", f"features.layers={layers}"])
    stage_cfg = cfg.stages.mtl
    n_emotions = 4
    stage = make_stage("mtl", stage_cfg, n_emotions)
    torch.manual_seed(args.seed)
    model = build_model(cfg.model, stage.head_spec())
    configure_training(model, stage_cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage_cfg.lr, weight_decay=stage_cfg.weight_decay)
    device = torch.device("cpu")

    n_utt = args.steps * args.batch_size
    if n_utt > len(lengths):
        raise SystemExit(f"--steps x --batch-size = {n_utt} exceeds --n = {len(lengths)}")
    crop = int(args.crop_s * SR) if args.crop_s else None
    eff = lengths[:n_utt] if crop is None else np.minimum(lengths[:n_utt], crop)
    rng = np.random.default_rng([args.seed, 1])
    waves = [0.1 * rng.standard_normal(int(n)).astype(np.float32) for n in eff]
    emotion = rng.integers(0, n_emotions, n_utt)
    gender = rng.integers(0, 2, n_utt)

    def batch(idx: list[int]) -> dict[str, torch.Tensor]:
        """The batch format of ``UtteranceDataset.collate`` (without frame labels)."""
        n = eff[idx]
        wave = np.zeros((len(idx), int(n.max())), np.float32)  # (B, T) zero-padded
        for row, i in enumerate(idx):
            wave[row, : eff[i]] = waves[i]
        return {
            "wave": torch.from_numpy(wave),
            "n_samples": torch.from_numpy(n.astype(np.int64)),
            "emotion": torch.from_numpy(emotion[idx].astype(np.int64)),
            "gender": torch.from_numpy(gender[idx].astype(np.int64)),
        }

    def epoch(plan: list[list[int]]):  # noqa: ANN202
        # Batches are built lazily inside the timed loop, as a DataLoader hands them over.
        return run_epoch(model, (batch(b) for b in plan), stage, device, optimizer=optimizer)

    longest = sorted(range(n_utt), key=lambda i: -eff[i])[: 2 * args.batch_size]
    epoch([longest[: args.batch_size], longest[args.batch_size :]])  # warm-up, untimed

    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(args.repeats):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            plan_rng = np.random.default_rng([args.seed, 100 + r])
            stats = epoch(plan_batches(eff.tolist(), args.batch_size, mode, plan_rng, args.pool_batches))
            m = stats.metrics("train_", sample_rate_hz=SR)
            run = {"audio_s_per_s": m["train_audio_s_per_s"], "padding_waste": m["train_padding_waste"],
                   "wall_s": stats.wall_s, "steps": stats.n_steps}  # fmt: skip
            runs[mode].append(run)
            print(f"  repeat {r} {mode:<6} {run['audio_s_per_s']:7.2f} audio-s/s, {run['wall_s']:5.1f} s, "
                  f"padding waste {run['padding_waste']:.3f}", flush=True)  # fmt: skip
    rows = [
        {"mode": mode,
         "audio_s_per_s_median": statistics.median(x["audio_s_per_s"] for x in runs[mode]),
         "audio_s_per_s_best": max(x["audio_s_per_s"] for x in runs[mode]),
         "padding_waste_median": statistics.median(x["padding_waste"] for x in runs[mode]),
         "runs": runs[mode]}
        for mode in MODES
    ]  # fmt: skip
    info = {"n_utterances": n_utt, "audio_s": float(eff.sum() / SR),
            "trainable_params": sum(p.numel() for p in params)}  # fmt: skip
    return rows, info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="utterance lengths drawn (padding-waste part)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs (planning generators) per padding cell")
    ap.add_argument("--pool-batches", type=int, default=50, help="bucketing pool, in batches")
    ap.add_argument("--backbone", default="tiny", help="tiny, or base (HuBERT-base shapes)")
    ap.add_argument("--steps", type=int, default=20, help="training batches per throughput run")
    ap.add_argument("--batch-size", type=int, default=8, help="utterances per throughput batch")
    ap.add_argument("--crop-s", type=float, default=10.0, help="throughput runs' crop; 0 = whole utterances")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = every available core")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = args.threads or cores
    load_before = os.getloadavg()
    lengths = iemocap_like_lengths(args.n, args.seed)
    sec = lengths / SR
    dist = {"mean_s": float(sec.mean()), "median_s": float(np.median(sec)), "min_s": float(sec.min()),
            "max_s": float(sec.max()), "share_over_10s": float((sec > 10).mean())}  # fmt: skip
    print(f"{args.n} IEMOCAP-like lengths: mean {dist['mean_s']:.2f} s, median {dist['median_s']:.2f} s, "
          f"range {dist['min_s']:.2f}-{dist['max_s']:.1f} s, "
          f"{100 * dist['share_over_10s']:.1f}% over 10 s")  # fmt: skip

    pad = padding_table(lengths, args.epochs, args.pool_batches, args.seed)
    print(
        f"\n### Padding waste (median over {args.epochs} epochs; bucket pools of {args.pool_batches} "
        "batches)\n"
    )
    print("| crop | batch size | bucket | random | random / bucket |")
    print("|---|---:|---:|---:|---:|")
    for crop_s in (None, 10.0):
        for bs in (16, 32):
            cell = {
                r["mode"]: r["waste_median"] for r in pad if r["crop_s"] == crop_s and r["batch_size"] == bs
            }
            crop_txt = "whole utterance" if crop_s is None else f"{crop_s:g} s"
            print(f"| {crop_txt} | {bs} | {100 * cell['bucket']:.1f}% | {100 * cell['random']:.1f}% | "
                  f"{cell['random'] / cell['bucket']:.1f}x |")  # fmt: skip

    thr, thr_info = [], {}
    if not args.skip_throughput:
        print(f"\nthroughput: backbone {args.backbone}, {threads} threads, {args.steps} batches of "
              f"{args.batch_size}, crop {args.crop_s:g} s, {args.repeats} repeats", flush=True)  # fmt: skip
        thr, thr_info = throughput(lengths, args, threads)
        by = {r["mode"]: r for r in thr}
        base = by["random"]["audio_s_per_s_median"]
        best = by["random"]["audio_s_per_s_best"]
        thr_info["ratio_bucket_over_random"] = by["bucket"]["audio_s_per_s_median"] / base
        thr_info["ratio_bucket_over_random_best"] = by["bucket"]["audio_s_per_s_best"] / best
        print(f"\n### Training throughput ({args.backbone} backbone, MTL stage, CPU, {threads} threads; "
              f"{thr_info['n_utterances']} utterances = {thr_info['audio_s']:.0f} s of audio "
              "per run)\n")  # fmt: skip
        print(
            "| mode | audio-s / wall-s (median) | vs random | best run | vs random (best) | padding waste |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for mode in MODES:
            r = by[mode]
            print(f"| {mode} | {r['audio_s_per_s_median']:.2f} | {r['audio_s_per_s_median'] / base:.2f}x | "
                  f"{r['audio_s_per_s_best']:.2f} | {r['audio_s_per_s_best'] / best:.2f}x | "
                  f"{100 * r['padding_waste_median']:.1f}% |")  # fmt: skip

    machine = {"cpu_count": os.cpu_count(), "cores_available": cores,
               "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version(),
               "platform": platform.platform(), "processor": platform.processor(),
               "loadavg_before": load_before, "loadavg_after": os.getloadavg()}  # fmt: skip
    out = Path(__file__).parent / "results" / "bench_batching.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "machine": machine, "lengths": dist, "padding": pad,
                               "throughput": thr, "throughput_info": thr_info}, indent=2))  # fmt: skip
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
