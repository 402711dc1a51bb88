"""Pure modules never import the distributed runtime or the tracker (STYLE.md section 1)."""

import subprocess
import sys

PURE = [
    "gmptl.config",
    "gmptl.paths",
    "gmptl.data.audio",
    "gmptl.data.manifest",
    "gmptl.data.corpora",
    "gmptl.data.prepare",
    "gmptl.data.folds",
    "gmptl.data.synth",
    "gmptl.data.logmel",
]


def test_pure_modules_import_neither_ray_nor_mlflow():
    code = (
        "import importlib, sys\n"
        f"for m in {PURE!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow', 'torch'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"pure modules pulled in: {out[:200]}"


# Math, models and the shared loop may use torch, never the distributed runtime or the tracker.
TORCH_PURE = [
    "gmptl.clustering.kmeans",
    "gmptl.features.extractor",
    "gmptl.models.backbone",
    "gmptl.models.heads",
    "gmptl.models.factory",
    "gmptl.training.losses",
    "gmptl.training.metrics",
    "gmptl.training.data",
    "gmptl.training.stages",
    "gmptl.training.loop",
    "gmptl.training.checkpoint",
    "gmptl.training.worker",  # imports ray lazily, inside the function Ray Train runs
    "gmptl.evaluation.plots",
]


def test_torch_modules_import_neither_ray_nor_mlflow():
    code = (
        "import importlib, sys\n"
        f"for m in {TORCH_PURE!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"pulled in: {out[:200]}"
