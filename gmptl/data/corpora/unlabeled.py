"""Audio without labels, for ``gmptl pretrain``: every audio file under a folder, or those a list names.

Layout:: any folder tree under ``data.root``. Every file whose extension is a format soundfile reads
    (.wav, .flac, .ogg, .mp3, ...) is an utterance; other files are excluded and counted by extension.
    Folders are walked recursively, following links to folders once each; a folder link that leaves the
    root, or leads to a folder already walked (a loop), is a bad item.
List file (``data.metadata_file``, relative to root):: one audio path per line, relative to root or
    absolute (either way inside root); blank lines and lines starting with ``#`` are skipped, leading
    and trailing spaces ignored; UTF-8, with or without a byte-order mark.

Each utterance has no emotion and no gender (null in the manifest). Its speaker is the first folder
level under root (``LibriSpeech/train-clean-100/103/...`` with root ``train-clean-100`` gives speaker
``103``); files directly under root share the speaker ``(root)``. The utterance id is the path relative
to root without its extension, folders joined by ``__`` (``103/1240/103-1240-0000.flac`` ->
``103__1240__103-1240-0000``), made a safe file name by :func:`gmptl.paths.safe_name`; when two files
would get the same id (``a.wav`` and ``a.flac``), each gets 8 hex digits of its path's hash appended.
Whether a path is a readable, regular audio file inside root (symlinks included) is checked by prepare.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import soundfile as sf

from gmptl import paths
from gmptl.config import DataConfig
from gmptl.data.corpora.base import CorpusSpec, LabelMapper, LoadResult, not_utf8, read_text, register_corpus
from gmptl.data.manifest import BadItem, Utterance

ROOT_SPEAKER = "(root)"
# RAW has no header (soundfile needs its rate and format from the caller); the aliases are the other
# extensions those containers are usually saved with.
_ALIASES = {"AIFF": (".aif", ".aifc"), "OGG": (".oga", ".opus"), "IRCAM": (".sf",), "NIST": (".sph",)}
AUDIO_EXTENSIONS = frozenset(
    ext
    for fmt in sf.available_formats()
    if fmt != "RAW"
    for ext in (f".{fmt.lower()}", *_ALIASES.get(fmt, ()))
)


def _walk(root: Path, result: LoadResult) -> Iterator[Path]:
    """Audio paths under ``root``, depth first in name order; every other entry counted or reported."""
    real_root = root.resolve()
    walked: dict[tuple[int, int], Path] = {}
    todo = [root]
    while todo:
        folder = todo.pop()
        try:
            st = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            result.bad.append(BadItem(str(folder), f"cannot read folder: {e.strerror or e}"))
            continue
        if (st.st_dev, st.st_ino) in walked:
            result.bad.append(
                BadItem(
                    str(folder),
                    f"folder link to {walked[st.st_dev, st.st_ino]}, which is walked already (a symlink loop, "
                    "or a second link to one folder); remove the link",
                )
            )
            continue
        walked[st.st_dev, st.st_ino] = folder
        subfolders = []
        for entry in entries:
            p = Path(entry.path)
            if entry.name.startswith("._"):  # macOS resource forks beside copied files
                result.excluded["macOS ._ file"] += 1
                continue
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:  # a looping link: a candidate if named like audio, and prepare reports it
                is_dir = False
            if is_dir and entry.is_symlink() and not p.resolve().is_relative_to(real_root):
                result.bad.append(BadItem(str(p), f"folder link points outside the corpus root {root}"))
                continue
            if is_dir:
                subfolders.append(p)
            # A folder named like an audio file is a candidate too: prepare reports it as not an audio file.
            if p.suffix.lower() in AUDIO_EXTENSIONS:
                yield p
            elif not is_dir:
                result.excluded[f"not an audio file ({p.suffix.lower() or 'no extension'})"] += 1
        todo.extend(reversed(subfolders))


def _listed(root: Path, list_file: Path, result: LoadResult) -> Iterator[tuple[Path, int]]:
    """(path, line number) of every entry of the list file; lines that cannot be used become bad items."""
    if not list_file.is_file():
        result.bad.append(BadItem(str(list_file), "list file (data.metadata_file) not found"))
        return
    text = read_text(list_file, result)
    if text is None:
        return
    for lineno, line in enumerate(text.split("\n"), start=1):  # strip() below drops a CRLF's \r
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        reason = not_utf8(entry)
        if reason:
            result.bad.append(BadItem(str(list_file), reason, line=lineno))
            continue
        yield root / entry, lineno  # an absolute entry replaces root


def _relative(path: Path, root: Path) -> Path | None:
    """``path`` relative to ``root``, by name (``..`` collapsed, links not followed); None outside root."""
    normal = Path(os.path.normpath(path))
    for base in (root, root.resolve()):
        if normal.is_relative_to(base):
            return normal.relative_to(base)
    return None


def _ids(relatives: list[Path]) -> list[str]:
    """One file-name-safe id per relative path; distinct paths whose ids would clash get a hash suffix."""
    ids = [paths.safe_name("__".join(r.with_suffix("").parts)) for r in relatives]
    paths_of: dict[str, set[Path]] = defaultdict(set)
    for i, r in zip(ids, relatives, strict=True):
        paths_of[i].add(r)
    # The same path listed twice keeps one id: prepare reports both lines as a duplicated id.
    return [
        f"{i}-{hashlib.sha256(str(r).encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
        if len(paths_of[i]) > 1
        else i
        for i, r in zip(ids, relatives, strict=True)
    ]


def load_unlabeled(cfg: DataConfig, root: Path, mapper: LabelMapper) -> LoadResult:
    result = LoadResult(records=[], corpus="unlabeled")
    if cfg.metadata_file:
        list_file = root / cfg.metadata_file
        found = [(p, str(list_file), line) for p, line in _listed(root, list_file, result)]
    else:
        found = [(p, None, None) for p in _walk(root, result)]
    kept, relatives = [], []
    for p, source, line in found:
        rel = _relative(p, root)
        if rel is None or rel == Path("."):
            where = (
                "is outside the corpus root" if rel is None else "is the corpus root itself, not a file in"
            )
            result.bad.append(BadItem(source or str(p), f"path {p} {where} {root}", line))
            continue
        kept.append((p, source, line))
        relatives.append(rel)
    for (p, source, line), rel, utt_id in zip(kept, relatives, _ids(relatives), strict=True):
        result.records.append(
            Utterance(
                utt_id=utt_id, path=str(root / rel), speaker=rel.parts[0] if len(rel.parts) > 1 else ROOT_SPEAKER,
                gender=None, emotion=None, corpus="unlabeled", source_file=source or str(p), source_line=line,
            )
        )  # fmt: skip
    return result


register_corpus(
    CorpusSpec(
        name="unlabeled",
        load=load_unlabeled,
        native_labels=(),
        default_label_map={},
        has_sessions=False,
        description="Audio files without labels (a folder tree, or a list file): for `gmptl pretrain` only",
        labelled=False,
    )
)
