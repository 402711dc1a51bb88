"""Job submission: run a gmptl command on a Ray cluster through the Ray Jobs API.

``gmptl submit CONFIG --address http://HEAD:8265 [--set k=v ...] [--mode run|tune] [-- ARGS]``
builds a small working_dir, submits ``python -m gmptl.cli <mode> gmptl_job/<config>.yaml ARGS``
with ``ray.job_submission.JobSubmissionClient.submit_job``, prints the job id, follows the job's
logs (``tail_job_logs``) and ends with its final status: exit code 0 only for SUCCEEDED.
``gmptl jobs list|status|logs|stop`` talk to the same job server.

What travels (the working_dir, a fresh temporary folder, never the repository itself):
``gmptl/``, ``jobs/``, ``tune_spaces/`` and ``pyproject.toml`` of the source folder, filtered to
code and config files (an allowlist of suffixes), and ``gmptl_job/<config>.yaml``: the config
resolved here with its ``--set`` overrides and ``runtime.address=auto`` (the job joins the cluster
it runs on), plus ``<config>.ablations.yaml`` when one sits beside the config and any file named
in ARGS (``--space FILE``), rewritten to its path in the working_dir. Left behind, counted and reported: data and model files, caches and output folders,
secrets (``.env``, keys, credentials), hidden files, symlinks and files over ``MAX_FILE_MB``.

Paths in the config must mean the same on every node: ``output_dir`` (and ``data.root``,
``runtime.storage_path``, a ``sqlite:///`` tracking.uri, a local ``model.backbone`` folder) must be
absolute, on storage the cluster shares; a relative one is a config error naming the key.

The cluster's nodes are expected to have gmptl's dependencies installed (the image); ``--pip``
adds runtime_env packages. Ray is imported lazily: this module is loaded by every CLI call.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from gmptl.config import PRESETS, Config, config_hash, load_config, save_config
from gmptl.errors import ConfigError, GmptlError

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- what travels

STAGED_DIRS = ("gmptl", "jobs", "tune_spaces")
STAGED_FILES = ("pyproject.toml",)
JOB_DIR = "gmptl_job"  # inside the working_dir: the resolved config and any input files of ARGS
# Only code and config go; everything else (audio, Parquet, CSV, archives, models...) stays behind.
CODE_SUFFIXES = frozenset({".py", ".pyi", ".yaml", ".yml", ".toml", ".json", ".md", ".txt", ".cfg", ".ini"})
MAX_FILE_MB = 5.0
MAX_TOTAL_MB = 50.0  # Ray's own limit is 512 MiB; gmptl's code is well under 1 MB
SKIP_DIRS = frozenset({"__pycache__", "mlruns", "mlartifacts", "ray_results", "checkpoints", "out", "outputs",
                       "wandb", "lightning_logs", "node_modules", "synthetic_corpus"})  # fmt: skip
SECRET_PATTERNS = (".env", ".env.*", "*.env", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore",
                   "*.kdbx", "credentials*", "*credentials*.json", "*secret*", "id_rsa*", "id_dsa*",
                   "id_ecdsa*", "id_ed25519*", ".netrc", ".pypirc", ".git-credentials", "auth_token")  # fmt: skip
DATA_PATTERNS = ("*.wav", "*.flac", "*.mp3", "*.ogg", "*.opus", "*.m4a", "*.sph", "*.parquet", "*.arrow",
                 "*.feather", "*.npy", "*.npz", "*.h5", "*.hdf5", "*.csv", "*.tsv", "*.jsonl", "*.pt",
                 "*.pth", "*.ckpt", "*.bin", "*.safetensors", "*.onnx", "*.pkl", "*.pickle", "*.joblib",
                 "*.db", "*.sqlite", "*.sqlite3", "*.zip", "*.tar", "*.gz", "*.tgz", "*.xz")  # fmt: skip
CACHE_PATTERNS = ("*.pyc", "*.pyo", "*.so", "*.egg-info")


class SubmitError(GmptlError):
    """The cluster, the job server or a job cannot be used as asked; the message says how to fix it."""


class JobFailedError(SubmitError):
    """A followed job ended in a status other than SUCCEEDED."""


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name.lower(), p) for p in patterns)


def exclusion_reason(path: Path, max_file_mb: float = MAX_FILE_MB) -> str | None:
    """Why a file must not be shipped (None: it may go). Checked in this order: a secret is always
    reported as a secret, even when it is also hidden or large."""
    name = path.name
    if path.is_symlink():
        return "symlink"
    if _matches(name, SECRET_PATTERNS):
        return "secret"
    if name.startswith("."):
        return "hidden"
    if _matches(name, CACHE_PATTERNS):
        return "cache"
    if _matches(name, DATA_PATTERNS):
        return "data/model"
    if path.suffix.lower() not in CODE_SUFFIXES:
        return "not code/config"
    if path.stat().st_size > max_file_mb * 1024**2:
        return f"over {max_file_mb:g} MB"
    return None


def _skip_dir(path: Path) -> str | None:
    name = path.name
    if name.startswith("."):
        return "hidden"
    if name in SKIP_DIRS or _matches(name, CACHE_PATTERNS):
        return "cache/output folder"
    return None


@dataclass
class Staging:
    """A working_dir ready for upload: what went in and what was left out (relative paths, reasons)."""

    root: Path
    config: str  # the resolved config, relative to root (posix)
    files: list[str] = field(default_factory=list)
    total_bytes: int = 0
    excluded: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        counts = Counter(reason for _, reason in self.excluded)
        left = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())) or "nothing"
        return f"working_dir: {len(self.files)} files, {self.total_bytes / 1024:.1f} KB (left out: {left})"


def _copy_tree(src: Path, dst_root: Path, rel: Path, staging: Staging, max_file_mb: float) -> None:
    for entry in sorted(src.iterdir()):
        rel_entry = rel / entry.name
        if entry.is_dir() and not entry.is_symlink():
            if (reason := _skip_dir(entry)) is not None:
                staging.excluded.append((rel_entry.as_posix() + "/", reason))
            else:
                _copy_tree(entry, dst_root, rel_entry, staging, max_file_mb)
            continue
        if (reason := exclusion_reason(entry, max_file_mb)) is not None:
            staging.excluded.append((rel_entry.as_posix(), reason))
            continue
        _add_file(entry, dst_root, rel_entry, staging)


def _add_file(src: Path, dst_root: Path, rel: Path, staging: Staging) -> None:
    dst = dst_root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    staging.files.append(rel.as_posix())
    staging.total_bytes += dst.stat().st_size


def default_source() -> Path:
    """The folder that holds the imported ``gmptl`` package (the repository for an editable install)."""
    import gmptl

    return Path(gmptl.__file__).resolve().parent.parent


def stage_working_dir(
    cfg: Config,
    source: Path,
    dest: Path,
    config_name: str = "config.yaml",
    max_file_mb: float = MAX_FILE_MB,
    max_total_mb: float = MAX_TOTAL_MB,
) -> Staging:
    """Fill the empty folder ``dest`` with the code of ``source`` and the resolved config ``cfg``.

    Args:
        cfg: the config the job runs (already through :func:`job_config`).
        source: folder whose ``gmptl/``, ``jobs/``, ``tune_spaces/`` and ``pyproject.toml`` are copied
            (filtered by :func:`exclusion_reason`); the ones it lacks are skipped.
        dest: an empty or missing folder; becomes the job's working_dir.
        config_name: file name of the resolved config under ``gmptl_job/``.
    Raises:
        SubmitError: ``source`` has no ``gmptl/`` package, or the staged total exceeds ``max_total_mb``.
    """
    source = Path(source).resolve()
    if not (source / "gmptl" / "cli.py").is_file():
        raise SubmitError(
            f"--source {source}: no gmptl/cli.py there; pass the folder that holds the gmptl package "
            "(the repository root)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    config_rel = f"{JOB_DIR}/{config_name}"
    staging = Staging(root=dest, config=config_rel)
    for name in STAGED_DIRS:
        if (source / name).is_dir():
            _copy_tree(source / name, dest, Path(name), staging, max_file_mb)
    for name in STAGED_FILES:
        p = source / name
        if not p.exists() and not p.is_symlink():
            continue
        reason = exclusion_reason(p, max_file_mb) if p.is_file() or p.is_symlink() else "not a file"
        if reason is None:
            _add_file(p, dest, Path(name), staging)
        else:
            staging.excluded.append((name, reason))
    save_config(cfg, dest / config_rel)
    staging.files.append(config_rel)
    staging.total_bytes += (dest / config_rel).stat().st_size
    if staging.total_bytes > max_total_mb * 1024**2:
        raise SubmitError(
            f"the working_dir would be {staging.total_bytes / 1024**2:.1f} MB (limit {max_total_mb:g} MB): "
            f"something large sits among the code in {source}/{{{','.join(STAGED_DIRS)}}}; move it out"
        )
    for rel, reason in staging.excluded:
        log.debug("not shipped (%s): %s", reason, rel)
    return staging


def stage_arg_files(args: tuple[str, ...] | list[str], source: Path, staging: Staging) -> list[str]:
    """Pass-through ARGS that name local files are rewritten to the file's path in the working_dir.

    A file already staged (under ``source/jobs``, ``source/tune_spaces``...) keeps its relative path;
    any other file is copied to ``gmptl_job/inputs/`` if it passes the same filter, else SubmitError.
    Both ``--space FILE`` and ``--space=FILE`` forms are handled.
    """
    source = Path(source).resolve()
    out: list[str] = []
    for arg in args:
        prefix, value = "", arg
        if arg.startswith("--") and "=" in arg:
            head, value = arg.split("=", 1)
            prefix = head + "="
        p = Path(value).expanduser()
        if not value or (arg.startswith("-") and not prefix) or not p.is_file():
            out.append(arg)
            continue
        resolved = p.resolve()
        with contextlib.suppress(ValueError):
            rel = resolved.relative_to(source).as_posix()
            if rel in staging.files:
                out.append(prefix + rel)
                continue
        if (reason := exclusion_reason(p)) is not None:
            raise SubmitError(f"argument {arg!r}: {p} is not shipped to the cluster ({reason})")
        rel_path = Path(JOB_DIR) / "inputs" / f"{len(staging.files)}_{p.name}"
        _add_file(p, staging.root, rel_path, staging)
        out.append(prefix + rel_path.as_posix())
    return out


# ----------------------------------------------------------------------------- the job's config


def _is_abs(path: str) -> bool:
    return Path(path).is_absolute()


def check_cluster_paths(cfg: Config) -> None:
    """Every path the job writes or reads must name the same place on every node (absolute, shared).

    Raises:
        ConfigError: naming each relative key and the override that fixes it.
    """
    why = "the job runs in a temporary working_dir on the cluster that is deleted when it ends"
    problems = []
    if not _is_abs(cfg.output_dir):
        problems.append(
            f"output_dir={cfg.output_dir!r} is relative ({why}); set it to a folder on storage every node "
            "shares, e.g. --set output_dir=/shared/gmptl/demo"
        )
    if cfg.data.root and not _is_abs(cfg.data.root):
        problems.append(f"data.root={cfg.data.root!r} is relative; --set data.root=/shared/path/to/corpus")
    sp = cfg.runtime.storage_path
    if sp and "://" not in sp and not _is_abs(sp):
        problems.append(f"runtime.storage_path={sp!r} is relative; use an absolute shared path or s3://...")
    uri = cfg.tracking.uri
    if (
        cfg.tracking.enabled
        and uri
        and uri.startswith("sqlite:///")
        and not _is_abs(uri[len("sqlite:///") :])
    ):
        problems.append(
            f"tracking.uri={uri!r} is a relative sqlite file; use sqlite:////shared/path/mlflow.db, an "
            "http(s):// MLflow server, or leave it unset (<output_dir>/mlflow.db)"
        )
    bb = cfg.model.backbone
    if bb not in PRESETS and not _is_abs(bb) and (bb.startswith((".", "~")) or Path(bb).exists()):
        problems.append(
            f"model.backbone={bb!r} is a local folder given by a relative path (models are not shipped); "
            "put it on shared storage and give its absolute path"
        )
    if problems:
        raise ConfigError("cannot submit: " + "; ".join(problems))


def job_config(cfg: Config) -> Config:
    """The config as the job runs it: joins the cluster it runs on (``runtime.address=auto``)."""
    if cfg.runtime.address not in (None, "auto"):
        log.warning(
            "runtime.address=%r is replaced by `auto` in the job: a job runs on the cluster it was submitted to",
            cfg.runtime.address,
        )
    return cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"address": "auto"})})


def build_entrypoint(
    mode: str, config_rel: str, args: list[str] | tuple[str, ...] = (), python: str = "python"
) -> str:
    """The job's shell command: the CLI as a module, so no console script is needed on the nodes."""
    return shlex.join([python, "-m", "gmptl.cli", mode, config_rel, *args])


# ----------------------------------------------------------------------------- the job server


def dashboard_url(address: str) -> str:
    """``--address`` as the job server's URL: ``http(s)://host:port`` (a bare ``host:port`` gets http)."""
    text = address.strip().rstrip("/")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SubmitError(
            f"--address {address!r}: expected the head's dashboard (job server) URL, e.g. "
            "--address http://HEAD:8265 (not a ray:// client address)"
        )
    try:
        parts.port  # noqa: B018 (validates the port)
    except ValueError as e:
        raise SubmitError(f"--address {address!r}: {e}; e.g. --address http://HEAD:8265") from None
    return text


def _probe(url: str, timeout_s: float) -> None:
    """Fail in seconds, with a useful message, when nothing listens (requests would wait minutes)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as e:
        raise SubmitError(
            f"--address {url}: no Ray job server answers at {parts.hostname}:{port} ({e}). Start the head "
            "with its dashboard (ray start --head --include-dashboard true --dashboard-port 8265) and pass "
            "that URL, e.g. --address http://HEAD:8265"
        ) from None


@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    """Ray lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override the address given to the client; here
    ``--address`` wins (RAY_ADDRESS is also what a job's own driver sees)."""
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str, timeout_s: float = 5.0) -> Any:
    """A ``JobSubmissionClient`` for ``address`` (checked: reachable and a Ray job server)."""
    url = dashboard_url(address)
    _probe(url, timeout_s)
    from ray.job_submission import JobSubmissionClient

    with _explicit_address():
        try:
            return JobSubmissionClient(url)
        except Exception as e:  # ConnectionError, RuntimeError (version check), AuthenticationError
            raise SubmitError(
                f"--address {url}: not a usable Ray job server ({type(e).__name__}: {e}); pass the head's "
                "dashboard URL, e.g. --address http://HEAD:8265"
            ) from None


def _call(what: str, address: str, fn: Any, *args: Any) -> Any:
    """One job-server request; its failure becomes a SubmitError that says what was asked."""
    try:
        return fn(*args)
    except Exception as e:  # the SDK raises RuntimeError for HTTP errors, ConnectionError, ...
        text = str(e)
        hint = f"; list the jobs with `gmptl jobs list --address {address}`" if "404" in text else ""
        raise SubmitError(f"{what} failed on {address}: {text}{hint}") from None


def wait_until_done(client: Any, job_id: str, address: str, poll_s: float = 1.0) -> Any:
    """Poll until the job is in a terminal state; returns its JobDetails."""
    while True:
        info = _call(f"status of job {job_id}", address, client.get_job_info, job_id)
        if info.status.is_terminal():
            return info
        time.sleep(poll_s)


def follow_logs(client: Any, job_id: str) -> None:
    """Stream the job's logs to stdout until it ends (``tail_job_logs`` is an async iterator)."""
    import asyncio

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except (
        Exception
    ) as e:  # the stream closed before the job ended; the caller's status poll still follows it
        log.warning("log stream of job %s ended early (%s); waiting for the job to end", job_id, e)


def _warn_local_tracking(cfg: Config, address: str) -> None:
    """An MLflow server on this machine's loopback is not reachable from a remote cluster's nodes."""
    local = ("127.0.0.1", "localhost", "::1")
    uri = cfg.tracking.uri or ""
    if cfg.tracking.enabled and uri.startswith("http") and urlsplit(uri).hostname in local:
        if address and urlsplit(dashboard_url(address)).hostname not in local:
            log.warning(
                "tracking.uri=%s is this machine's loopback: the job on %s reaches its own node's instead; "
                "give the MLflow server's address as the cluster sees it",
                uri,
                address,
            )


@dataclass
class Submission:
    job_id: str
    address: str
    entrypoint: str
    staging: Staging
    config: Config
    client: Any = None  # the JobSubmissionClient (None for a dry run)


def submit(
    config_file: str,
    sets: tuple[str, ...] | list[str],
    address: str,
    mode: str = "run",
    args: tuple[str, ...] | list[str] = (),
    source: Path | None = None,
    submission_id: str | None = None,
    pip: tuple[str, ...] | list[str] = (),
    dry_run: bool = False,
) -> Submission:
    """Check the config, stage the working_dir, submit the job (unless ``dry_run``)."""
    cfg = job_config(load_config(config_file, list(sets)))
    check_cluster_paths(cfg)
    _warn_local_tracking(cfg, address)
    source = Path(source) if source else default_source()
    client = None if dry_run else connect(address)
    with tempfile.TemporaryDirectory(prefix="gmptl-submit-") as tmp:
        staging = stage_working_dir(cfg, source, Path(tmp) / "working_dir", f"{Path(config_file).stem}.yaml")
        # `gmptl run --ablations` reads <config>.ablations.yaml beside the config: it travels beside it too.
        ablations = Path(config_file).with_name(Path(config_file).stem + ".ablations.yaml")
        if ablations.is_file() and exclusion_reason(ablations) is None:
            _add_file(ablations, staging.root, Path(JOB_DIR) / ablations.name, staging)
        job_args = stage_arg_files(args, source, staging)
        entrypoint = build_entrypoint(mode, staging.config, job_args)
        job_id = submission_id or f"gmptl-{mode}-{config_hash(cfg)}-{secrets.token_hex(3)}"
        if client is not None:
            runtime_env: dict[str, Any] = {
                "working_dir": str(staging.root),
                "env_vars": {"PYTHONUNBUFFERED": "1"},  # logs reach tail_job_logs as they are written
            }
            if pip:
                runtime_env["pip"] = list(pip)
            metadata = {
                "gmptl_mode": mode,
                "gmptl_config": str(config_file),
                "gmptl_output_dir": cfg.output_dir,
            }
            url = dashboard_url(address)
            job_id = _call(
                "submit_job",
                url,
                lambda: client.submit_job(
                    entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_id, metadata=metadata
                ),
            )
    # The folder is gone once Ray has uploaded it (a content-addressed zip in the cluster's GCS).
    return Submission(job_id, address, entrypoint, staging, cfg, client)


# ----------------------------------------------------------------------------- CLI

_address_option = click.option(
    "--address",
    envvar="RAY_API_SERVER_ADDRESS",
    metavar="URL",
    help="The head's dashboard / job server, e.g. http://HEAD:8265 (env RAY_API_SERVER_ADDRESS).",
)


def _need_address(address: str | None) -> str:
    if not address:
        raise click.UsageError("--address is required: the head's job server URL, e.g. http://HEAD:8265")
    return dashboard_url(address)


@click.command("submit")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[-- ARGS...]")
@_address_option
@click.option("--mode", type=click.Choice(["run", "tune"]), default="run", show_default=True,
              help="The gmptl command the job runs on CONFIG_FILE; ARGS after `--` are passed to it.")  # fmt: skip
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable).")
@click.option("--submission-id", default=None, help="Job id (default gmptl-<mode>-<config hash>-<random>).")
@click.option("--no-wait", is_flag=True, help="Return after submitting; do not follow the logs.")
@click.option("--pip", multiple=True, metavar="REQ", help="Extra runtime_env pip requirement (repeatable).")
@click.option("--source", type=click.Path(file_okay=False, exists=True), default=None,
              help="Folder whose gmptl/, jobs/, tune_spaces/, pyproject.toml are shipped (default: the "
                   "installed gmptl's parent folder).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Stage and list what would be shipped; submit nothing.")
def submit_command(
    config_file: str,
    args: tuple[str, ...],
    address: str | None,
    mode: str,
    sets: tuple[str, ...],
    submission_id: str | None,
    no_wait: bool,
    pip: tuple[str, ...],
    source: str | None,
    dry_run: bool,
) -> None:
    """Run `gmptl MODE CONFIG_FILE` as a Ray job on the cluster at --address; follow it to its end."""
    if mode == "tune" and not any(a == "--space" or a.startswith("--space=") for a in args):
        raise click.UsageError(
            "--mode tune needs the search space of `gmptl tune`: add `-- --space tune_spaces/utterance.yaml "
            "[--samples N]`"
        )
    url = "" if dry_run else _need_address(address)
    sub = submit(
        config_file, sets, url, mode, args, Path(source) if source else None, submission_id, pip, dry_run
    )
    if dry_run:
        click.echo(f"entrypoint: {sub.entrypoint}\n{sub.staging.summary()}")
        click.echo("\n".join(f"  + {f}" for f in sub.staging.files))
        click.echo("\n".join(f"  - {f} ({reason})" for f, reason in sub.staging.excluded))
        return
    click.echo(
        f"submitted job {sub.job_id} to {url}\n  {sub.staging.summary()}\n  entrypoint: {sub.entrypoint}"
    )
    click.echo(f"  logs: gmptl jobs logs {sub.job_id} --address {url} --follow\n"
               f"  stop: gmptl jobs stop {sub.job_id} --address {url}")  # fmt: skip
    if no_wait:
        return
    try:
        follow_logs(sub.client, sub.job_id)
        info = wait_until_done(sub.client, sub.job_id, url)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; job {sub.job_id} keeps running (gmptl jobs stop {sub.job_id} "
                   f"--address {url})", err=True)  # fmt: skip
        raise click.exceptions.Abort() from None
    _end(sub.job_id, url, info, sub.config if mode == "run" else None)


def _end(job_id: str, url: str, info: Any, cfg: Config | None) -> None:
    """Print the final status; a job that did not succeed is an error (exit code 1)."""
    status = str(info.status)
    click.echo(f"job {job_id}: {status}" + (f" ({info.message})" if info.message else ""))
    if status != "SUCCEEDED":
        raise JobFailedError(
            f"job {job_id} ended {status}: {info.message or 'no message'}; its logs: "
            f"gmptl jobs logs {job_id} --address {url}"
        )
    if cfg is not None:
        from gmptl import paths

        click.echo(f"report: {paths.run_dir(cfg) / 'report.md'}")


@click.group("jobs")
def jobs_group() -> None:
    """Jobs on a Ray cluster's job server: list, status, logs, stop."""


@jobs_group.command("list")
@_address_option
def jobs_list(address: str | None) -> None:
    """Every job the cluster knows, newest first."""
    url = _need_address(address)
    client = connect(url)
    rows = sorted(_call("list_jobs", url, client.list_jobs), key=lambda j: j.start_time or 0, reverse=True)
    for j in rows:
        started = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "-"
        )
        click.echo(
            f"{j.submission_id or j.job_id:<44} {str(j.status):<10} {started}  {(j.entrypoint or '')[:80]}"
        )
    if not rows:
        click.echo(f"no jobs on {url}")


@jobs_group.command("status")
@click.argument("job_id")
@_address_option
def jobs_status(job_id: str, address: str | None) -> None:
    """Status, message and entrypoint of JOB_ID."""
    url = _need_address(address)
    info = _call(f"status of job {job_id}", url, connect(url).get_job_info, job_id)
    click.echo(f"job {job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
    click.echo(f"entrypoint: {info.entrypoint}")
    for key, value in sorted((info.metadata or {}).items()):
        click.echo(f"{key}: {value}")


@jobs_group.command("logs")
@click.argument("job_id")
@_address_option
@click.option("--follow", "-f", is_flag=True, help="Stream new output until the job ends.")
def jobs_logs(job_id: str, address: str | None, follow: bool) -> None:
    """The logs of JOB_ID (all so far, or followed to the end)."""
    url = _need_address(address)
    client = connect(url)
    if follow:
        _call(f"status of job {job_id}", url, client.get_job_info, job_id)  # an unknown id fails here
        follow_logs(client, job_id)
    else:
        click.echo(_call(f"logs of job {job_id}", url, client.get_job_logs, job_id), nl=False)


@jobs_group.command("stop")
@click.argument("job_id")
@_address_option
@click.option("--no-wait", is_flag=True, help="Return once the stop is requested.")
def jobs_stop(job_id: str, address: str | None, no_wait: bool) -> None:
    """Stop JOB_ID (SIGTERM to its driver, then SIGKILL after Ray's grace period)."""
    url = _need_address(address)
    client = connect(url)
    was_running = _call(f"stop_job {job_id}", url, client.stop_job, job_id)
    if not was_running:
        click.echo(f"job {job_id} was not running")
    if no_wait:
        return
    info = wait_until_done(client, job_id, url)
    click.echo(f"job {job_id}: {info.status}")
