"""The one training/evaluation loop every stage shares (no Ray, no MLflow).

``run_epoch`` trains when given an optimizer and evaluates otherwise. It returns
*sums* (loss x examples, confusion counts, frame hits, samples): quantities that
add up across workers, so :func:`all_reduce_stats` can combine ranks before any
metric is derived.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from gmptl.training import metrics
from gmptl.training.stages import Stage


@dataclass
class EpochStats:
    n_classes: int
    loss_sum: float = 0.0
    n_examples: int = 0
    parts: dict[str, float] = field(default_factory=dict)  # name -> sum over examples
    confusion: np.ndarray | None = None  # (C, C) emotion counts, stages 0 and 2
    frame_hits: dict[str, int] = field(default_factory=dict)  # stream -> frames predicted right
    frame_count: int = 0  # valid frames scored
    masked_hits: dict[str, int] = field(default_factory=dict)  # stream -> masked frames predicted right
    masked_count: int = 0  # valid masked frames scored
    real_samples: int = 0
    padded_samples: int = 0
    n_steps: int = 0
    wall_s: float = 0.0

    def __post_init__(self) -> None:
        if self.confusion is None:
            self.confusion = np.zeros((self.n_classes, self.n_classes), np.int64)

    def metrics(
        self, prefix: str, labels: list[str] | None = None, sample_rate_hz: int = 16000
    ) -> dict[str, float]:
        n = max(self.n_examples, 1)
        out = {f"{prefix}loss": self.loss_sum / n} | {f"{prefix}{k}": v / n for k, v in self.parts.items()}
        if self.confusion is not None and self.confusion.sum():
            out |= {f"{prefix}{k}": v for k, v in metrics.summarize(self.confusion, labels).items()}
        if self.frame_count:
            out |= {f"{prefix}frame_acc_{k}": v / self.frame_count for k, v in self.frame_hits.items()}
        if self.masked_count:
            out |= {f"{prefix}masked_acc_{k}": v / self.masked_count for k, v in self.masked_hits.items()}
            rest = self.frame_count - self.masked_count
            if rest > 0:
                out |= {f"{prefix}unmasked_acc_{k}": (self.frame_hits[k] - v) / rest
                        for k, v in self.masked_hits.items()}  # fmt: skip
        if self.padded_samples:
            out[f"{prefix}padding_waste"] = 1.0 - self.real_samples / self.padded_samples
        if self.wall_s > 0:
            out[f"{prefix}audio_s_per_s"] = self.real_samples / sample_rate_hz / self.wall_s
        return out


def all_reduce_stats(stats: EpochStats) -> EpochStats:
    """Sum every count over the DDP ranks (wall time: the max); identity without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return stats
    part_keys = sorted(stats.parts)
    hit_keys = sorted(stats.frame_hits)
    masked_keys = sorted(stats.masked_hits)
    assert stats.confusion is not None
    vec = torch.tensor(
        [
            stats.loss_sum,
            stats.n_examples,
            stats.frame_count,
            stats.real_samples,
            stats.padded_samples,
            stats.masked_count,
        ]
        + [stats.parts[k] for k in part_keys]
        + [stats.frame_hits[k] for k in hit_keys]
        + [stats.masked_hits[k] for k in masked_keys]
        + stats.confusion.ravel().tolist(),
        dtype=torch.float64,
    )
    dist.all_reduce(vec, op=dist.ReduceOp.SUM)
    wall = torch.tensor([stats.wall_s], dtype=torch.float64)
    dist.all_reduce(wall, op=dist.ReduceOp.MAX)
    v = vec.tolist()
    head, v = v[:6], v[6:]
    n_p, n_h, n_m = len(part_keys), len(hit_keys), len(masked_keys)
    return EpochStats(
        n_classes=stats.n_classes,
        loss_sum=head[0],
        n_examples=int(head[1]),
        frame_count=int(head[2]),
        real_samples=int(head[3]),
        padded_samples=int(head[4]),
        masked_count=int(head[5]),
        parts=dict(zip(part_keys, v[:n_p], strict=True)),
        frame_hits={k: int(x) for k, x in zip(hit_keys, v[n_p : n_p + n_h], strict=True)},
        masked_hits={k: int(x) for k, x in zip(masked_keys, v[n_p + n_h : n_p + n_h + n_m], strict=True)},
        confusion=np.rint(v[n_p + n_h + n_m :]).astype(np.int64).reshape(stats.n_classes, stats.n_classes),
        n_steps=stats.n_steps,
        wall_s=float(wall.item()),
    )


def span_mask(
    n_frames: torch.Tensor, width: int, prob: float, length: int, gen: torch.Generator
) -> torch.Tensor:
    """HuBERT-style time mask (B, width) bool over each utterance's valid frames.

    Per utterance of n frames: ``int(prob * n / length + u)`` spans (u ~ U[0, 1), fairseq's
    rounding), starts drawn without replacement, each span ``length`` frames (clipped at n).
    """
    mask = torch.zeros(len(n_frames), width, dtype=torch.bool)
    for i, n in enumerate(n_frames.tolist()):
        if n < 1 or prob <= 0:
            continue
        n_spans = int(prob * n / length + torch.rand((), generator=gen).item())
        n_spans = min(n_spans, max(n - length + 1, 1))
        if n_spans == 0:
            continue
        starts = torch.randperm(max(n - length + 1, 1), generator=gen)[:n_spans]
        for s in starts.tolist():
            mask[i, s : min(s + length, n)] = True
    return mask


def lr_lambda(total_steps: int, warmup_fraction: float):  # noqa: ANN201
    """Linear warm-up over ``warmup_fraction`` of the steps, then linear decay to 0 (docs/method.md)."""
    warm = max(1, math.ceil(total_steps * warmup_fraction)) if warmup_fraction > 0 else 0

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return f


def _with_last(items: Iterable):  # noqa: ANN202
    """Yield (item, is_last) pairs."""
    it = iter(items)
    try:
        prev = next(it)
    except StopIteration:
        return
    for item in it:
        yield prev, False
        prev = item
    yield prev, True


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def run_epoch(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    stage: Stage,
    device: torch.device,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    mask_gen: torch.Generator | None = None,
    bf16: bool = False,
) -> EpochStats:
    """One pass over ``batches``: trains when ``optimizer`` is given, else evaluates (no grad).

    In training, ``stage.cfg.grad_accum_steps`` micro-batches make one optimizer step
    (DDP gradient sync only on the last: ``no_sync``), gradients are clipped to
    ``max_grad_norm``, and time masking uses ``mask_gen``. A stage that ``masks_in_eval`` is masked
    in evaluation too (``mask_gen`` then fixes which frames).
    """
    train = optimizer is not None
    cfg = stage.cfg
    inner = _unwrap(model)
    model.train(train)
    stats = EpochStats(stage.n_emotions)
    t0 = time.perf_counter()
    accum = cfg.grad_accum_steps if train else 1
    n_total = len(batches) if hasattr(batches, "__len__") else None
    pending = 0
    seen = 0
    with torch.set_grad_enabled(train):
        for batch, last in _with_last(batches):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            masked = None
            if cfg.mask_prob > 0 and (train or (stage.masks_in_eval and mask_gen is not None)):
                n_fr = inner.n_frames(batch["n_samples"]).cpu()
                width = int(inner.n_frames(torch.tensor(batch["wave"].shape[1])))
                masked = span_mask(n_fr, width, cfg.mask_prob, cfg.mask_length, mask_gen).to(device)
            # The loss of a micro-batch is divided by the size of its accumulation group: the last group
            # of an epoch may be shorter than grad_accum_steps (needs len(batches) to know it).
            group = accum if n_total is None else min(accum, n_total - (seen - pending))
            pending += 1
            seen += 1
            # Sync (and step) every `accum` micro-batches and on the last one, so no gradient is dropped
            # and every rank steps on gradients averaged over all ranks.
            sync = not train or pending == accum or last
            ctx = (
                model.no_sync()
                if (train and not sync and hasattr(model, "no_sync"))
                else contextlib.nullcontext()
            )
            with ctx, torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(batch["wave"], batch["n_samples"], masked)
                loss, parts = stage.loss(out, batch, masked)
            value = float(loss.detach())
            if not math.isfinite(value):
                # One step on an inf/NaN loss turns every weight into NaN: stop here, with what to change.
                raise FloatingPointError(
                    f"the {'training' if train else 'validation'} loss is {value} on a batch of "
                    f"{len(batch['n_samples'])} utterances; lower stages.<stage>.lr, set stages.<stage>.max_grad_norm, "
                    "or check the input audio"
                )
            if train:
                (loss / group).backward()
                if sync:
                    if cfg.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if scheduler is not None:
                        scheduler.step()
                    stats.n_steps += 1
                    pending = 0
            b = len(batch["n_samples"])
            stats.loss_sum += value * b
            stats.n_examples += b
            for k, v in parts.items():
                stats.parts[k] = stats.parts.get(k, 0.0) + float(v.detach()) * b
            stats.real_samples += int(batch["n_samples"].sum())
            stats.padded_samples += int(batch["wave"].shape[1]) * b
            if stage.scores_emotion:
                pred = out["emotion"].argmax(-1).cpu().numpy()
                stats.confusion += metrics.confusion_matrix(
                    batch["emotion"].cpu().numpy(), pred, stage.n_emotions
                )
            if stage.uses_frame_labels:
                valid = out["valid"]
                stats.frame_count += int(valid.sum())
                if masked is not None:
                    stats.masked_count += int((valid & masked).sum())
                for k in stage.ks:
                    hit = (out[f"k{k}"].argmax(-1) == batch[f"frames_k{k}"]) & valid
                    stats.frame_hits[f"k{k}"] = stats.frame_hits.get(f"k{k}", 0) + int(hit.sum())
                    if masked is not None:
                        n_hit = int((hit & masked).sum())
                        stats.masked_hits[f"k{k}"] = stats.masked_hits.get(f"k{k}", 0) + n_hit
    stats.wall_s = time.perf_counter() - t0
    return stats
