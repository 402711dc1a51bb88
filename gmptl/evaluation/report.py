"""The cross-validation report: per-fold test metrics, means and spreads, the summed confusion matrix.

``report.json`` has a fixed set of keys (and nothing else), so scripts can rely on it;
``report.md`` is the same content for people. Pure: no Ray, no MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gmptl import files
from gmptl.training import metrics


def fold_entry(fold: int, seed: int, test_speakers: list[str], cm: np.ndarray) -> dict[str, Any]:
    return {
        "fold": fold,
        "seed": seed,
        "test_speakers": list(test_speakers),
        "n_test": int(cm.sum()),
        "war": metrics.war(cm),
        "uar": metrics.uar(cm),
        "macro_f1": metrics.macro_f1(cm),
        "confusion": np.asarray(cm).astype(int).tolist(),
    }


def build_report(labels: list[str], folds: list[dict[str, Any]], config_hash: str) -> dict[str, Any]:
    """Means and (population) standard deviations over every (fold, seed) entry; confusion summed."""
    if not folds:
        raise ValueError("no fold results to report")
    war = np.array([f["war"] for f in folds])
    uar = np.array([f["uar"] for f in folds])
    cm = np.sum([np.asarray(f["confusion"]) for f in folds], axis=0)
    return {
        "labels": list(labels),
        "folds": folds,
        "war_mean": float(war.mean()),
        "war_std": float(war.std()),
        "uar_mean": float(uar.mean()),
        "uar_std": float(uar.std()),
        "confusion_sum": cm.astype(int).tolist(),
        "config_hash": config_hash,
    }


def table(report: dict[str, Any]) -> str:
    """The per-fold and mean WAR/UAR table (markdown)."""
    rows = ["| fold | seed | test speakers | n | WAR | UAR | macro-F1 |", "|---|---|---|---:|---:|---:|---:|"]
    for f in report["folds"]:
        rows.append(
            f"| {f['fold']} | {f['seed']} | {', '.join(f['test_speakers'])} | {f['n_test']} | "
            f"{f['war']:.3f} | {f['uar']:.3f} | {f['macro_f1']:.3f} |"
        )
    rows.append(
        f"| **mean ± std** | | | {sum(f['n_test'] for f in report['folds'])} | "
        f"**{report['war_mean']:.3f} ± {report['war_std']:.3f}** | "
        f"**{report['uar_mean']:.3f} ± {report['uar_std']:.3f}** | |"
    )
    return "\n".join(rows)


def write_report(report: dict[str, Any], folder: str | Path, extra_md: str = "") -> tuple[Path, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files.write_json(folder / "report.json", report)
    labels = report["labels"]
    cm = np.asarray(report["confusion_sum"])
    cm_rows = ["| true \\ predicted | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    cm_rows += [
        f"| {lab} | " + " | ".join(str(v) for v in row) + " |" for lab, row in zip(labels, cm, strict=True)
    ]
    md = (
        f"# GMP-TL cross-validation report\n\nconfig hash `{report['config_hash']}`; "
        f"chance UAR {1 / len(labels):.3f}\n\n## Test speakers, per fold\n\n{table(report)}\n\n"
        f"## Confusion matrix summed over folds\n\n" + "\n".join(cm_rows) + "\n" + extra_md
    )
    (folder / "report.md").write_text(md)
    return folder / "report.json", folder / "report.md"
