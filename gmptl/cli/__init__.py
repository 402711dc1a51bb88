"""The ``gmptl`` command line: one subcommand per pipeline step, each a thin wrapper.

Every subcommand that runs pipeline steps takes its config as a positional ``CONFIG``
file plus ``--set key=value`` overrides (the corpus tools ``prepare``, ``folds``,
``synth`` and ``predict`` take an optional ``--config``), configures logging once,
calls one library function and prints where its outputs went. Errors print one message naming the key, file or line
and exit non-zero (2 for config errors, 1 for bad input).

The options every command shares are in ``options.py``; the commands, by topic, in ``pipeline.py``
(run, extract, cluster, label, train, pretrain), ``data.py`` (synth, prepare, folds, config), ``tune.py``,
``jobs.py`` (submit, jobs) and ``inference.py`` (predict, export). Each imports its heavy
dependencies (Ray, torch, MLflow) inside the command. ``python -m gmptl.cli`` runs :func:`main`
(the entrypoint of submitted jobs).
"""

from __future__ import annotations

import click

from gmptl.cli.data import config_cmd, folds, prepare, synth
from gmptl.cli.inference import export_command, predict_command
from gmptl.cli.jobs import jobs_group, submit_command
from gmptl.cli.options import setup_logging
from gmptl.cli.pipeline import cluster, extract, label, pretrain, run, train
from gmptl.cli.tune import tune
from gmptl.errors import GmptlError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """gmptl: GMP-TL speech emotion recognition on Ray."""
    setup_logging(verbose)


for _command in (synth, prepare, folds, run, extract, cluster, label, train, pretrain, config_cmd, tune, submit_command,
                 jobs_group, predict_command, export_command):  # fmt: skip
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point (console script ``gmptl``); returns the exit code so tests can call it."""
    try:
        cli.main(args=argv, prog_name="gmptl", standalone_mode=False)
    except GmptlError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    return 0
