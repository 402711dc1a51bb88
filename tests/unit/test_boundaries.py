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
