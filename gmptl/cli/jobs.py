"""``gmptl submit`` and ``gmptl jobs list|status|logs|stop``: gmptl commands as Ray jobs on a cluster.

What travels and the job's config: :mod:`gmptl.submit`; the job server: :mod:`gmptl.submit_client`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from gmptl.cli.options import config_argument, set_option
from gmptl.config import Config
from gmptl.submit_client import (
    JobFailedError,
    call,
    connect,
    dashboard_url,
    follow_logs,
    submit,
    wait_until_done,
)

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
@config_argument()
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[-- ARGS...]")
@_address_option
@click.option("--mode", type=click.Choice(["run", "tune"]), default="run", show_default=True,
              help="The gmptl command the job runs on CONFIG_FILE; ARGS after `--` are passed to it.")  # fmt: skip
@set_option
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
    rows = sorted(call("list_jobs", url, client.list_jobs), key=lambda j: j.start_time or 0, reverse=True)
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
    info = call(f"status of job {job_id}", url, connect(url).get_job_info, job_id)
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
        call(f"status of job {job_id}", url, client.get_job_info, job_id)  # an unknown id fails here
        follow_logs(client, job_id)
    else:
        click.echo(call(f"logs of job {job_id}", url, client.get_job_logs, job_id), nl=False)


@jobs_group.command("stop")
@click.argument("job_id")
@_address_option
@click.option("--no-wait", is_flag=True, help="Return once the stop is requested.")
def jobs_stop(job_id: str, address: str | None, no_wait: bool) -> None:
    """Stop JOB_ID (SIGTERM to its driver, then SIGKILL after Ray's grace period)."""
    url = _need_address(address)
    client = connect(url)
    was_running = call(f"stop_job {job_id}", url, client.stop_job, job_id)
    if not was_running:
        click.echo(f"job {job_id} was not running")
    if no_wait:
        return
    info = wait_until_done(client, job_id, url)
    click.echo(f"job {job_id}: {info.status}")
