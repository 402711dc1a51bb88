"""Corpora described by a metadata table: MSP-Podcast, EmoBox-style JSONL, and the generic importer.

MSP-Podcast::  Audios/<FileName> + Labels/labels_consensus.csv with columns
    FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set.
    Rows with an unknown speaker or gender are excluded (counted): they can be
    neither placed in a speaker-independent fold nor used for the gender task.
EmoBox-style JSONL:: one object per line with ``key``, ``wav`` (relative to root)
    and ``emo``, as EmoBox's ``data/<dataset>/<dataset>.jsonl``; ``speaker`` and
    ``gender`` come from the line or from ``data.speaker_table`` (CSV key,speaker,gender).
Generic CSV/JSONL (the documented way to add a corpus):: columns utt_id, path
    (relative to root), speaker, gender (F/M), emotion; optional session, text,
    valence, arousal, dominance, split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gmptl.config import DataConfig
from gmptl.data.corpora.base import (
    FOUR_CLASSES,
    CorpusSpec,
    LabelMapper,
    LoadResult,
    add_label,
    parse_gender,
    read_rows,
    register_corpus,
    type_error,
)
from gmptl.data.manifest import BadItem, Utterance


def _missing(row: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    return [k for k in keys if row.get(k) in (None, "")]


def _float_or_none(value: Any) -> float | None:
    if value in (None, ""):
        return None
    return float(value)


# ----------------------------------------------------------------------------- MSP-Podcast

MSP_EMOTIONS = {
    "A": "angry", "S": "sad", "H": "happy", "U": "surprise", "F": "fear",
    "D": "disgust", "C": "contempt", "N": "neutral", "O": "other", "X": "no_agreement",
}  # fmt: skip


def load_msp_podcast(cfg: DataConfig, root: Path, mapper: LabelMapper) -> LoadResult:
    result = LoadResult(records=[], corpus="msp_podcast")
    table = root / (cfg.metadata_file or "Labels/labels_consensus.csv")
    cols = ("FileName", "EmoClass", "SpkrID", "Gender", "Split_Set")
    for lineno, row in read_rows(table, result):
        where = (str(table), lineno)
        missing = _missing(row, cols)
        if missing:
            result.bad.append(BadItem(str(table), f"malformed line: empty {missing}", line=lineno))
            continue
        wrong = type_error(row, text=cols, numbers=("EmoVal", "EmoAct", "EmoDom"))
        if wrong:
            result.bad.append(BadItem(str(table), wrong, line=lineno))
            continue
        code = row["EmoClass"].strip()
        if code not in MSP_EMOTIONS:
            result.bad.append(BadItem(str(table), mapper.unknown_reason(code), line=lineno))
            continue
        emotion = add_label(result, mapper, MSP_EMOTIONS[code], where, row["FileName"])
        if emotion is None:
            continue
        gender = parse_gender(row["Gender"])
        if row["SpkrID"].strip().lower() == "unknown" or gender is None:
            result.excluded["unknown speaker or gender"] += 1
            continue
        try:
            vad = [_float_or_none(row.get(k)) for k in ("EmoVal", "EmoAct", "EmoDom")]
        except ValueError:
            result.bad.append(BadItem(str(table), "EmoVal/EmoAct/EmoDom is not a number", line=lineno))
            continue
        name = row["FileName"].strip()
        result.records.append(
            Utterance(
                utt_id=Path(name).stem, path=str(root / "Audios" / name), speaker=f"msp_{row['SpkrID'].strip()}",
                gender=gender, emotion=emotion, corpus="msp_podcast", valence=vad[0], arousal=vad[1],
                dominance=vad[2], split=row["Split_Set"].strip(), source_file=str(table), source_line=lineno,
            )
        )  # fmt: skip
    return result


# ----------------------------------------------------------------------------- EmoBox


def _speaker_table(path: Path, result: LoadResult) -> dict[str, tuple[str, str]]:
    table: dict[str, tuple[str, str]] = {}
    for lineno, row in read_rows(path, result):
        missing = _missing(row, ("key", "speaker", "gender"))
        wrong = type_error(row, text=("key", "speaker", "gender"))
        if wrong:
            result.bad.append(BadItem(str(path), wrong, line=lineno))
            continue
        gender = parse_gender(str(row.get("gender") or ""))
        if missing or gender is None:
            result.bad.append(
                BadItem(str(path), f"needs key, speaker and gender F/M; got {row}", line=lineno)
            )
            continue
        table[str(row["key"])] = (str(row["speaker"]), gender)
    return table


def _single_jsonl(root: Path, result: LoadResult) -> Path | None:
    found = sorted(root.glob("*.jsonl"))
    if len(found) == 1:
        return found[0]
    result.bad.append(
        BadItem(str(root), f"found {len(found)} *.jsonl files at the root; name one with data.metadata_file")
    )
    return None


def load_emobox(cfg: DataConfig, root: Path, mapper: LabelMapper) -> LoadResult:
    result = LoadResult(records=[], corpus="emobox")
    jsonl = root / cfg.metadata_file if cfg.metadata_file else _single_jsonl(root, result)
    if jsonl is None:
        return result
    speakers = _speaker_table(root / cfg.speaker_table, result) if cfg.speaker_table else {}
    for lineno, row in read_rows(jsonl, result):
        where = (str(jsonl), lineno)
        missing = _missing(row, ("key", "wav", "emo"))
        if missing:
            result.bad.append(BadItem(str(jsonl), f"malformed line: missing {missing}", line=lineno))
            continue
        wrong = type_error(row, text=("key", "wav", "emo", "speaker", "gender", "dataset"))
        if wrong:
            result.bad.append(BadItem(str(jsonl), wrong, line=lineno))
            continue
        key = str(row["key"])
        if row.get("speaker") and row.get("gender"):
            speaker, gender = str(row["speaker"]), parse_gender(str(row["gender"]))
        elif key in speakers:
            speaker, gender = speakers[key]
        else:
            result.bad.append(
                BadItem(
                    str(jsonl), f"{key}: no speaker/gender in the line or in data.speaker_table", line=lineno
                )
            )
            continue
        if gender is None:
            result.bad.append(BadItem(str(jsonl), f"gender {row.get('gender')!r} is not F/M", line=lineno))
            continue
        emotion = add_label(result, mapper, str(row["emo"]), where, key)
        if emotion is None:
            continue
        result.records.append(
            Utterance(
                utt_id=key, path=str(root / str(row["wav"])), speaker=speaker, gender=gender, emotion=emotion,
                corpus=str(row.get("dataset") or "emobox"), source_file=str(jsonl), source_line=lineno,
            )
        )  # fmt: skip
    return result


# ----------------------------------------------------------------------------- generic


def load_generic(cfg: DataConfig, root: Path, mapper: LabelMapper) -> LoadResult:
    result = LoadResult(records=[], corpus="generic")
    if not cfg.metadata_file:
        result.bad.append(
            BadItem(str(root), "corpus generic needs data.metadata_file (a CSV or JSONL under root)")
        )
        return result
    table = root / cfg.metadata_file
    for lineno, row in read_rows(table, result):
        where = (str(table), lineno)
        missing = _missing(row, ("utt_id", "path", "speaker", "gender", "emotion"))
        if missing:
            result.bad.append(BadItem(str(table), f"malformed line: empty {missing}", line=lineno))
            continue
        wrong = type_error(
            row,
            text=("utt_id", "path", "speaker", "gender", "emotion", "session", "text", "split", "corpus"),
            numbers=("valence", "arousal", "dominance"),
        )
        if wrong:
            result.bad.append(BadItem(str(table), wrong, line=lineno))
            continue
        gender = parse_gender(str(row["gender"]))
        if gender is None:
            result.bad.append(BadItem(str(table), f"gender {row['gender']!r} is not F/M", line=lineno))
            continue
        try:
            vad = [_float_or_none(row.get(k)) for k in ("valence", "arousal", "dominance")]
        except ValueError:
            result.bad.append(BadItem(str(table), "valence/arousal/dominance is not a number", line=lineno))
            continue
        emotion = add_label(result, mapper, str(row["emotion"]), where, str(row["utt_id"]))
        if emotion is None:
            continue
        result.records.append(
            Utterance(
                utt_id=str(row["utt_id"]), path=str(root / str(row["path"])), speaker=str(row["speaker"]),
                gender=gender, emotion=emotion, corpus=str(row.get("corpus") or "generic"),
                session=str(row["session"]) if row.get("session") not in (None, "") else None,
                text=row.get("text") or None, valence=vad[0], arousal=vad[1], dominance=vad[2],
                split=str(row["split"]) if row.get("split") not in (None, "") else None,
                source_file=str(table), source_line=lineno,
            )
        )  # fmt: skip
    return result


_IDENTITY_4 = {c: c for c in FOUR_CLASSES}

register_corpus(
    CorpusSpec(
        name="msp_podcast",
        load=load_msp_podcast,
        native_labels=tuple(MSP_EMOTIONS.values()),
        default_label_map=_IDENTITY_4,
        has_sessions=False,
        description="MSP-Podcast: Audios/ + Labels/labels_consensus.csv (official Split_Set)",
    )
)
register_corpus(
    CorpusSpec(
        name="emobox",
        load=load_emobox,
        native_labels=None,
        default_label_map=_IDENTITY_4,
        has_sessions=False,
        description="EmoBox-style JSONL (key, wav, emo [, speaker, gender])",
    )
)
register_corpus(
    CorpusSpec(
        name="generic",
        load=load_generic,
        native_labels=None,
        default_label_map=_IDENTITY_4,
        has_sessions=False,
        description="Any corpus: a CSV/JSONL with utt_id, path, speaker, gender, emotion [, session, split ...]",
    )
)
