"""Process trees of the subprocesses tests start (a Ray head, a `gmptl run`): found via /proc, killed by pid."""

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _live(procs: dict[int, int]) -> dict[int, int]:
    """The processes of ``procs`` (pid -> start time) still running: a reused pid has another start time."""
    return {p: t for p, t in procs.items() if (st := _stat(p)) is not None and st[0] != "Z" and st[2] == t}


def _with_descendants(procs: dict[int, int]) -> dict[int, int]:
    """``procs`` and every live descendant of them (from /proc), as pid -> start time."""
    children: dict[int, list[tuple[int, int]]] = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        if (st := _stat(int(d))) is not None:
            children.setdefault(st[1], []).append((int(d), st[2]))
    out = dict(procs)
    todo = list(_live(procs))
    while todo:
        for pid, start in children.get(todo.pop(), []):
            if pid not in out:
                out[pid] = start
                todo.append(pid)
    return out


def kill_tree(proc: subprocess.Popen, grace_s: float = 2.0, crash: bool = False) -> None:
    """SIGTERM the head's process tree, SIGKILL what is left after ``grace_s`` (the blocked `ray start` and
    gcs_server do not always exit on SIGTERM). Only processes under our `ray start` are signalled, each
    checked by pid and start time (never `ray stop`, never by name). ``crash``: SIGKILL at once, as an
    out-of-memory kill or a lost node would."""
    st = _stat(proc.pid)
    procs = {proc.pid: st[2]} if st else {}
    plan = [(signal.SIGKILL, 5.0)] if crash else [(signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)]
    for sig, wait_s in plan:
        procs = _with_descendants(procs)  # workers started since the last look
        for pid in _live(procs):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while _live(procs) and time.monotonic() < deadline:
            time.sleep(0.2)
    proc.wait(timeout=5)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, log_path: Path, what: str, timeout_s: float = 90) -> None:
    """Poll ``url`` until it answers 200; an error with the log's tail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n{Path(log_path).read_text()[-3000:]}")
        time.sleep(0.5)


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets a process holds open (what /proc/net/tcp* lists them by)."""
    out = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    out.add(target[8:-1])
    return out


def _hex_ip(text: str) -> str:
    """/proc/net/tcp's address: IPv4 as one little-endian word, IPv6 as four (-> ::ffff:127.0.0.1 etc.)."""
    import ipaddress

    raw = bytes.fromhex(text)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def listening_sockets(root_pid: int) -> list[tuple[int, str, str, int]]:
    """(pid, command, ip, port) of every TCP socket in LISTEN state held by ``root_pid`` or a descendant."""
    st = _stat(root_pid)
    procs = _with_descendants({root_pid: st[2]} if st else {})
    owner = {inode: pid for pid in procs for inode in _socket_inodes(pid)}
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and f[9] in owner:  # 0A: LISTEN
                    ip, port = f[1].split(":")
                    pid = owner[f[9]]
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                    out.append((pid, cmd, _hex_ip(ip), int(port, 16)))
    return out
