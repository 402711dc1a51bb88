"""Grouping whole utterances into padded batches by length (extraction, evaluation, prediction)."""

from __future__ import annotations

from collections.abc import Sequence


def length_batches(lengths: Sequence[int], max_batch_samples: int) -> list[list[int]]:
    """Whole utterances sorted by length, grouped so a padded batch holds at most ``max_batch_samples``.

    Sorted ascending, the newest member of a batch is its longest, so a batch's padded size is its count
    times that length; an utterance longer than the budget makes a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > max_batch_samples:
            batches.append(cur)
            cur = []
        cur.append(i)
    return batches + ([cur] if cur else [])
