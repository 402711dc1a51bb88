"""What one Ray Train fit costs before any training: the fixed price every stage of every fold pays.

A trivial TorchTrainer fit (one worker; its function only imports gmptl's training worker module, as every
real stage does) is timed from `fit()` to its return, with Ray Train's defaults and with the settings
`gmptl.runtime.ensure_ray` gives an embedded Ray (no preemption watcher, 0.5 s health checks). Each
setting runs in a fresh process with its own local Ray, sequentially and then 3 fits at once.

    .venv/bin/python bench/bench_fit_overhead.py [--repeats 3] [--cpus-per-worker 0.8]

Prints a table and writes bench/results/fit_overhead.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gmptl.runtime import EMBEDDED_RAY_ENV

SETTINGS = {"ray defaults": {}, "gmptl embedded": EMBEDDED_RAY_ENV}


def child(repeats: int, cpus: float) -> None:
    import concurrent.futures as cf
    import tempfile

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    storage = tempfile.mkdtemp(prefix="fit_overhead_")

    def loop(config: dict) -> None:
        t0 = time.time()
        import gmptl.training.worker  # noqa: F401  (what a real stage's worker imports first)

        Path(config["out"]).write_text(json.dumps({"start": t0, "import_s": time.time() - t0}))

    def fit(i: int) -> dict:
        out = Path(storage, f"{i}.json")
        t0 = time.time()
        TorchTrainer(
            loop,
            train_loop_config={"out": str(out)},
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": cpus}),
            run_config=ray.train.RunConfig(name=f"fit{i}", storage_path=storage),
        ).fit()
        w = json.loads(out.read_text())
        return {"total_s": time.time() - t0, "to_worker_s": w["start"] - t0, "import_s": w["import_s"]}

    fit(-1)  # warm-up: the first fit also pays for Ray's worker-pool start
    sequential = [fit(i) for i in range(repeats)]
    t0 = time.time()
    with cf.ThreadPoolExecutor(3) as ex:
        list(ex.map(fit, range(100, 103)))
    print(json.dumps({"sequential": sequential, "three_at_once_s": time.time() - t0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpus-per-worker", type=float, default=0.8)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.repeats, args.cpus_per_worker)
        return
    results = {}
    for name, env in SETTINGS.items():
        clean = {k: v for k, v in os.environ.items() if k not in EMBEDDED_RAY_ENV}
        proc = subprocess.run(
            [sys.executable, __file__, "--child", "--repeats", str(args.repeats),
             "--cpus-per-worker", str(args.cpus_per_worker)],
            env={**clean, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **env},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"| setting | fit, median of {args.repeats} (s) | fit() to worker start (s) | worker imports (s) "
          "| 3 fits at once (s) |\n|---|---:|---:|---:|---:|")  # fmt: skip
    for name, r in results.items():
        med = {
            k: statistics.median(x[k] for x in r["sequential"])
            for k in ("total_s", "to_worker_s", "import_s")
        }
        r["median"] = med
        print(f"| {name} | {med['total_s']:.1f} | {med['to_worker_s']:.1f} | {med['import_s']:.1f} "
              f"| {r['three_at_once_s']:.1f} |")  # fmt: skip
    out = Path(__file__).parent / "results" / "fit_overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"cpus_per_worker": args.cpus_per_worker, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
