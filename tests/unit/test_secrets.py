"""Secrets and paths: what `gmptl submit` ships, credentials in URIs and parameters, ids as file names,
model folders with links or unexpected content.

Fake credentials are assembled at run time, so this file holds none a scanner would report.
"""

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from gmptl import paths, tracking
from gmptl.cli import main
from gmptl.config import load_config, save_config, to_dict
from gmptl.errors import ConfigError
from gmptl.inference.export import export_model
from gmptl.inference.predict import InferenceError, check_model_folder, list_inputs
from gmptl.models.factory import ModelFolderError, build_model, load_model, save_model
from gmptl.submit import SubmitError, job_config, stage_arg_files, stage_working_dir
from gmptl.submit_client import dashboard_url

REPO = Path(__file__).resolve().parents[2]

AWS_KEY = "AKIA" + "QWERTYUIOPASDFGH"
GITHUB_TOKEN = "ghp" + "_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
HF_TOKEN = "hf" + "_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZaBcDeFgH"
SLACK_TOKEN = "xox" + "b-1234567890-abcdefghij"
PRIVATE_KEY = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----\n"
PASSWORD = "hunter2-" + "s3cr3t"
URI_WITH_PASSWORD = "https://alice:" + PASSWORD + "@mlflow.example"


# ----------------------------------------------------------------------------- gmptl submit


@pytest.fixture
def repo_copy(tmp_path):
    """What `gmptl submit` reads of the real repository, copied (no caches)."""
    root = tmp_path / "repo"
    for name in ("gmptl", "jobs", "tune_spaces"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copyfile(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def _stage(root: Path, tmp_path: Path, sets: tuple[str, ...] = ()):
    cfg = job_config(load_config(root / "jobs/demo.yaml", [f"output_dir={tmp_path / 'out'}", *sets]))
    return stage_working_dir(cfg, root, tmp_path / "wd", "demo.yaml")


@pytest.mark.parametrize(
    ("rel", "text", "line", "what"),
    [
        ("gmptl/keys.py", f'"""notes"""\nKEY = """{PRIVATE_KEY}"""\n', 2, "a private key"),
        ("jobs/demo.yaml", None, -1, "an AWS access key id"),  # appended to the real config
        ("tune_spaces/gmp.yaml", None, -1, "a GitHub token"),
        ("gmptl/hub.py", f"import os\n\nTOKEN = '{HF_TOKEN}'\n", 3, "a Hugging Face token"),
        ("jobs/notify.yaml", f"slack:\n  webhook: {SLACK_TOKEN}\n", 2, "a Slack token"),
        ("jobs/db.yaml", f"store:\n  password: {PASSWORD}\n", 2, "a literal value for 'password'"),
        (
            "tune_spaces/hub.yaml",
            f'hub:\n  - token: "{PASSWORD}"  # temporary\n',
            2,
            "a literal value for 'token'",
        ),
        ("jobs/mlflow.yaml", f"uri: {URI_WITH_PASSWORD}\n", 1, "a password in a URL"),
    ],
)
def test_a_repo_with_a_secret_in_a_staged_file_is_refused(repo_copy, tmp_path, rel, text, line, what):
    path = repo_copy / rel
    secret = {"an AWS access key id": AWS_KEY, "a GitHub token": GITHUB_TOKEN}.get(what)
    if text is None:  # a comment line appended to a real file
        text = path.read_text() + f"# aws_key_id {secret}\n"
        line = text.count("\n")
    path.write_text(text)
    with pytest.raises(SubmitError) as e:
        _stage(repo_copy, tmp_path)
    msg = str(e.value)
    assert f"{path}:{line}: {what}" in msg, msg
    for value in (AWS_KEY, GITHUB_TOKEN, HF_TOKEN, SLACK_TOKEN, PASSWORD, "MIIEow"):
        assert value not in msg  # the secret itself is never printed
    assert "MLFLOW_TRACKING_PASSWORD" in msg and "move the file out" in msg


def test_not_secrets_stage_fine(repo_copy, tmp_path):
    (repo_copy / "jobs/refs.yaml").write_text(
        "password: null\ntoken: ${HF_TOKEN}\napi_key: $API_KEY\nmax_tokens: 512\ntokenizer: bert-base\n"
        "# password: in a comment\nsecret: ''\naccess_key: ~\nuri: https://mlflow.example:5000\n"
    )
    st = _stage(repo_copy, tmp_path)
    assert "jobs/refs.yaml" in st.files and st.secrets == []


def test_the_real_repo_holds_no_secret(tmp_path):
    st = _stage(REPO, tmp_path)
    assert st.secrets == [] and "gmptl/tracking.py" in st.files and "tune_spaces/README.md" in st.files


def test_only_what_a_job_needs_travels(repo_copy, tmp_path):
    """An allow-list per folder: code in gmptl/, YAML in jobs/ and tune_spaces/; nothing else."""
    extra = {
        "gmptl/settings.yaml": "a: 1\n",  # config-like, but the package is code only
        "gmptl/notes.json": "{}\n",
        "gmptl/README.md": "# notes\n",
        "jobs/helper.py": "x = 1\n",
        "jobs/notes.txt": "todo\n",
        "jobs/results.json": "{}\n",
        "tune_spaces/space.toml": "a = 1\n",
    }
    for rel, text in extra.items():
        (repo_copy / rel).write_text(text)
    st = _stage(repo_copy, tmp_path)
    assert not set(extra) & set(st.files)
    assert {rel: reason for rel, reason in st.excluded if rel in extra} == dict.fromkeys(
        extra, "not code/config"
    )
    assert all(f.endswith(".py") for f in st.files if f.startswith("gmptl/"))
    assert all(
        f.endswith((".yaml", ".yml", ".md")) for f in st.files if f.startswith(("jobs/", "tune_spaces/"))
    )


def test_argument_and_ablation_files_are_scanned_too(repo_copy, tmp_path, capsys):
    st = _stage(repo_copy, tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text(f"stages.utterance.lr: {{loguniform: [1.0e-4, 1.0e-2]}}\nhf_token: {HF_TOKEN}\n")
    with pytest.raises(SubmitError, match=rf"{space}:2: a Hugging Face token") as e:
        stage_arg_files(["--space", str(space)], repo_copy, st)
    assert HF_TOKEN not in str(e.value)
    script = tmp_path / "run.sh"
    script.write_text("echo\n")
    with pytest.raises(SubmitError, match=r"run\.sh is not shipped to the cluster \(not code/config\)"):
        stage_arg_files(["--space", str(script)], repo_copy, st)

    config = tmp_path / "exp.yaml"
    config.write_text("model:\n  backbone: tiny\nfeatures:\n  layers: [2]\n")
    (tmp_path / "exp.ablations.yaml").write_text(f"leak: {{data.root: /x}}\n# {AWS_KEY}\n")
    argv = ["submit", str(config), "--dry-run", "--set", f"output_dir={tmp_path}", "--", "--ablations"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "exp.ablations.yaml:2: an AWS access key id" in err and AWS_KEY not in err


def test_submit_refuses_a_tracking_uri_with_credentials(tmp_path, capsys):
    argv = ["submit", "jobs/demo.yaml", "--dry-run", "--set", f"output_dir={tmp_path}",
            "--set", f"tracking.uri={URI_WITH_PASSWORD}"]  # fmt: skip
    assert main(argv) == 2
    out = capsys.readouterr()
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in out.err
    assert "tracking.uri=https://mlflow.example" in out.err  # the fix, without the credentials
    assert PASSWORD not in out.err + out.out and "alice" not in out.err + out.out
    with pytest.raises(SubmitError, match=r"user name or password") as e:
        dashboard_url("http://alice:" + PASSWORD + "@head:8265")
    assert PASSWORD not in str(e.value)


# ----------------------------------------------------------------------------- tracking


def test_resolve_uri_refuses_credentials_and_names_the_environment_variables(tmp_path):
    for uri, what in [
        (URI_WITH_PASSWORD, "a user name and password"),
        ("https://" + PASSWORD + "@mlflow.example", "a user name or token before the host"),
        ("https://mlflow.example/?token=" + PASSWORD, "a secret in its query (token)"),
    ]:
        with pytest.raises(ConfigError) as e:  # refused when the config loads, before anything is written
            load_config(None, [f"output_dir={tmp_path}", f"tracking.uri={uri}"])
        msg = str(e.value)
        assert what in msg and "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in msg, msg
        assert "--set tracking.uri=https://mlflow.example" in msg and PASSWORD not in msg
    fine = load_config(None, [f"output_dir={tmp_path}", "tracking.uri=https://mlflow.example:5000"])
    assert tracking.resolve_uri(fine) == "https://mlflow.example:5000"


def test_flatten_and_log_params_never_write_a_credential(tmp_path, monkeypatch):
    cfg = load_config(None, [f"output_dir={tmp_path}", "tracking.uri=http://mlflow:5000"])
    tree = to_dict(cfg)
    tree["tracking"]["uri"] = URI_WITH_PASSWORD
    tree["extra"] = {"hf_token": "plain-" + PASSWORD, "note": f"key {AWS_KEY}", "pem": PRIVATE_KEY,
                     "slack": SLACK_TOKEN, "gh": GITHUB_TOKEN, "tokenizer": "bert", "max_tokens": 512}  # fmt: skip
    flat = tracking.flatten(tree)
    assert flat["tracking.uri"] == "https://***@mlflow.example"
    for key in ("hf_token", "note", "pem", "slack", "gh"):
        assert flat[f"extra.{key}"] == tracking.REDACTED, key
    assert flat["extra.tokenizer"] == "bert" and flat["extra.max_tokens"] == "512"
    assert flat["stages.utterance.lr"] == str(cfg.stages.utterance.lr) and flat["output_dir"] == str(tmp_path)

    logged: list = []

    class Client:
        def log_batch(self, run_id, params=(), metrics=(), tags=()):
            logged.extend([*params, *tags])

        def set_tag(self, run_id, key, value):
            logged.append(SimpleNamespace(key=key, value=value))

    monkeypatch.setattr(tracking, "_client", lambda uri: Client())
    run = tracking.Run("sqlite:///x.db", "r1")
    run.log_params(tree)
    run.set_tags({"gmptl.source": URI_WITH_PASSWORD})
    assert len(logged) == len(flat) + 1
    text = json.dumps([[p.key, p.value] for p in logged])
    for secret in (PASSWORD, AWS_KEY, "MIIEow", SLACK_TOKEN, GITHUB_TOKEN, "alice"):
        assert secret not in text, secret


def test_a_tracking_uri_with_credentials_is_a_config_error_at_load(tmp_path):
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_PASSWORD"):
        load_config(None, [f"output_dir={tmp_path}", f"tracking.uri={URI_WITH_PASSWORD}"])


# ----------------------------------------------------------------------------- ids as file names

HOSTILE_IDS = ["../../escape", "a/b", "..", ".", "", "a\x00b", "/etc/passwd", "C:\\x", ".hidden", "x" * 400,
               "sp ace", "tab\there", "new\nline", "Ses01F_impro01_F000", "trial_00001"]  # fmt: skip


def test_safe_name_gives_one_harmless_component():
    names = [paths.safe_name(i) for i in HOSTILE_IDS]
    for raw, name in zip(HOSTILE_IDS, names, strict=True):
        assert name and len(name.encode()) <= 100, (raw, name)
        assert not set(name) & set("/\\\x00\n\t :"), (raw, name)
        assert not name.startswith(".") and name not in (".", ".."), (raw, name)
        assert Path(name).name == name and len(Path(name).parts) == 1
    assert len(set(names)) == len(names)  # different ids stay different names
    assert paths.safe_name("Ses01F_impro01_F000") == "Ses01F_impro01_F000"  # a safe id is kept as it is
    assert paths.safe_name("a/b") != paths.safe_name("a_b") == "a_b"
    assert paths.safe_name("a/b") == paths.safe_name("a/b")  # stable across calls (and processes: sha256)


def test_frame_track_pngs_stay_in_their_folder(tmp_path, monkeypatch):
    """Utterance ids become PNG names: `../`, `/` or NUL in an id never writes outside the report folder."""
    from gmptl.inference import predict, tracks

    class FakePredictor:
        def __init__(self, *a, **k):
            pass

        def load(self, path):
            return path

        def predict(self, waves, names):
            return list(names)

        def plot(self, wave, pred, path):
            Path(path).write_bytes(b"png")

    monkeypatch.setattr(predict, "Predictor", FakePredictor)
    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}"])
    ids = ["../../escape", "a/b", "a\x00b", ".."]
    df = pd.DataFrame({"utt_id": ids, "path": [f"/audio/{i}.wav" for i in range(len(ids))]})
    fold = SimpleNamespace(index=0, select=lambda df, part: df)
    folder = tmp_path / "runs" / "report"
    folder.mkdir(parents=True)
    names = tracks.frame_track_pngs(cfg, df, fold, folder, n=len(ids))
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(folder / n for n in names) and len(set(names)) == len(ids)
    assert all(n.startswith("track_fold0_") and n.endswith(".png") and "/" not in n for n in names)


def test_predict_png_names_are_safe_and_unique(tmp_path):
    for rel in ("a/u.wav", "b/u.wav", "c/u-2.wav", "d/sp ace.wav", "e/..wav"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"RIFF")
    names = [i.name for i in list_inputs([tmp_path])]
    assert len(set(names)) == len(names) == 5, names
    assert all(n == paths.safe_name(n) for n in names), names


# ----------------------------------------------------------------------------- model folders

SPEC = {"pooling": "mean", "utterance_heads": {"emotion": {"type": "cosine", "n_classes": 2}}}
META = {"labels": ["sad", "angry"], "stage": "utterance", "fold": 0, "sample_rate_hz": 16000,
        "loss": "amsoftmax", "scale": 30.0}  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    cfg = load_config(None, ["model.backbone=tiny", "features.layers=[2]"])
    return save_model(build_model(cfg.model, SPEC), tmp_path_factory.mktemp("m") / "model", META)


@pytest.fixture
def model(model_dir, tmp_path):
    """A fresh copy of a valid stage-2 model folder."""
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def _run_with(model: Path, tmp_path: Path) -> Path:
    """A run folder whose fold 0 stage-2 model is (a copy of) ``model``."""
    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}", "model.backbone=tiny", "features.layers=[2]"])
    shutil.copytree(model, paths.stage_dir(cfg, 0, "utterance") / "best", symlinks=True)
    save_config(cfg, paths.run_dir(cfg) / "config.yaml")
    return paths.run_dir(cfg)


def test_export_copies_no_link(model, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not part of the model\n")
    os.symlink(outside, model / "notes.txt")
    run_dir = _run_with(model, tmp_path)
    link = paths.stage_dir(load_config(run_dir / "config.yaml"), 0, "utterance") / "best" / "notes.txt"
    assert link.is_symlink()
    with pytest.raises(InferenceError) as e:
        export_model(run_dir, 0, tmp_path / "exported")
    assert f"{link}: a symbolic link (to {outside})" in str(e.value) and "cp --dereference" in str(e.value)
    assert not (tmp_path / "exported").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exported")]  # no half-written folder


def test_a_linked_weights_file_is_refused_by_predict(model, tmp_path):
    real = tmp_path / "heads_elsewhere.safetensors"
    (model / "heads.safetensors").rename(real)
    os.symlink(real, model / "heads.safetensors")
    with pytest.raises(InferenceError, match=r"heads\.safetensors: a symbolic link"):
        check_model_folder(model)
    (model / "heads.safetensors").unlink()
    shutil.copyfile(real, model / "heads.safetensors")
    os.symlink(tmp_path, model / "backbone" / "more")  # a linked folder
    with pytest.raises(InferenceError, match=r"backbone/more: a symbolic link"):
        check_model_folder(model)


@pytest.mark.parametrize(
    ("rel", "data", "match"),
    [
        ("backbone/modeling_evil.py", b"import os\n", r"backbone/modeling_evil\.py: unexpected file"),
        ("run.sh", b"#!/bin/sh\n", r"run\.sh: unexpected file"),
        (".DS_Store", b"\0", r"\.DS_Store: unexpected file"),
        ("extra/x.json", b"{}", r"extra: unexpected folder"),
        (
            "backbone/model.safetensors",
            b"\x10\0\0\0\0\0\0\0{}",
            r"model\.safetensors: not a complete safetensors",
        ),
        ("heads.safetensors", b"junk", r"heads\.safetensors: not a complete safetensors file \(4 bytes\)"),
        (
            "README.md",
            b"x" * (2 * 1024**2),
            r"README\.md: 2097152 bytes, more than such a file plausibly holds",
        ),
    ],
)
def test_unexpected_content_of_a_model_folder_is_named(model, rel, data, match):
    (model / rel).parent.mkdir(parents=True, exist_ok=True)
    (model / rel).write_bytes(data)
    with pytest.raises(InferenceError, match=match):
        check_model_folder(model)


def test_a_truncated_weights_file_is_named(model):
    weights = model / "backbone" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(
        InferenceError, match=r"model\.safetensors: not a complete safetensors file .*truncated"
    ):
        check_model_folder(model)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: "{not json", r"model\.json, line 1 column 2: not valid JSON"),
        (lambda m: "[]", r"model\.json: expected a JSON object"),
        (lambda m: {k: v for k, v in m.items() if k != "spec"}, r"key 'spec' is None"),
        (lambda m: m | {"spec": {"utterance_heads": {}}}, r"key 'spec' .*at least one head"),
        (lambda m: m | {"spec": {"utterance_heads": {"emotion": {"type": "cosine", "n_classes": 0}}}},
         r"key 'spec\.utterance_heads\.emotion\.n_classes' is 0, expected an integer 1\.\.65536"),
        (lambda m: m | {"spec": {"utterance_heads": {"a.b": {"type": "linear", "n_classes": 2}}}},
         r"key 'spec\.utterance_heads\.a\.b'"),
        (lambda m: m | {"spec": {**SPEC, "pooling": "max"}}, r"key 'spec\.pooling'"),
        (lambda m: m | {"labels": ["sad"]}, r"key 'labels' .*2 names, one per class"),
        (lambda m: m | {"labels": "sad,angry"}, r"key 'labels'"),
        (lambda m: m | {"sample_rate_hz": -16000}, r"key 'sample_rate_hz' is -16000"),
        (lambda m: m | {"sample_rate_hz": 0}, r"key 'sample_rate_hz' is 0"),
        (lambda m: m | {"spec": {"utterance_heads": {"emotion": {"type": "cosine", "n_classes": 10**12}}}},
         r"key 'spec\.utterance_heads\.emotion\.n_classes' is 1000000000000, expected an integer 1\.\.65536"),
        (lambda m: m | {"spec": {"utterance_heads": {"emotion": {"type": "mystery", "n_classes": 2}}}},
         r"key 'spec\.utterance_heads\.emotion\.type'"),
        (lambda m: m | {"window_s": float("nan")}, r"key 'window_s'"),
        (lambda m: m | {"stage": "../x"}, r"key 'stage'"),
        (lambda m: m | {"pad": "x" * (1024**2)}, r"over the 1048576 bytes a model\.json can hold"),
    ],
)  # fmt: skip
def test_a_bad_model_json_is_an_error_naming_file_and_key(model, edit, match):
    meta = json.loads((model / "model.json").read_text())
    new = edit(meta)
    (model / "model.json").write_text(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(ModelFolderError, match=match) as e:
        load_model(model)
    assert str(model / "model.json") in str(e.value) and "gmptl export" in str(e.value)
    with pytest.raises(InferenceError, match=match):  # predict says the same before loading anything
        check_model_folder(model)


def test_a_valid_model_folder_passes(model):
    assert check_model_folder(model) == model
    _, meta = load_model(model)
    assert meta["labels"] == META["labels"]


def test_a_folder_without_model_json_is_named(tmp_path):
    with pytest.raises(
        ModelFolderError, match=rf"{tmp_path} is not a gmptl model folder: model\.json is missing"
    ):
        load_model(tmp_path)
