"""The embedded Ray (``gmptl.runtime.ensure_ray`` with no address) listens on 127.0.0.1 only.

A subprocess starts it the way ``gmptl run`` does, with the dashboard on and a task and an actor run (so
worker processes exist), then waits; this test lists the TCP sockets its whole process tree listens on.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from proctree import kill_tree, listening_sockets

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path("/proc/net/tcp").is_file(), reason="reads listening sockets from Linux's /proc"
    ),
]

CHILD = """
import sys, ray
from gmptl.config import RuntimeConfig
from gmptl.runtime import ensure_ray
ensure_ray(RuntimeConfig(num_cpus=1, dashboard=True))

@ray.remote(num_cpus=0.1)
class Echo:
    def ping(self):
        return 1

actor = Echo.remote()
assert ray.get(actor.ping.remote()) == 1
print("READY", flush=True)
sys.stdin.read()
"""


def test_embedded_ray_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ENABLE")}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE"):  # as a user runs it: token authentication on
        env.pop(key, None)
    log = tmp_path / "child.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "READY", log.read_text()[-3000:]
        time.sleep(1.0)  # agents that start their servers after the first task
        sockets = listening_sockets(proc.pid)
        commands = {cmd.rsplit("/", 1)[-1] for _, cmd, _, _ in sockets}
        # The premise: the tree really holds Ray's servers (GCS and raylet), not just the driver.
        assert {"gcs_server", "raylet"} <= commands, sockets
        exposed = [s for s in sockets if s[2] not in ("127.0.0.1", "::1")]
        assert not exposed, f"listening beyond loopback: {exposed}"
    finally:
        proc.stdin.close()
        kill_tree(proc)
