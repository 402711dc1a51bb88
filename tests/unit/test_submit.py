"""`gmptl submit` without a cluster: what the working_dir holds, the entrypoint, and the errors."""

import os
import socket
from pathlib import Path

import pytest

from gmptl.cli import main
from gmptl.config import RuntimeConfig, load_config
from gmptl.errors import ConfigError
from gmptl.submit import (
    SubmitError,
    build_entrypoint,
    check_cluster_paths,
    job_config,
    stage_arg_files,
    stage_working_dir,
)
from gmptl.submit_client import dashboard_url

REPO = Path(__file__).resolve().parents[2]


def _write(root: Path, rel: str, data: bytes | str = "x = 1\n") -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


@pytest.fixture
def fake_repo(tmp_path):
    """A source folder with code, configs and everything that must stay behind."""
    root = tmp_path / "repo"
    for rel in ("gmptl/__init__.py", "gmptl/cli.py", "gmptl/data/loader.py", "jobs/demo.yaml",
                "tune_spaces/utterance.yaml", "tune_spaces/README.md", "pyproject.toml"):  # fmt: skip
        _write(root, rel, "folds:\n  seed: 3\n" if rel.endswith(".yaml") else "x = 1\n")
    left = {
        ".env": "secret",  # at the root: not even in a staged folder
        "gmptl/.env": "secret",
        "jobs/.env.local": "secret",
        "jobs/credentials.json": "secret",
        "jobs/id_rsa": "secret",
        "tune_spaces/server.pem": "secret",
        "jobs/api_keys.yaml": "secret",
        "jobs/service_account.json": "secret",
        "jobs/gcp-key.json": "secret",
        "jobs/kubeconfig.yaml": "secret",
        "jobs/hf_token.txt": "secret",
        "tune_spaces/token.txt": "secret",
        "jobs/password.txt": "secret",
        "jobs/speech.wav": "data/model",
        "jobs/labels.csv": "data/model",
        "gmptl/data/manifest.parquet": "data/model",
        "gmptl/model.safetensors": "data/model",
        "gmptl/ckpt.pt": "data/model",
        "jobs/feats.npy": "data/model",
        "jobs/mlflow.db": "data/model",
        "gmptl/__pycache__/cli.cpython-311.pyc": "cache/output folder",
        "jobs/out/run/report.json": "cache/output folder",
        "jobs/mlruns/0/meta.yaml": "cache/output folder",
        "jobs/big.yaml": "over 5 MB",
        "jobs/notes.docx": "not code/config",
    }
    for rel in left:
        _write(root, rel, b"\0" * (6 * 1024**2) if rel == "jobs/big.yaml" else "KEY=do-not-ship\n")
    _write(root, "data/corpus/a.wav", b"RIFF")  # a data folder beside the code: never looked at
    os.symlink(root / "data/corpus/a.wav", root / "jobs/link.yaml")
    return root, left


def test_staging_ships_code_and_config_but_no_data_caches_or_secrets(fake_repo, tmp_path):
    root, left = fake_repo
    cfg = job_config(load_config(root / "jobs/demo.yaml", [f"output_dir={tmp_path / 'out'}"]))
    st = stage_working_dir(cfg, root, tmp_path / "wd", "demo.yaml")
    shipped = sorted(p.relative_to(st.root).as_posix() for p in st.root.rglob("*") if p.is_file())
    assert shipped == sorted(st.files) == sorted(
        ["gmptl/__init__.py", "gmptl/cli.py", "gmptl/data/loader.py", "jobs/demo.yaml", "pyproject.toml",
         "tune_spaces/utterance.yaml", "tune_spaces/README.md", "gmptl_job/demo.yaml"])  # fmt: skip
    reasons = dict(st.excluded)
    for rel, reason in left.items():
        if reason == "cache/output folder":  # reported once per folder
            rel = {"gmptl/__pycache__/cli.cpython-311.pyc": "gmptl/__pycache__/", "jobs/out/run/report.json":
                   "jobs/out/", "jobs/mlruns/0/meta.yaml": "jobs/mlruns/"}[rel]  # fmt: skip
        if rel != ".env":
            assert reasons.get(rel) == reason, rel
    assert reasons["jobs/link.yaml"] == "symlink"
    assert not any("do-not-ship" in p.read_text(errors="replace") for p in st.root.rglob("*") if p.is_file())
    assert st.total_bytes == sum(p.stat().st_size for p in st.root.rglob("*") if p.is_file())
    summary = st.summary()
    assert summary.startswith("working_dir: 8 files") and "12 secret" in summary and "7 data/model" in summary
    # the staged config is the resolved one, joining the job's own cluster
    staged = load_config(st.root / st.config)
    assert staged == cfg and staged.runtime.address == "auto"


def test_staging_the_real_repo_leaves_out_its_outputs(tmp_path):
    cfg = job_config(load_config(REPO / "jobs/demo.yaml", [f"output_dir={tmp_path}"]))
    st = stage_working_dir(cfg, REPO, tmp_path / "wd", "demo.yaml")
    assert {"gmptl/cli/__main__.py", "gmptl/submit.py", "jobs/demo.yaml", "pyproject.toml"} <= set(st.files)
    assert all(
        f.split("/")[0] in ("gmptl", "jobs", "tune_spaces", "pyproject.toml", "gmptl_job") for f in st.files
    )
    assert st.total_bytes < 5 * 1024**2


def test_staging_refuses_a_source_without_the_package(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    with pytest.raises(SubmitError, match="no gmptl/cli.py"):
        stage_working_dir(cfg, tmp_path, tmp_path / "wd")


def test_argument_files_travel(fake_repo, tmp_path):
    root, _ = fake_repo
    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}"])
    st = stage_working_dir(cfg, root, tmp_path / "wd", "demo.yaml")
    outside = _write(tmp_path, "elsewhere/space.yaml", "lr: [1e-4, 1e-3]\n")
    args = ["--space", str(root / "tune_spaces/utterance.yaml"), f"--other={outside}", "--samples", "4"]
    new = stage_arg_files(args, root, st)
    assert new[:2] == ["--space", "tune_spaces/utterance.yaml"] and new[3:] == ["--samples", "4"]
    assert new[2].startswith("--other=gmptl_job/inputs/") and new[2].endswith("_space.yaml")
    assert (st.root / new[2].split("=", 1)[1]).read_text() == "lr: [1e-4, 1e-3]\n"
    with pytest.raises(SubmitError, match=r"\.env is not shipped to the cluster \(secret\)"):
        stage_arg_files(["--space", str(root / "gmptl/.env")], root, st)


def test_entrypoint_runs_the_cli_as_a_module():
    assert build_entrypoint("run", "gmptl_job/demo.yaml") == "python -m gmptl.cli run gmptl_job/demo.yaml"
    assert (
        build_entrypoint(
            "tune", "gmptl_job/my demo.yaml", ["--space", "tune_spaces/u.yaml", "--samples", "4"]
        )
        == "python -m gmptl.cli tune 'gmptl_job/my demo.yaml' --space tune_spaces/u.yaml --samples 4"
    )


def test_dry_run_lists_the_working_dir_and_the_entrypoint(tmp_path, capsys):
    argv = [
        "submit",
        "jobs/demo.yaml",
        "--dry-run",
        "--set",
        f"output_dir={tmp_path}",
        "--",
        "--until",
        "folds",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "entrypoint: python -m gmptl.cli run gmptl_job/demo.yaml --until folds" in out
    assert "  + gmptl/submit.py" in out and "  + gmptl_job/demo.yaml" in out
    assert "out/" not in out.replace("output", "")


def test_tune_mode_passes_its_space_file(tmp_path, capsys):
    space = _write(tmp_path, "my_space.yaml", "stages.utterance.lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    argv = ["submit", "jobs/demo.yaml", "--dry-run", "--mode", "tune", "--set", f"output_dir={tmp_path}"]
    assert main([*argv, "--", "--space", str(space), "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "entrypoint: python -m gmptl.cli tune gmptl_job/demo.yaml --space gmptl_job/inputs/" in out
    assert "_my_space.yaml --samples 2" in out
    assert main([*argv, "--", "--samples", "2"]) == 2
    assert "--mode tune needs the search space" in capsys.readouterr().err


def test_the_ablations_file_beside_the_config_travels_beside_it(tmp_path, capsys):
    config = _write(tmp_path, "exp.yaml", "model:\n  backbone: tiny\nfeatures:\n  layers: [2]\n")
    _write(tmp_path, "exp.ablations.yaml", "no_gmp: {stages.utterance.init: pretrained}\n")
    argv = ["submit", str(config), "--dry-run", "--set", f"output_dir={tmp_path}", "--", "--ablations"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "run gmptl_job/exp.yaml --ablations" in out and "  + gmptl_job/exp.ablations.yaml" in out


def test_relative_paths_are_config_errors_naming_the_key(tmp_path, capsys):
    # checked before any connection is tried: the address below is never contacted
    assert main(["submit", "jobs/demo.yaml", "--address", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "output_dir='out/demo' is relative" in err and "--set output_dir=/shared/" in err
    bad = load_config(None, ["output_dir=/abs", "data.corpus=iemocap", "data.root=corpora/IEMOCAP",
                             "tracking.uri=sqlite:///mlflow.db", "runtime.storage_path=ckpt"])  # fmt: skip
    with pytest.raises(ConfigError) as e:
        check_cluster_paths(bad)
    assert all(k in str(e.value) for k in ("data.root=", "tracking.uri=", "runtime.storage_path="))
    check_cluster_paths(load_config(None, ["output_dir=/abs", "runtime.storage_path=s3://b/ckpt",
                                           "tracking.uri=http://mlflow:5000"]))  # fmt: skip


def test_job_config_joins_the_jobs_cluster(caplog):
    cfg = load_config(None, ["output_dir=/abs", "runtime.address=ray://head:10001", "runtime.num_cpus=2"])
    assert job_config(cfg).runtime.address == "auto"
    assert "replaced by `auto`" in caplog.text


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_bad_addresses_say_what_to_pass(tmp_path, capsys):
    for address in ("ray://head:10001", "http://:8265", "http://head:notaport"):
        with pytest.raises(SubmitError, match=r"e\.g\. --address http://HEAD:8265"):
            dashboard_url(address)
    assert dashboard_url("127.0.0.1:8265/") == "http://127.0.0.1:8265"
    port = _closed_port()
    sets = ["--set", f"output_dir={tmp_path}"]
    assert main(["submit", "jobs/demo.yaml", *sets, "--address", f"127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert f"no Ray job server answers at 127.0.0.1:{port}" in err and "--address http://HEAD:8265" in err
    assert main(["jobs", "status", "raysubmit_x", "--address", f"http://127.0.0.1:{port}"]) == 1
    assert "no Ray job server answers" in capsys.readouterr().err
    assert main(["submit", "jobs/demo.yaml", *sets]) == 2  # no --address at all
    assert "--address is required" in capsys.readouterr().err


def test_ensure_ray_joins_the_cluster_of_a_job(monkeypatch):
    """Inside a Ray job RAY_ADDRESS is set: join it, never ask for a local Ray with num_cpus."""
    import ray

    from gmptl.runtime import ensure_ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {})
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    ensure_ray(RuntimeConfig(num_cpus=2, object_store_mb=300))
    assert calls == [{"address": "10.0.0.1:6379", "log_to_driver": True}]
    monkeypatch.delenv("RAY_ADDRESS")
    ensure_ray(RuntimeConfig(num_cpus=2))
    assert calls[1]["num_cpus"] == 2 and "address" not in calls[1]
