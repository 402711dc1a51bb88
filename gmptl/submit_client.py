"""Job submission, the job server: submit a staged job through the Ray Jobs API and follow it.

:func:`submit` checks the config, stages the working_dir (:mod:`gmptl.submit`) and submits
``python -m gmptl.cli <mode> gmptl_job/<config>.yaml ARGS`` with
``ray.job_submission.JobSubmissionClient.submit_job``; ``gmptl submit`` then prints the job id, follows
the job's logs (:func:`follow_logs`, ``tail_job_logs``) and ends with its final status
(:func:`wait_until_done`): exit code 0 only for SUCCEEDED. ``gmptl jobs list|status|logs|stop`` talk
to the same job server (:func:`connect`, :func:`call`); the commands are in :mod:`gmptl.cli.jobs`.

The cluster's nodes are expected to have gmptl's dependencies installed (the image); ``--pip``
adds runtime_env packages. Ray is imported lazily: this module is loaded by every CLI call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gmptl.config import Config, config_hash, load_config
from gmptl.submit import (
    Staging,
    SubmitError,
    build_entrypoint,
    check_cluster_paths,
    default_source,
    job_config,
    stage_ablations_file,
    stage_arg_files,
    stage_working_dir,
)
from gmptl.tracking import check_uri, redact_uri

log = logging.getLogger("gmptl.submit")  # the logger `gmptl submit` has always logged under


class JobFailedError(SubmitError):
    """A followed job ended in a status other than SUCCEEDED."""


# ----------------------------------------------------------------------------- the job server


def dashboard_url(address: str) -> str:
    """``--address`` as the job server's URL: ``http(s)://host:port`` (a bare ``host:port`` gets http)."""
    text = address.strip().rstrip("/")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if "@" in parts.netloc:
        raise SubmitError(
            f"--address {redact_uri(text)}: the address holds a user name or password, which would be printed "
            "and logged; give --address http://HEAD:8265 without them (Ray's job server authenticates with "
            "RAY_AUTH_TOKEN, cluster/README.md 'Authentication')"
        )
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


# What to do when the job server wants Ray's token (RAY_AUTH_MODE=token on the cluster, docs: cluster/README.md).
TOKEN_HINT = (
    "the cluster requires Ray's authentication token: run with RAY_AUTH_MODE=token and the cluster's token in "
    "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (cluster/README.md, 'Authentication')"
)


def _auth_hint(e: BaseException) -> str:
    text = f"{type(e).__name__} {e}"
    return (
        f"; {TOKEN_HINT}" if "Authentication" in text or "Unauthorized" in text or "Forbidden" in text else ""
    )


def connect(address: str, timeout_s: float = 5.0) -> Any:
    """A ``JobSubmissionClient`` for ``address`` (checked: reachable and a Ray job server)."""
    url = dashboard_url(address)
    _probe(url, timeout_s)
    from ray.job_submission import JobSubmissionClient

    with _explicit_address():
        try:
            return JobSubmissionClient(url)
        except Exception as e:  # ConnectionError, RuntimeError (version check), AuthenticationError
            if hint := _auth_hint(e):
                raise SubmitError(f"--address {url}: {type(e).__name__}{hint}") from None
            raise SubmitError(
                f"--address {url}: not a usable Ray job server ({type(e).__name__}: {e}); pass the head's "
                "dashboard URL, e.g. --address http://HEAD:8265"
            ) from None


def call(what: str, address: str, fn: Any, *args: Any) -> Any:
    """One job-server request; its failure becomes a SubmitError that says what was asked."""
    try:
        return fn(*args)
    except Exception as e:  # the SDK raises RuntimeError for HTTP errors, ConnectionError, ...
        text = str(e)
        hint = (
            f"; list the jobs with `gmptl jobs list --address {address}`" if "404" in text else _auth_hint(e)
        )
        raise SubmitError(f"{what} failed on {address}: {text}{hint}") from None


def wait_until_done(client: Any, job_id: str, address: str, poll_s: float = 1.0) -> Any:
    """Poll until the job is in a terminal state; returns its JobDetails."""
    while True:
        info = call(f"status of job {job_id}", address, client.get_job_info, job_id)
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
                redact_uri(uri),
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
    check_uri(cfg.tracking.uri)  # credentials in the URI: refused before it is printed or written
    check_cluster_paths(cfg)
    _warn_local_tracking(cfg, address)
    source = Path(source) if source else default_source()
    client = None if dry_run else connect(address)
    with tempfile.TemporaryDirectory(prefix="gmptl-submit-") as tmp:
        staging = stage_working_dir(cfg, source, Path(tmp) / "working_dir", f"{Path(config_file).stem}.yaml")
        stage_ablations_file(config_file, staging)
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
            job_id = call(
                "submit_job",
                url,
                lambda: client.submit_job(
                    entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_id, metadata=metadata
                ),
            )
    # The folder is gone once Ray has uploaded it (a content-addressed zip in the cluster's GCS).
    return Submission(job_id, address, entrypoint, staging, cfg, client)
