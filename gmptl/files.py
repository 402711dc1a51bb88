"""Atomic file writes: a reader (or a rerun after a kill or a full disk) sees the old file or the whole new
one, never a torn or empty one. Every file that marks a step done is written through here."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# Test seam: with this variable set to part of a file's path, the atomic write of that file stops between
# its fsync and its rename (and logs that it did), so a test can SIGKILL the process at the moment a step
# marker is being written (tests/integration/test_node_failures.py). Unset, it costs one lookup per write.
FAULT_BEFORE_RENAME_ENV = "GMPTL_FAULT_BEFORE_RENAME"
FAULT_PAUSE_S = 600.0


def _fault_point(path: Path) -> None:
    part = os.environ.get(FAULT_BEFORE_RENAME_ENV)
    if part and part in str(path):
        logging.getLogger(__name__).warning(
            "%s: %s written, not yet renamed; pausing", FAULT_BEFORE_RENAME_ENV, path
        )
        time.sleep(FAULT_PAUSE_S)


def _process_space() -> str:
    """A tag of this host and PID namespace: a PID named in a temporary file's name means this process
    table only where the tags agree (containers may share a hostname but not their processes)."""
    try:
        ns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        ns = ""
    return hashlib.sha256(f"{socket.gethostname()}/{ns}".encode()).hexdigest()[:8]


_SPACE = _process_space()
# A temporary file of another host (or PID namespace) is left alone until it is this old: its writer's
# liveness cannot be checked from here, and no atomic write takes a day.
FOREIGN_TMP_AGE_S = 24 * 3600


def _tmp_path(path: Path) -> Path:
    """``.<name>.<process space>.<pid>.<random>.tmp`` beside ``path``: who wrote it can be told later."""
    return path.with_name(f".{path.name}.{_SPACE}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_tmp(folder: str | Path) -> tuple[int, int]:
    """Delete the temporary files of atomic writes whose writer was killed, anywhere under ``folder``.

    A writer on this host (and PID namespace) that no longer runs left its file for good; a file from
    another host is deleted once untouched for ``FOREIGN_TMP_AGE_S``. Files not named by
    :func:`atomic_write` are never touched. Returns (files deleted, their bytes).
    """
    folder = Path(folder)
    n = size = 0
    if not folder.is_dir():
        return 0, 0
    now = time.time()
    for f in folder.rglob(".*.tmp"):
        parts = f.name[1:-4].rsplit(".", 3)  # name (may hold dots), space, pid, random
        if len(parts) != 4 or not parts[2].isdigit():
            continue
        try:
            st = f.stat()
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            continue
        mine = parts[1] == _SPACE
        if (mine and not _alive(int(parts[2]))) or now - st.st_mtime > FOREIGN_TMP_AGE_S:
            f.unlink(missing_ok=True)
            n, size = n + 1, size + st.st_size
    return n, size


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    A process killed before the rename leaves the temporary file; :func:`sweep_tmp` deletes it later.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with tmp.open("wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        _fault_point(path)
        os.replace(tmp, path)  # atomic on POSIX
    finally:
        tmp.unlink(missing_ok=True)
    return path


def append_line(path: str | Path, line: str) -> Path:
    """Append ``line`` (no newline in it) to a log file and flush it to disk before returning.

    A kill mid-append can leave a torn last line, never a torn earlier one: readers skip a line that does not
    parse. The next append starts on a line of its own, so a torn line never swallows a whole one.
    """
    if "\n" in line:
        raise ValueError(f"append_line: a log line holds no newline, got {line[:80]!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        data = (b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b"") + line.encode("utf-8") + b"\n"
        while data:  # O_APPEND: every write lands at the end, whoever else appends
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:  # the file's name too must survive a crash
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def read_marker(path: str | Path) -> Any | None:
    """The JSON of a step's done-marker, or None when the step is not done: the file is missing, empty
    or not JSON (a marker written by something other than :func:`write_json`, or a damaged disk): the
    step then runs again instead of failing on it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if text.strip() else None
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        import logging

        logging.getLogger(__name__).warning("%s is unreadable (%s): its step runs again", path, e)
        return None


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def write_parquet(df: Any, path: str | Path) -> Path:
    """A pandas DataFrame as Parquet (without its index)."""
    return atomic_write(path, lambda fh: df.to_parquet(fh, index=False))


def save_npy(path: str | Path, array: Any) -> Path:
    import numpy as np

    return atomic_write(path, lambda fh: np.save(fh, array))
