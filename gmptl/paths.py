"""Every artifact path of a run, in one place.

Each step's outputs live under a folder keyed by a hash of the config sections
that produced them, so a changed config can never pick up a stale result::

    <output_dir>/synthetic_corpus/<synth hash>/         the generated corpus (data.corpus=synthetic)
    <output_dir>/data/<data hash>/manifest.parquet      + manifest.report.json, manifest.config.yaml
    <output_dir>/folds/<data+folds hash>/folds.json
    <output_dir>/config.yaml                            the resolved config of the last run
"""

from __future__ import annotations

from pathlib import Path

from gmptl.config import Config, config_hash


def corpus_root(cfg: Config) -> Path:
    """``data.root``, or for the synthetic corpus its generated folder under output_dir."""
    if cfg.data.root:
        return Path(cfg.data.root)
    return Path(cfg.output_dir) / "synthetic_corpus" / config_hash(cfg.data.synth)


def manifest_path(cfg: Config) -> Path:
    return Path(cfg.output_dir) / "data" / config_hash(cfg.data) / "manifest.parquet"


def folds_path(cfg: Config) -> Path:
    return Path(cfg.output_dir) / "folds" / config_hash(cfg.data, cfg.folds) / "folds.json"


def resolved_config_path(cfg: Config) -> Path:
    return Path(cfg.output_dir) / "config.yaml"
