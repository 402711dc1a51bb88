"""A real two-node Ray cluster on this machine for the fault tests: a head and worker nodes, each its own
`ray start --block` on 127.0.0.1 with its own CPUs, free ports and temp folder.

Ray lets every node of one machine keep its own ``--temp-dir`` (``ray._private.node.Node`` takes the
node's own ``temp_dir`` before the head's), so a worker node's sockets, logs and session folder are its
own; it shares only the head's session name (read from the GCS). A node is "lost" by SIGKILLing the process
tree of its `ray start` (raylet, workers, agents), found via /proc and checked by pid and start time: never
`ray stop`, never a process this module did not start (other tests and Ray clusters share the machine).

Work is steered onto a worker node by a :class:`Holder`: a small Ray driver whose actor takes every CPU of
the head (through the head's custom resource), so the scheduler can place gmptl's actors and workers only
on the worker node. Releasing it after the worker node is killed leaves the head free to finish the work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from proctree import _live, _stat, _with_descendants, free_port, kill_tree

from gmptl.runtime import LOOPBACK_ENV

HEAD_RESOURCE = "gmptl_test_head"  # one unit on the head: the Holder's actor asks for it
NODE_RESOURCE = "gmptl_test_worker"  # on every worker node: the Holder waits until one is registered
OBJECT_STORE_BYTES = 120 * 1024**2

# A lost node is declared dead after health_check_failure_threshold missed checks; Ray's defaults (5 x 3 s,
# 10 s timeouts) would leave each test waiting half a minute after a kill for the GCS to notice. These still
# give a live raylet several seconds to answer on a loaded machine (a head marked dead would end the tests).
FAST_FAILURE_DETECTION = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "3000",
                          "RAY_health_check_failure_threshold": "5", "RAY_health_check_initial_delay_ms": "1000"}  # fmt: skip


def ray_env(**extra: str) -> dict[str, str]:
    """The environment of the cluster's nodes and of the drivers that join it (gmptl runs, the Holder).

    Token authentication is off: allowed only because every process listens on 127.0.0.1 (LOOPBACK_ENV, and
    _WORKER_NODE for a worker node), which test_node_failures checks.
    """
    bindir = Path(sys.executable).parent
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", **LOOPBACK_ENV,
               PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", **extra)  # fmt: skip
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(var, None)
    return env


# `ray start --address` for a worker node on 127.0.0.1. Ray's single-machine mode (LOOPBACK_ENV) is what
# keeps a node's servers on 127.0.0.1, and in that mode `ray start` refuses to add a node to a cluster;
# outside it, it replaces 127.0.0.1 (the node's IP and the head's address) by the routed IP and listens
# there. So this `ray start` alone leaves single-machine mode for its check and keeps 127.0.0.1 as given;
# the processes it starts (raylet, agents, workers) inherit LOOPBACK_ENV as the head's do.
_WORKER_NODE = """
import sys
import ray._private.ray_constants as ray_constants
import ray._private.services as services
ray_constants.ENABLE_RAY_CLUSTER = True
services.resolve_ip_for_localhost = lambda host: host
from ray.scripts.scripts import main
sys.argv[0] = "ray"
sys.exit(main())
"""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def log_tail(path: Path, n_chars: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n_chars:]
    except OSError as e:
        return f"({path}: {e})"


@dataclass
class RayNode:
    """One `ray start --block` of the cluster and its temp folder."""

    name: str
    proc: subprocess.Popen
    temp_dir: Path
    log: IO[str]

    @property
    def log_path(self) -> Path:
        return self.temp_dir / "ray_start.log"

    def processes(self) -> dict[int, str]:
        """pid -> command line of every live process of this node (its `ray start` and all descendants)."""
        st = _stat(self.proc.pid)
        tree = _with_descendants({self.proc.pid: st[2]} if st else {})
        return {pid: _cmdline(pid) for pid in _live(tree)}

    def raylet_pid(self) -> int | None:
        return next((p for p, cmd in self.processes().items() if "/raylet " in f"{cmd.split(' ')[0]} "), None)

    def workers(self, title: str = "") -> dict[int, str]:
        """Its Ray worker processes (titled ``ray::<actor or task>``) whose title contains ``title``."""
        return {p: cmd for p, cmd in self.processes().items() if cmd.startswith("ray::") and title in cmd}

    def crash(self) -> list[int]:
        """SIGKILL the node's whole process tree at once, as a lost machine; returns the pids killed."""
        pids = sorted(self.processes())
        kill_tree(self.proc, crash=True)
        return pids

    def stop(self) -> None:
        if self.proc.poll() is None:
            kill_tree(self.proc)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _start(
    name: str, args: list[str], env: dict[str, str], timeout_s: float, worker: bool = False
) -> RayNode:
    """`ray start --block ARGS` in a fresh temp folder; returns once it printed that Ray runtime started."""
    # Short: Ray's socket paths (temp dir + session + sockets/...) must fit in 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix=f"gmptl-2n-{name}-", dir="/tmp"))
    log = open(temp_dir / "ray_start.log", "w")  # closed by RayNode.stop
    ray = [sys.executable, "-c", _WORKER_NODE] if worker else [str(Path(sys.executable).parent / "ray")]
    cmd = [*ray, "start", "--block", "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir),
           "--disable-usage-stats", "--object-store-memory", str(OBJECT_STORE_BYTES),
           "--min-worker-port", "0", "--max-worker-port", "0",  # 0: the OS picks each worker's port
           *args]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    node = RayNode(name, proc, temp_dir, log)
    deadline = time.monotonic() + timeout_s
    while "Ray runtime started" not in log_tail(node.log_path, 100_000):
        if proc.poll() is not None or time.monotonic() > deadline:
            why = (
                f"exited {proc.returncode}" if proc.poll() is not None else f"not up after {timeout_s:.0f} s"
            )
            tail = log_tail(node.log_path)
            node.stop()
            raise RuntimeError(f"ray node {name} {why}:\n{tail}")
        time.sleep(0.3)
    return node


def _port_args(*opts: str) -> list[str]:
    return [a for opt in opts for a in (f"--{opt}", str(free_port()))]


NODE_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")  # fmt: skip


@dataclass
class TwoNodeCluster:
    """A head (``head_cpus`` CPUs) and the worker nodes :meth:`add_node` starts; :meth:`close` kills them all."""

    head_cpus: int = 2
    node_cpus: int = 2
    start_timeout_s: float = 120
    head: RayNode | None = None
    port: int = 0
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def address(self) -> str:
        """The GCS address drivers join (``runtime.address``)."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> TwoNodeCluster:
        self.port = free_port()
        args = ["--head", "--port", str(self.port), "--num-cpus", str(self.head_cpus),
                "--resources", f'{{"{HEAD_RESOURCE}": 1}}', "--include-dashboard", "false",
                *_port_args("dashboard-port", "ray-client-server-port", *NODE_PORTS)]  # fmt: skip
        self.head = _start("head", args, ray_env(**FAST_FAILURE_DETECTION), self.start_timeout_s)
        return self

    def add_node(self) -> RayNode:
        """Start a worker node (``node_cpus`` CPUs, ``NODE_RESOURCE``) that joins the head."""
        args = [f"--address={self.address}", "--num-cpus", str(self.node_cpus),
                "--resources", f'{{"{NODE_RESOURCE}": 1}}', *_port_args(*NODE_PORTS)]  # fmt: skip
        node = _start(f"node{len(self.nodes) + 2}", args, ray_env(), self.start_timeout_s, worker=True)
        self.nodes.append(node)
        return node

    def close(self) -> None:
        for node in [*reversed(self.nodes), *([self.head] if self.head else [])]:
            with contextlib.suppress(Exception):  # stop every node even when one fails to stop
                node.stop()


# The Holder's driver: waits until a worker node is registered, then takes every CPU of the head with one
# actor and says so; it lets go (ends, and Ray removes its actor) when its stdin closes.
_HOLDER = """
import sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[4])
while ray.cluster_resources().get(sys.argv[3], 0) < 1:
    if time.monotonic() > deadline:
        sys.exit(f"no node with resource {sys.argv[3]} joined: {ray.cluster_resources()}")
    time.sleep(0.2)

@ray.remote
class Hold:
    def ready(self):
        return True

cpus = ray.cluster_resources().get("CPU")
hold = Hold.options(num_cpus=float(sys.argv[2]), resources={sys.argv[5]: 1}).remote()
ray.get(hold.ready.remote(), timeout=float(sys.argv[4]))
print("held", cpus, flush=True)
sys.stdin.read()
"""


class Holder:
    """Takes every CPU of the head while it lives, so Ray schedules new work on the worker node only."""

    def __init__(self, cluster: TwoNodeCluster, log_path: Path, timeout_s: float = 120):
        self.log_path = log_path
        self._log = open(log_path, "w")
        args = [cluster.address, str(cluster.head_cpus), NODE_RESOURCE, str(timeout_s), HEAD_RESOURCE]
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, *args], env=ray_env(), stdin=subprocess.PIPE,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout_s + 30
        while "held" not in log_tail(log_path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = log_tail(log_path)
                self.release()
                raise RuntimeError(f"the holder did not take the head's CPUs:\n{tail}")
            time.sleep(0.2)

    def release(self) -> None:
        """End the driver (its actor goes with it); SIGKILL it if it has not ended within 20 s."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                kill_tree(self.proc, crash=True)
        self._log.close()
