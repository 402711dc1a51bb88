"""GPU check: extraction and training throughput of a hubert-base-shaped model, and bf16 against fp32.

Run by hand on a machine with a CUDA GPU: ``make gpu-check`` (or ``python bench/gpu_check.py
[--out DIR] [--budget-s 420]``). It needs torch, transformers, numpy, pydantic, pyyaml and
safetensors; no Ray, faiss or MLflow: it runs the pure parts that do the GPU work (the frame-feature
extractor and the training loop every stage shares), not the Ray jobs around them. Weights are random
(the ``base`` preset): throughput and memory do not depend on them.

Utterance lengths are IEMOCAP-like (``bench_batching.iemocap_like_lengths``: log-normal, median 3.5 s,
mean 4.5 s, clipped to 0.6-34 s); waveforms are noise.

1. **extraction**: ``FeatureExtractor.encode`` on shards of ``features.shard_max_utts`` utterances (as
   the Ray Data pipeline calls it), three layers kept, in bf16 and fp32, SDPA and eager attention, a
   few ``features.batch_max_audio_s`` budgets, and ``torch.compile`` (in a child process with a time
   limit, last). Reported: audio-seconds per wall-second (x real time), host to device copy, CNN
   encoder, transformer and device to host copy times of one pass, and audio decoding per CPU core.
2. **training**: the utterance stage (AM-Softmax) and the GMP stage (one frame head per K of
   ``jobs/iemocap_loso.yaml``) through ``run_epoch`` on 10 s crops at that job's batch size, bf16
   autocast and fp32: step time, audio-seconds per second, peak GPU memory.
3. **numerics**: one batch in bf16 and fp32: losses, pooled embeddings and extracted features agree
   within the stated tolerances; no non-finite value in outputs or gradients.
4. **tests**: the suite's gpu-marked tests that need no Ray or faiss.

Prints tables and progress; writes ``gpu_check.json`` (everything) and ``gpu_check.md`` (the tables)
under ``--out`` after every section, so a run cut short still leaves what it measured.
``--device cpu --quick`` runs every section at toy sizes on a CPU (what the test suite does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "bench"):  # gmptl from this checkout (no install needed), and bench_batching
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench_batching import iemocap_like_lengths  # noqa: E402

SR = 16_000
PHASES = ("h2d", "cnn", "transformer", "d2h", "unpack")
LAYERS = [4, 8, 12]  # three layers kept; the deepest is the last, so all 12 layers run
JOB = REPO / "jobs" / "iemocap_loso.yaml"
# The gpu-marked tests that import neither Ray nor faiss (the k-means one needs faiss-gpu).
GPU_TESTS = ["tests/unit/test_loop.py", "tests/unit/test_backbone_features.py", "tests/unit/test_posconv.py"]
# bf16 against fp32 on one batch: what "agree" means (random weights, so a conservative bound).
TOL = {"loss_rel": 0.05, "embedding_cosine_min": 0.99, "feature_cosine_min": 0.98}


class Check:
    """Collects sections into one JSON and one markdown file, rewritten after each section."""

    def __init__(self, out: Path, args: argparse.Namespace):
        self.out = out
        self.t0 = time.perf_counter()
        self.budget_s = args.budget_s
        self.data: dict = {"args": vars(args), "sections": {}, "errors": {}}
        self.md: list[str] = []
        out.mkdir(parents=True, exist_ok=True)

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def section(self, name: str, fn: Callable[[], dict]) -> dict | None:
        print(f"\n== {name} ({self.left_s():.0f} s of the budget left)", flush=True)
        t = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # one failed section must not lose the others' numbers
            traceback.print_exc()
            self.data["errors"][name] = f"{type(e).__name__}: {e}"
            result = None
        else:
            self.data["sections"][name] = result
        self.data.setdefault("section_s", {})[name] = round(time.perf_counter() - t, 2)
        self.write()
        return result

    def table(self, title: str, header: list[str], rows: list[list]) -> None:
        lines = [f"\n### {title}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        print("\n".join(lines), flush=True)
        self.md += lines

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=2, default=str))
        (self.out / "gpu_check.md").write_text("\n".join(self.md) + "\n")


def sync(device) -> None:  # noqa: ANN001
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def waveforms(lengths: np.ndarray, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, 7])
    return [(0.1 * rng.standard_normal(int(n))).astype(np.float32) for n in lengths]


# ---------------------------------------------------------------------------------------------- environment
def environment(device) -> dict:  # noqa: ANN001
    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": str(device),
            "cpu_count": os.cpu_count(), "platform": platform.platform()}  # fmt: skip
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info |= {"gpu": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                 "memory_gib": round(p.total_memory / 2**30, 1), "cuda": torch.version.cuda,
                 "cudnn": torch.backends.cudnn.version(),
                 "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                 "tf32_cudnn": torch.backends.cudnn.allow_tf32}  # fmt: skip
        # The bf16 matrix-multiply rate here: the ceiling the extraction FLOPs are compared with.
        n = 8192
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        sync(device)
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        info["bf16_matmul_tflops"] = round(10 * 2 * n**3 / (time.perf_counter() - t) / 1e12, 1)
        del a, b
    print(json.dumps(info, indent=1), flush=True)
    return info


# ---------------------------------------------------------------------------------------------- extraction
def _extractor(args, device, bf16: bool, budget_s: float, attn: str = "sdpa", fft: bool | None = None):  # noqa: ANN001, ANN202
    from gmptl.config import load_config
    from gmptl.features.extractor import FeatureExtractor

    cfg = load_config(None, [f"model.backbone={args.backbone}", f"features.layers={_layers(args)}",
                             f"features.batch_max_audio_s={budget_s}"])  # fmt: skip
    ext = FeatureExtractor(cfg.model, cfg.features, device=str(device), bf16=bf16, fft_pos_conv=fft)
    ext.model.set_attn_implementation(attn)
    return ext, cfg


def _layers(args) -> list[int]:  # noqa: ANN001
    return [1, 2, 3] if args.backbone == "tiny" else LAYERS


def forward_flops(config, n_layers: int, lengths: np.ndarray) -> dict[str, float]:  # noqa: ANN001
    """Useful forward FLOPs (2 per multiply-add, padding excluded) per second of audio, from the backbone's
    shapes: the CNN encoder, and the transformer (feature projection, positional convolution, ``n_layers``
    layers; attention grows with utterance length, so it uses the lengths' sum(F^2) / sum(F))."""
    frames = np.array([(int(n) - 400) // 320 + 1 for n in lengths], dtype=np.float64)
    attn_frames = float((frames**2).sum() / frames.sum())  # attended positions per query frame
    n, c_in, cnn = SR, 1, 0.0
    for c_out, k, st in zip(config.conv_dim, config.conv_kernel, config.conv_stride, strict=True):
        n = (n - k) // st + 1
        cnn += 2.0 * n * c_out * c_in * k
        c_in = c_out
    d, ff = config.hidden_size, config.intermediate_size
    pos = 2.0 * n * d * (d // config.num_conv_pos_embedding_groups) * config.num_conv_pos_embeddings
    layer = 2.0 * n * (4 * d * d + 2 * d * ff) + 2.0 * 2 * n * attn_frames * d
    transformer = 2.0 * n * c_in * d + pos + n_layers * layer
    return {"cnn": cnn, "transformer": transformer, "total": cnn + transformer}


def _shards(waves: list[np.ndarray], size: int) -> list[list[np.ndarray]]:
    return [waves[i : i + size] for i in range(0, len(waves), size)]


def _encode_all(ext, shards, device, dtype: str) -> float:  # noqa: ANN001
    sync(device)
    t = time.perf_counter()
    for shard in shards:
        ext.encode(shard, dtype=dtype)
    sync(device)
    return time.perf_counter() - t


def _throughput(ext, shards, audio_s: float, repeats: int, device, dtype: str) -> dict:  # noqa: ANN001
    # Warm-up: the longest utterances first (largest allocations), then one shard of mixed lengths.
    longest = sorted((w for s in shards for w in s), key=len)[-8:]
    ext.encode(longest, dtype=dtype)
    ext.encode(shards[0], dtype=dtype)
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
    walls = [_encode_all(ext, shards, device, dtype) for _ in range(repeats)]
    med = statistics.median(walls)
    out = {"wall_s": round(med, 3), "x_real_time": round(audio_s / med, 1),
           "x_real_time_best": round(audio_s / min(walls), 1), "walls_s": [round(w, 3) for w in walls]}  # fmt: skip
    if device.type == "cuda":
        import torch

        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def breakdown(ext, shards, device, dtype: str) -> dict:  # noqa: ANN001
    """Time each phase of one pass over the shards, synchronising between phases (the extractor overlaps
    them, so their sum is more than its pass): padding + host-to-device copy, the CNN encoder alone, the
    whole forward (CNN + transformer), the cast of the kept layers to ``dtype`` and their copy to pinned
    host memory, and the per-utterance unpacking on the host."""
    import torch

    from gmptl.data.batching import length_batches
    from gmptl.models.backbone import input_norm, normalize_input

    model, norm = ext.model, input_norm(ext.model.config)
    torch_dtype = getattr(torch, dtype)
    cuda = device.type == "cuda"
    budget = int(ext.cfg.batch_max_audio_s * SR)
    t = dict.fromkeys(("h2d", "cnn", "forward", "d2h", "unpack"), 0.0)
    n_batches = 0
    with torch.inference_mode():
        for shard in shards:
            for batch in length_batches([len(w) for w in shard], budget):
                waves = [shard[i] for i in batch]
                lengths = torch.tensor([len(w) for w in waves])
                sync(device)
                t0 = time.perf_counter()
                x = torch.zeros(len(waves), int(lengths.max()), pin_memory=cuda)
                for i, w in enumerate(waves):
                    x[i, : len(w)] = torch.from_numpy(w)
                x = normalize_input(x.to(device, non_blocking=True), lengths, norm)
                sync(device)
                t1 = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ext.bf16):
                    model.feature_extractor(x)
                    sync(device)
                    t2 = time.perf_counter()
                    out = model(x, output_hidden_states=True)
                    sync(device)
                t3 = time.perf_counter()
                host = {}
                for L in ext.cfg.layers:
                    h = out.hidden_states[L].to(torch_dtype)
                    host[L] = torch.empty(h.shape, dtype=torch_dtype, pin_memory=cuda)
                    host[L].copy_(h, non_blocking=True)
                sync(device)
                t4 = time.perf_counter()
                for i, n in enumerate(lengths.tolist()):
                    for L in ext.cfg.layers:
                        host[L][i, : ext.n_frames(n)].numpy().copy()
                t5 = time.perf_counter()
                for k, (u, v) in zip(t, [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)], strict=True):
                    t[k] += v - u
                n_batches += 1
    t["transformer"] = t["forward"] - t["cnn"]
    total = t["h2d"] + t["forward"] + t["d2h"] + t["unpack"]
    res = {k: round(v, 3) for k, v in t.items()}
    res |= {"n_batches": n_batches, "dtype": dtype,
            "share": {k: round(t[k] / total, 3) for k in PHASES}}  # fmt: skip
    return res


def kernel_profile(ext, shards, device, dtype: str, top: int = 12) -> dict:  # noqa: ANN001
    """torch.profiler over one extractor pass of the first shard: how busy the GPU was (summed kernel
    time over wall time) and the kernels that took the most of it."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    ext.encode(shards[0], dtype=dtype)
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        ext.encode(shards[0], dtype=dtype)
        sync(device)
        wall = time.perf_counter() - t
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_s = sum(e.self_device_time_total for e in events) / 1e6
    events.sort(key=lambda e: -e.self_device_time_total)
    rows = [{"kernel": e.key[:90], "calls": e.count, "ms": round(e.self_device_time_total / 1e3, 2),
             "share": round(e.self_device_time_total / 1e6 / max(kernel_s, 1e-9), 3)} for e in events[:top]]  # fmt: skip
    return {"wall_s": round(wall, 3), "kernel_s": round(kernel_s, 3), "gpu_busy": round(kernel_s / wall, 3),
            "top": rows}  # fmt: skip


def decode_rate(seconds: float = 10.0, reads: int = 30) -> dict:
    """Audio-seconds decoded (and checked) per CPU-second by ``load_audio`` on a 16 kHz PCM16 WAV."""
    try:
        import soundfile as sf

        from gmptl.data.audio import load_audio
    except ImportError as e:
        return {"skipped": f"no {e.name}"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.wav"
        sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(int(seconds * SR))), SR, "PCM_16")
        load_audio(path, SR)
        t = time.process_time()
        for _ in range(reads):
            load_audio(path, SR)
        cpu_s = time.process_time() - t
    return {"x_real_time_per_core": round(reads * seconds / cpu_s, 1)}


def extraction(args, device, check: Check) -> dict:  # noqa: ANN001
    lengths = iemocap_like_lengths(args.n_extract, args.seed)
    audio_s = float(lengths.sum() / SR)
    waves = waveforms(lengths, args.seed)
    shards = _shards(waves, 256)
    print(f"{len(waves)} utterances, {audio_s:.0f} s of audio, {len(shards)} shards of <= 256", flush=True)
    res: dict = {"n_utterances": len(waves), "audio_s": round(audio_s, 1), "layers": _layers(args),
                 "variants": []}  # fmt: skip
    # (precision, attention, batch_max_audio_s, output dtype, positional conv): the pipeline stores float16.
    mid = args.budgets[len(args.budgets) // 2]
    variants = [("bf16", "sdpa", b, "float16", "fft") for b in args.budgets]
    variants += [("bf16", "sdpa", b, "float16", "cudnn") for b in args.budgets[:2]]
    variants += [("bf16", "sdpa", mid, "float32", "fft"), ("fp32", "sdpa", mid, "float16", "fft"),
                 ("bf16", "eager", mid, "float16", "fft")]  # fmt: skip
    for precision, attn, budget, dtype, posconv in variants:
        if check.left_s() < 60:
            res["cut_short"] = f"budget left {check.left_s():.0f} s"
            break
        ext, _ = _extractor(args, device, precision == "bf16", budget, attn, posconv == "fft")
        r = _throughput(ext, shards, audio_s, args.repeats, device, dtype)
        r |= {"precision": precision, "attention": attn, "batch_max_audio_s": budget, "dtype": dtype,
              "posconv": posconv}  # fmt: skip
        print(f"  {precision} {attn:5s} budget {budget:5.0f} s, {dtype} out, {posconv:5s} pos conv: "
              f"{r['x_real_time']:8.1f}x real time ({r['wall_s']:.2f} s)", flush=True)  # fmt: skip
        res["variants"].append(r)
        del ext
    best = max(res["variants"], key=lambda v: v["x_real_time"])
    res["best"] = {k: best[k] for k in ("precision", "attention", "batch_max_audio_s", "dtype")}
    ext, _ = _extractor(
        args, device, best["precision"] == "bf16", best["batch_max_audio_s"], best["attention"]
    )
    breakdown(ext, shards, device, best["dtype"])  # warm-up: the first pass pays one-time costs
    res["breakdown"] = b = breakdown(ext, shards, device, best["dtype"])
    flops = forward_flops(ext.model.config, max(_layers(args)), lengths)
    res["gflop_per_audio_s"] = {k: round(v / 1e9, 2) for k, v in flops.items()}
    peak = check.data["environment"].get("bf16_matmul_tflops")
    b["tflops"] = {"cnn": round(flops["cnn"] * audio_s / b["cnn"] / 1e12, 1),
                   "transformer": round(flops["transformer"] * audio_s / max(b["transformer"], 1e-9) / 1e12, 1)}  # fmt: skip
    for v in res["variants"]:
        v["tflops"] = round(v["x_real_time"] * flops["total"] / 1e12, 1)
        if peak:
            v["of_bf16_matmul_peak"] = round(v["tflops"] / peak, 3)
    if peak:
        res["x_real_time_at_bf16_matmul_peak"] = round(peak * 1e12 / flops["total"])
    if device.type == "cuda":
        try:
            res["profile"] = kernel_profile(ext, shards, device, best["dtype"])
        except Exception as e:  # the profiler is a diagnosis; its failure must not cost the numbers above
            res["profile"] = {"error": f"{type(e).__name__}: {e}"}
    del ext
    res["decode"] = decode_rate(reads=3 if args.quick else 30)
    rows = [[v["precision"], v["attention"], v["posconv"], f"{v['batch_max_audio_s']:g}", v["dtype"], f"{v['x_real_time']:,.0f}x",
             f"{v['x_real_time_best']:,.0f}x", v["tflops"], v.get("of_bf16_matmul_peak", "-"),
             v.get("peak_gib", "-")] for v in res["variants"]]  # fmt: skip
    check.table(f"Extraction ({args.backbone} backbone, layers {_layers(args)}, {len(waves)} utterances = "
                f"{audio_s:.0f} s of audio, median of {args.repeats}; {res['gflop_per_audio_s']['total']} GFLOP "
                f"per audio-second, so the bf16 matmul rate bounds it at "
                f"{res.get('x_real_time_at_bf16_matmul_peak', '-')}x)",
                ["precision", "attention", "pos conv", "batch_max_audio_s", "features out", "x real time", "best run",
                 "useful TFLOP/s", "of bf16 matmul rate", "peak GiB"], rows)  # fmt: skip
    check.table(f"One extraction pass, phase by phase, synchronised ({best['precision']}, {best['attention']}, "
                f"{best['posconv']} pos conv, "
                f"budget {best['batch_max_audio_s']:g} s, {best['dtype']} out; {b['n_batches']} batches)",
                ["phase", "seconds", "share", "useful TFLOP/s"],
                [[k, b[k], f"{100 * b['share'][k]:.1f}%", b["tflops"].get(k, "-")] for k in PHASES])  # fmt: skip
    prof = res.get("profile", {})
    if "top" in prof:
        check.table(f"GPU kernels in one pipelined pass over one shard: GPU busy {100 * prof['gpu_busy']:.0f}% "
                    f"of {prof['wall_s']} s",
                    ["kernel", "calls", "ms", "share of kernel time"],
                    [[r["kernel"].replace("|", "/"), r["calls"], r["ms"], f"{100 * r['share']:.1f}%"]
                     for r in prof["top"]])  # fmt: skip
    if "x_real_time_per_core" in res["decode"]:
        need = best["x_real_time"] / res["decode"]["x_real_time_per_core"]
        res["decode"]["cores_to_keep_up"] = round(need, 1)
        print(f"  decoding: {res['decode']['x_real_time_per_core']:,.0f}x real time per core; "
              f"{need:.1f} cores keep the best variant fed", flush=True)  # fmt: skip
    return res


def compiled_extraction(args, device, check: Check, best_budget: float) -> dict:  # noqa: ANN001
    """torch.compile in a child process with a time limit: a compile that runs long must not cost the
    numbers already measured."""
    limit = min(args.compile_limit_s, check.left_s() - 15)
    if limit < 60:
        return {"skipped": f"{check.left_s():.0f} s of the budget left"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "compiled.json"
        cmd = [sys.executable, __file__, "--compiled-worker", str(out), "--device", str(device.type),
               "--backbone", args.backbone, "--n-extract", str(args.n_extract), "--repeats", str(args.repeats),
               "--budgets", str(best_budget), "--seed", str(args.seed)]  # fmt: skip
        try:
            proc = subprocess.run(cmd, timeout=limit, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return {"skipped": f"compile + timed runs did not finish in {limit:.0f} s"}
        if proc.returncode != 0:
            return {"error": proc.stderr[-3000:]}
        res = json.loads(out.read_text())
    check.table("Extraction with torch.compile (bf16, sdpa, float16 out, dynamic shapes)",
                ["batch_max_audio_s", "compile + first pass s", "x real time", "best run"],
                [[f"{best_budget:g}", res["compile_s"], f"{res['x_real_time']:,.0f}x",
                  f"{res['x_real_time_best']:,.0f}x"]])  # fmt: skip
    return res


def compiled_worker(args) -> None:  # noqa: ANN001
    import torch

    device = torch.device(args.device)
    lengths = iemocap_like_lengths(args.n_extract, args.seed)
    shards = _shards(waveforms(lengths, args.seed), 256)
    ext, _ = _extractor(args, device, True, args.budgets[0])
    ext.model = torch.compile(ext.model, dynamic=True)
    t = time.perf_counter()
    _encode_all(ext, shards, device, "float16")  # compiles (and recompiles for the shapes it meets)
    compile_s = time.perf_counter() - t
    res = _throughput(ext, shards, float(lengths.sum() / SR), args.repeats, device, "float16")
    res["compile_s"] = round(compile_s, 1)
    Path(args.compiled_worker).write_text(json.dumps(res))


# ---------------------------------------------------------------------------------------------- training
def _job(args):  # noqa: ANN001, ANN202
    from gmptl.config import load_config

    # The job's stage and clustering settings; its corpus is never read (data.root only has to be set).
    return load_config(str(JOB), [f"model.backbone={args.backbone}", f"features.layers={_layers(args)}",
                                     f"data.root={tempfile.gettempdir()}"])  # fmt: skip


def _batches(args, stage, n_batches: int, geometry, seed: int) -> list[dict]:  # noqa: ANN001
    """``n_batches`` training batches in ``UtteranceDataset.collate``'s format: 10 s crops, bucketed."""
    import torch

    from gmptl.training.data import plan_batches

    cfg = stage.cfg
    bs = args.batch_size or cfg.worker_batch()
    crop = int((1.0 if args.quick else cfg.crop_s) * SR)  # toy sizes: 1 s crops
    lengths = np.minimum(iemocap_like_lengths(max(bs * n_batches * 4, 64), seed), crop)
    rng = np.random.default_rng([seed, 3])
    plan = plan_batches(lengths.tolist(), bs, "bucket", rng, cfg.bucket_pool_batches)
    plan = [b for b in plan if len(b) == bs][:n_batches]
    out = []
    for idx in plan:
        n = lengths[idx]
        wave = (0.1 * rng.standard_normal((len(idx), int(n.max())))).astype(np.float32)
        for row, m in enumerate(n):
            wave[row, m:] = 0.0
        batch = {"wave": torch.from_numpy(wave), "n_samples": torch.from_numpy(n.astype(np.int64)),
                 "emotion": torch.from_numpy(rng.integers(0, stage.n_emotions, len(idx))),
                 "gender": torch.from_numpy(rng.integers(0, 2, len(idx)))}  # fmt: skip
        frames = [geometry.n_frames(int(m)) for m in n]
        for k in stage.ks:
            lab = np.full((len(idx), max(frames)), -1, np.int64)
            for row, f in enumerate(frames):
                lab[row, :f] = rng.integers(0, k, f)
            batch[f"frames_k{k}"] = torch.from_numpy(lab)
        out.append(batch)
    return out


def _stage_model(args, name: str, device, fft: bool = False):  # noqa: ANN001, ANN202
    import torch

    from gmptl.models.backbone import frame_geometry
    from gmptl.models.factory import build_model, configure_training
    from gmptl.models.posconv import use_fft_positional_conv
    from gmptl.training.stages import make_stage

    cfg = _job(args)
    stage_cfg = getattr(cfg.stages, name)
    ks = list(cfg.clustering.k) if name == "gmp" else None
    stage = make_stage(name, stage_cfg, 4, ks)
    torch.manual_seed(args.seed)
    model = build_model(cfg.model, stage.head_spec())
    configure_training(model, stage_cfg)
    if fft:
        use_fft_positional_conv(model.backbone)
    return stage, model.to(device), frame_geometry(model.backbone.config)


def training(args, device, check: Check) -> dict:  # noqa: ANN001
    import torch

    from gmptl.training.loop import run_epoch

    res: dict = {"runs": []}
    for name in ("utterance", "gmp"):
        for bf16, posconv in ((True, "cudnn"), (True, "fft"), (False, "cudnn")):
            if check.left_s() < 45:
                res["cut_short"] = f"budget left {check.left_s():.0f} s"
                break
            stage, model, geo = _stage_model(args, name, device, posconv == "fft")
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
            batches = _batches(args, stage, args.warmup_steps + args.steps, geo, args.seed)
            gen = torch.Generator().manual_seed(args.seed)
            run_epoch(
                model, batches[: args.warmup_steps], stage, device, optimizer=opt, mask_gen=gen, bf16=bf16
            )
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            stats = run_epoch(model, batches[args.warmup_steps :], stage, device, optimizer=opt, mask_gen=gen,
                              bf16=bf16)  # fmt: skip
            sync(device)
            m = stats.metrics("", sample_rate_hz=SR)
            r = {"stage": name, "precision": "bf16" if bf16 else "fp32", "posconv": posconv, "batch_size": len(batches[0]["n_samples"]),
                 "steps": stats.n_steps, "step_s": round(stats.wall_s / stats.n_steps, 4),
                 "audio_s_per_s": round(m["audio_s_per_s"], 1), "padding_waste": round(m["padding_waste"], 3),
                 "loss": round(m["loss"], 4), "ks": stage.ks}  # fmt: skip
            if device.type == "cuda":
                r["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            print(f"  {name:9s} {r['precision']} {posconv:5s} pos conv: {r['step_s'] * 1000:7.1f} ms/step, "
                  f"{r['audio_s_per_s']:8.1f} audio-s/s, peak {r.get('peak_gib', '-')} GiB", flush=True)  # fmt: skip
            res["runs"].append(r)
            del model, opt, batches
            if device.type == "cuda":
                torch.cuda.empty_cache()
    rows = [[r["stage"], r["precision"], r["posconv"], r["batch_size"], f"{r['step_s'] * 1000:.1f}", f"{r['audio_s_per_s']:,.0f}",
             r.get("peak_gib", "-"), f"{100 * r['padding_waste']:.1f}%"] for r in res["runs"]]  # fmt: skip
    check.table(f"Training through run_epoch ({args.backbone} backbone, 10 s crops, CNN frozen, AdamW; "
                f"{args.steps} timed steps after {args.warmup_steps} warm-up)",
                ["stage", "precision", "pos conv", "batch", "ms / step", "audio-s / s", "peak GiB", "padding"], rows)  # fmt: skip
    return res


# ---------------------------------------------------------------------------------------------- positional conv
def _median_s(fn, device, reps: int, warmup: int = 2) -> float:  # noqa: ANN001
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def posconv(args, device, check: Check) -> dict:  # noqa: ANN001
    """The positional convolution alone, at two extraction batch shapes: cuDNN in bf16 (what autocast
    runs) and fp32, and the FFT path; forward, and forward + backward (training); error against a
    float64 CPU reference."""
    import torch
    import torch.nn.functional as F

    from gmptl.models.backbone import preset_config
    from gmptl.models.posconv import fft_conv1d

    cfg = preset_config(args.backbone)
    c, k, g = cfg.hidden_size, cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups
    shapes = (
        [(2, 50)] if args.quick else [(36, 225), (4, 1700)]
    )  # (batch, frames): 160 s of 4.5 s or 34 s clips
    reps, warmup = (1, 1) if args.quick else (10, 2)
    gen = torch.Generator().manual_seed(args.seed)
    impls = {
        "cudnn bf16": lambda x, w: F.conv1d(x.bfloat16(), w.bfloat16(), None, padding=k // 2, groups=g),
        "cudnn fp32": lambda x, w: F.conv1d(x, w, None, padding=k // 2, groups=g),
        "fft fp32": lambda x, w: fft_conv1d(x, w, None, k // 2, g),
    }
    rows = []
    for b, t in shapes:
        x = torch.randn(b, c, t, generator=gen)
        w = 0.02 * torch.randn(c, c // g, k, generator=gen)
        ref = F.conv1d(x.double(), w.double(), None, padding=k // 2, groups=g)
        x, w = x.to(device), w.to(device)
        for name, fn in impls.items():
            err = float((fn(x, w).double().cpu() - ref).norm() / ref.norm())
            xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()

            def step(fn=fn, xg=xg, wg=wg) -> None:  # noqa: ANN001
                fn(xg, wg).float().square().mean().backward()

            rows.append({"shape": [b, c, t], "impl": name, "rel_error": err,
                         "forward_ms": round(1e3 * _median_s(lambda fn=fn, x=x, w=w: fn(x, w), device, reps, warmup), 3),
                         "forward_backward_ms": round(1e3 * _median_s(step, device, reps, warmup), 3)})  # fmt: skip
    check.table(f"Positional convolution alone ({c} channels, {g} groups, kernel {k}; median of {reps})",
                ["batch x frames", "implementation", "forward ms", "forward + backward ms", "error vs float64"],
                [[f"{r['shape'][0]} x {r['shape'][2]}", r["impl"], r["forward_ms"], r["forward_backward_ms"],
                  f"{r['rel_error']:.1e}"] for r in rows])  # fmt: skip
    return {"rows": rows}


# ---------------------------------------------------------------------------------------------- numerics
def _cos_min(a, b) -> float:  # noqa: ANN001
    import torch

    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).min())


def numerics(args, device, check: Check) -> dict:  # noqa: ANN001
    import torch

    res: dict = {"tolerance": TOL}
    checks = []
    for name in ("utterance", "gmp"):
        stage, model, geo = _stage_model(args, name, device)
        model.eval()  # no dropout: the two passes see the same network
        batch = {k: v.to(device) for k, v in _batches(args, stage, 1, geo, args.seed + 1)[0].items()}
        outs = {}
        for bf16 in (False, True):
            model.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                h, valid = model.frames(batch["wave"], batch["n_samples"])
                out = model(batch["wave"], batch["n_samples"])
                loss, _ = stage.loss(out, batch, None)
                pooled = model.pooling(h, valid) if name == "utterance" else h[valid]
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            finite = bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads)
            finite = finite and all(bool(torch.isfinite(v.float()).all()) for v in out.values())
            outs[bf16] = (float(loss.detach()), pooled.detach(), finite)
        (l32, e32, f32), (l16, e16, f16) = outs[False], outs[True]
        rel = abs(l16 - l32) / max(abs(l32), 1e-12)
        cos = _cos_min(e16, e32)
        ok = f32 and f16 and rel <= TOL["loss_rel"] and cos >= TOL["embedding_cosine_min"]
        checks.append({"stage": name, "loss_fp32": round(l32, 5), "loss_bf16": round(l16, 5),
                       "loss_rel_diff": round(rel, 5), "embedding_cosine_min": round(cos, 5),
                       "what": "pooled utterance embeddings" if name == "utterance" else "valid frame states",
                       "finite": f32 and f16, "ok": ok})  # fmt: skip
        del model
    lengths = iemocap_like_lengths(args.n_numerics, args.seed + 2)
    waves = waveforms(lengths, args.seed + 2)
    feats = {}
    for bf16 in (False, True):
        # fp32 with conv1d's positional convolution, against what a GPU runs by default (bf16, FFT conv).
        ext, _ = _extractor(args, device, bf16, 160.0, fft=None if bf16 else False)
        feats[bf16] = ext.encode(waves)  # float32 out: the comparison is of the forward's precision
        del ext
    cos = min(
        _cos_min(torch.from_numpy(a[L]), torch.from_numpy(b[L]))
        for a, b in zip(feats[False], feats[True], strict=True)
        for L in a
    )
    finite = all(np.isfinite(u[L]).all() for u in feats[True] for L in u)
    checks.append({"stage": "extraction", "feature_cosine_min": round(cos, 5), "finite": bool(finite),
                   "what": f"layers {_layers(args)} of {args.n_numerics} utterances",
                   "ok": bool(finite) and cos >= TOL["feature_cosine_min"]})  # fmt: skip
    res["checks"] = checks
    res["all_ok"] = all(c["ok"] for c in checks)
    check.table(f"bf16 against fp32 on one batch (tolerances: {TOL})",
                ["what", "fp32 loss", "bf16 loss", "rel. diff", "min cosine", "finite", "within"],
                [[f"{c['stage']}: {c['what']}", c.get("loss_fp32", "-"), c.get("loss_bf16", "-"),
                  c.get("loss_rel_diff", "-"), c.get("embedding_cosine_min", c.get("feature_cosine_min")),
                  c["finite"], c["ok"]] for c in checks])  # fmt: skip
    return res


# ---------------------------------------------------------------------------------------------- tests
def gpu_tests(check: Check) -> dict:
    limit = max(30.0, min(180.0, check.left_s() - 10))
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rA", *GPU_TESTS]
    try:
        proc = subprocess.run(cmd, cwd=REPO, timeout=limit, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"rc": None, "error": f"did not finish in {limit:.0f} s"}
    tail = (proc.stdout + proc.stderr)[-2500:]
    print(tail, flush=True)
    lines = [ln for ln in tail.splitlines() if ln.startswith(("PASSED", "FAILED", "SKIPPED", "ERROR"))]
    check.table(
        "gpu-marked tests (no Ray, no faiss)",
        ["result"],
        [[ln] for ln in lines] or [[f"rc {proc.returncode}"]],
    )
    return {"rc": proc.returncode, "results": lines, "tail": tail}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu_check"), help="output folder")
    ap.add_argument("--device", default=None, help="cuda (default when there is one) or cpu")
    ap.add_argument("--backbone", default="base", help="model preset (base: HuBERT-base shapes)")
    ap.add_argument(
        "--budget-s", type=float, default=420.0, help="wall-clock budget; later parts are cut to fit"
    )
    ap.add_argument("--n-extract", type=int, default=1024, help="utterances per extraction pass")
    ap.add_argument("--budgets", type=float, nargs="+", default=[160.0, 640.0, 1280.0],
                    help="features.batch_max_audio_s values tried in bf16")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per extraction variant")
    ap.add_argument("--steps", type=int, default=15, help="timed training steps per run")
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=0, help="0 = the job's per-worker batch")
    ap.add_argument("--compile-limit-s", type=float, default=150.0)
    ap.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["posconv", "extraction", "compile", "training", "numerics", "tests"],
    )
    ap.add_argument("--n-numerics", type=int, default=16, help="utterances of the extraction numerics check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="toy sizes (a CPU smoke run of every section)")
    ap.add_argument("--compiled-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    import torch

    if args.quick:
        args.n_extract, args.budgets, args.repeats, args.n_numerics = 4, [20.0], 1, 2
        args.steps, args.warmup_steps, args.batch_size = 1, 1, args.batch_size or 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.compiled_worker:
        compiled_worker(args)
        return {}
    out = Path(args.out)
    check = Check(out, args)
    check.data["environment"] = environment(device)
    ex = None
    if "posconv" not in args.skip:
        check.section("posconv", lambda: posconv(args, device, check))
    if "extraction" not in args.skip:
        ex = check.section("extraction", lambda: extraction(args, device, check))
    if "training" not in args.skip:
        check.section("training", lambda: training(args, device, check))
    if "numerics" not in args.skip:
        check.section("numerics", lambda: numerics(args, device, check))
    if "tests" not in args.skip:
        check.section("tests", lambda: gpu_tests(check))
    if "compile" not in args.skip and ex:
        best = max(ex["variants"], key=lambda v: v["x_real_time"])
        check.section("compile", lambda: compiled_extraction(args, device, check, best["batch_max_audio_s"]))
    check.write()
    # The tables once more, together at the end (where a log's tail is read), and any failed section.
    print("\n" + "\n".join(check.md))
    for name, err in check.data["errors"].items():
        print(f"\nsection {name} FAILED: {err}")
    print(f"\nwrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} in {check.data['elapsed_s']:.0f} s")
    return check.data


if __name__ == "__main__":
    main()
