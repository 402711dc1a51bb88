"""``gmptl run CONFIG --ablations``: the experiment and its ablations, one comparison table.

An ablations file (``<config>.ablations.yaml`` next to the config, or ``--ablations-file``) maps
a name to the overrides that make the ablation, as dotted config keys::

    no_gender: {stages.mtl.alpha: 1.0}          # stage 0 without the gender task
    plain_finetune: {stages.utterance.init: pretrained}

Each ablation is the experiment's config plus its overrides, run with :func:`run_experiment`
(so the steps it shares with the full run, or with another ablation, come from cache). The
table (``ablations.md`` / ``ablations.json`` under ``<output_dir>/ablations/<config hash>/``)
gives each one's mean +- std WAR/UAR over folds and seeds and its UAR change from the full run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from gmptl import paths
from gmptl.config import Config, config_hash, load_config
from gmptl.errors import ConfigError

log = logging.getLogger(__name__)

FULL = "full"


def ablations_path_for(config_file: str | Path) -> Path:
    p = Path(config_file)
    return p.with_name(p.stem + ".ablations.yaml")


def load_ablations(path: str | Path, config_file: str | Path, sets: list[str]) -> dict[str, list[str]]:
    """Ablation name -> ``key=value`` overrides; every ablation's config is validated here, before any run."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: no ablations file; write one (name: {{dotted.key: value}}) or pass --ablations-file"
        )
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected a mapping of ablation name -> {{dotted.key: value}}")
    out: dict[str, list[str]] = {}
    for name, overrides in data.items():
        if name == FULL:
            raise ConfigError(f"{path}: `{FULL}` names the unablated run; rename that ablation")
        if not isinstance(overrides, dict) or not overrides:
            raise ConfigError(
                f"{path}: ablation {name!r}: expected a non-empty {{dotted.key: value}} mapping"
            )
        out[str(name)] = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
        try:
            load_config(str(config_file), sets + out[str(name)])
        except ConfigError as e:
            raise ConfigError(f"{path}: ablation {name!r}: {e}") from e
    return out


def _row(name: str, overrides: list[str], cfg: Config, report: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "overrides": overrides,
        "config_hash": config_hash(cfg),
        "report": str(paths.run_dir(cfg) / "report.json"),
        "n_folds": len(report["folds"]),
        **{k: report[k] for k in ("war_mean", "war_std", "uar_mean", "uar_std")},
    }


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one line per run, UAR change against the full run."""
    full = next(r for r in rows if r["name"] == FULL)
    lines = [
        "| run | overrides | WAR | UAR | ΔUAR |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        delta = "" if r["name"] == FULL else f"{r['uar_mean'] - full['uar_mean']:+.3f}"
        lines.append(
            f"| {r['name']} | {' '.join(r['overrides']) or '—'} | {r['war_mean']:.3f} ± {r['war_std']:.3f} "
            f"| {r['uar_mean']:.3f} ± {r['uar_std']:.3f} | {delta} |"
        )
    return "\n".join(lines)


def run_ablations(config_file: str, sets: list[str], ablations_file: str | None = None) -> tuple[Path, str]:
    """Run the full experiment and every ablation; returns (folder of the table, the table)."""
    from gmptl.experiment import run_experiment

    ablations = load_ablations(ablations_file or ablations_path_for(config_file), config_file, sets)
    base = load_config(config_file, sets)
    rows = []
    for name, overrides in [(FULL, []), *ablations.items()]:
        cfg = load_config(config_file, sets + overrides)
        log.info("ablation %s: %s", name, overrides or "(none)")
        out = run_experiment(cfg)
        assert out.report is not None
        rows.append(_row(name, overrides, cfg, out.report))
    folder = paths.output_dir(base) / "ablations" / config_hash(base)
    folder.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    (folder / "ablations.json").write_text(json.dumps(rows, indent=2) + "\n")
    (folder / "ablations.md").write_text(
        f"# Ablations of `{config_file}` ({config_hash(base)})\n\nMean ± std over folds"
        f"{' and seeds' if base.seeds else ''} on the test speakers.\n\n{text}\n"
    )
    return folder, text
