"""Losses against direct NumPy evaluations of their formulas; metrics against scikit-learn."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score

from gmptl.training import losses, metrics


def _am_softmax_numpy(cos: np.ndarray, y: np.ndarray, s: float, m: float) -> float:
    # AM-Softmax: L = -log( e^{s(cos_y - m)} / (e^{s(cos_y - m)} + sum_{j != y} e^{s cos_j}) ), batch mean
    out = []
    for c, t in zip(cos, y, strict=True):
        num = np.exp(s * (c[t] - m))
        den = num + sum(np.exp(s * c[j]) for j in range(len(c)) if j != t)
        out.append(-np.log(num / den))
    return float(np.mean(out))


@pytest.mark.parametrize(("s", "m"), [(30.0, 0.35), (10.0, 0.1), (1.0, 0.0)])
def test_am_softmax_matches_formula(s, m):
    rng = np.random.default_rng(0)
    cos = np.tanh(rng.normal(size=(16, 4)))
    y = rng.integers(0, 4, 16)
    got = losses.am_softmax(torch.tensor(cos), torch.tensor(y), s, m).item()
    assert got == pytest.approx(_am_softmax_numpy(cos, y, s, m), rel=1e-6)


def test_am_softmax_zero_margin_is_scaled_cross_entropy():
    cos = torch.rand(8, 5) * 2 - 1
    y = torch.randint(0, 5, (8,))
    assert torch.allclose(losses.am_softmax(cos, y, 30.0, 0.0), F.cross_entropy(30.0 * cos, y))


def test_am_softmax_margin_raises_loss():
    cos = torch.rand(8, 4) * 2 - 1
    y = torch.randint(0, 4, (8,))
    assert losses.am_softmax(cos, y, 30.0, 0.35) > losses.am_softmax(cos, y, 30.0, 0.0)


def test_frame_cross_entropy_counts_selected_frames_only():
    torch.manual_seed(0)
    z = torch.randn(2, 6, 8)
    y = torch.randint(0, 8, (2, 6))
    select = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 1, 0, 1, 0]], dtype=torch.bool)
    total, per = losses.frame_cross_entropy({"k8": z, "k8b": z}, {"k8": y, "k8b": y}, select)
    expect = F.cross_entropy(z[select], y[select])
    assert torch.allclose(per["k8"], expect)
    assert torch.allclose(total, 2 * expect)
    # garbage labels on unselected frames (padding = -1) change nothing
    y2 = y.clone()
    y2[~select] = -1
    assert torch.allclose(losses.frame_cross_entropy({"k8": z}, {"k8": y2}, select)[0], expect)


def test_frame_cross_entropy_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="k4"):
        losses.frame_cross_entropy(
            {"k4": torch.randn(2, 5, 4)},
            {"k4": torch.zeros(2, 6, dtype=torch.long)},
            torch.ones(2, 5, dtype=bool),
        )


def test_mtl_loss_and_class_weights():
    assert losses.mtl_loss(torch.tensor(2.0), torch.tensor(4.0), 0.8).item() == pytest.approx(2.4)
    assert losses.mtl_loss(torch.tensor(2.0), torch.tensor(4.0), 1.0).item() == pytest.approx(2.0)
    w = losses.class_weights(torch.tensor([10, 30, 0, 20]))
    assert w[2] == 0 and w[0] > w[3] > w[1]
    assert w[w > 0].mean().item() == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, 200))
    if seed == 2:  # a class that never occurs as truth
        y[y == 3] = 0
    cm = metrics.confusion_matrix(y, p, 4)
    assert metrics.war(cm) == pytest.approx(accuracy_score(y, p))
    assert metrics.uar(cm) == pytest.approx(balanced_accuracy_score(y, p))
    assert metrics.macro_f1(cm) == pytest.approx(
        f1_score(y, p, average="macro", labels=range(4), zero_division=0)
    )
    present = sorted(set(y))
    recalls = recall_score(y, p, labels=present, average=None)
    assert np.allclose(metrics.per_class_recall(cm)[present], recalls)


def test_summed_confusion_is_not_mean_of_shard_accuracies():
    # Two shards of different size: the global WAR comes from summed counts.
    a = metrics.confusion_matrix(np.array([0, 0, 0, 0, 1, 1, 1, 1]), np.array([0, 0, 0, 0, 1, 1, 1, 1]), 2)
    b = metrics.confusion_matrix(np.array([0, 1]), np.array([1, 0]), 2)
    assert metrics.war(a + b) == pytest.approx(0.8)
    assert (metrics.war(a) + metrics.war(b)) / 2 == pytest.approx(0.5)


def test_confusion_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        metrics.confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
