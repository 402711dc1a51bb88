"""Shared test setup: quiet, offline, and safe defaults for Ray-based tests."""

import os

from gmptl.runtime import EMBEDDED_RAY_ENV

# Token authentication off is safe only because every Ray the tests start listens on 127.0.0.1 (the
# embedded Ray through gmptl.runtime, the tests' own ray.init and `ray start` heads alike).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# What gmptl.runtime.ensure_ray sets for an embedded Ray, also for the tests' own ray.init: Ray Train's
# controller polls its workers every 0.5 s (2 s by default) and starts no preemption-watcher actor per fit.
for _key, _value in EMBEDDED_RAY_ENV.items():
    os.environ.setdefault(_key, _value)
