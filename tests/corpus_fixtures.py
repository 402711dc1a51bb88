"""Writers of tiny corpora in each corpus's exact on-disk layout (no corpus can be downloaded here)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import soundfile as sf


def write_wav(
    path: Path, seconds: float = 0.25, sr: int = 16000, channels: int = 1, freq: float = 220.0
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.1 * np.sin(2 * np.pi * freq * t)
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(path, data, sr, subtype="PCM_16")
    return path


# ----------------------------------------------------------------------------- IEMOCAP

IEMOCAP_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def iemocap_block(utt_id: str, label: str, start: float = 1.0, sep: str = "\t") -> str:
    return (
        f"[{start:.4f} - {start + 2.0:.4f}]{sep}{utt_id}{sep}{label}{sep}[2.5000, 3.0000, 2.0000]\n"
        f"C-E1:\tNeutral;\t()\nC-E3:\tNeutral;\t(sounds tired)\nA-E2:\tval 3; act 2; dom  2;\t()\n\n"
    )


def write_iemocap(root: Path, utterances: list[tuple[str, str]], wav_seconds: float = 0.25) -> Path:
    """Write label files and wavs for (utt_id, label) pairs, grouped by dialog, with the real clutter:
    Categorical/ and Attribute/ subfolders holding .txt files, and macOS ._ resource-fork files."""
    by_dialog: dict[str, list[tuple[str, str]]] = {}
    for utt, label in utterances:
        by_dialog.setdefault(utt.rsplit("_", 1)[0], []).append((utt, label))
    for dialog, items in by_dialog.items():
        session = int(dialog[3:5])
        sdir = root / f"Session{session}"
        emo = sdir / "dialog" / "EmoEvaluation"
        emo.mkdir(parents=True, exist_ok=True)
        # Alternate tabs and runs of spaces between fields, as hand-edited copies do.
        body = "".join(
            iemocap_block(u, lab, start=3.0 * i, sep="\t" if i % 2 == 0 else "   ")
            for i, (u, lab) in enumerate(items)
        )
        (emo / f"{dialog}.txt").write_text(IEMOCAP_HEADER + body)
        (emo / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
        for sub in ("Categorical", "Attribute", "Self-evaluation"):
            (emo / sub).mkdir(exist_ok=True)
            (emo / sub / f"{dialog}_e1_cat.txt").write_text(f"{items[0][0]} :Neutral state; ()\n")
        for u, _ in items:
            write_wav(sdir / "sentences" / "wav" / dialog / f"{u}.wav", wav_seconds)
            (sdir / "sentences" / "wav" / dialog / f"._{u}.wav").write_bytes(b"\x00\x05\x16\x07")
    return root


def small_iemocap(root: Path) -> Path:
    """2 sessions x 2 speakers; includes exc (-> happy), fru and xxx (excluded)."""
    utts = [
        ("Ses01F_impro01_F000", "neu"),
        ("Ses01F_impro01_M000", "ang"),
        ("Ses01F_impro01_F001", "exc"),
        ("Ses01F_impro01_M001", "fru"),
        ("Ses01M_script01_1_F000", "sad"),
        ("Ses01M_script01_1_M000", "hap"),
        ("Ses02F_impro02_F000", "neu"),
        ("Ses02F_impro02_M000", "sad"),
        ("Ses02F_impro02_F001", "xxx"),
        ("Ses02M_script02_2_M000", "ang"),
        ("Ses02M_script02_2_F000", "exc"),
    ]
    return write_iemocap(root, utts)


# ----------------------------------------------------------------------------- RAVDESS


def write_ravdess(root: Path) -> Path:
    for actor in (1, 2, 3, 4):
        for emo in ("01", "02", "03", "04", "05", "06"):
            write_wav(root / f"Actor_{actor:02d}" / f"03-01-{emo}-01-01-01-{actor:02d}.wav")
        # song files (vocal channel 02) exist in the song release: excluded
        write_wav(root / f"Actor_{actor:02d}" / f"03-02-03-01-01-01-{actor:02d}.wav")
    return root


# ----------------------------------------------------------------------------- CREMA-D


def write_cremad(root: Path) -> Path:
    actors = {"1001": "Male", "1002": "Female", "1003": "Female"}
    root.mkdir(parents=True, exist_ok=True)
    with (root / "VideoDemographics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ActorID", "Age", "Sex", "Race", "Ethnicity"])
        for a, sex in actors.items():
            w.writerow([a, 40, sex, "Caucasian", "Not Hispanic"])
    for a in actors:
        for emo, level in (
            ("ANG", "HI"),
            ("DIS", "XX"),
            ("FEA", "LO"),
            ("HAP", "MD"),
            ("NEU", "XX"),
            ("SAD", "XX"),
        ):
            write_wav(root / "AudioWAV" / f"{a}_DFA_{emo}_{level}.wav")
    return root


# ----------------------------------------------------------------------------- EmoDB


def write_emodb(root: Path) -> Path:
    for spk in ("03", "08", "09", "10"):
        for emo in "WLEAFTN":
            write_wav(root / "wav" / f"{spk}a01{emo}a.wav")
    return root


# ----------------------------------------------------------------------------- MSP-Podcast


def write_msp(root: Path) -> Path:
    rows = [
        ("MSP-PODCAST_0001_0008.wav", "N", "1", "Female", "Train"),
        ("MSP-PODCAST_0001_0009.wav", "H", "1", "Female", "Train"),
        ("MSP-PODCAST_0002_0001.wav", "A", "2", "Male", "Train"),
        ("MSP-PODCAST_0002_0002.wav", "S", "2", "Male", "Train"),
        ("MSP-PODCAST_0003_0001.wav", "S", "3", "Male", "Train"),
        ("MSP-PODCAST_0004_0001.wav", "N", "4", "Female", "Development"),
        ("MSP-PODCAST_0004_0002.wav", "A", "4", "Female", "Development"),
        ("MSP-PODCAST_0005_0001.wav", "H", "5", "Male", "Test1"),
        ("MSP-PODCAST_0005_0002.wav", "X", "5", "Male", "Test1"),
        ("MSP-PODCAST_0006_0001.wav", "A", "Unknown", "Unknown", "Train"),
    ]
    (root / "Labels").mkdir(parents=True, exist_ok=True)
    with (root / "Labels" / "labels_consensus.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        for name, emo, spk, gender, split in rows:
            w.writerow([name, emo, 3.2, 4.0, 3.6, spk, gender, split])
            write_wav(root / "Audios" / name)
    return root


# ----------------------------------------------------------------------------- EmoBox-style JSONL


def write_emobox(root: Path, with_speakers_in_lines: bool = True) -> Path:
    lines = []
    for spk, gender in (("s1", "F"), ("s2", "M"), ("s3", "F")):
        for emo in ("neutral", "happy", "sad", "angry", "fear"):
            key = f"toy-{spk}-{emo}"
            rel = f"downloads/toy/{spk}/{emo}.wav"
            write_wav(root / rel, sr=22050)
            row = {"key": key, "dataset": "toy", "wav": rel, "type": "raw", "sample_rate": 22050,
                   "length": 0.25, "task": "category", "emo": emo, "channel": 1}  # fmt: skip
            if with_speakers_in_lines:
                row |= {"speaker": spk, "gender": gender}
            lines.append(json.dumps(row))
    (root / "toy.jsonl").write_text("\n".join(lines) + "\n")
    if not with_speakers_in_lines:
        with (root / "speakers.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["key", "speaker", "gender"])
            for line in lines:
                key = json.loads(line)["key"]
                spk = key.split("-")[1]
                w.writerow([key, spk, {"s1": "F", "s2": "M", "s3": "F"}[spk]])
    return root


# ----------------------------------------------------------------------------- generic


def write_generic(root: Path, fmt: str = "csv") -> Path:
    rows = []
    for spk, gender, session in (("a", "F", "1"), ("b", "M", "1"), ("c", "female", "2"), ("d", "male", "2")):
        for emo in ("neutral", "happy", "sad", "angry"):
            rel = f"audio/{spk}_{emo}.wav"
            write_wav(root / rel, channels=2, sr=8000)
            rows.append({"utt_id": f"{spk}_{emo}", "path": rel, "speaker": spk, "gender": gender,
                         "emotion": emo, "session": session, "valence": "", "split": ""})  # fmt: skip
    if fmt == "csv":
        with (root / "meta.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        (root / "meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
