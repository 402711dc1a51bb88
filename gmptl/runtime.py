"""Ray start-up in one place: join a cluster (runtime.address) or start a small local one."""

from __future__ import annotations

import logging
import os

from gmptl.config import RuntimeConfig

log = logging.getLogger(__name__)


def ensure_ray(cfg: RuntimeConfig) -> None:
    """Initialise Ray once per process; a no-op when it is already up (tests share one session)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "0")
    kwargs: dict = {"log_to_driver": True}
    if cfg.address:
        ray.init(address=cfg.address, **kwargs)
    else:
        # The dashboard process also serves the state API Ray Train's placement-group cleaner polls
        # (without it, it logs "Failed to query ... State API" every few seconds). Bound to localhost.
        ray.init(
            include_dashboard=cfg.dashboard,
            dashboard_host="127.0.0.1",
            num_cpus=cfg.num_cpus,
            object_store_memory=cfg.object_store_mb * 1024**2 if cfg.object_store_mb else None,
            **kwargs,
        )
    log.info("ray resources: %s", ray.cluster_resources())
