"""Ray start-up in one place: join a cluster (runtime.address) or start a small local one."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path

from gmptl.config import Config, RuntimeConfig

log = logging.getLogger(__name__)


# Ray Train settings for an embedded single-node Ray: it has no spot nodes for the preemption watcher to
# watch (one more actor process per fit) and no reason to poll workers only every 2 s. On a 2-core laptop
# the two cost ~2 s of each fit (bench/bench_fit_overhead.py). A real cluster keeps Ray's defaults.
EMBEDDED_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _drop_opt_out_advice(record: logging.LogRecord) -> bool:
    """Ray turns token authentication on for a new local cluster and then advises turning it off
    ("Set RAY_AUTH_MODE=disabled to opt out"): gmptl keeps it on and says so itself."""
    return not str(record.msg).startswith("Token authentication is enabled for this Ray cluster")


# Ray binds its servers (GCS, raylet, object manager, workers, dashboard and runtime-env agents) to the
# node IP, which on Linux it takes from the default route: an embedded Ray would accept connections from
# the whole network. Ray's single-machine mode (the default on macOS and Windows, switched on by this
# variable) makes the node IP 127.0.0.1, so every one of them listens on loopback only. Passing
# `_node_ip_address="127.0.0.1"` does not do it: Ray "resolves" a loopback node IP to the routed one.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LOOPBACK_IPS = ("127.0.0.1", "::1", "localhost")


class UnsafeRayError(RuntimeError):
    """The embedded Ray did not come up on loopback (a Ray upgrade changed how it picks its node IP)."""


def bind_embedded_ray_to_loopback() -> None:
    """Make the next local ``ray.init`` / ``ray start`` listen on 127.0.0.1 only (this process and children)."""
    os.environ.update(LOOPBACK_ENV)
    import ray._private.ray_constants as ray_constants

    # Ray reads the variable once, when it is first imported; a caller (Ray Tune's driver, a test) may have
    # imported it already, so the constant is set too.
    ray_constants.ENABLE_RAY_CLUSTER = False


def ensure_ray(cfg: RuntimeConfig) -> None:
    """Initialise Ray once per process; a no-op when it is already up (tests share one session)."""
    import ray

    from gmptl.progress import quiet_ray_console, route_worker_output

    quiet_ray_console()
    if ray.is_initialized():
        route_worker_output()  # a later command in this process (tests) logs to its own run folder
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "0")
    kwargs: dict = {"log_to_driver": True}
    # Inside a Ray job (`gmptl submit`) the job's driver gets RAY_ADDRESS: join that cluster rather than
    # ask ray.init for a local one (it would join anyway and then refuse num_cpus/object_store_memory).
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:
        for key, value in EMBEDDED_RAY_ENV.items():  # a value already set wins
            os.environ.setdefault(key, value)
        bind_embedded_ray_to_loopback()
        logging.getLogger(RAY_AUTH_LOGGER).addFilter(_drop_opt_out_advice)
        # The dashboard process also serves the state API Ray Train's placement-group cleaner polls
        # (without it, it logs "Failed to query ... State API" every few seconds). Bound to localhost.
        ray.init(
            include_dashboard=cfg.dashboard,
            dashboard_host="127.0.0.1",
            num_cpus=cfg.num_cpus,
            object_store_memory=cfg.object_store_mb * 1024**2 if cfg.object_store_mb else None,
            **kwargs,
        )
        node_ip = ray.util.get_node_ip_address()
        if node_ip not in LOOPBACK_IPS:
            ray.shutdown()
            raise UnsafeRayError(
                f"the embedded Ray came up on {node_ip}, not 127.0.0.1: it would accept connections from the "
                f"network. Join a cluster you started yourself instead (runtime.address, or RAY_ADDRESS)."
            )
        mode = os.environ.get("RAY_AUTH_MODE", "disabled")  # Ray sets it when it turns authentication on
        log.info("embedded Ray on %s, token authentication %s", node_ip,
                 "on" if mode.lower() == "token" else f"off (RAY_AUTH_MODE={mode})")  # fmt: skip
    protect_auth_token()
    if (worker_log := route_worker_output()) is not None:
        log.info("Ray worker output: %s", worker_log)
    log.debug("ray resources: %s", ray.cluster_resources())


def protect_auth_token() -> None:
    """Make Ray's authentication token file readable by its owner only.

    Ray writes the token it generates (``~/.ray/auth_token``, or ``RAY_AUTH_TOKEN_PATH``) readable by every
    user of the machine (mode 0644), and the token is the key to every Ray cluster that uses it: on a
    shared machine any local user could read it and submit code to the cluster.
    """
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    try:
        mode = path.stat().st_mode & 0o777 if path.is_file() else 0
        if mode & 0o077:
            path.chmod(0o600)
            log.info("Ray's authentication token %s is now readable by its owner only (was %o)", path, mode)
    except OSError as e:  # a token owned by another user: say so, it is theirs to protect
        log.warning(
            "Ray's authentication token %s is readable by other users and cannot be changed: %s", path, e
        )


def actor_fault_bounds(cfg: RuntimeConfig) -> dict[str, int]:
    """Ray remote options that bound an actor pool's restarts and task retries (``runtime.actor_restarts``)."""
    return {"max_restarts": cfg.actor_restarts, "max_task_retries": cfg.actor_restarts}


def stage_demand(cfg: Config, stages: Iterable[str]) -> tuple[float, float]:
    """(CPUs, GPUs) one Ray Train run of the largest of ``stages`` holds: its workers x per-worker resources."""
    sections = [getattr(cfg.stages, s) for s in stages]
    cpu = max((s.num_workers * s.num_cpus_per_worker for s in sections), default=0.0)
    gpu = max((float(s.num_workers) if s.use_gpu else 0.0 for s in sections), default=0.0)
    return cpu, gpu


def how_many_fit(resources: dict[str, float], cpu: float, gpu: float) -> int:
    """How many jobs of (``cpu``, ``gpu``) the cluster's ``resources`` hold at once (0 when not even one)."""
    fits = math.floor(resources.get("CPU", 0.0) / cpu + 1e-6) if cpu > 0 else 1 << 30
    if gpu > 0:
        fits = min(fits, math.floor(resources.get("GPU", 0.0) / gpu + 1e-6))
    return fits


def fold_parallelism(cfg: Config, stages: Iterable[str], n_jobs: int, resources: dict[str, float]) -> int:
    """How many (fold, seed) jobs of a run train at once: ``runtime.parallel_folds``, or as many as fit.

    A job holds, while it trains, its largest stage's workers x CPUs (x GPUs with use_gpu). The data
    steps (extraction, k-means, labels) run one job at a time: each already spreads over the cluster.
    """
    stages = list(stages)
    if cfg.runtime.parallel_folds is not None:
        return max(1, min(cfg.runtime.parallel_folds, n_jobs))
    if not stages or n_jobs == 1:
        return 1
    return max(1, min(n_jobs, how_many_fit(resources, *stage_demand(cfg, stages))))


REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "az://", "hdfs://")


def unshared_nodes(folder: str, seen_by_node: dict[str, bool]) -> list[str]:
    """Nodes that do not see ``folder`` (the driver wrote a marker there); [] for object-store URIs."""
    if folder.startswith(REMOTE_SCHEMES):
        return []
    return sorted(node for node, seen in seen_by_node.items() if not seen)


def _probe(nodes: list[dict], path: str) -> dict[str, bool]:
    """Node -> whether a zero-CPU task pinned to that node sees the file ``path``."""
    from pathlib import Path

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def exists(p: str) -> bool:
        return Path(p).is_file()

    refs = {
        f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})": exists.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(path)
        for n in nodes
    }
    return dict(zip(refs, ray.get(list(refs.values())), strict=True))


def check_shared_storage(folders: dict[str, str]) -> None:
    """On a multi-node cluster, every node must see ``folders`` (config key -> path): checked, not assumed.

    The driver writes a marker file into each folder and a task on every alive node looks for it.
    A single-node cluster (the laptop default) returns at once.
    """
    import tempfile
    from pathlib import Path

    import ray

    from gmptl.errors import ConfigError

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    for key, folder in folders.items():
        if folder.startswith(REMOTE_SCHEMES):
            continue
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".gmptl-shared-") as marker:
            missing = unshared_nodes(folder, _probe(nodes, marker.name))
        if missing:
            raise ConfigError(
                f"{key}={folder} is not shared storage: nodes {missing} of this {len(nodes)}-node cluster do not "
                f"see it. Point {key} at a folder mounted at the same path on every node (NFS, EFS, Filestore; "
                f"see cluster/README.md){' or an s3:// / gs:// URI' if key == 'runtime.storage_path' else ''}."
            )
    log.info("shared storage checked on %d nodes: %s", len(nodes), sorted(folders.values()))
