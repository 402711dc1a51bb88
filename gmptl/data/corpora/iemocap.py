"""IEMOCAP raw release (and the synthetic corpus, written in the same layout).

Layout::

    Session{n}/dialog/EmoEvaluation/<dialog>.txt           label files (top level only)
    Session{n}/sentences/wav/<dialog>/<utt_id>.wav          audio

An utterance line is ``[start - end] <TAB> utt_id <TAB> label <TAB> [V, A, D]``;
annotator lines (``C-E1:``, ``A-E2:`` ...), the ``%`` header and blank lines sit
between them and are skipped. Subfolders (``Categorical/``, ``Attribute/``,
``Self-evaluation/``) and macOS ``._*`` files are not label files.

Speaker and gender come from the utterance id: in ``Ses01F_impro01_M012`` the
speaker is the male actor of session 1 (the letter before the last three digits);
``Ses01F`` is the dialogue's prefix, not the speaker.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from gmptl.config import DataConfig
from gmptl.data.corpora.base import (
    CorpusSpec,
    LabelMapper,
    LoadResult,
    add_label,
    not_utf8,
    read_text,
    register_corpus,
)
from gmptl.data.manifest import BadItem, Utterance

NATIVE_LABELS = ("neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth", "xxx")
DEFAULT_MAP = {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"}

# The standard 4-class subset (exc merged into happy) of the full release (docs/corpora.md).
REFERENCE_TOTAL = 5531
REFERENCE_PER_CLASS = {"neutral": 1708, "happy": 1636, "angry": 1103, "sad": 1084}
REFERENCE_PER_SESSION = {
    "Session1": 1085,
    "Session2": 1023,
    "Session3": 1151,
    "Session4": 1031,
    "Session5": 1241,
}

SYNTHETIC_MARKER = "gmptl_synthetic.json"

_UTT_LINE = re.compile(
    r"^\[\s*(?P<start>\d+(?:\.\d+)?)\s*-\s*(?P<end>\d+(?:\.\d+)?)\s*\]\s+(?P<utt>\S+)\s+(?P<label>\S+)"
    r"\s+\[(?P<vad>[^\]]*)\]\s*$"
)
_UTT_ID = re.compile(r"^(?P<dialog>Ses(?P<session>\d{2})[FM]_\S+)_(?P<gender>[FM])(?P<num>\d{3})$")
_SESSION_DIR = re.compile(r"^Session(\d+)$")


def _bad(where: tuple[str, int], utt_id: str | None, reason: str) -> BadItem:
    return BadItem(where[0], reason, line=where[1], utt_id=utt_id)


def speaker_of(utt_id: str) -> tuple[str, str, str] | None:
    """(speaker, gender, session) from an utterance id, or None if it is not an IEMOCAP id."""
    m = _UTT_ID.match(utt_id)
    if not m:
        return None
    n = int(m["session"])
    return f"Ses{n:02d}_{m['gender']}", m["gender"], f"Session{n}"


def _label_files(root: Path) -> list[tuple[int, Path]]:
    files = []
    for sdir in sorted(root.iterdir()) if root.is_dir() else []:
        m = _SESSION_DIR.match(sdir.name)
        if not m or not sdir.is_dir():
            continue
        emo_dir = sdir / "dialog" / "EmoEvaluation"
        if not emo_dir.is_dir():
            continue
        for f in sorted(emo_dir.iterdir()):
            # Only top-level .txt files are label files; ._* are macOS resource forks.
            if f.is_file() and f.suffix == ".txt" and not f.name.startswith("."):
                files.append((int(m.group(1)), f))
    return files


def _parse_vad(text: str) -> tuple[float, float, float] | None:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        return None
    try:
        v, a, d = (float(p) for p in parts)
    except ValueError:
        return None
    return v, a, d


def load_iemocap(cfg: DataConfig, root: Path, mapper: LabelMapper) -> LoadResult:
    marker = root / SYNTHETIC_MARKER
    corpus = "synthetic" if marker.is_file() else "iemocap"
    result = LoadResult(records=[], corpus=corpus)
    files = _label_files(root)
    if not files:
        result.bad.append(
            BadItem(
                str(root),
                "no label files found at Session*/dialog/EmoEvaluation/*.txt: is this an IEMOCAP root?",
            )
        )
        return result
    sessions_seen = set()
    for session_n, label_file in files:
        sessions_seen.add(session_n)
        text = read_text(label_file, result)
        for lineno, raw in enumerate((text or "").splitlines(), start=1):
            line = raw.strip()
            if not line.startswith("["):
                continue  # header, annotator lines (whatever their bytes), blank lines
            where = (str(label_file), lineno)
            undecodable = not_utf8(line)
            if undecodable:
                result.bad.append(_bad(where, utt_id=None, reason=undecodable))
                continue
            m = _UTT_LINE.match(line)
            if not m:
                result.bad.append(_bad(where, utt_id=None, reason=f"malformed utterance line: {line[:80]!r}"))
                continue
            utt_id = m["utt"]
            who = speaker_of(utt_id)
            if who is None:
                result.bad.append(
                    _bad(
                        where,
                        utt_id=utt_id,
                        reason=f"utterance id {utt_id!r} is not Ses<NN><F|M>_<dialog>_<F|M><NNN>",
                    )
                )
                continue
            speaker, gender, session = who
            if session != f"Session{session_n}":
                result.bad.append(
                    _bad(where, utt_id=utt_id, reason=f"utterance {utt_id} is filed under Session{session_n}")
                )
                continue
            vad = _parse_vad(m["vad"])
            if vad is None:
                result.bad.append(
                    _bad(where, utt_id=utt_id, reason=f"malformed [V, A, D] field: {m['vad']!r}")
                )
                continue
            emotion = add_label(result, mapper, m["label"], where, utt_id)
            if emotion is None:
                continue
            dialog = _UTT_ID.match(utt_id)["dialog"]  # type: ignore[index]
            wav = root / f"Session{session_n}" / "sentences" / "wav" / dialog / f"{utt_id}.wav"
            result.records.append(
                Utterance(
                    utt_id=utt_id,
                    path=str(wav),
                    speaker=speaker,
                    gender=gender,
                    emotion=emotion,
                    corpus=corpus,
                    session=session,
                    valence=vad[0],
                    arousal=vad[1],
                    dominance=vad[2],
                    source_file=str(label_file),
                    source_line=lineno,
                )
            )
    if corpus == "iemocap" and sessions_seen >= {1, 2, 3, 4, 5} and mapper.label_map == DEFAULT_MAP:
        result.notes.extend(compare_to_reference(result.records))
    return result


def compare_to_reference(records: list[Utterance]) -> list[str]:
    """On a full release with the standard map, say how the counts differ from the published ones (docs/corpora.md)."""
    per_class: dict[str, int] = {}
    per_session: dict[str, int] = {}
    for r in records:
        per_class[r.emotion] = per_class.get(r.emotion, 0) + 1
        per_session[str(r.session)] = per_session.get(str(r.session), 0) + 1
    if (
        len(records) == REFERENCE_TOTAL
        and per_class == REFERENCE_PER_CLASS
        and per_session == REFERENCE_PER_SESSION
    ):
        return []
    diffs = [
        f"{k}: {got.get(k, 0)} (expected {exp})"
        for ref, got in ((REFERENCE_PER_CLASS, per_class), (REFERENCE_PER_SESSION, per_session))
        for k, exp in ref.items()
        if got.get(k, 0) != exp
    ]
    return [
        f"IEMOCAP: found {len(records)} utterances in the standard 4-class subset, expected {REFERENCE_TOTAL} "
        f"(before audio checks); differences: " + "; ".join(diffs)
    ]


def read_synthetic_marker(root: Path) -> dict | None:
    p = root / SYNTHETIC_MARKER
    return json.loads(p.read_text()) if p.is_file() else None


register_corpus(
    CorpusSpec(
        name="iemocap",
        load=load_iemocap,
        native_labels=NATIVE_LABELS,
        default_label_map=DEFAULT_MAP,
        has_sessions=True,
        description="IEMOCAP raw release: Session{1..5}/dialog/EmoEvaluation/*.txt + sentences/wav",
    )
)
register_corpus(
    CorpusSpec(
        name="synthetic",
        load=load_iemocap,
        native_labels=NATIVE_LABELS,
        default_label_map=DEFAULT_MAP,
        has_sessions=True,
        description="The built-in synthetic corpus (gmptl synth), in the IEMOCAP raw-release layout",
    )
)
