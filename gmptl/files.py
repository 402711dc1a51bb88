"""Atomic file writes: a reader (or a rerun after a kill or a full disk) sees the old file or the whole new
one, never a torn or empty one. Every file that marks a step done is written through here."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic on POSIX
    finally:
        tmp.unlink(missing_ok=True)
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
