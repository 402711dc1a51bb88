"""``gmptl prepare``: corpus folder -> manifest.parquet + report + resolved config.

Inputs: a :class:`DataConfig` and the corpus root. Outputs, beside ``out``:
``<stem>.parquet`` (the manifest), ``<stem>.report.json`` (summary, every left-out
item with its reason, deliberate exclusions, loader notes) and
``<stem>.config.yaml`` (the resolved config that produced them).

Bad input policy (``data.on_bad_audio``): ``error`` stops at the first bad item,
naming its file and line; ``skip`` leaves bad items out, lists them, and still
fails when more than ``data.max_bad_fraction`` of the candidates are bad. Audio
outside the bounds (a native sample rate outside 4..384 kHz, a duration outside
``data.min_duration_s``..``data.max_duration_s``) is bad audio, found from the
file's header before it is decoded.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gmptl import files
from gmptl.config import Config, DataConfig, config_hash, save_config
from gmptl.data.audio import AudioBounds, AudioError, inspect_audio
from gmptl.data.corpora import LabelMapper, get_corpus
from gmptl.data.manifest import BadItem, Summary, Utterance, summarize, to_frame, write_manifest
from gmptl.errors import BadInputError, ConfigError

log = logging.getLogger(__name__)


@dataclass
class PrepareResult:
    manifest_path: Path
    report_path: Path
    summary: Summary
    excluded: dict[str, int]
    notes: list[str]


def report_path_for(manifest: Path) -> Path:
    return manifest.with_name(manifest.stem + ".report.json")


def _check_ids_and_paths(records: list[Utterance], root: Path, bad: list[BadItem]) -> list[Utterance]:
    """Drop (and report) every copy of a duplicated id, and paths that resolve outside root."""
    counts = Counter(r.utt_id for r in records)
    root_resolved = root.resolve()
    kept = []
    for r in records:
        where = r.source_file or r.path
        if counts[r.utt_id] > 1:
            others = [
                f"{o.source_file}:{o.source_line}" for o in records if o.utt_id == r.utt_id and o is not r
            ]
            bad.append(
                BadItem(
                    where,
                    f"duplicated utterance id {r.utt_id} (also at {', '.join(others)})",
                    r.source_line,
                    r.utt_id,
                )
            )
            continue
        # resolve() follows symlinks: a link that leaves the corpus is caught too.
        try:
            resolved = Path(r.path).resolve()
        except (RuntimeError, OSError):  # RuntimeError: Python < 3.13's "Symlink loop"
            bad.append(
                BadItem(
                    where,
                    f"path {r.path} is a symlink loop (the link points, through others, back at itself)",
                    r.source_line,
                    r.utt_id,
                )
            )
            continue
        if not resolved.is_relative_to(root_resolved):
            bad.append(
                BadItem(where, f"path {r.path} is outside the corpus root {root}", r.source_line, r.utt_id)
            )
            continue
        kept.append(r)
    return kept


def _measure(record: Utterance, bounds: AudioBounds) -> Utterance | BadItem:
    try:
        info = inspect_audio(record.path, bounds)  # header checked against the bounds before decoding
    except AudioError as e:
        if e.reason == "missing file" and record.source_file and record.source_line is not None:
            return BadItem(
                record.source_file, f"points at missing wav {record.path}", record.source_line, record.utt_id
            )
        return BadItem(record.path, e.reason, utt_id=record.utt_id)
    record.duration_s = info.duration_s
    record.sample_rate = info.sample_rate
    return record


def _raise_first(bad: list[BadItem], n_more: int = 0) -> None:
    first = bad[0]
    more = f" ({n_more} more bad items found)" if n_more else ""
    raise BadInputError(
        f"{first.where()}: {first.reason}{more}. Fix the input, or leave bad items out with "
        f"--on-bad-audio skip (capped by --max-bad-fraction)"
    )


def prepare_manifest(
    data: DataConfig, root: Path, out: Path, full_config: Config | None = None
) -> PrepareResult:
    """Build, check and write the manifest for one corpus (see module docstring)."""
    # Absolute, so manifest paths stay valid from any working directory (Ray workers have their own).
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise BadInputError(
            f"corpus root {root} is not a folder; set data.root (or --root) to the corpus folder"
        )
    bounds = AudioBounds.from_config(data)
    spec = get_corpus(data.corpus)
    mapper = LabelMapper.for_corpus(data, spec)
    loaded = spec.load(data, root, mapper)
    bad = list(loaded.bad)
    records = _check_ids_and_paths(loaded.records, root, bad)
    if data.on_bad_audio == "error" and bad:
        _raise_first(bad, len(bad) - 1)

    workers = data.num_workers or min(8, os.cpu_count() or 1)
    kept: list[Utterance] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for item in pool.map(lambda r: _measure(r, bounds), records):
            if isinstance(item, BadItem):
                bad.append(item)
                if data.on_bad_audio == "error":
                    pool.shutdown(wait=False, cancel_futures=True)
                    _raise_first([item])
            else:
                kept.append(item)

    n_candidates = len(kept) + len(bad)
    if not kept:
        raise BadInputError(
            f"{root}: no usable utterances for corpus {data.corpus!r} "
            f"({len(bad)} bad, {sum(loaded.excluded.values())} excluded: {dict(loaded.excluded) or 'none'})"
        )
    fraction = len(bad) / n_candidates
    if fraction > data.max_bad_fraction:
        listing = "; ".join(f"{b.where()}: {b.reason}" for b in bad[:5])
        raise BadInputError(
            f"{len(bad)} of {n_candidates} items are bad ({fraction:.1%} > data.max_bad_fraction "
            f"{data.max_bad_fraction:.1%}): {listing}{' ...' if len(bad) > 5 else ''}"
        )
    for b in bad:
        log.warning("left out %s: %s", b.where(), b.reason)
    for note in loaded.notes:
        log.warning("%s", note)

    out = Path(out)
    data_hash = config_hash(data)
    write_manifest(
        kept, out, meta={"corpus": data.corpus, "root": str(root.resolve()), "data_hash": data_hash}
    )
    summary = summarize(to_frame(kept), bad)
    report: dict[str, Any] = {
        "summary": summary.as_dict(),
        "excluded": dict(sorted(loaded.excluded.items())),
        "notes": loaded.notes,
        "corpus": data.corpus,
        "root": str(root.resolve()),
        "data_hash": data_hash,
        "n_candidates": n_candidates,
    }
    report_path = report_path_for(out)
    files.write_json(report_path, report)
    save_config(full_config or Config(data=data), out.with_name(out.stem + ".config.yaml"))
    log.info(
        "wrote %s (%d utterances, %d bad, %d excluded)",
        out,
        len(kept),
        len(bad),
        sum(loaded.excluded.values()),
    )
    return PrepareResult(out, report_path, summary, dict(loaded.excluded), loaded.notes)


# ----------------------------------------------------------------------------- the pipeline's setup step


@dataclass
class Prepared:
    """What every later step starts from: the manifest (as a table) and the speaker-independent folds
    (none, and no folds file, when the steps to run read only the manifest)."""

    corpus_root: Path
    manifest_path: Path
    folds_path: Path | None
    summary: dict[str, Any]
    df: Any  # pandas.DataFrame
    folds: list[Any]  # gmptl.data.folds.Fold


def ensure_synthetic_corpus(cfg: Config, root: Path) -> str:
    """Generate the synthetic corpus unless ``root`` already holds one with the same settings.

    A folder holding anything else (another synthetic corpus, a real IEMOCAP copy) is a ConfigError.
    """
    from gmptl.data.synth import synthesize_corpus

    res = synthesize_corpus(
        root,
        cfg.data.synth,
        name="data.root",
        hint="point data.root elsewhere or leave it unset (the default folder is keyed on data.synth)",
    )
    if res.cached:
        return "cached"
    log.info("synthesised %d utterances (%.2f h) into %s", res.n_utterances, res.hours, root)
    return "ran"


def require_labels(data: DataConfig) -> None:
    """ConfigError when ``data.corpus`` has no labels: checked before any audio is read by every command
    that builds folds or trains on emotions."""
    if not get_corpus(data.corpus).labelled:
        raise ConfigError(
            f"data.corpus={data.corpus} has no emotion or gender labels: it is only for `gmptl pretrain`; "
            "to train or evaluate, use a labelled corpus (docs/corpora.md)"
        )


def prepare_folds(cfg: Config, status: dict[str, str] | None = None, with_folds: bool = True) -> Prepared:
    """The setup step (``folds``): the synthetic corpus if asked for, the manifest, the folds.

    The corpus and manifest are cached by the data hash; the folds are cheap and always rebuilt and
    re-checked for speaker leakage. ``status`` gets "ran" or "cached" for synth, prepare and folds.
    ``with_folds=False`` (``gmptl pretrain``, which reads only the manifest) stops after the manifest, so
    a corpus without labels or speakers (``data.corpus=unlabeled``) can be used.
    """
    from gmptl import paths
    from gmptl.data.folds import make_folds, write_folds
    from gmptl.data.manifest import read_manifest

    if with_folds:
        require_labels(cfg.data)
    status = {} if status is None else status
    root = paths.corpus_root(cfg)
    if cfg.data.corpus == "synthetic":
        status["synth"] = ensure_synthetic_corpus(cfg, root)
    manifest = paths.manifest_path(cfg)
    report = report_path_for(manifest)
    done = files.read_marker(report) if manifest.is_file() else None
    if done is not None:
        status["prepare"] = "cached"
        summary = done["summary"]
    else:
        status["prepare"] = "ran"
        summary = prepare_manifest(cfg.data, root, manifest, full_config=cfg).summary.as_dict()
    df = read_manifest(manifest)
    if not with_folds:
        return Prepared(root, manifest, None, summary, df, [])
    folds = make_folds(df, cfg.folds)
    folds_file = paths.folds_path(cfg)
    status["folds"] = "cached" if folds_file.is_file() else "ran"
    write_folds(df, folds, cfg.folds, folds_file)
    return Prepared(root, manifest, folds_file, summary, df, folds)
