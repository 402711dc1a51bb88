"""``gmptl tune CONFIG --space FILE [--samples N] [--set k=v]``: the command line of a search."""

from __future__ import annotations

import json

import click

from gmptl.cli.options import config_argument, load_for_steps, set_option


@click.command()
@config_argument()
@click.option("--space", "space_file", required=True, type=click.Path(dir_okay=False),
              help="Search-space YAML (see tune_spaces/README.md).")  # fmt: skip
@click.option("--samples", type=int, default=None, help="Trials (tune.num_samples).")
@set_option
def tune(config_file: str, space_file: str, samples: int | None, sets: tuple[str, ...]) -> None:
    """Search hyperparameters of one stage with Ray Tune + ASHA; rerun to continue an interrupted search."""
    from gmptl.tuning.search import run_search
    from gmptl.tuning.trials import OBJECTIVE

    load_for_steps(config_file, sets)  # the search's log file
    out = run_search(config_file, space_file, list(sets), samples)
    s = out.summary
    click.echo(
        f"search {s['name']}: {s['n_trials']} trials ({s['n_completed']} completed, {s['n_stopped_early']} "
        f"stopped early by ASHA, {s['n_failed']} failed), {s['max_concurrent']} at once, {s['wall_s']:.0f} s"
    )
    click.echo(f"score: {s['objective']} ({s['mode']})\n")
    keys = list(s["trials"][0]["params"]) if s["trials"] else []
    click.echo("| trial | status | epochs | score | " + " | ".join(keys) + " |")
    click.echo("|---|---|---:|---:|" + "---|" * len(keys))
    for t in s["trials"]:
        score = "-" if t[OBJECTIVE] is None else f"{t[OBJECTIVE]:.4f}"
        vals = " | ".join(_fmt(t["params"].get(k)) for k in keys)
        click.echo(
            f"| {t['trial_id']} | {t['status']} | {t['epochs_run']}/{t['epochs_max']} | {score} | {vals} |"
        )
    click.echo(
        f"\nepochs run: {s['epochs_run']} of {s['epochs_budget']} if every trial ran to the end "
        f"({100 * s['compute_saved']:.0f} % saved)"
    )
    if s["best"]:
        b = s["best"]
        click.echo(
            f"best: trial {b['trial_id']}, score {b[OBJECTIVE]:.4f} at epoch {b['best_epoch']}: "
            + ", ".join(f"{k}={_fmt(v)}" for k, v in b["params"].items())
        )
        click.echo(f"best config: {out.best_yaml}\n  run it:    gmptl run {out.best_yaml}")
    click.echo(
        f"summary:  {out.folder / 'summary.json'}\nfigure:   {out.folder / 'parallel_coordinates.png'}"
    )
    if out.mlflow_uri:
        click.echo(f"mlflow:   {out.mlflow_uri} (parent run {out.parent_run_id})")


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if not isinstance(v, str) else v
