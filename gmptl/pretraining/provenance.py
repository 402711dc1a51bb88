"""Which test speakers a pre-trained ``model.backbone`` has heard (no Ray, no torch).

``gmptl pretrain`` records in the model's ``model.json`` the corpus, its root folder and the speakers it
learned from. A run that evaluates on speakers the backbone was pre-trained on is no longer
speaker-independent: that is refused unless ``folds.transductive`` says it is intended (the report then
says so). The speakers can only be compared within one corpus. For a backbone pre-trained on another
corpus, ``unlabeled`` audio included (whose speakers are folder names, not identities), the check
passes and the run's log names the audio the backbone learned from, with a warning when that folder and
the run's corpus folder contain one another.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gmptl import paths
from gmptl.config import PRESETS, Config, to_dict
from gmptl.errors import ConfigError

log = logging.getLogger(__name__)


def provenance(cfg: Config) -> dict[str, Any] | None:
    """The ``pretrain`` record of a gmptl model folder given as model.backbone (None for anything else)."""
    from gmptl.models.factory import MODEL_JSON, read_model_json

    folder = Path(cfg.model.backbone).expanduser()
    if cfg.model.backbone in PRESETS or not (folder / MODEL_JSON).is_file():
        return None
    return read_model_json(folder).get("pretrain")


def same_audio(cfg: Config, record: dict[str, Any]) -> bool:
    """Whether the backbone was pre-trained on this run's corpus (for the synthetic one: the same voices)."""
    if record.get("corpus") != cfg.data.corpus:
        return False
    return cfg.data.corpus != "synthetic" or record.get("synth") == to_dict(cfg.data.synth)


def seen_test_speakers(cfg: Config, test_speakers: list[str]) -> list[str]:
    """The test speakers of this run the backbone was pre-trained on."""
    record = provenance(cfg)
    if record is None or not same_audio(cfg, record):
        return []
    return sorted(set(test_speakers) & set(record.get("speakers", [])))


def shares_folder(cfg: Config, record: dict[str, Any]) -> bool:
    """Whether the pre-training audio's root and this run's corpus root contain one another."""
    if not record.get("root"):
        return False
    pre, run = Path(record["root"]), paths.corpus_root(cfg).resolve()
    return pre.is_relative_to(run) or run.is_relative_to(pre)


def check_speaker_independent(cfg: Config, test_speakers: list[str]) -> None:
    """ConfigError when the backbone heard test speakers and folds.transductive is not set.

    A backbone pre-trained on another corpus cannot be checked speaker by speaker: the check passes and
    logs which audio it learned from (a warning when the folders overlap).
    """
    record = provenance(cfg)
    if record is not None and not same_audio(cfg, record):
        where = f"{record.get('corpus')} audio in {record.get('root') or 'an unrecorded folder'}"
        if shares_folder(cfg, record) and not cfg.folds.transductive:
            log.warning(
                "model.backbone=%s was pre-trained on %s, which overlaps this run's corpus folder %s: if it "
                "holds test speakers' audio the evaluation is not speaker-independent (set folds.transductive=true "
                "to say so in the report)", cfg.model.backbone, where, paths.corpus_root(cfg),
            )  # fmt: skip
        else:
            log.info("model.backbone=%s was pre-trained on %s; its speakers cannot be compared with this "
                     "corpus's test speakers", cfg.model.backbone, where)  # fmt: skip
    seen = seen_test_speakers(cfg, test_speakers)
    if seen and not cfg.folds.transductive:
        raise ConfigError(
            f"model.backbone={cfg.model.backbone} was pre-trained on audio of test speakers {seen[:10]} of this "
            "corpus, so the evaluation would not be speaker-independent; pre-train on other speakers, or set "
            "folds.transductive=true to evaluate anyway (the report then says it is transductive)"
        )
