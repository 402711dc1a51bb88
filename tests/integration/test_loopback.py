"""The embedded Ray (``gmptl.runtime.ensure_ray`` with no address) listens on 127.0.0.1 only.

``killed_run`` (conftest.py) starts `gmptl run` in a subprocess as a user does (dashboard on, token
authentication on) and, once its Ray Train actors are up (so worker processes exist), lists the TCP sockets
its whole process tree listens on; this test reads that list.
"""

from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path("/proc/net/tcp").is_file(), reason="reads listening sockets from Linux's /proc"
    ),
]


def test_embedded_ray_listens_on_loopback_only(killed_run):
    sockets = killed_run.sockets
    commands = {cmd.rsplit("/", 1)[-1] for _, cmd, _, _ in sockets}
    # The premise: the tree really holds Ray's servers (GCS and raylet) and workers, not just the driver.
    assert {"gcs_server", "raylet"} <= commands and any(c.startswith("ray::") for c in commands), sockets
    exposed = [s for s in sockets if s[2] not in ("127.0.0.1", "::1")]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_a_user_run_says_token_authentication_is_on_and_ray_does_not_advise_turning_it_off(killed_run):
    assert "embedded Ray on 127.0.0.1, token authentication on" in killed_run.terminal
    assert "RAY_AUTH_MODE=disabled" not in killed_run.terminal
