"""What a corpus loader is: a function from (data config, root, label mapper) to records.

A loader never raises for a bad item: it records a :class:`BadItem` (file, line,
reason) and moves on, and ``prepare`` applies the bad-input policy to all of them
at once. Loaders only parse labels and metadata; audio is checked in ``prepare``.

Label and metadata files are UTF-8 (a byte-order mark is dropped, as Excel's "CSV UTF-8"
writes one): a line holding other bytes is a bad item naming its line and column, a
UTF-16 file a bad item naming the file (:func:`read_text`, :func:`read_rows`). JSON
fields are typed: a number or list where text is expected is a bad item (:func:`type_error`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        if not spec.labelled:
            if cfg.label_map is not None or cfg.drop_labels:
                raise ConfigError(
                    f"data.label_map and data.drop_labels: corpus {spec.name!r} has no labels to map; "
                    "leave them unset"
                )
            return cls({}, set())
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
    labelled: bool = True  # False: audio without emotion or gender, for `gmptl pretrain` only


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


# ----------------------------------------------------------------------------- text and metadata files

_RESAVE = "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
_ESCAPED = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, kept by errors="surrogateescape"


def read_text(path: Path, result: LoadResult) -> str | None:
    """A UTF-8 text file (a leading BOM dropped), or None with a bad item naming the file.

    Bytes that are not UTF-8 are kept as surrogate escapes, so the caller can name the line that
    holds them (:func:`not_utf8`) and still read the others.
    """
    try:
        blob = path.read_bytes()
    except OSError as e:
        result.bad.append(BadItem(str(path), f"cannot read: {e.strerror or e}"))
        return None
    if blob.startswith((b"\xff\xfe", b"\xfe\xff")):
        result.bad.append(BadItem(str(path), f"UTF-16 text, not UTF-8: {_RESAVE}"))
        return None
    if b"\x00" in blob:
        result.bad.append(
            BadItem(
                str(path),
                "holds NUL bytes, so it is not UTF-8 text (UTF-16 without a byte-order mark, or a binary "
                "file such as .xlsx): save it as UTF-8 CSV or JSONL",
            )
        )
        return None
    return blob.decode("utf-8-sig", errors="surrogateescape")


def not_utf8(line: str) -> str | None:
    """The reason a line read by :func:`read_text` holds bytes that are not UTF-8, or None."""
    m = _ESCAPED.search(line)
    if m is None:
        return None
    return f"not UTF-8: byte 0x{ord(m.group()) - 0xDC00:02x} at column {m.start() + 1}; {_RESAVE}"


def read_rows(
    path: Path, result: LoadResult, columns: tuple[str, ...] = ()
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) from a CSV or JSONL (``.jsonl``/``.json``) file; bad lines become bad items.

    ``columns``: the header a CSV must have (a bad item naming the file otherwise). CSV values are
    text; JSON values are whatever the line holds, so loaders check their types (:func:`type_error`).
    """
    if not path.is_file():
        result.bad.append(BadItem(str(path), "metadata file not found"))
        return
    text = read_text(path, result)
    if text is None:
        return
    if path.suffix.lower() in (".jsonl", ".json"):
        yield from _json_rows(path, text, result)
    else:
        yield from _csv_rows(path, text, result, columns)


def _json_rows(path: Path, text: str, result: LoadResult) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit in a string
        if not line.strip():
            continue
        reason = not_utf8(line)
        if reason:
            result.bad.append(BadItem(str(path), reason, line=lineno))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            result.bad.append(BadItem(str(path), f"malformed JSON line: {e.msg}", line=lineno))
            continue
        if not isinstance(row, dict):
            result.bad.append(BadItem(str(path), "JSON line is not an object", line=lineno))
            continue
        yield lineno, row


def _csv_rows(
    path: Path, text: str, result: LoadResult, columns: tuple[str, ...]
) -> Iterator[tuple[int, dict[str, Any]]]:
    lines = io.StringIO(text, newline="").readlines()  # split as the csv module counts lines
    reader = csv.DictReader(lines)
    try:
        header = reader.fieldnames or []
        end = reader.line_num
        reason = next(filter(None, map(not_utf8, lines[:end])), None)
        if reason:
            result.bad.append(BadItem(str(path), f"header {reason}", line=1))
            return
        if not set(columns) <= set(header):
            result.bad.append(BadItem(str(path), f"expected columns {', '.join(columns)}, found {header}"))
            return
        for row in reader:
            # The lines this record took: blank lines before it, newlines inside quoted fields.
            span = range(end + 1, reader.line_num + 1)
            end = reader.line_num
            lineno = next((i for i in span if lines[i - 1].strip()), end)
            reason = next(filter(None, (not_utf8(lines[i - 1]) for i in span)), None)
            if reason:
                result.bad.append(BadItem(str(path), reason, line=lineno))
                continue
            if None in row:  # more fields than the header
                result.bad.append(
                    BadItem(str(path), "malformed CSV line: more fields than the header", line=lineno)
                )
                continue
            yield lineno, row
    except csv.Error as e:  # e.g. a field over the csv module's size limit; the rest of the file is not read
        result.bad.append(
            BadItem(
                str(path), f"malformed CSV ({e}); lines after this one were not read", line=reader.line_num
            )
        )


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def type_error(row: dict[str, Any], text: tuple[str, ...] = (), numbers: tuple[str, ...] = ()) -> str | None:
    """Why a row's fields have the wrong type (JSON lines; CSV fields are always text), or None.

    ``text`` fields must be strings; ``numbers`` numbers or numeric text. Missing and null values pass
    (required fields are checked for emptiness separately).
    """
    for key in text:
        v = row.get(key)
        if v is not None and not isinstance(v, str):
            shown = json.dumps(v)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            return f"field {key!r} must be a string, found {_json_kind(v)} {shown}; quote it in the file"
    for key in numbers:
        v = row.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float | str)):
            shown = json.dumps(v)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            return f"field {key!r} must be a number, found {_json_kind(v)} {shown}"
    return None
