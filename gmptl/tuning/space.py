"""Search spaces for ``gmptl tune``: a small declarative YAML over dotted config keys (pure: no Ray).

Input: a file such as ``tune_spaces/utterance.yaml``::

    description: stage 2 learning rate, AM-Softmax margin and scale, pooling   # optional
    tune:                       # optional: the tune.* settings the space is meant for
      stage: utterance          # (applied after the config file, before --set)
    params:
      stages.utterance.lr: {loguniform: [1.0e-5, 1.0e-3]}
      stages.utterance.margin: {uniform: [0.1, 0.4]}
      stages.utterance.pooling: {choice: [mean, attentive]}
      clustering.k: {grid: [[16, 64, 128], [64, 128]]}

Output: a :class:`SearchSpace` whose every key is a config key and whose every bound
and choice passed the config's own validation (through :func:`gmptl.config.derive`),
so a sampled value can only fail on a rule that spans two searched keys. A trial's
config is the base config with the sampled values set (:meth:`SearchSpace.apply`):
every trial holds a real, validated :class:`~gmptl.config.Config`, and the best one
is written as a YAML that ``gmptl run`` reads.

Also here (pure config logic, read off :mod:`gmptl.steps`): which pipeline steps a
search can compute once before it starts, and which each trial computes (:func:`plan`).
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gmptl import steps
from gmptl.config import Config, derive, iter_keys, load_config, read_yaml
from gmptl.errors import ConfigError

KINDS = ("loguniform", "uniform", "choice", "grid")
# Sections a search may not touch: data and folds define what the validation metric is measured on
# (trials would not be comparable); the others do not change what a trial learns.
FROZEN_PREFIXES = ("data.", "folds.", "tune.", "tracking.", "runtime.", "output_dir")


class SpaceError(ConfigError):
    """A search-space file is invalid; the message names the file and the key."""


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Param:
    """One searched key: ``kind`` is loguniform/uniform (``low``, ``high``) or choice/grid (``values``)."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()

    @property
    def encoded(self) -> bool:
        """True when some value is a list/mapping: searchers get them as JSON strings (categorical)."""
        return any(not _is_scalar(v) for v in self.values)

    def search_values(self) -> list[Any]:
        """Choice/grid values as a searcher sees them: scalars as they are, lists as JSON text."""
        return [json.dumps(v) for v in self.values] if self.encoded else list(self.values)

    def decode(self, v: Any) -> Any:
        """A value a searcher returned -> the config value."""
        if self.encoded and isinstance(v, str):
            return json.loads(v)
        if isinstance(v, np.generic):
            return v.item()
        return v

    def sample(self, rng: np.random.Generator) -> Any:
        """One random draw (the config value, decoded)."""
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        if self.kind == "uniform":
            return float(rng.uniform(self.low, self.high))
        return self.values[int(rng.integers(len(self.values)))]

    def as_dict(self) -> dict[str, Any]:
        return {
            self.kind: [self.low, self.high] if self.kind in ("loguniform", "uniform") else list(self.values)
        }


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: its file, name, optional tune.* settings and params in file order."""

    path: Path
    params: tuple[Param, ...]
    tune_settings: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def param(self, key: str) -> Param:
        return next(p for p in self.params if p.key == key)

    def tune_updates(self) -> dict[str, Any]:
        """The file's ``tune:`` settings as dotted config keys (applied after the config file, before --set)."""
        return {f"tune.{k}": v for k, v in self.tune_settings.items()}

    def base(self, config: str | Path | None, sets: list[str] | tuple[str, ...] = ()) -> Config:
        """The config every trial starts from: the file, then the space's ``tune:`` settings, then ``--set``."""
        return load_config(config, sets, updates=self.tune_updates())

    def apply(self, cfg: Config, values: dict[str, Any], source: str = "search point") -> Config:
        """``cfg`` with a point's values (as a searcher returns them) set: a trial's config."""
        return derive(cfg, self.decode(values), source)

    def decode(self, values: dict[str, Any]) -> dict[str, Any]:
        """Searcher values (JSON text for list choices) -> config values, for the searched keys only."""
        return {p.key: p.decode(values[p.key]) for p in self.params if p.key in values}

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """One random point (grid params drawn like choices)."""
        return {p.key: p.sample(rng) for p in self.params}

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the grid params (one empty point when there are none)."""
        grid = [p for p in self.params if p.kind == "grid"]
        return [dict(zip([p.key for p in grid], combo, strict=True))
                for combo in itertools.product(*[p.values for p in grid])]  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """The space as data (hashed into the search's name, logged to MLflow)."""
        return {"params": {p.key: p.as_dict() for p in self.params}, "tune": dict(self.tune_settings)}


def _leaf_keys() -> set[str]:
    return {row[0] for row in iter_keys()}


def _parse_param(where: str, key: Any, spec: Any, leaves: set[str]) -> Param:
    if not isinstance(key, str) or key not in leaves:
        near = difflib.get_close_matches(str(key), sorted(leaves), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        section = any(k.startswith(f"{key}.") for k in leaves)
        what = "is a section, not a value" if section else "is not a config key"
        raise SpaceError(f"{where}: {key!r} {what}{hint}; see `gmptl config --keys`")
    if key.startswith(FROZEN_PREFIXES):
        raise SpaceError(
            f"{where}: {key!r} cannot be searched: data.*/folds.* decide what the validation metric is "
            "measured on (trials would not be comparable) and tune.*/tracking.*/runtime.*/output_dir do not "
            "change what a trial learns"
        )
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise SpaceError(
            f"{where}: {key}: expected one of {{loguniform: [low, high]}}, {{uniform: [low, high]}}, "
            f"{{choice: [a, b, ...]}}, {{grid: [a, b, ...]}}; got {spec!r}"
        )
    kind, arg = next(iter(spec.items()))
    if kind in ("loguniform", "uniform"):
        if not (isinstance(arg, list) and len(arg) == 2 and all(_number(v) for v in arg)):
            raise SpaceError(f"{where}: {key}: {kind} takes [low, high] (two numbers), got {arg!r}")
        low, high = float(arg[0]), float(arg[1])
        if not low < high:
            raise SpaceError(f"{where}: {key}: {kind} needs low < high, got [{arg[0]}, {arg[1]}]")
        if kind == "loguniform" and low <= 0:
            raise SpaceError(
                f"{where}: {key}: loguniform needs low > 0 (it samples log(value)), got {arg[0]}"
            )
        return Param(key, kind, low=low, high=high)
    if not isinstance(arg, list) or not arg:
        raise SpaceError(f"{where}: {key}: {kind} takes a non-empty list of values, got {arg!r}")
    texts = [json.dumps(v, sort_keys=True) for v in arg]
    if len(set(texts)) != len(texts):
        raise SpaceError(f"{where}: {key}: {kind} lists a value twice: {arg!r}")
    return Param(key, kind, values=tuple(arg))


def _check_against_config(path: Path, p: Param, base: Config) -> None:
    """Every bound, an interior point and every choice must pass the config's own validation."""
    if p.kind == "loguniform":
        probes = [p.low, p.high, math.sqrt(p.low * p.high)]
    elif p.kind == "uniform":
        probes = [p.low, p.high, (p.low + p.high) / 2]
    else:
        probes = list(p.values)
    for v in probes:
        try:
            derive(base, {p.key: v})
        except ConfigError as e:
            detail = str(e).replace("invalid config:\n  ", "").replace("derived config: ", "")
            hint = " (a range samples floats: use `choice` for an integer key)" if "integer" in detail and p.kind in ("uniform", "loguniform") else ""  # fmt: skip
            raise SpaceError(
                f"{path}: params: {p.key}: {p.kind} value {v!r} is not valid: {detail}{hint}"
            ) from None


def read_space_file(path: str | Path) -> tuple[dict[str, Any], Path]:
    """The raw mapping of a space file (YAML 1.2 floats: ``1e-4`` is a number)."""
    p = Path(path)
    if not p.is_file():
        raise SpaceError(f"search space {p} does not exist (see tune_spaces/README.md)")
    try:
        doc = read_yaml(p, "search space")
    except ConfigError as e:
        raise SpaceError(str(e)) from None
    if not isinstance(doc, dict):
        raise SpaceError(f"{p}: the top level must be a mapping with `params:`")
    unknown = sorted(set(doc) - {"params", "tune", "description"})
    if unknown:
        raise SpaceError(f"{p}: unknown top-level keys {unknown}; a space has params:, and optionally tune: "
                         "and description:")  # fmt: skip
    return doc, p


def load_space(path: str | Path, config: str | Path | None = None, sets: list[str] | tuple[str, ...] = ()) -> SearchSpace:  # fmt: skip
    """Read and validate a search space against a base config (the YAML file plus ``--set`` overrides).

    Raises:
        SpaceError: unreadable file, unknown or frozen key, malformed range or choice, a bound or choice
            the config rejects, or a key that does not change the searched stage; the message names the
            file and the key.
    """
    doc, p = read_space_file(path)
    settings = doc.get("tune") or {}
    if not isinstance(settings, dict):
        raise SpaceError(f"{p}: tune: must be a mapping of tune.* settings, e.g. {{stage: gmp}}")
    params_doc = doc.get("params")
    if not isinstance(params_doc, dict) or not params_doc:
        raise SpaceError(f"{p}: params: must map dotted config keys to ranges, e.g. "
                         "`stages.utterance.lr: {loguniform: [1.0e-5, 1.0e-3]}`")  # fmt: skip
    leaves = _leaf_keys()
    params = tuple(_parse_param(f"{p}: params", k, v, leaves) for k, v in params_doc.items())
    space = SearchSpace(p, params, dict(settings), str(doc.get("description") or ""))
    try:
        base = space.base(config, sets)
    except ConfigError as e:
        raise SpaceError(f"{p}: with its tune: settings the config is invalid: {e}") from None
    for prm in params:
        _check_against_config(p, prm, base)
    grid = [prm.key for prm in params if prm.kind == "grid"]
    if grid and base.tune.searcher != "random":
        raise SpaceError(
            f"{p}: params: {grid[0]}: `grid` needs tune.searcher=random (a model-based searcher picks its own "
            f"points; tune.searcher is {base.tune.searcher}): use `choice`, or --set tune.searcher=random"
        )
    needed = steps.needed(base, base.tune.stage)
    for prm in params:
        if steps.step_of(prm.key, needed) is None and not prm.key.endswith(".init"):
            raise SpaceError(
                f"{p}: params: {prm.key} does not change stage {base.tune.stage} (tune.stage), which every "
                f"trial trains; with this config that stage depends on {sorted(needed)}"
            )
    point = space.sample(np.random.default_rng(0))  # rules that span two searched keys
    try:
        space.apply(base, point)
    except ConfigError as e:
        raise SpaceError(f"{p}: a sampled point {point} is not a valid config: {e}") from None
    return space


# ----------------------------------------------------------------------------- pipeline plan


def plan(space: SearchSpace, cfg: Config) -> tuple[list[str], list[str]]:
    """(steps the driver computes once before the search, steps each trial computes itself), as targets
    for :func:`gmptl.experiment.run_experiment`.

    The searched stage reads the outputs of its upstream steps (:func:`gmptl.steps.upstream`). Those
    that no searched key changes, directly or through a step they read, are the same for every trial:
    the driver computes them. The others each trial computes itself (under cache locks).
    """
    stage = cfg.tune.stage
    ups = steps.upstream(cfg, stage)
    touched = {steps.step_of(k, [*ups, stage]) for k in space.keys} - {None}
    changed = {u for u in ups if touched & set(steps.needed(cfg, u))}
    shared = [u for u in ups if u not in changed]
    return steps.frontier(cfg, shared), steps.frontier(cfg, ups) if changed else []
