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
    "gmptl.locks",
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


# Imports point down this order (a package may import its own level and below, never above): the step
# graph, config and small leaf modules first, the pipeline's packages in pipeline order, the
# orchestrator, the tuner and the command line last.
LEVELS = {
    **dict.fromkeys(
        ("errors", "config", "files", "locks", "paths", "steps", "runtime", "progress", "plots", "tracking"),
        0,
    ),
    "data": 1,
    "models": 2,
    "features": 3,
    "clustering": 4,
    "training": 5,
    "evaluation": 6,
    "inference": 6,
    "pretraining": 6,
    "experiment": 7,
    "ablations": 7,
    "tuning": 8,
    "submit": 9,
    "submit_client": 9,
    "cli": 9,
}


def _gmptl_imports():
    """(importing module, imported module, imported names) for every import of gmptl, also inside functions."""
    import ast
    from pathlib import Path

    for f in sorted(Path("gmptl").rglob("*.py")):
        mod = ".".join(f.with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gmptl":
                names = [a.name for a in node.names]
                if node.module == "gmptl":  # from gmptl import paths, steps
                    for name in names:
                        yield mod, f"gmptl.{name}", []
                else:
                    yield mod, node.module, names
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "gmptl":
                        yield mod, a.name, []


def _level(module: str) -> int:
    parts = module.split(".")
    return 0 if len(parts) == 1 else LEVELS[parts[1]]


def test_no_import_runs_back_up():
    upward = [f"{m} imports {t}" for m, t, _ in _gmptl_imports() if _level(t) > _level(m)]
    assert not upward, upward
    assert all(p.stem in LEVELS or p.name == "__init__.py" for p in __import__("pathlib").Path("gmptl").iterdir()
               if p.suffix == ".py" or p.is_dir() and (p / "__init__.py").is_file()), "a new module needs a level"  # fmt: skip


def test_nothing_imports_another_modules_private_name():
    private = [
        f"{m}: from {t} import {n}" for m, t, names in _gmptl_imports() for n in names if n.startswith("_")
    ]
    assert not private, private
