import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from gmptl.clustering.quality import contingency, frame_truth, purity_nmi, usage


def test_purity_nmi_match_sklearn():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 5000)
    labels = (truth * 3 + rng.integers(0, 3, 5000)) % 10  # informative but impure
    labels[:1000] = rng.integers(0, 10, 1000)
    q = purity_nmi(contingency(labels, truth, 10, 4))
    assert abs(q["nmi"] - normalized_mutual_info_score(truth, labels)) < 1e-9
    expected_purity = sum(np.bincount(truth[labels == c]).max() for c in np.unique(labels)) / len(truth)
    assert abs(q["purity"] - expected_purity) < 1e-12


def test_usage():
    u = usage(np.array([5, 5, 0, 0]))
    assert (
        u["clusters_used"] == 2
        and abs(u["entropy_bits"] - 1.0) < 1e-12
        and abs(u["entropy_norm"] - 0.5) < 1e-12
    )


def test_frame_truth_uses_frame_centres():
    segs = [(0.0, 1.0, "sad"), (1.0, 2.5, "angry")]
    t = frame_truth(segs, 124, 0.02, 0.025, ["neutral", "happy", "sad", "angry"])
    # frame 49 is centred at 0.9925 s (sad), frame 50 at 1.0125 s (angry)
    assert t[49] == 2 and t[50] == 3 and (t[:50] == 2).all() and (t[50:] == 3).all()
