"""What every ``gmptl`` subcommand shares: the config options, loading the config, logging.

``set_option`` (``--set KEY=VALUE``, repeatable) is the one override option of every command;
``config_argument`` is the positional ``CONFIG_FILE`` of the commands that run pipeline steps and
``config_option`` the optional ``--config`` of the corpus tools (``prepare``, ``folds``, ``synth``,
``predict``). :func:`load` and :func:`load_for_steps` turn them into a :class:`~gmptl.config.Config`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from gmptl.config import Config, load_config

F = TypeVar("F", bound=Callable[..., Any])

set_option = click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable)."
)


def config_argument(required: bool = True) -> Callable[[F], F]:
    """The positional ``CONFIG_FILE`` (a YAML config)."""
    return click.argument("config_file", required=required, type=click.Path(dir_okay=False))


def config_option(help: str = "YAML config file.") -> Callable[[F], F]:
    """The optional ``--config FILE`` of the corpus tools."""
    return click.option("--config", "config", type=click.Path(dir_okay=False), help=help)


def load(config: str | None, sets: tuple[str, ...], options: dict[str, Any] | None = None) -> Config:
    """``config``, then the values of a command's own options (dotted key -> value, taken as they are:
    ``--root '/data/c #1'`` stays that path), then the ``--set`` overrides."""
    return load_config(
        config, list(sets), updates={k: v for k, v in (options or {}).items() if v is not None}
    )


def load_for_steps(config: str | None, sets: tuple[str, ...]) -> Config:
    """The config of a command that runs pipeline steps, with its log file set up."""
    from gmptl.progress import log_to_run_folder

    cfg = load(config, sets)
    log_to_run_folder(cfg, verbose())
    return cfg


class StepChoice(click.Choice):
    """Step names of :mod:`gmptl.steps`, read when the command runs: a step added to the graph is a choice."""

    def __init__(self, train_only: bool = False) -> None:
        self.train_only = train_only
        super().__init__((), case_sensitive=True)

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        from gmptl import steps

        return tuple(steps.train_stages() if self.train_only else steps.names())

    @choices.setter
    def choices(self, value: object) -> None:  # click.Choice.__init__ assigns it; the graph decides
        pass


# ----------------------------------------------------------------------------- logging

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


MLFLOW_LEVEL_ENV = "MLFLOW_LOGGING_LEVEL"
_USER_MLFLOW_LEVEL = os.environ.get(MLFLOW_LEVEL_ENV)


class _ConsoleFilter(logging.Filter):
    """The terminal shows gmptl's own INFO lines and every library's warnings (everything with -v)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("gmptl") or record.levelno >= logging.WARNING


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (tests and tools swap it; a handler that
    kept the stream of its creation would write to a closed one)."""

    @property
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def setup_logging(verbose: bool) -> None:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    if not verbose:
        handler.addFilter(_ConsoleFilter())
        handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_gmptl", False)]
    handler._gmptl = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # gmptl's own DEBUG lines (each Lloyd iteration, per-part loads) reach the run's log file either way;
    # the terminal handler above keeps them off the screen unless -v.
    logging.getLogger("gmptl").setLevel(logging.DEBUG)
    # Ray, Ray Data and MLflow attach their own console handlers: without -v they speak up for warnings
    # only (Ray Data's progress tables, "Started a local Ray instance", database migrations).
    for name in ("ray", "ray.data", "ray.train", "ray.tune", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if _USER_MLFLOW_LEVEL is None:
        # MLflow sets its logger's level again when it is first imported, after this: its own variable
        # is what it reads then (a value the user set wins).
        os.environ[MLFLOW_LEVEL_ENV] = "DEBUG" if verbose else "WARNING"


def verbose() -> bool:
    """Whether ``gmptl -v`` was given (read from the running click command)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("verbose"))
