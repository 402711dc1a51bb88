"""``gmptl export RUN_DIR --fold K --out MODEL``: one fold's stage-2 model as a self-contained folder.

Input: a run folder ``<output_dir>/runs/<config hash>/`` written by ``gmptl run``
(its ``config.yaml`` is the resolved config of the run; ``report.json``, when the
run finished, lists the folds it evaluated). The fold's model is located the way
the run placed it, ``paths.best_model_dir(cfg, fold, "utterance")``, with
``output_dir`` taken from where RUN_DIR lies (not from the working directory); if
a newer gmptl hashes that config differently, the stage-2 model whose
``model.json`` names the run's config hash and the fold is used instead.

Output ``MODEL/``: ``backbone/`` (config.json + safetensors), ``heads.safetensors``
and ``model.json`` (head spec, labels, sample rate, AM-Softmax scale) plus
``window_s`` (the stage-2 training crop, the frame track's default window) and
``exported_from`` (run, fold, source folder, config hash, the fold's test
metrics). No pickle and no link: a source folder holding one, or any file
:func:`gmptl.inference.predict.check_model_folder` refuses (unexpected types, implausible sizes,
a malformed ``model.json``), is refused with an error naming the file; nothing is written then.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gmptl import paths
from gmptl.config import load_config
from gmptl.inference.predict import PICKLE_SUFFIXES, InferenceError, check_model_folder
from gmptl.models.factory import MODEL_JSON, ModelFolderError, load_model, read_model_json

log = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"
RUN_REPORT = "report.json"


def _trained_by(run_dir: Path, fold: int) -> Path | None:
    """The fold's stage-2 model whose model.json names this run's config hash (stage folders are keyed on
    fewer settings than the run, and a gmptl version that added config keys hashes the same config anew)."""
    for meta_path in sorted(
        (run_dir.parent.parent / "train" / "utterance").glob(f"*/fold{fold}/best/{MODEL_JSON}")
    ):
        try:
            meta = read_model_json(meta_path.parent)
        except ModelFolderError as e:
            log.warning("skipped %s", e)
            continue
        if meta.get("config_hash") == run_dir.name and meta.get("fold") == fold:
            return meta_path.parent
    return None


def locate_model(run_dir: str | Path, fold: int) -> tuple[Path, dict[str, Any]]:
    """(the fold's stage-2 model folder, what export records about it); errors say what is missing."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not (run_dir / RUN_CONFIG).is_file():
        raise InferenceError(
            f"{run_dir} is not a gmptl run folder: {RUN_CONFIG} is missing (run folders are "
            "<output_dir>/runs/<config hash>/, written by `gmptl run`)"
        )
    cfg = load_config(run_dir / RUN_CONFIG)
    # The run folder is <output_dir>/runs/<hash>: locate the stages from there, whatever the working directory.
    cfg = cfg.model_copy(update={"output_dir": str(run_dir.parent.parent)})
    report = json.loads((run_dir / RUN_REPORT).read_text()) if (run_dir / RUN_REPORT).is_file() else None
    entry = None
    if report is not None:
        evaluated = [f["fold"] for f in report["folds"]]
        if fold not in evaluated:
            raise InferenceError(f"--fold {fold}: this run's report.json has folds {sorted(set(evaluated))}")
        entry = next(f for f in report["folds"] if f["fold"] == fold)
    elif fold < 0:
        raise InferenceError(f"--fold {fold}: folds are numbered from 0")
    model_dir = paths.best_model_dir(cfg, fold, "utterance")
    if not (model_dir / MODEL_JSON).is_file():
        model_dir = _trained_by(run_dir, fold) or model_dir
    if not (model_dir / MODEL_JSON).is_file():
        raise InferenceError(
            f"fold {fold} of {run_dir} has no stage-2 model at {model_dir}; run `gmptl run {run_dir / RUN_CONFIG}` "
            f"(or `gmptl train {run_dir / RUN_CONFIG} --stage utterance --fold {fold}`) first"
        )
    try:
        meta = read_model_json(model_dir)
    except ModelFolderError as e:
        raise InferenceError(str(e)) from None
    if meta.get("stage") != "utterance" or meta.get("fold") != fold:
        raise InferenceError(
            f"{model_dir / MODEL_JSON} says stage {meta.get('stage')!r} fold {meta.get('fold')!r}, "
            f"expected stage 'utterance' fold {fold}"
        )
    record: dict[str, Any] = {
        "window_s": cfg.stages.utterance.crop_s,
        "exported_from": {
            "run_dir": str(run_dir),
            "fold": fold,
            "model_dir": str(model_dir),
            "config_hash": run_dir.name,
            "test": {k: entry[k] for k in ("test_speakers", "n_test", "war", "uar", "macro_f1")}
            if entry
            else None,
        },
    }
    return model_dir, record


def export_model(run_dir: str | Path, fold: int, out: str | Path) -> Path:
    """Copy fold ``fold``'s stage-2 model of ``run_dir`` into ``out`` (a new folder), checked loadable."""
    out = Path(out).expanduser().absolute()
    if out.exists():
        raise InferenceError(f"--out {out} exists; give a new folder (export never overwrites)")
    source, record = locate_model(run_dir, fold)
    pickles = [p for p in source.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise InferenceError(f"{source} holds pickle files {pickles}; it cannot be exported pickle-free")
    if source.is_symlink():
        raise InferenceError(
            f"{source}: the model folder is a symbolic link (to {source.readlink()}); gmptl writes a real "
            "folder there: rerun the stage, or export from the run whose folder it points to"
        )
    # No link inside, only model files of plausible size: nothing from outside the folder is copied.
    check_model_folder(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside its destination, then renamed: an interrupted export leaves no half-written folder.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staged = Path(tmp) / "model"
        # symlinks=True: a link that appeared since the check is copied as a link (never followed), and
        # the check of the copy below refuses it.
        shutil.copytree(source, staged, symlinks=True)
        meta = json.loads((staged / MODEL_JSON).read_text())
        (staged / MODEL_JSON).write_text(json.dumps(meta | record, indent=2) + "\n")
        check_model_folder(staged)
        load_model(staged)  # the folder must load on its own, with safetensors and JSON only
        staged.rename(out)
    log.info("exported fold %d of %s -> %s", fold, record["exported_from"]["run_dir"], out)
    return out
