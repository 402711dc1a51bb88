"""Two gloo ranks holding different shards: metrics come from the summed confusion matrix."""

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp

from gmptl.training import metrics
from gmptl.training.loop import EpochStats, all_reduce_stats

SHARDS = {
    # rank 0: 8 examples, all right; rank 1: 2 examples, both wrong
    0: (np.array([0, 0, 1, 1, 2, 2, 3, 3]), np.array([0, 0, 1, 1, 2, 2, 3, 3])),
    1: (np.array([0, 1]), np.array([1, 0])),
}


def _rank(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    true, pred = SHARDS[rank]
    s = EpochStats(4, loss_sum=float(len(true)) * (rank + 1), n_examples=len(true),
                   confusion=metrics.confusion_matrix(true, pred, 4), frame_hits={"k8": 10 * (rank + 1)},
                   frame_count=100, parts={"ce": 1.0}, wall_s=1.0 + rank)  # fmt: skip
    r = all_reduce_stats(s)
    np.save(f"{out}{rank}.npy", np.array([r.n_examples, r.loss_sum, r.frame_hits["k8"], r.frame_count, r.wall_s,
                                          *r.confusion.ravel()], dtype=float))  # fmt: skip
    dist.destroy_process_group()


def test_all_reduce_sums_confusion_before_metrics(tmp_path):
    init = f"file://{tmp_path / 'pg'}"
    mp.spawn(_rank, args=(init, str(tmp_path / "r")), nprocs=2, join=True)
    got = [np.load(tmp_path / f"r{r}.npy") for r in range(2)]
    assert np.array_equal(got[0], got[1])  # every rank sees the same global numbers
    n, loss_sum, hits, count, wall, *cm = got[0]
    cm = np.array(cm).reshape(4, 4).astype(int)
    assert n == 10 and loss_sum == 8 + 4 and hits == 30 and count == 200 and wall == 2.0
    assert metrics.war(cm) == 0.8  # 8 of 10, not the mean of per-rank accuracies (0.5)
    stats = EpochStats(4, loss_sum=loss_sum, n_examples=int(n), confusion=cm)
    assert stats.metrics("val_")["val_war"] == 0.8
