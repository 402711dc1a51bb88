"""Cache locks: two processes (two `gmptl run` on one output_dir, two Tune trials) never compute the same
cached step folder at once.

Every step output (a stage's model folder, a fold's features, codebooks, labels) lives
under a folder keyed by the hash of the config that produced it (``gmptl.paths``), so
two trials whose settings agree up to a step would write the same folder, and two
trials that sample the same point would train the same stage folder (and the same Ray
Train run in ``storage_path``). Before a trial computes a step it takes an exclusive
POSIX lock (``fcntl.lockf``, which NFS also honours) on a small file named after that
folder; whoever comes second waits, then finds the step cached. Locks are taken in
sorted order, so two trials never wait on each other in a cycle; the OS drops them
when a process dies (a trial stopped by ASHA holds nothing afterwards).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from gmptl import files, paths
from gmptl.config import Config

log = logging.getLogger(__name__)


def lock_file(cfg: Config, folder: Path) -> Path:
    """The lock of a cache folder: ``<output_dir>/locks/<hash of its path>.lock`` (outside the cache)."""
    rel = str(folder.relative_to(paths.output_dir(cfg))) if folder.is_relative_to(paths.output_dir(cfg)) else str(folder)  # fmt: skip
    return paths.output_dir(cfg) / "locks" / (hashlib.sha256(rel.encode()).hexdigest()[:20] + ".lock")


@contextlib.contextmanager
def hold(cfg: Config, folders: list[Path]) -> Iterator[None]:
    """Exclusive locks on ``folders`` (in sorted order) for the duration of the block."""
    held = sorted({lock_file(cfg, f): f for f in folders}.items())
    with contextlib.ExitStack() as stack:
        for lock, folder in held:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fh = stack.enter_context(open(lock, "a+"))  # noqa: SIM115 - closed by the stack
            try:
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                t0 = time.monotonic()
                log.warning(
                    "waiting for %s to finish %s (it holds %s; this run goes on once it is done, and then "
                    "reuses what it computed; stop it to take over)", holder(fh), folder, lock,
                )  # fmt: skip
                fcntl.lockf(fh, fcntl.LOCK_EX)
                log.info("got %s after %.1f s", folder, time.monotonic() - t0)
            _claim(fh)
        for folder in folders:
            # Holding the folder, nobody writes there but this run: temporary files of atomic writes whose
            # writer was killed can go (files.sweep_tmp judges each by its writer, so a nested step folder
            # that another run holds keeps its files).
            n, size = files.sweep_tmp(folder)
            if n:
                log.warning("removed %d partial file(s) (%.1f MB) that killed writers left under %s",
                            n, size / 1e6, folder)  # fmt: skip
        yield


def _claim(fh: TextIO) -> None:
    """Write who holds the lock into its file, for the message of whoever waits next."""
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv[:3])}\n")
    fh.flush()


def holder(fh: TextIO) -> str:
    """The holder a lock file names (``another process`` when it names none yet)."""
    fh.seek(0)
    text = fh.read().strip()
    return text or "another process"
