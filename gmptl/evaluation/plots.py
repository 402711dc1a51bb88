"""PNG figures (matplotlib, Agg backend): confusion matrices and training curves. No Ray, no MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:  # noqa: ANN001
    """Write ``fig`` as a PNG (creating the folder) and free it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_png(cm: np.ndarray, labels: list[str], path: str | Path, title: str = "") -> Path:
    """Counts with row-normalised colour (recall per true class)."""
    plt = _plt()
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
    return _save(plt, fig, path)


def curves_png(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Train/validation loss and, where present, validation WAR/UAR per epoch."""
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key in ("train_loss", "val_loss"):
        if all(key in h for h in history):
            a.plot(epochs, [h[key] for h in history], marker="o", label=key)
    a.set_xlabel("epoch")
    a.set_title("loss")
    a.legend()
    for key in ("val_war", "val_uar") + tuple(
        k for k in (history[0] if history else {}) if k.startswith("val_frame_acc")
    ):
        if all(key in h for h in history):
            b.plot(epochs, [h[key] for h in history], marker="o", label=key)
    b.set_xlabel("epoch")
    b.set_title("validation")
    b.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(plt, fig, path)


def fold_bars_png(report: dict[str, Any], path: str | Path) -> Path:
    """Per-fold WAR and UAR bars with the means as lines and chance as a dotted line."""
    plt = _plt()
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
    return _save(plt, fig, path)
