"""The manifest: one Parquet schema for every corpus.

Written by ``gmptl prepare`` (one row per usable utterance, sorted by utt_id) and
read by every later stage. ``path`` is absolute; ``duration_s`` and
``sample_rate`` are measured from the decoded file, once, in prepare.

``emotion`` and ``gender`` are set in every row of a labelled corpus and null in every
row of the ``unlabeled`` corpus (audio for ``gmptl pretrain``); a manifest with some
rows labelled and others not is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gmptl import files
from gmptl.errors import BadInputError

SCHEMA_VERSION = 1

SCHEMA = pa.schema(
    [
        pa.field("utt_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("sample_rate", pa.int32(), nullable=False),
        pa.field("speaker", pa.string(), nullable=False),
        pa.field("gender", pa.string()),  # "F" or "M"; null in an unlabeled manifest
        pa.field("session", pa.string()),  # null for corpora without sessions
        pa.field("emotion", pa.string()),  # after the label map; null in an unlabeled manifest
        pa.field("corpus", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("valence", pa.float64()),
        pa.field("arousal", pa.float64()),
        pa.field("dominance", pa.float64()),
        pa.field("split", pa.string()),  # the corpus's official split, when it has one
    ]
)
REQUIRED = [f.name for f in SCHEMA if not f.nullable]
LABELS = ["emotion", "gender"]  # all set (a labelled corpus) or all null (an unlabeled one)
COLUMNS = [f.name for f in SCHEMA]


@dataclass
class Utterance:
    """One utterance as a loader found it (before its audio is checked); no emotion or gender when unlabeled."""

    utt_id: str
    path: str
    speaker: str
    gender: str | None
    emotion: str | None
    corpus: str
    session: str | None = None
    text: str | None = None
    valence: float | None = None
    arousal: float | None = None
    dominance: float | None = None
    split: str | None = None
    source_file: str | None = None  # label/metadata file the record came from, for error messages
    source_line: int | None = None
    duration_s: float = 0.0
    sample_rate: int = 0


@dataclass
class BadItem:
    """Something left out (or, under on_bad_audio=error, the thing that stopped prepare)."""

    path: str
    reason: str
    line: int | None = None
    utt_id: str | None = None

    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line is not None else self.path

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "reason": self.reason}
        if self.line is not None:
            d["line"] = self.line
        if self.utt_id is not None:
            d["utt_id"] = self.utt_id
        return d


@dataclass
class Summary:
    n_utterances: int
    per_class: dict[str, int]
    per_session: dict[str, int]
    speakers: list[str]
    genders: dict[str, int]
    hours: float
    bad: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_utterances": self.n_utterances,
            "per_class": self.per_class,
            "per_session": self.per_session,
            "speakers": self.speakers,
            "genders": self.genders,
            "hours": self.hours,
            "bad": self.bad,
        }


def to_frame(records: list[Utterance]) -> pd.DataFrame:
    rows = [{c: getattr(r, c) for c in COLUMNS} for r in records]
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values("utt_id", kind="stable").reset_index(drop=True)


def write_manifest(records: list[Utterance], path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write records as Parquet with :data:`SCHEMA`, sorted by utt_id (stable across runs)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(to_frame(records), schema=SCHEMA, preserve_index=False)
    md = {b"gmptl": json.dumps({"schema_version": SCHEMA_VERSION, **(meta or {})}).encode()}
    files.atomic_write(p, lambda fh: pq.write_table(table.replace_schema_metadata(md), fh))
    return p


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and check a manifest; errors name the file and what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"manifest {p} does not exist; build it with `gmptl prepare --out {p}`")
    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for a non-Parquet file
        raise BadInputError(f"manifest {p} is not a readable Parquet file: {e}") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise BadInputError(f"manifest {p} lacks columns {missing}; rebuild it with `gmptl prepare`")
    df = table.select(COLUMNS).to_pandas()
    for c in REQUIRED:
        if df[c].isna().any():
            raise BadInputError(f"manifest {p}: column {c!r} has {int(df[c].isna().sum())} empty values")
    for c in LABELS:
        n_empty = int(df[c].isna().sum())
        if 0 < n_empty < len(df):
            raise BadInputError(
                f"manifest {p}: column {c!r} has {n_empty} empty values in {len(df)} rows (a manifest is "
                "labelled in every row, or in none for data.corpus=unlabeled); rebuild it with `gmptl prepare`"
            )
    dups = df["utt_id"][df["utt_id"].duplicated()].tolist()
    if dups:
        raise BadInputError(f"manifest {p}: duplicated utt_id {dups[:5]}")
    return df


def is_labelled(df: pd.DataFrame) -> bool:
    """Whether the manifest's utterances have emotion labels (False for data.corpus=unlabeled)."""
    return bool(df["emotion"].notna().any())


def summarize(df: pd.DataFrame, bad: list[BadItem] | None = None) -> Summary:
    """The counts `gmptl prepare --json` prints."""
    sessions = df["session"].fillna("none")
    return Summary(
        n_utterances=int(len(df)),
        per_class={k: int(v) for k, v in sorted(df["emotion"].value_counts().items())},
        per_session={k: int(v) for k, v in sorted(sessions.value_counts().items())},
        speakers=sorted(df["speaker"].unique().tolist()),
        genders={g: int((df["gender"] == g).sum()) for g in ("F", "M")},
        hours=round(float(df["duration_s"].sum()) / 3600.0, 4),
        bad=[b.as_dict() for b in (bad or [])],
    )
