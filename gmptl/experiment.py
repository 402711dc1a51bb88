"""``gmptl run``: the cross-validated experiment, step by step, each step cached by config hash.

Steps so far: synthetic corpus (when ``data.corpus`` is ``synthetic``) -> manifest
-> folds. Feature extraction, k-means, training and evaluation join this driver
as they land (issues 3-5); each step reads the previous step's outputs from
``gmptl.paths`` and is skipped when its outputs for the same config hash exist.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gmptl import paths
from gmptl.config import Config, config_hash, save_config, to_dict
from gmptl.data.corpora.iemocap import read_synthetic_marker
from gmptl.data.folds import fold_table, make_folds, write_folds
from gmptl.data.manifest import read_manifest
from gmptl.data.prepare import prepare_manifest, report_path_for
from gmptl.data.synth import synthesize_corpus
from gmptl.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class RunOutputs:
    corpus_root: Path
    manifest: Path
    folds: Path
    summary: dict[str, Any]
    fold_rows: list[dict[str, Any]]
    steps: dict[str, str]  # step -> "ran" | "cached"


def ensure_synthetic_corpus(cfg: Config, root: Path) -> str:
    """Generate the synthetic corpus unless ``root`` already holds one with the same settings."""
    marker = read_synthetic_marker(root)
    wanted = to_dict(cfg.data.synth)
    if marker is not None:
        found = {k: marker.get(k) for k in wanted}
        if found == wanted:
            return "cached"
        raise ConfigError(
            f"data.root={root} holds a synthetic corpus made with {found}, but data.synth is {wanted}; "
            f"point data.root elsewhere or leave it unset (the default folder is keyed on data.synth)"
        )
    if root.exists() and any(root.iterdir()):
        raise ConfigError(
            f"data.root={root} is not empty and is not a synthetic corpus; refusing to write into it"
        )
    res = synthesize_corpus(root, cfg.data.synth)
    log.info("synthesised %d utterances (%.2f h) into %s", res.n_utterances, res.hours, root)
    return "ran"


def run_experiment(cfg: Config) -> RunOutputs:
    steps: dict[str, str] = {}
    root = paths.corpus_root(cfg)
    if cfg.data.corpus == "synthetic":
        steps["synth"] = ensure_synthetic_corpus(cfg, root)

    manifest = paths.manifest_path(cfg)
    report = report_path_for(manifest)
    if manifest.is_file() and report.is_file():
        steps["prepare"] = "cached"
        summary = json.loads(report.read_text())["summary"]
    else:
        steps["prepare"] = "ran"
        summary = prepare_manifest(cfg.data, root, manifest, full_config=cfg).summary.as_dict()
    df = read_manifest(manifest)

    folds_file = paths.folds_path(cfg)
    folds = make_folds(df, cfg.folds)  # cheap; always rebuilt and re-checked for leakage
    steps["folds"] = "cached" if folds_file.is_file() else "ran"
    write_folds(df, folds, cfg.folds, folds_file)
    save_config(cfg, paths.resolved_config_path(cfg))
    log.info("run %s: %s", config_hash(cfg), steps)
    return RunOutputs(root, manifest, folds_file, summary, fold_table(df, folds), steps)
