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

from gmptl import files, paths
from gmptl.config import Config, config_hash, derive, load_config, read_yaml
from gmptl.errors import ConfigError

log = logging.getLogger(__name__)

FULL = "full"


def ablations_path_for(config_file: str | Path) -> Path:
    p = Path(config_file)
    return p.with_name(p.stem + ".ablations.yaml")


def load_ablations(path: str | Path, base: Config) -> dict[str, dict[str, Any]]:
    """Ablation name -> {dotted key: value}; every ablation's config is validated here, before any run."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: no ablations file; write one (name: {{dotted.key: value}}) or pass --ablations-file"
        )
    data = read_yaml(path, "ablations") or {}
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected a mapping of ablation name -> {{dotted.key: value}}")
    out: dict[str, dict[str, Any]] = {}
    for name, updates in data.items():
        if name == FULL:
            raise ConfigError(f"{path}: `{FULL}` names the unablated run; rename that ablation")
        if not isinstance(updates, dict) or not updates or not all(isinstance(k, str) for k in updates):
            raise ConfigError(
                f"{path}: ablation {name!r}: expected a non-empty {{dotted.key: value}} mapping"
            )
        derive(base, updates, f"{path}: ablation {name!r}")
        out[str(name)] = dict(updates)
    return out


def _shown(updates: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in updates.items()]


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

    base = load_config(config_file, sets)
    ablations = load_ablations(ablations_file or ablations_path_for(config_file), base)
    rows = []
    for name, updates in [(FULL, {}), *ablations.items()]:
        cfg = derive(base, updates, f"ablation {name!r}")
        log.info("ablation %s: %s", name, _shown(updates) or "(none)")
        out = run_experiment(cfg)
        assert out.report is not None
        rows.append(_row(name, _shown(updates), cfg, out.report))
    folder = paths.output_dir(base) / "ablations" / config_hash(base)
    folder.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    files.write_json(folder / "ablations.json", rows)
    (folder / "ablations.md").write_text(
        f"# Ablations of `{config_file}` ({config_hash(base)})\n\nMean ± std over folds"
        f"{' and seeds' if base.seeds else ''} on the test speakers.\n\n{text}\n"
    )
    return folder, text
