"""Pure modules never import the distributed runtime or the tracker (the layout rule: pure math and data code runs without a cluster)."""

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
    "gmptl.tuning.space",
    "gmptl.tuning.trials",
    "gmptl.tuning.locks",
    "gmptl.steps",
]


def _imported(modules: list[str], banned: tuple[str, ...]) -> str:
    """Import ``modules`` in a fresh interpreter; the banned top-level packages that came along."""
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {banned!r})\n"
        "print(','.join(bad))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_pure_modules_import_neither_ray_nor_mlflow():
    out = _imported(PURE, ("ray", "mlflow", "torch"))
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
    "gmptl.inference.predict",
    "gmptl.inference.export",
    "gmptl.ablations",
    "gmptl.plots",
    "gmptl.clustering.labels",
]


def test_torch_modules_import_neither_ray_nor_mlflow():
    out = _imported(TORCH_PURE, ("ray", "mlflow"))
    assert out == "", f"pulled in: {out[:200]}"
