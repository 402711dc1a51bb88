"""``gmptl predict --out FILE.parquet``: the predictor as Ray Data batch inference, for large folders.

    file list (driver) -> decode + predict (actor pool, model loaded once per actor; optional PNGs)
      -> materialise -> bad files counted and reported -> write_parquet(FILE.parquet)

Output: ``FILE.parquet`` is a Parquet dataset folder (one file per block; ``pandas.read_parquet``
reads it whole) with one row per predicted file: ``path``, ``emotion``, ``probabilities``
(struct label -> p), ``frames`` (list of struct start_s, end_s, emotion): the fields of
the JSON lines. Beside it, ``<stem>.report.json``: counts, every skipped file with its
reason, the model and the track settings. A file named explicitly that cannot be decoded
is an error (nothing is written); files found in folders are skipped and listed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gmptl.config import RuntimeConfig
from gmptl.data.audio import AudioError
from gmptl.errors import BadInputError
from gmptl.inference.predict import AudioInput, InferenceError, Predictor, Skipped, skip_or_raise

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    out: Path
    report: Path
    n_files: int
    n_predicted: int
    skipped: list[Skipped]
    wall_s: float


def _schema(labels: list[str]) -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("emotion", pa.string()),
            ("probabilities", pa.struct([(lab, pa.float64()) for lab in labels])),
            (
                "frames",
                pa.list_(
                    pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("emotion", pa.string())])
                ),
            ),  # fmt: skip
            ("error", pa.string()),
        ]
    )


class PredictActor:
    """Ray Data actor: loads the model once; decodes and predicts one batch of files per call."""

    def __init__(
        self, model_dir: str, options: dict[str, Any], png_dir: str | None, n_threads: int, device: str
    ):
        import torch

        torch.set_num_threads(n_threads)
        self.predictor = Predictor(model_dir, device=device, **options)
        self.png_dir = Path(png_dir) if png_dir else None
        self.schema = _schema(self.predictor.labels)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        rows: list[dict[str, Any]] = []
        waves, ok = [], []
        for path, name in zip(batch["path"], batch["name"], strict=True):
            inp = AudioInput(Path(str(path)), False, str(name))
            try:
                waves.append(self.predictor.load(inp.path))
                ok.append(inp)
            except AudioError as e:
                # Never raise here: the driver decides (a named file is an error, a folder's file is skipped).
                rows.append({"path": str(inp.path), "emotion": None, "probabilities": None, "frames": None,
                             "error": e.reason})  # fmt: skip
        for inp, wave, pred in zip(
            ok, waves, self.predictor.predict(waves, [str(i.path) for i in ok]), strict=True
        ):
            if self.png_dir is not None:
                self.predictor.plot(wave, pred, self.png_dir / f"{inp.name}.png")
            rows.append(pred.as_dict() | {"error": None})
        return pa.Table.from_pylist(rows, schema=self.schema)


def _n_workers(requested: int, cpus_per_worker: float, gpus_per_worker: float) -> int:
    import ray

    res = ray.cluster_resources()
    if requested:
        n = requested
    elif gpus_per_worker > 0:
        n = max(1, int(res.get("GPU", 0) / gpus_per_worker))
    else:
        n = max(1, int((res.get("CPU", 1) - 1) / cpus_per_worker))
    # Ray Data waits forever, without an error, when the actors leave no CPU for the other tasks.
    cpus = res.get("CPU", 0)
    if n * cpus_per_worker >= cpus and not gpus_per_worker:
        raise InferenceError(
            f"{n} prediction actors x {cpus_per_worker:g} CPUs claim all {cpus:g} CPUs of the cluster and leave "
            "none for Ray Data's other tasks (it would wait forever); lower --num-workers or --num-cpus-per-worker"
        )
    return n


def predict_to_parquet(
    model_dir: str | Path,
    inputs: list[AudioInput],
    out: str | Path,
    runtime_cfg: RuntimeConfig,
    options: dict[str, Any] | None = None,
    png_dir: str | Path | None = None,
    num_workers: int = 0,
    num_cpus_per_worker: float = 1.0,
    num_gpus_per_worker: float = 0.0,
    files_per_batch: int = 16,
) -> BatchResult:
    """Predict ``inputs`` on a Ray Data actor pool and write ``out`` (see module docstring)."""
    import ray
    from ray.data.expressions import col

    from gmptl.inference.predict import check_model_folder
    from gmptl.runtime import actor_fault_bounds, ensure_ray

    t0 = time.perf_counter()
    out = Path(out).expanduser().absolute()
    if out.exists():
        raise InferenceError(f"--out {out} exists; give a new path (predictions never overwrite)")
    model_dir = check_model_folder(Path(model_dir).absolute())
    ensure_ray(runtime_cfg)
    n_workers = min(_n_workers(num_workers, num_cpus_per_worker, num_gpus_per_worker),
                    -(-len(inputs) // files_per_batch))  # fmt: skip
    remote_args: dict[str, Any] = {"num_cpus": num_cpus_per_worker} | actor_fault_bounds(runtime_cfg)
    if num_gpus_per_worker > 0:
        remote_args["num_gpus"] = num_gpus_per_worker
    items = [{"path": str(i.path), "name": i.name} for i in inputs]
    ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // files_per_batch)))
    ds = ds.map_batches(
        PredictActor,
        fn_constructor_kwargs={
            "model_dir": str(model_dir),
            "options": options or {},
            "png_dir": str(Path(png_dir).absolute()) if png_dir else None,
            "n_threads": max(1, int(num_cpus_per_worker)),
            "device": "cuda" if num_gpus_per_worker > 0 else "cpu",
        },
        batch_size=files_per_batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=n_workers),
        **remote_args,
    ).materialize()
    failed = ds.filter(expr=col("error").is_not_null()).select_columns(["path", "error"]).take_all()
    explicit = {str(i.path): i for i in inputs if i.explicit}
    skipped = []
    for row in failed:
        inp = explicit.get(row["path"]) or AudioInput(Path(row["path"]), False, "")
        skipped.append(skip_or_raise(inp, AudioError(row["path"], row["error"])))  # raises for a named file
    n_predicted = len(inputs) - len(skipped)
    if n_predicted == 0:
        raise BadInputError(
            f"none of the {len(inputs)} files could be read: {skipped[0].path}: {skipped[0].reason}"
        )
    ds.filter(expr=col("error").is_null()).drop_columns(["error"]).write_parquet(str(out))
    result = BatchResult(out, out.with_name(out.stem + ".report.json"), len(inputs), n_predicted, skipped,
                         time.perf_counter() - t0)  # fmt: skip
    report = {
        "out": str(out),
        "model": str(model_dir),
        "options": options or {},
        "n_files": len(inputs),
        "n_predicted": n_predicted,
        "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
        "wall_s": round(result.wall_s, 2),
        "n_workers": n_workers,
    }
    result.report.write_text(json.dumps(report, indent=2) + "\n")
    return result
