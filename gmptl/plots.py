"""PNG figures (matplotlib, Agg backend): confusion matrices and training curves. No Ray, no MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt, fig, path: str | Path) -> Path:  # noqa: ANN001
    """Write ``fig`` as a PNG (creating the folder) and free it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_png(cm: np.ndarray, labels: list[str], path: str | Path, title: str = "") -> Path:
    """Counts with row-normalised colour (recall per true class)."""
    plt = pyplot()
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 1.5, 1.2 * len(labels) + 1))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)  # fmt: skip
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(plt, fig, path)


def curves_png(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Train/validation loss and, where present, validation WAR/UAR per epoch."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key in ("train_loss", "val_loss"):
        if all(key in h for h in history):
            a.plot(epochs, [h[key] for h in history], marker="o", label=key)
    a.set_xlabel("epoch")
    a.set_title("loss")
    a.legend()
    accuracies = ("val_frame_acc", "val_masked_acc", "val_unmasked_acc", "train_masked_acc")
    for key in ("val_war", "val_uar") + tuple(
        k for k in (history[0] if history else {}) if k.startswith(accuracies)
    ):
        if all(key in h for h in history):
            b.plot(epochs, [h[key] for h in history], marker="o", label=key)
    b.set_xlabel("epoch")
    b.set_title("validation")
    b.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(plt, fig, path)


def fold_bars_png(report: dict[str, Any], path: str | Path) -> Path:
    """Per-fold WAR and UAR bars with the means as lines and chance as a dotted line."""
    plt = pyplot()
    folds = report["folds"]
    x = np.arange(len(folds))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(folds) + 2), 3.2))
    ax.bar(x - 0.2, [f["war"] for f in folds], 0.4, label=f"WAR (mean {report['war_mean']:.3f})")
    ax.bar(x + 0.2, [f["uar"] for f in folds], 0.4, label=f"UAR (mean {report['uar_mean']:.3f})")
    ax.axhline(1 / len(report["labels"]), color="grey", linestyle=":", label="chance")
    ax.set_xticks(x, [f"{f['fold']}" + (f"/s{f['seed']}" if f["seed"] else "") for f in folds])
    ax.set_xlabel("fold")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(plt, fig, path)


def stage_curves_png(runs: list[tuple[str, list[dict[str, Any]]]], metric: str, path: str | Path,
                     title: str = "") -> Path:  # fmt: skip
    """One stage across folds: training loss and the selection metric per epoch, one line per fold."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, history in runs:
        epochs = [h["epoch"] for h in history]
        if all("train_loss" in h for h in history):
            a.plot(epochs, [h["train_loss"] for h in history], marker=".", label=name)
        if all(metric in h for h in history):
            b.plot(epochs, [h[metric] for h in history], marker=".", label=name)
    a.set_xlabel("epoch")
    a.set_title("train_loss")
    b.set_xlabel("epoch")
    b.set_title(metric)
    b.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(plt, fig, path)


def cluster_usage_png(counts: dict[int, list[np.ndarray]], path: str | Path, title: str = "") -> Path:
    """GMP cluster occupancy per K: clusters sorted by size (share of frames, log scale), one line per fold.

    A flat curve is balanced usage; a steep drop or an early end means a few clusters take most
    frames or some are empty.
    """
    plt = pyplot()
    ks = sorted(counts)
    fig, axes = plt.subplots(1, len(ks), figsize=(3.2 * len(ks), 3.0), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        for i, c in enumerate(counts[k]):
            share = np.sort(np.asarray(c, np.float64))[::-1] / max(int(np.sum(c)), 1)
            used = int((share > 0).sum())
            ax.plot(np.arange(1, used + 1), share[:used], label=f"fold {i}: {used}/{k} used")
        ax.axhline(1 / k, color="grey", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("cluster (by size)")
        ax.set_title(f"K = {k}")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("share of frames")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(plt, fig, path)


def frame_track_png(
    wave: np.ndarray,
    sample_rate_hz: int,
    frames: list[dict[str, Any]],
    labels: list[str],
    path: str | Path,
    title: str = "",
    frame_probabilities: np.ndarray | None = None,
    frame_hop_s: float = 0.02,
) -> Path:
    """The timeline of ``gmptl predict``: the waveform, the frame-level emotion track drawn under it
    (segments {start_s, end_s, emotion}, one colour per label) and, if given, the per-frame class
    probabilities (n_frames, C) on the same time axis (frame i at ``i * frame_hop_s``)."""
    plt = pyplot()
    wave = np.asarray(wave, dtype=np.float32)
    duration_s = len(wave) / sample_rate_hz
    colours = {lab: plt.get_cmap("tab10")(i % 10) for i, lab in enumerate(labels)}
    n_rows = 3 if frame_probabilities is not None else 2
    fig, axes = plt.subplots(n_rows, 1, sharex=True, figsize=(min(16.0, max(6.0, 1.2 * duration_s)), 1.3 * n_rows + 1),
                             gridspec_kw={"height_ratios": [3, 1, 2][:n_rows]})  # fmt: skip
    # Long files: draw the min/max envelope of ~4000 buckets instead of every sample.
    bucket = max(1, len(wave) // 4000)
    n_b = len(wave) // bucket
    env = wave[: n_b * bucket].reshape(n_b, bucket)
    t = (np.arange(n_b) + 0.5) * bucket / sample_rate_hz
    axes[0].fill_between(t, env.min(1), env.max(1), color="0.35", linewidth=0)
    axes[0].set_ylabel("wave")
    axes[0].set_title(title)
    track = axes[1]
    for seg in frames:
        track.broken_barh(
            [(seg["start_s"], seg["end_s"] - seg["start_s"])], (0, 1), color=colours[seg["emotion"]]
        )
        if seg["end_s"] - seg["start_s"] > 0.06 * duration_s:
            track.text((seg["start_s"] + seg["end_s"]) / 2, 0.5, seg["emotion"], ha="center", va="center",
                       fontsize=8, color="white")  # fmt: skip
    track.set_yticks([])
    track.set_ylabel("emotion")
    track.set_ylim(0, 1)
    if frame_probabilities is not None:
        probs = np.asarray(frame_probabilities)
        tf = np.arange(len(probs)) * frame_hop_s
        for j, lab in enumerate(labels):
            axes[2].plot(tf, probs[:, j], color=colours[lab], linewidth=1, label=lab)
        axes[2].set_ylim(-0.03, 1.03)
        axes[2].set_ylabel("p")
        axes[2].legend(fontsize=7, ncol=len(labels), loc="upper right")
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(0, duration_s)
    fig.tight_layout()
    return save_figure(plt, fig, path)
