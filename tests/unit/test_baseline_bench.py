"""bench/baseline_logmel.py picks its regularisation on the validation speakers, never the test speakers."""

import importlib.util
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[2] / "bench" / "baseline_logmel.py"


def _module():
    spec = importlib.util.spec_from_file_location("baseline_logmel", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_c_is_chosen_on_validation_and_test_is_scored_once():
    mod = _module()
    rng = np.random.default_rng(0)
    classes = ["a", "b"]
    # Feature 0 separates the classes in train and validation; in test the relation is inverted, so a
    # C chosen by looking at the test part could not rescue the score: test UAR must come out low.
    y = np.array(["a", "b"] * 60)
    sign = np.where(y == "a", -1.0, 1.0)
    x = np.c_[sign + 0.1 * rng.normal(size=120), rng.normal(size=120)]
    part = np.array(["train"] * 60 + ["validation"] * 30 + ["test"] * 30)
    x[part == "test", 0] *= -1
    res = mod.fold_scores(x, y, part, classes)
    assert res["C"] in mod.C_GRID
    assert res["val_uar"] > 0.9
    assert res["test_uar"] < 0.1
    assert (res["n_train"], res["n_test"]) == (60, 30)
