"""On a multi-node cluster output_dir and storage_path must be shared: checked on every node, not assumed."""

import os
import time

import pytest
import ray

from gmptl import runtime
from gmptl.config import RuntimeConfig
from gmptl.errors import ConfigError

NODES = [{"Alive": True, "NodeID": "a" * 16, "NodeManagerAddress": "10.0.0.1"},
         {"Alive": True, "NodeID": "b" * 16, "NodeManagerAddress": "10.0.0.2"},
         {"Alive": False, "NodeID": "c" * 16, "NodeManagerAddress": "10.0.0.3"}]  # fmt: skip


def test_a_folder_one_node_cannot_see_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ray, "nodes", lambda: NODES)
    probed = []

    def probe(nodes, path):
        probed.append((len(nodes), path))
        assert (tmp_path / "out").exists()  # the marker exists while the nodes look
        return {"10.0.0.1 (aaaaaaaa)": True, "10.0.0.2 (bbbbbbbb)": False}

    monkeypatch.setattr(runtime, "_probe", probe)
    with pytest.raises(ConfigError, match=r"output_dir=.*out is not shared storage: nodes \['10\.0\.0\.2"):
        runtime.check_shared_storage({"output_dir": str(tmp_path / "out")})
    assert probed[0][0] == 2  # dead nodes are not asked
    assert list((tmp_path / "out").iterdir()) == []  # the marker is removed


def test_shared_folders_and_object_stores_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(ray, "nodes", lambda: NODES)
    monkeypatch.setattr(runtime, "_probe", lambda nodes, path: {"x": True, "y": True})
    runtime.check_shared_storage({"output_dir": str(tmp_path), "runtime.storage_path": "s3://bucket/ray"})
    assert runtime.unshared_nodes("gs://b/x", {"n": False}) == []


def test_single_node_is_not_probed(tmp_path, monkeypatch):
    monkeypatch.setattr(ray, "nodes", lambda: NODES[:1])
    monkeypatch.setattr(runtime, "_probe", lambda *a: pytest.fail("probed a single-node cluster"))
    runtime.check_shared_storage({"output_dir": str(tmp_path)})


@pytest.mark.parametrize("address", [None, "ray://head:10001"])
def test_only_an_embedded_ray_drops_the_preemption_watcher_and_polls_faster(monkeypatch, address):
    env = ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
    for key in env:  # set first, so that teardown restores whatever was there before
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "cluster_resources", dict)
    runtime.ensure_ray(RuntimeConfig(address=address))
    got = {key: os.environ.get(key) for key in env}
    if address:  # a real cluster keeps Ray Train's defaults (its spot nodes may be preempted)
        assert calls[0]["address"] == address and got == dict.fromkeys(env)
    else:
        assert "address" not in calls[0] and got == dict(zip(env, ("0", "0.5"), strict=True))
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")  # a value the user set wins
    runtime.ensure_ray(RuntimeConfig(address=address))
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"


def test_rays_authentication_token_is_made_readable_by_its_owner_only(tmp_path, monkeypatch, caplog):
    import logging
    import stat

    from gmptl.runtime import protect_auth_token

    token = tmp_path / "token"
    token.write_text("secret")
    token.chmod(0o644)  # as Ray writes the token it generates
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    with caplog.at_level(logging.INFO, logger="gmptl.runtime"):
        protect_auth_token()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and "was 644" in caplog.text
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))
    protect_auth_token()  # no token (authentication off): nothing to do, no error


def test_beside_runs_the_work_while_the_main_call_runs_and_waits_for_both():
    import threading

    from gmptl.experiment import beside

    started = threading.Event()
    log = []

    def work():
        assert started.wait(10), "main never ran beside the work"
        log.append("work")
        return 42

    assert beside(work, lambda: (started.set(), log.append("main"))) == 42
    assert sorted(log) == ["main", "work"]

    def bad_work():
        raise ValueError("bad corpus")

    finished = []
    with pytest.raises(ValueError, match="bad corpus"):
        beside(bad_work, lambda: finished.append("main"))
    assert finished == ["main"]  # the error waited for the main call

    def slow_work():
        time.sleep(0.2)
        finished.append("work")

    def bad_main():
        raise RuntimeError("no ray")

    with pytest.raises(RuntimeError, match="no ray"):
        beside(slow_work, bad_main)
    assert finished[-1] == "work"  # nothing still writing when the caller sees the error
