"""What a person sees while a run trains: one line per fold x stage x epoch; the rest goes to a log file.

Ray forwards everything its workers print to the driver's terminal (per-report dumps of Ray Train,
controller chatter, raylet warnings). :func:`route_worker_output` sends all of it to the run's log
file instead, and only the progress lines that rank 0 of a training stage prints (:func:`epoch_line`,
marked with :data:`PREFIX`) reach the terminal; with ``-v`` everything is shown as well.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "[gmptl progress] "
_ROUTE: dict[str, Any] = {}
_ROUTE_LOCK = threading.Lock()  # fold threads start their Ray work at the same time


def epoch_line(stage: str, fold: int | str, epochs: int, m: dict[str, Any], metric: str) -> str:
    """One epoch of one stage of one fold (or ``fold`` = a label such as "iter 2"), marked for the driver:
    loss, the selection metric, masked-prediction accuracy where there is one, the best so far."""
    where = fold if isinstance(fold, str) else f"fold {fold}"
    parts = [f"{stage:<9} {where}  epoch {int(m['epoch']):>3}/{epochs}"]
    if "train_loss" in m:
        parts.append(f"train_loss {m['train_loss']:.4f}")
    if "val_loss" in m:
        parts.append(f"val_loss {m['val_loss']:.4f}")
    if metric in m and metric not in ("val_loss",):
        parts.append(f"{metric} {m[metric]:.3f}")
    for key in sorted(k for k in m if k.startswith("val_masked_acc_")):
        parts.append(f"{key} {m[key]:.3f}")
    if m.get("best_score") is not None:
        parts.append(f"(best {m['best_score']:.3f} @ epoch {m['best_epoch']})")
    return PREFIX + "  ".join(parts)


def log_to_run_folder(cfg: Any, verbose: bool) -> Path:
    """Everything of this command (gmptl's log at DEBUG, all Ray worker output) also goes to the run's
    log file (``gmptl.paths.log_file``); the terminal keeps progress, results and warnings."""
    from gmptl import paths

    path = paths.log_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    if not any(getattr(h, "baseFilename", None) == str(path) for h in root.handlers):
        fh = logging.FileHandler(path)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        fh.setLevel(logging.DEBUG)
        fh._gmptl = True  # type: ignore[attr-defined]  # the CLI removes its own handlers between commands
        root.addHandler(fh)
    capture_worker_output(path, echo_all=verbose)
    log.info("log: %s (with every Ray worker's output; -v shows that here too)", path)
    return path


def quiet_ray_console() -> None:
    """Ray and Ray Data attach their own console handlers when first imported ("Started a local Ray
    instance", Ray Data's execution plans and, without a terminal, its progress as log tables): unless
    ``-v`` asked for everything, those handlers keep to warnings. Their log files keep everything."""
    if not _ROUTE or _ROUTE.get("echo_all"):
        return
    import warnings

    import ray.data  # noqa: F401 - configures the `ray.data` logger, whose console handler is raised below

    # Ray 2.60 warns on every actor pool that gets max_restarts/max_task_retries (gmptl.runtime's bounds)
    # through map_batches' generic remote arguments, the only way it takes them yet. Set after Ray's
    # import, which installs its own warning filters in front of earlier ones.
    warnings.filterwarnings("ignore", message=r".*`ray_remote_args` is deprecated.*")
    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
                handler.setLevel(logging.WARNING)


def capture_worker_output(path: Path, echo_all: bool) -> None:
    """Send what Ray's workers print to ``path`` (progress lines to stderr too) once Ray starts here."""
    with _ROUTE_LOCK:
        _ROUTE.update(path=Path(path), echo_all=echo_all)
        _ROUTE.pop("installed", None)


def route_worker_output() -> Path | None:
    """Apply :func:`capture_worker_output` to the Ray this process has just joined; returns the log path.

    Replaces Ray's driver-side printer of worker output (the handler ``ray.init(log_to_driver=True)``
    installs), so nothing is lost: every line lands in the file, prefixed with its process.
    """
    if not _ROUTE:
        return None
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # a Ray without the hook: its workers keep printing to the terminal
        log.warning("this Ray version has no worker-output hook; worker output stays on the terminal")
        return None
    return install_on(dispatcher)


DEDUP_S = 5.0  # as Ray's own printer of worker output


def install_on(dispatcher: Any) -> Path:
    """Route a worker-output dispatcher (Ray's, or a test's) to the captured file; idempotent."""
    with _ROUTE_LOCK:
        return _install_locked(dispatcher)


def _install_locked(dispatcher: Any) -> Path:
    path: Path = _ROUTE["path"]
    if _ROUTE.get("installed") == (path, id(dispatcher)):
        return path  # already routed to this file
    if _ROUTE.get("open") is not None and _ROUTE["open"].name != str(path):
        _ROUTE.pop("open").close()
    if _ROUTE.get("open") is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _ROUTE["open"] = open(path, "a", buffering=1)  # noqa: SIM115 - open for the life of the driver
    fh = _ROUTE["open"]
    lock = threading.Lock()
    echo_all = _ROUTE["echo_all"]

    recent: dict[tuple[Any, str], float] = {}

    def handle(data: dict[str, Any]) -> None:
        who = data.get("actor_name") or data.get("task_name") or ""
        origin = f"({who} pid={data.get('pid')})".replace("( ", "(")
        now = time.monotonic()
        with lock:
            if len(recent) > 4096:  # forget lines older than the window: a run prints millions
                for k in [k for k, t in recent.items() if now - t >= DEDUP_S]:
                    del recent[k]
            for line in data.get("lines", []):
                # Ray's stream can carry a Ray Train worker's line twice (its own printer deduplicates
                # too): the same line from the same process within a few seconds is shown and kept once.
                seen = recent.get((data.get("pid"), line))
                recent[(data.get("pid"), line)] = now
                if seen is not None and now - seen < DEDUP_S:
                    continue
                fh.write(f"{origin} {line}\n")
                if PREFIX in line:
                    print(line.split(PREFIX, 1)[1], file=sys.stderr, flush=True)
                elif echo_all:
                    print(
                        f"{origin} {line}", file=sys.stderr if data.get("is_err") else sys.stdout, flush=True
                    )

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.remove_handler("gmptl_worker_output")
    dispatcher.add_handler("gmptl_worker_output", handle)
    _ROUTE["installed"] = (path, id(dispatcher))
    return path
