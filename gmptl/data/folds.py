"""Speaker-independent folds: manifest + FoldsConfig -> list of :class:`Fold`.

Schemes: ``loso`` (leave one session out), ``lospk`` (leave one speaker out),
``speaker_kfold`` (k groups of speakers) and ``official`` (the manifest's
``split`` column). Validation is whole speakers taken from the training part
(default one), never a test speaker; ``official`` may use the corpus's own
validation split instead. Every fold is checked for speaker leakage before it
is returned: a speaker in two of train/validation/test is an error naming it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gmptl import files
from gmptl.config import FoldsConfig, config_hash
from gmptl.data.manifest import is_labelled
from gmptl.errors import FoldError


@dataclass(frozen=True)
class Fold:
    index: int  # 0-based position in the fold list
    name: str  # e.g. "Session1", "Ses01_F", "kfold3", "official"
    train_speakers: tuple[str, ...]
    validation_speakers: tuple[str, ...]
    test_speakers: tuple[str, ...]
    # Only for scheme=official: which manifest `split` values form each part.
    splits: dict[str, tuple[str, ...]] | None = None

    def part_of(self, manifest: pd.DataFrame) -> pd.Series:
        """Per utterance: "train", "validation", "test" or "" (not used by this fold)."""
        part = pd.Series("", index=manifest.index, dtype=object)
        if self.splits is not None:
            for name in ("train", "test", "validation"):
                part[manifest["split"].isin(self.splits[name])] = name
            # Validation speakers taken out of the official train split.
            part[(part == "train") & manifest["speaker"].isin(self.validation_speakers)] = "validation"
            return part
        for name, speakers in (
            ("train", self.train_speakers),
            ("validation", self.validation_speakers),
            ("test", self.test_speakers),
        ):
            part[manifest["speaker"].isin(speakers)] = name
        return part

    def select(self, manifest: pd.DataFrame, part: str) -> pd.DataFrame:
        return manifest[self.part_of(manifest) == part]


def check_fold(fold: Fold) -> None:
    """Raise FoldError if any speaker sits in two of train/validation/test, or a part is empty."""
    parts = {"train": fold.train_speakers, "validation": fold.validation_speakers, "test": fold.test_speakers}
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = sorted(set(parts[a]) & set(parts[b]))
            if shared:
                raise FoldError(
                    f"fold {fold.name}: speakers {shared} are in both {a} and {b} (speaker leakage)"
                )
    for name in ("train", "test"):
        if not parts[name]:
            raise FoldError(f"fold {fold.name}: the {name} part has no speakers")


def _pick_validation(
    train: list[str], n: int, rng: np.random.Generator, fold_name: str, key: str
) -> list[str]:
    if len(train) <= n:
        raise FoldError(
            f"fold {fold_name}: {len(train)} training speakers cannot give {n} validation speakers and still "
            f"train; lower folds.n_validation_speakers or use a scheme with larger training parts ({key})"
        )
    return sorted(rng.choice(sorted(train), size=n, replace=False).tolist())


def _speaker_folds(
    groups: list[tuple[str, list[str]]], all_speakers: list[str], cfg: FoldsConfig
) -> list[Fold]:
    folds = []
    for i, (name, test) in enumerate(groups):
        rest = [s for s in all_speakers if s not in set(test)]
        rng = np.random.default_rng([cfg.seed, i])
        val = _pick_validation(rest, cfg.n_validation_speakers, rng, name, "folds.n_validation_speakers")
        train = [s for s in rest if s not in set(val)]
        folds.append(Fold(i, name, tuple(train), tuple(val), tuple(sorted(test))))
    return folds


def make_folds(manifest: pd.DataFrame, cfg: FoldsConfig) -> list[Fold]:
    """Build and check the folds the config asks for (see module docstring)."""
    if not is_labelled(manifest):
        raise FoldError(
            "the manifest has no emotion labels (data.corpus=unlabeled): folds are for labelled corpora, "
            "an unlabeled one is only for `gmptl pretrain`"
        )
    speakers = sorted(manifest["speaker"].unique().tolist())
    if cfg.scheme == "loso":
        if manifest["session"].isna().any():
            n = int(manifest["session"].isna().sum())
            raise FoldError(
                f"folds.scheme=loso needs a session for every utterance, {n} have none "
                f"(this corpus has no sessions: use folds.scheme=lospk or speaker_kfold)"
            )
        by_session = manifest.groupby("session")["speaker"].unique()
        if len(by_session) < 2:
            raise FoldError(f"folds.scheme=loso needs at least 2 sessions, found {list(by_session.index)}")
        groups = [(str(s), sorted(v.tolist())) for s, v in sorted(by_session.items())]
        # A speaker recorded in two sessions would sit in train and test of some fold.
        seen: dict[str, str] = {}
        for session, spk in groups:
            for s in spk:
                if s in seen:
                    raise FoldError(
                        f"speaker {s} appears in sessions {seen[s]} and {session}; loso would leak it"
                    )
                seen[s] = session
        folds = _speaker_folds(groups, speakers, cfg)
    elif cfg.scheme == "lospk":
        folds = _speaker_folds([(s, [s]) for s in speakers], speakers, cfg)
    elif cfg.scheme == "speaker_kfold":
        k = int(cfg.n_folds or 0)
        if k > len(speakers):
            raise FoldError(f"folds.n_folds={k} exceeds the {len(speakers)} speakers of the corpus")
        order = np.random.default_rng(cfg.seed).permutation(len(speakers))
        groups = [(f"kfold{j + 1}", [speakers[i] for i in order[j::k]]) for j in range(k)]
        folds = _speaker_folds(groups, speakers, cfg)
    else:
        folds = [_official_fold(manifest, cfg)]
    for fold in folds:
        check_fold(fold)
    return folds


def _official_fold(manifest: pd.DataFrame, cfg: FoldsConfig) -> Fold:
    if manifest["split"].isna().all():
        raise FoldError(
            "folds.scheme=official needs the manifest's `split` column, which is empty for this corpus"
        )
    splits = {"train": cfg.official.train, "validation": cfg.official.validation, "test": cfg.official.test}
    present = set(manifest["split"].dropna().unique())
    for part, names in splits.items():
        if part == "validation" and cfg.validation == "speakers":
            continue
        if not set(names) & present:
            raise FoldError(
                f"folds.official.{part}={names}: none of these splits is in the manifest (found {sorted(present)})"
            )
    speakers = {
        p: sorted(manifest.loc[manifest["split"].isin(n), "speaker"].unique()) for p, n in splits.items()
    }
    if cfg.validation == "speakers":
        rng = np.random.default_rng([cfg.seed, 0])
        val = _pick_validation(
            speakers["train"], cfg.n_validation_speakers, rng, "official", "folds.n_validation_speakers"
        )
        train = [s for s in speakers["train"] if s not in set(val)]
        splits = {**splits, "validation": []}
    else:
        val, train = speakers["validation"], speakers["train"]
    return Fold(
        0, "official", tuple(train), tuple(val), tuple(speakers["test"]),
        splits={k: tuple(v) for k, v in splits.items()},
    )  # fmt: skip


def fold_table(manifest: pd.DataFrame, folds: list[Fold]) -> list[dict[str, Any]]:
    rows = []
    for f in folds:
        counts = f.part_of(manifest).value_counts()
        rows.append(
            {
                "fold": f.index,
                "name": f.name,
                "train_speakers": list(f.train_speakers),
                "validation_speakers": list(f.validation_speakers),
                "test_speakers": list(f.test_speakers),
                "n_train": int(counts.get("train", 0)),
                "n_validation": int(counts.get("validation", 0)),
                "n_test": int(counts.get("test", 0)),
            }
        )
    return rows


def write_folds(manifest: pd.DataFrame, folds: list[Fold], cfg: FoldsConfig, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "scheme": cfg.scheme,
        "folds_hash": config_hash(cfg),
        "folds": fold_table(manifest, folds),
        "splits": [f.splits and {k: list(v) for k, v in f.splits.items()} for f in folds],
    }
    files.write_json(p, doc)
    return p


def read_folds(path: str | Path) -> list[Fold]:
    doc = json.loads(Path(path).read_text())
    folds = []
    for row, splits in zip(doc["folds"], doc["splits"], strict=True):
        folds.append(
            Fold(
                row["fold"], row["name"], tuple(row["train_speakers"]), tuple(row["validation_speakers"]),
                tuple(row["test_speakers"]), splits={k: tuple(v) for k, v in splits.items()} if splits else None,
            )
        )  # fmt: skip
    for f in folds:
        check_fold(f)
    return folds


def as_dict(fold: Fold) -> dict[str, Any]:
    return asdict(fold)
