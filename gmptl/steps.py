"""The pipeline's step graph, as data: the one place that says which steps exist and how they connect.

Every command that runs, plans, locks or checks steps asks this module: ``gmptl run`` (which steps a
target needs, in order), ``gmptl train`` (a stage's inputs), ``gmptl tune`` (which steps a search can
share between its trials, which it must lock, what a trial trains), and the CLI (the names that
``--until`` and ``--stage`` accept). Adding a step is one :class:`Step` entry in :data:`GRAPH` plus the
step's own body (a function ``body(ctx: StepContext) -> dict | object``, imported by name when it
runs, so this module stays pure: no Ray, MLflow or torch).

The graph, for the default GMP-TL configuration::

    folds -> mtl -> extract -> cluster -> label -> gmp -> utterance -> evaluate
    pretrain                       (``gmptl pretrain``: a model folder for model.backbone, from the manifest alone)

Which edges exist depends on the config: ``features.source=pretrained`` cuts ``mtl -> extract``
(features of ``model.backbone``); ``stages.<stage>.init`` names the model a stage starts from
(``pretrained``: none), so ``stages.utterance.init=pretrained`` (plain fine-tuning) needs nothing
but the folds.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gmptl import files, paths
from gmptl.config import Config
from gmptl.errors import ConfigError

Kind = Literal["setup", "data", "train", "evaluate", "pretrain"]


@dataclass(frozen=True)
class Step:
    """One pipeline step.

    Attributes:
        name: the step's name on the command line (``--until``, ``--stage``) and in logs.
        kind: ``setup`` (the corpus, manifest and folds, once per run), ``data`` (spreads over the
            whole cluster: the fold jobs take turns), ``train`` (a Ray Train stage with a
            ``stages.<name>`` config section), ``evaluate``, or ``pretrain`` (self-supervised
            pre-training on the manifest's audio: data and training steps of its own, once per run).
        needs: the steps whose outputs it reads, for a given config. The manifest is prepared for every
            run; only a plan that holds ``folds`` builds the folds (and needs a labelled corpus).
        keys: config key prefixes that change this step's output and (through ``needs``) every step
            after it; the search planner maps a searched key to the first step it changes.
        folder: its cache folder for (config, fold index); None for the setup step.
        marker: the file its body writes last into ``folder``: the step is done when it exists.
        body: ``"module:function"`` that runs it for one fold (see :class:`StepContext`).
        shared: True when, for this config, its folder does not depend on the fold (computed once).
    """

    name: str
    kind: Kind
    needs: Callable[[Config], tuple[str, ...]]
    keys: tuple[str, ...] = ()
    folder: Callable[[Config, int], Path] | None = None
    marker: str | None = None
    body: str | None = None
    shared: Callable[[Config], bool] = lambda cfg: False

    def done(self, cfg: Config, fold: int) -> bool:
        """Whether the step's outputs for ``fold`` exist (its marker was written)."""
        if self.folder is None or self.marker is None:
            return False
        path = self.folder(cfg, fold) / self.marker
        if path.suffix == ".json":  # an empty or damaged marker means "not done"
            return files.read_marker(path) is not None
        return path.is_file()

    def run(self, ctx: StepContext) -> Any:
        """Import and call the step's body."""
        if self.body is None:
            raise RuntimeError(f"step {self.name} has no body")
        module, _, func = self.body.partition(":")
        return getattr(importlib.import_module(module), func)(ctx)


@dataclass
class StepContext:
    """What a step body gets: the (fold, seed) config, the manifest, the fold, and the run's parent MLflow run."""

    cfg: Config
    df: Any  # pandas.DataFrame: the manifest
    fold: Any  # gmptl.data.folds.Fold
    step: str
    parent: Any = None  # gmptl.tracking.Run | None


def _init_of(stage: str) -> Callable[[Config], tuple[str, ...]]:
    """A training stage needs the model it starts from (``stages.<stage>.init``), else only the folds."""

    def needs(cfg: Config) -> tuple[str, ...]:
        init = getattr(getattr(cfg.stages, stage), "init", "pretrained")
        return ("folds",) if init == "pretrained" else (init,)

    return needs


def _stage_folder(stage: str) -> Callable[[Config, int], Path]:
    return lambda cfg, fold: paths.stage_dir(cfg, fold, stage)


def _train(stage: str, needs: Callable[[Config], tuple[str, ...]] | None = None) -> Step:
    return Step(
        stage,
        "train",
        needs or _init_of(stage),
        keys=(f"stages.{stage}.", "model."),
        folder=_stage_folder(stage),
        marker=paths.STAGE_JSON,
        body="gmptl.training.pipeline:train_step",
    )


def _gmp_needs(cfg: Config) -> tuple[str, ...]:
    init = _init_of("gmp")(cfg)
    return ("label",) if init == ("folds",) else ("label", *init)


GRAPH: tuple[Step, ...] = (
    Step("folds", "setup", lambda cfg: (), keys=("data.", "folds.")),
    _train("mtl"),
    Step(
        "extract",
        "data",
        lambda cfg: ("mtl",) if cfg.features.source == "mtl" else ("folds",),
        keys=("features.", "model."),
        folder=lambda cfg, fold: paths.features_dir(cfg, fold if cfg.features.source == "mtl" else None),
        marker=paths.FEATURES_INDEX,
        body="gmptl.features.pipeline:extract_step",
        shared=lambda cfg: cfg.features.source != "mtl",
    ),
    Step(
        "cluster",
        "data",
        lambda cfg: ("extract",),
        keys=("clustering.",),
        folder=paths.clusters_dir,
        marker=paths.KMEANS_JSON,
        body="gmptl.clustering.pipeline:cluster_step",
    ),
    Step(
        "label",
        "data",
        lambda cfg: ("cluster",),
        folder=paths.labels_dir,
        marker=paths.LABELS_JSON,
        body="gmptl.clustering.pipeline:label_step",
    ),
    _train("gmp", _gmp_needs),
    _train("utterance"),
    Step(
        "evaluate",
        "evaluate",
        lambda cfg: ("utterance",),
        folder=paths.test_dir,
        marker=paths.TEST_JSON,
        body="gmptl.evaluation.pipeline:evaluate_step",
    ),
    Step(
        "pretrain",
        "pretrain",
        lambda cfg: (),  # the manifest only: its own seeded split (pretrain.validation_fraction), no folds
        keys=("pretrain.",),
        folder=lambda cfg, fold: paths.pretrain_dir(cfg),
        marker=paths.PRETRAIN_JSON,
        body="gmptl.pretraining.pipeline:pretrain_step",
        shared=lambda cfg: True,
    ),
)


def names() -> list[str]:
    """Every step, in pipeline order (``--until`` choices)."""
    return [s.name for s in GRAPH]


def train_stages() -> list[str]:
    """The training stages, in pipeline order (``--stage`` choices; each has a ``stages.<name>`` section)."""
    return [s.name for s in GRAPH if s.kind == "train"]


def get(name: str) -> Step:
    for s in GRAPH:
        if s.name == name:
            return s
    raise ConfigError(f"unknown step {name!r}: expected one of {names()}")


def needed(cfg: Config, targets: str | Iterable[str]) -> list[str]:
    """The steps that make ``targets`` (each target and everything it reads, transitively), in pipeline order."""
    todo = [targets] if isinstance(targets, str) else list(targets)
    out: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            todo.extend(get(name).needs(cfg))
    return [n for n in names() if n in out]


def upstream(cfg: Config, step: str) -> list[str]:
    """Every step ``step`` reads from, transitively (itself excluded), in pipeline order."""
    return [n for n in needed(cfg, step) if n != step]


def frontier(cfg: Config, steps: Iterable[str]) -> list[str]:
    """The smallest targets whose :func:`needed` covers ``steps`` (those no other one of them reads from)."""
    chosen = set(steps)
    read = {u for s in chosen for u in upstream(cfg, s)}
    return [n for n in names() if n in chosen and n not in read]


def step_of(key: str, among: Iterable[str] | None = None) -> str | None:
    """The first step (in pipeline order, within ``among``) whose output the config key changes; None if none."""
    allowed = set(names() if among is None else among)
    for s in GRAPH:
        if s.name in allowed and any(key.startswith(p) or key == p.rstrip(".") for p in s.keys):
            return s.name
    return None


def folders(cfg: Config, fold: int, steps: Iterable[str]) -> list[Path]:
    """The cache folders of ``steps`` for one fold (steps without one are left out)."""
    return [get(n).folder(cfg, fold) for n in steps if get(n).folder is not None]


def missing_inputs(cfg: Config, step: str, fold: int) -> list[str]:
    """The steps ``step`` reads directly whose outputs for ``fold`` do not exist yet."""
    return [n for n in get(step).needs(cfg) if get(n).folder is not None and not get(n).done(cfg, fold)]
