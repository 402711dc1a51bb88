"""What a corpus loader is: a function from (data config, root, label mapper) to records.

A loader never raises for a bad item: it records a :class:`BadItem` (file, line,
reason) and moves on, and ``prepare`` applies the bad-input policy to all of them
at once. Loaders only parse labels and metadata; audio is checked in ``prepare``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gmptl.config import DataConfig
from gmptl.data.manifest import BadItem, Utterance
from gmptl.errors import ConfigError

FOUR_CLASSES = ("neutral", "happy", "sad", "angry")


@dataclass
class LoadResult:
    records: list[Utterance]
    bad: list[BadItem] = field(default_factory=list)
    excluded: Counter[str] = field(default_factory=Counter)  # reason -> count, deliberate filters
    notes: list[str] = field(default_factory=list)  # warnings for the report (e.g. count mismatch)
    corpus: str = ""


class LabelMapper:
    """Native label -> class name, with the three outcomes a loader must tell apart."""

    def __init__(self, label_map: dict[str, str], known: set[str]):
        self.label_map = label_map
        self.known = known

    @classmethod
    def for_corpus(cls, cfg: DataConfig, spec: CorpusSpec) -> LabelMapper:
        label_map = dict(cfg.label_map) if cfg.label_map is not None else dict(spec.default_label_map)
        if spec.native_labels is not None:
            known = set(spec.native_labels)
            wrong = sorted(set(label_map) - known)
            if wrong:
                raise ConfigError(
                    f"data.label_map: {wrong} are not labels of corpus {spec.name!r}; "
                    f"its labels are {sorted(known)}"
                )
            if cfg.drop_labels:
                raise ConfigError(
                    f"data.drop_labels applies to open-vocabulary corpora (emobox, generic); corpus "
                    f"{spec.name!r} excludes every label not in data.label_map already"
                )
        else:
            known = set(label_map) | set(cfg.drop_labels)
        if not label_map:
            raise ConfigError("data.label_map is empty: at least one label must map to a class")
        return cls(label_map, known)

    def map(self, native: str) -> tuple[str, str | None]:
        """Returns ("ok", class), ("excluded", None) or ("unknown", None)."""
        if native in self.label_map:
            return "ok", self.label_map[native]
        if native in self.known:
            return "excluded", None
        return "unknown", None

    def unknown_reason(self, native: str) -> str:
        return f"unknown label {native!r} (known: {sorted(self.known)}; map it with data.label_map)"


Loader = Callable[[DataConfig, Path, LabelMapper], LoadResult]


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    load: Loader
    native_labels: tuple[str, ...] | None  # None: open vocabulary, defined by label_map + drop_labels
    default_label_map: dict[str, str]
    has_sessions: bool
    description: str


CORPORA: dict[str, CorpusSpec] = {}


def register_corpus(spec: CorpusSpec) -> CorpusSpec:
    """Add a corpus loader; the registry is what `data.corpus` names."""
    CORPORA[spec.name] = spec
    return spec


def get_corpus(name: str) -> CorpusSpec:
    from gmptl.data import corpora  # noqa: F401  (importing the package registers every loader)

    if name not in CORPORA:
        raise ConfigError(f"data.corpus: unknown corpus {name!r}; known: {sorted(CORPORA)}")
    return CORPORA[name]


def add_label(
    result: LoadResult,
    mapper: LabelMapper,
    native: str,
    where: tuple[str, int | None],
    utt_id: str | None,
) -> str | None:
    """Map a native label, recording an unknown label as bad and an unmapped one as excluded."""
    status, mapped = mapper.map(native)
    if status == "unknown":
        result.bad.append(BadItem(where[0], mapper.unknown_reason(native), line=where[1], utt_id=utt_id))
        return None
    if status == "excluded":
        result.excluded[f"label {native} (not in label map)"] += 1
        return None
    return mapped


def parse_gender(value: str) -> str | None:
    v = value.strip().lower()
    if v in ("f", "female", "w", "woman"):
        return "F"
    if v in ("m", "male", "man"):
        return "M"
    return None


def glob_named(root: Path, pattern: re.Pattern[str], suffix: str = ".wav") -> tuple[list[Path], list[Path]]:
    """Files under root with ``suffix``, split into (name matches pattern, does not); macOS ``._`` skipped."""
    good, other = [], []
    for p in sorted(root.rglob(f"*{suffix}")):
        if p.name.startswith("._"):
            continue
        (good if pattern.fullmatch(p.name) else other).append(p)
    return good, other
