"""Acted corpora whose fields are coded in the file name: RAVDESS, CREMA-D, EmoDB.

RAVDESS (speech)::  Actor_NN/MM-VV-EE-II-SS-RR-AA.wav
    modality 03 = audio-only; vocal channel 01 speech, 02 song (song is excluded);
    emotion EE 01..08; actor AA odd = male, even = female.
CREMA-D::           AudioWAV/<actor>_<sentence>_<EMO>_<level>.wav + VideoDemographics.csv
    (ActorID, Age, Sex, Race, Ethnicity); gender from Sex.
EmoDB::             wav/<speaker:2><text:3><emotion letter><version>.wav
    gender from the speaker table of the corpus documentation.
None of the three has sessions: use folds.scheme lospk or speaker_kfold.
"""

from __future__ import annotations

import re
from pathlib import Path

from gmptl.config import DataConfig
from gmptl.data.corpora.base import (
    CorpusSpec,
    LabelMapper,
    LoadResult,
    add_label,
    glob_named,
    parse_gender,
    read_rows,
    register_corpus,
    type_error,
)
from gmptl.data.manifest import BadItem, Utterance

# ----------------------------------------------------------------------------- RAVDESS

RAVDESS_EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}  # fmt: skip
_RAVDESS_NAME = re.compile(r"(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})\.wav")


def load_ravdess(cfg: DataConfig, root: Path, mapper: LabelMapper) -> LoadResult:
    result = LoadResult(records=[], corpus="ravdess")
    good, other = glob_named(root, _RAVDESS_NAME)
    for p in other:
        result.bad.append(BadItem(str(p), "file name is not RAVDESS's MM-VV-EE-II-SS-RR-AA.wav"))
    for p in good:
        modality, channel, emo, _intensity, _stmt, _rep, actor = _RAVDESS_NAME.fullmatch(p.name).groups()  # type: ignore[union-attr]
        if p.parent.name.startswith("Actor_") and p.parent.name != f"Actor_{actor}":
            result.bad.append(BadItem(str(p), f"actor {actor} in the name but filed under {p.parent.name}"))
            continue
        if modality != "03":
            result.excluded[f"modality {modality} (not audio-only)"] += 1
            continue
        if channel == "02":
            result.excluded["song (vocal channel 02)"] += 1
            continue
        if emo not in RAVDESS_EMOTIONS:
            result.bad.append(BadItem(str(p), mapper.unknown_reason(f"code {emo}")))
            continue
        emotion = add_label(result, mapper, RAVDESS_EMOTIONS[emo], (str(p), None), p.stem)
        if emotion is None:
            continue
        n = int(actor)
        result.records.append(
            Utterance(
                utt_id=f"ravdess_{p.stem}", path=str(p), speaker=f"Actor_{actor}",
                gender="M" if n % 2 else "F", emotion=emotion, corpus="ravdess", source_file=str(p),
            )
        )  # fmt: skip
    return result


# ----------------------------------------------------------------------------- CREMA-D

CREMAD_EMOTIONS = {
    "NEU": "neutral",
    "HAP": "happy",
    "SAD": "sad",
    "ANG": "angry",
    "FEA": "fear",
    "DIS": "disgust",
}
_CREMAD_NAME = re.compile(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{1,2})\.wav")


def _read_cremad_demographics(path: Path, result: LoadResult) -> dict[str, str]:
    genders: dict[str, str] = {}
    if not path.is_file():
        result.bad.append(BadItem(str(path), "CREMA-D demographics CSV not found (set data.metadata_file)"))
        return genders
    for lineno, row in read_rows(path, result, columns=("ActorID", "Sex")):
        wrong = type_error(row, text=("ActorID", "Sex"))
        if wrong or not row.get("ActorID"):
            result.bad.append(BadItem(str(path), wrong or "malformed line: empty ['ActorID']", line=lineno))
            continue
        g = parse_gender(row.get("Sex") or "")
        if g is None:
            result.bad.append(BadItem(str(path), f"Sex {row.get('Sex')!r} is not Male/Female", line=lineno))
            continue
        genders[row["ActorID"].strip()] = g
    return genders


def load_cremad(cfg: DataConfig, root: Path, mapper: LabelMapper) -> LoadResult:
    result = LoadResult(records=[], corpus="cremad")
    genders = _read_cremad_demographics(root / (cfg.metadata_file or "VideoDemographics.csv"), result)
    audio_dir = root / "AudioWAV"
    good, other = glob_named(audio_dir if audio_dir.is_dir() else root, _CREMAD_NAME)
    for p in other:
        result.bad.append(BadItem(str(p), "file name is not CREMA-D's <actor>_<sentence>_<EMO>_<level>.wav"))
    for p in good:
        actor, _sentence, emo, _level = _CREMAD_NAME.fullmatch(p.name).groups()  # type: ignore[union-attr]
        if emo not in CREMAD_EMOTIONS:
            result.bad.append(BadItem(str(p), mapper.unknown_reason(emo)))
            continue
        if actor not in genders:
            result.bad.append(BadItem(str(p), f"actor {actor} is not in the demographics CSV"))
            continue
        emotion = add_label(result, mapper, CREMAD_EMOTIONS[emo], (str(p), None), p.stem)
        if emotion is None:
            continue
        result.records.append(
            Utterance(
                utt_id=f"cremad_{p.stem}", path=str(p), speaker=f"cremad_{actor}", gender=genders[actor],
                emotion=emotion, corpus="cremad", source_file=str(p),
            )
        )  # fmt: skip
    return result


# ----------------------------------------------------------------------------- EmoDB

EMODB_EMOTIONS = {
    "W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness", "N": "neutral",
}  # fmt: skip
# Speaker table of the Berlin Database of Emotional Speech (Burkhardt et al., 2005).
EMODB_GENDER = {
    "03": "M",
    "08": "F",
    "09": "F",
    "10": "M",
    "11": "M",
    "12": "M",
    "13": "F",
    "14": "F",
    "15": "M",
    "16": "F",
}
_EMODB_NAME = re.compile(r"(\d{2})([a-z]\d{2})([A-Z])([a-z])\.wav")


def load_emodb(cfg: DataConfig, root: Path, mapper: LabelMapper) -> LoadResult:
    result = LoadResult(records=[], corpus="emodb")
    wav_dir = root / "wav"
    good, other = glob_named(wav_dir if wav_dir.is_dir() else root, _EMODB_NAME)
    for p in other:
        result.bad.append(BadItem(str(p), "file name is not EmoDB's <speaker><text><emotion><version>.wav"))
    for p in good:
        speaker, _text, emo, _version = _EMODB_NAME.fullmatch(p.name).groups()  # type: ignore[union-attr]
        if speaker not in EMODB_GENDER:
            result.bad.append(
                BadItem(str(p), f"speaker {speaker} is not one of EmoDB's {sorted(EMODB_GENDER)}")
            )
            continue
        if emo not in EMODB_EMOTIONS:
            result.bad.append(BadItem(str(p), mapper.unknown_reason(f"letter {emo}")))
            continue
        emotion = add_label(result, mapper, EMODB_EMOTIONS[emo], (str(p), None), p.stem)
        if emotion is None:
            continue
        result.records.append(
            Utterance(
                utt_id=f"emodb_{p.stem}", path=str(p), speaker=f"emodb_{speaker}", gender=EMODB_GENDER[speaker],
                emotion=emotion, corpus="emodb", source_file=str(p),
            )
        )  # fmt: skip
    return result


register_corpus(
    CorpusSpec(
        name="ravdess",
        load=load_ravdess,
        native_labels=tuple(RAVDESS_EMOTIONS.values()),
        default_label_map={"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"},
        has_sessions=False,
        description="RAVDESS speech: Actor_NN/03-01-EE-II-SS-RR-AA.wav",
    )
)
register_corpus(
    CorpusSpec(
        name="cremad",
        load=load_cremad,
        native_labels=tuple(CREMAD_EMOTIONS.values()),
        default_label_map={"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"},
        has_sessions=False,
        description="CREMA-D: AudioWAV/<actor>_<sentence>_<EMO>_<level>.wav + VideoDemographics.csv",
    )
)
register_corpus(
    CorpusSpec(
        name="emodb",
        load=load_emodb,
        native_labels=tuple(EMODB_EMOTIONS.values()),
        default_label_map={"neutral": "neutral", "happiness": "happy", "sadness": "sad", "anger": "angry"},
        has_sessions=False,
        description="EmoDB (Berlin): wav/<speaker><text><emotion><version>.wav",
    )
)
