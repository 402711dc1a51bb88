"""MLflow, and only here: runs, parameters, per-epoch metrics, artifacts.

Everything goes through an explicit ``MlflowClient(tracking_uri)``: no process-wide
``mlflow.set_tracking_uri`` state, so a Ray worker logs to exactly the store the
driver chose (Ray's MLflow integration has been seen to ignore the URI). Called
from the driver and from rank 0 only.

Runs are found again by a ``gmptl.run_key`` tag (stage, fold, config hash): a
restarted training run continues the same MLflow run instead of opening a new one.
Experiments are created with a retry, because two processes creating the same
experiment on a new SQLite store race ("table already exists").

What MLflow cannot take while its server is down (metrics with their step and timestamp, parameters,
tags, artifacts by path, a run's final status) waits in the stage's :class:`Outbox` and is sent, in
order and at most once per metric point, by the next call that reaches MLflow, by the stage's end, or
by the stage's rerun.

Credentials never reach a file, a parameter or the terminal: a ``tracking.uri`` with a user name or
password before its host (or a token in its query) is refused where gmptl uses it
(:func:`resolve_uri`, :func:`check_uri`): MLflow reads them from ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` (or ``MLFLOW_TRACKING_TOKEN``); :func:`flatten` and :meth:`Run.log_params`
write ``<redacted>`` for any value that looks like a credential (:func:`credential_kind`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from gmptl import files
from gmptl.config import Config, TrackingConfig
from gmptl.errors import ConfigError, GmptlError

log = logging.getLogger(__name__)

RUN_KEY_TAG = "gmptl.run_key"
PARENT_TAG = "mlflow.parentRunId"


class TrackingError(GmptlError):
    """The MLflow store cannot be used (unreachable server, bad URI)."""


# ----------------------------------------------------------------------------- credentials

# Text that is a credential wherever it appears (also used by `gmptl submit` to scan what it ships).
CREDENTIAL_PATTERNS: dict[str, re.Pattern[str]] = {
    "a private key": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "an AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "a GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})\b"),
    "a Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "a Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "a Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "a password in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@"),
}
# A key (config key, query parameter) that names a secret; its value is never written.
# A whole word of the key, between `_`, `.`, `-` or its ends: `hf_token`, `MLFLOW_TRACKING_PASSWORD`, `api-key`
# (not `tokenizer` or `max_tokens`).
SECRET_KEY_NAME = re.compile(
    r"(?i)(?:^|[_.-])(?:passw(?:or)?d|pwd|secret|token|api_?key|access_?key|private_?key|credentials?|sig|signature)"
    r"(?:$|[_.-])"
)
REDACTED = "<redacted>"
CREDENTIAL_ENV = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"


def uri_credentials(uri: str) -> str | None:
    """What credentials ``uri`` carries (``"a user name and password"``, ``"a secret in its query (token)"``),
    or None. Only the URI's structure is inspected; nothing of the secret is returned."""
    if "://" not in uri:
        return None
    parts = urlsplit(uri)
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        return "a user name and password" if ":" in userinfo else "a user name or token before the host"
    secret = [k for k, v in parse_qsl(parts.query, keep_blank_values=True) if v and SECRET_KEY_NAME.search(k)]
    return f"a secret in its query ({', '.join(sorted(set(secret)))})" if secret else None


def redact_uri(uri: str, mask: str = "***") -> str:
    """``uri`` without its credentials: user info replaced by ``mask`` (dropped when ``mask`` is empty),
    secret query values by ``mask`` (the parameter dropped when empty). Safe to print."""
    if "://" not in uri or uri_credentials(uri) is None:
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc.rpartition("@")[2]
    if "@" in parts.netloc and mask:
        netloc = f"{mask}@{netloc}"
    query = [
        (k, mask if v and SECRET_KEY_NAME.search(k) else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if mask or not (v and SECRET_KEY_NAME.search(k))
    ]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*"), parts.fragment))


def check_uri(uri: str | None, key: str = "tracking.uri") -> None:
    """Refuse a URI that carries credentials: they would be written to config.yaml, MLflow's parameters and
    the terminal. MLflow reads them from the environment instead.

    Raises:
        ConfigError: naming the key, what the URI carries (never the secret) and the environment variables.
    """
    if uri and (what := uri_credentials(uri)) is not None:
        raise ConfigError(
            f"{key}={redact_uri(uri)}: the URI holds {what}; gmptl never writes credentials to files, MLflow "
            f"parameters or the terminal. Give the URI without them (--set {key}={redact_uri(uri, mask='')}) "
            f"and put them in the environment: export {CREDENTIAL_ENV}, which MLflow reads"
        )


def credential_kind(value: Any, key: str = "") -> str | None:
    """Why ``value`` (of config or parameter key ``key``) looks like a credential, or None.

    A URI with user info or a secret query parameter, text matching :data:`CREDENTIAL_PATTERNS`, or a
    non-empty value of a key that names a secret (``password``, ``token``, ``api_key``...).
    """
    if value is None or isinstance(value, bool | int | float):
        return None
    text = str(value)
    if not text or text == "None":
        return None
    last = key.rsplit(".", 1)[-1]
    if last and SECRET_KEY_NAME.search(last):
        return f"the key {last!r} names a secret"
    for word in text.split():
        if (what := uri_credentials(word)) is not None:
            return f"a URI holding {what}"
    for what, rx in CREDENTIAL_PATTERNS.items():
        if rx.search(text):
            return what
    return None


def safe_value(value: Any, key: str = "") -> str:
    """``str(value)`` when it looks like no credential; a URI without its credentials, else ``<redacted>``."""
    text = str(value)
    if credential_kind(value, key) is None:
        return text
    last = key.rsplit(".", 1)[-1]
    if "://" in text and " " not in text.strip() and not (last and SECRET_KEY_NAME.search(last)):
        text = text.strip()
        if credential_kind(redact_uri(text, mask="")) is None:  # the URI held the only credential
            return redact_uri(text)
    return REDACTED


# ----------------------------------------------------------------------------- the store


def resolve_uri(cfg: Config) -> str:
    """``tracking.uri``, or the embedded default ``sqlite:///<output_dir>/mlflow.db`` (absolute).

    Raises:
        ConfigError: ``tracking.uri`` holds credentials (:func:`check_uri`).
    """
    from gmptl.config import absolute_value
    from gmptl.paths import output_dir

    check_uri(cfg.tracking.uri)
    if cfg.tracking.uri:
        return absolute_value("tracking.uri", cfg.tracking.uri)
    return f"sqlite:///{output_dir(cfg) / 'mlflow.db'}"


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail before any training starts when the store cannot be used."""
    check_uri(uri)
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 (http(s) only)
                if r.status != 200:
                    raise TrackingError(f"tracking.uri={uri}: {url} answered HTTP {r.status}")
        except (urllib.error.URLError, OSError) as e:
            raise TrackingError(
                f"tracking.uri={uri}: the MLflow server is unreachable ({e}); start it "
                f"(`mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db`) "
                "or leave tracking.uri unset for the embedded SQLite store"
            ) from None
    elif uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def _client(uri: str):  # noqa: ANN202
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# MLflow 3's UI opens an experiment without this tag as a GenAI one (traces, "detect issues"); a
# model-training experiment opens on its runs table. The tag is set once; a kind chosen in the UI stays.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def _tag_kind(client: Any, experiment_id: str) -> None:
    """Mark an experiment as model training. Folds and trials open runs at once: when two set the tag
    together, the store refuses the second insert (SQLite: UNIQUE constraint), which is the same result."""
    try:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    except Exception:  # noqa: BLE001 - re-read below: only a missing tag is an error
        if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
            raise


def experiment_id(uri: str, name: str) -> str:
    """The id of experiment ``name`` (created, marked as model training, if it does not exist)."""
    client = _client(uri)
    for attempt in range(5):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if EXPERIMENT_KIND_TAG not in exp.tags:
                _tag_kind(client, exp.experiment_id)
            return exp.experiment_id
        artifacts = None
        if uri.startswith("sqlite:///"):
            # Next to the database, not MLflow's CWD-relative default.
            artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        try:
            return client.create_experiment(
                name, artifact_location=artifacts, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except Exception as e:  # noqa: BLE001 - a concurrent creator won the race; read theirs
            log.debug("create_experiment %s raced (%s), retrying", name, e)
            time.sleep(0.2 * (attempt + 1))
    raise TrackingError(f"could not create or find MLflow experiment {name!r} at {redact_uri(uri)}")


def best_effort(what: str, fn: Any, *args: Any, **kwargs: Any) -> bool:
    """Call an MLflow client function whose failure must not stop the work (an outage outlasting the
    client's own retries): on an error log a warning naming ``what`` and return False."""
    try:
        fn(*args, **kwargs)
        return True
    except Exception as e:  # noqa: BLE001 - MLflow raises many types (HTTP, database, OS)
        log.warning("MLflow did not take %s (%s); the work goes on, its results are on disk", what, e)
        return False


def ui_url(uri: str, experiment: str, port: int = 5000) -> str:
    """The experiment's runs in the MLflow UI served on 127.0.0.1:``port``, in its model-training view.

    MLflow 3's UI opens every experiment in its GenAI view (traces) unless the browser has chosen
    otherwise; ``workflowType=machine_learning`` in the address picks the runs table (and is remembered).
    """
    base = redact_uri(uri, mask="") if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id(uri, experiment)}?workflowType=machine_learning"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys -> string values (MLflow parameters), e.g. ``stages.gmp.lr``.

    A value that looks like a credential (:func:`credential_kind`) is never written: a URI loses its
    user info and secret query values (``https://***@host``), anything else becomes ``<redacted>``.
    """
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, key + ".")
        else:
            out[key] = safe_value(v, key)[:6000]
    return out


# ----------------------------------------------------------------------------- outbox

# MLflow's HTTP client retries a refused request 7 times with exponential backoff (about 4 minutes)
# before it raises: in the training loop every epoch would stall that long while the server is down.
# Rank 0 gives up after a few seconds instead (worst case 3 tries of 10 s against a server that accepts
# and hangs); what it could not send waits in the outbox.
QUICK_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# MLflow's answers that no retry changes: the run or its file is gone, or the store refuses the value.
REFUSALS = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "INVALID_STATE", "PERMISSION_DENIED")


def quick_http(uri: str) -> None:
    """Bound MLflow's HTTP retries in this process (:data:`QUICK_HTTP`) when ``uri`` is a server; call it in a
    process that logs while it works (a training worker), never in the driver, whose end-of-stage calls
    should wait for a server that is restarting. A value set in the environment is kept."""
    if uri.startswith(("http://", "https://")):
        for key, value in QUICK_HTTP.items():
            os.environ.setdefault(key, value)


def _refused(error: Exception) -> bool:
    """Whether sending again cannot help (else the error is an outage: the entry waits)."""
    if isinstance(error, FileNotFoundError):
        return True
    return getattr(error, "error_code", None) in REFUSALS


def _describe(entry: dict[str, Any]) -> str:
    op = entry["op"]
    if op == "metrics":
        steps = sorted({p[3] for p in entry["metrics"]})
        return f"{len(entry['metrics'])} metric points (step {', '.join(map(str, steps))})"
    if op == "artifact":
        return f"the artifact {entry['path']}"
    if op == "status":
        return f"the end of run {entry['run']} ({entry['status']})"
    return f"{len(entry[op])} {op}"


# The (step, timestamp) points a run holds per metric key: (run id, key) -> points.
Seen = dict[tuple[str, str], set[tuple[int, int]]]


def _send(client: Any, entry: dict[str, Any], have: Seen | None) -> str:
    """Send one outbox entry; returns how (``sent``, or ``present`` when the run had every point already).

    ``have``: the (step, timestamp) points each (run, metric key) holds, filled on first use; None for a
    first attempt, which cannot have reached MLflow before. A metric point whose first attempt failed may
    have been stored all the same (the server died before it answered), so it is looked up first:
    re-sent, it would be a second point in the metric's history.
    """
    from mlflow.entities import Metric, Param, RunTag

    run_id, op = entry["run"], entry["op"]
    if op == "metrics":
        points = [Metric(k, v, ts, step) for k, v, ts, step in entry["metrics"]]
        if have is not None:
            for m in points:
                if (run_id, m.key) not in have:
                    have[run_id, m.key] = {
                        (h.step, h.timestamp) for h in client.get_metric_history(run_id, m.key)
                    }
            points = [m for m in points if (m.step, m.timestamp) not in have[run_id, m.key]]
        if not points:
            return "present"
        client.log_batch(run_id, metrics=points)
        if have is not None:
            for m in points:
                have[run_id, m.key].add((m.step, m.timestamp))
    elif op == "params":
        items = [Param(k, v) for k, v in entry["params"].items()]  # a same value again is a no-op
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            client.log_batch(run_id, params=items[i : i + 100])
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in entry["tags"].items()])
    elif op == "artifact":
        path = Path(entry["path"])
        if not path.exists():
            raise FileNotFoundError(f"{path} is gone")
        if path.is_dir():  # the same file again replaces it
            client.log_artifacts(run_id, str(path), entry["artifact_path"])
        else:
            client.log_artifact(run_id, str(path), entry["artifact_path"])
    elif op == "status":
        client.set_terminated(run_id, status=entry["status"])
    else:
        raise ValueError(f"outbox entry of unknown kind {op!r}")
    return "sent"


class Outbox:
    """What MLflow did not take yet, kept on disk in order: JSON lines, appended and flushed to disk
    (:func:`gmptl.files.append_line`).

    An entry is ``{"n", "run", "op", ...}`` (``op``: metrics, params, tags, artifact, status); it is done
    when a later line ``{"done": n, "how": ...}`` says so: sent, present (MLflow had it), dropped
    (MLflow refused it) or superseded (a status that a rerun replaces). Nothing is rewritten, so a kill
    leaves at most a torn last line, which is skipped and counted. Done lines are written after MLflow
    answered: a kill between the two sends that entry again, and :func:`_send` looks metric points up
    first. One process writes at a time: the driver before and after a stage's fit, rank 0 during it,
    and :mod:`gmptl.locks` keeps two runs of one stage apart. The tracking URI is not stored (the run id
    is): the next run gives its own.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.error: Exception | None = None  # why the last flush stopped
        self._warned = self._torn_warned = False

    def _scan(self) -> tuple[list[dict[str, Any]], set[int], int]:
        """(every entry in order of writing, the numbers of those done, lines that do not parse)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], set(), 0
        entries: list[dict[str, Any]] = []
        done: set[int] = set()
        torn = 0
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if "done" in rec:
                    done.add(int(rec["done"]))
                else:
                    entries.append(rec | {"n": int(rec["n"])})
            except (ValueError, KeyError, TypeError):
                torn += 1  # a kill mid-append (files.append_line): the line never was a whole entry
        return entries, done, torn

    def read(self) -> tuple[list[dict[str, Any]], int]:
        """(entries not done yet, in order; lines that do not parse, e.g. one torn by a kill)."""
        entries, done, torn = self._scan()
        return [e for e in entries if e["n"] not in done], torn

    def counts(self) -> dict[str, int]:
        """``entries`` and ``metric_points`` kept here (done or not), ``waiting`` entries, ``torn`` lines."""
        entries, done, torn = self._scan()
        return {
            "entries": len(entries),
            "metric_points": sum(len(e.get("metrics", ())) for e in entries),
            "waiting": sum(e["n"] not in done for e in entries),
            "torn": torn,
        }

    def put(self, entry: dict[str, Any]) -> None:
        """Append ``entry`` (run, op and its fields) behind what is there, numbered."""
        entries, _, _ = self._scan()
        files.append_line(
            self.path, json.dumps({"n": max((e["n"] for e in entries), default=0) + 1, **entry})
        )

    def add(self, entry: dict[str, Any], error: Exception | None) -> None:
        """Keep ``entry``, which MLflow did not take (``error``); the first in this process is logged as a
        warning, the rest at debug level (the stage's end counts them)."""
        self.put(entry)
        what = _describe(entry)
        if not self._warned:
            self._warned = True
            log.warning("MLflow did not take %s (%s); it waits in %s with what follows, sent when MLflow answers",
                        what, error, self.path)  # fmt: skip
        else:
            log.debug("MLflow: %s waits in %s", what, self.path)

    def _done(self, entry: dict[str, Any], how: str) -> None:
        files.append_line(self.path, json.dumps({"done": entry["n"], "how": how}))

    def flush(self, uri: str, supersede_status: bool = False) -> bool:
        """Send what waits, in order, until MLflow fails; True when nothing waits any more.

        ``supersede_status``: a rerun of the stage is starting, and will end the run itself: a final
        status an earlier attempt could not send is not sent (it would end the run while it trains).
        An entry MLflow refuses (:func:`_refused`: the run is gone, the value is invalid) is dropped with
        a warning; any other error stops the flush and the entry waits.
        """
        pending, torn = self.read()
        if torn and not self._torn_warned:
            self._torn_warned = True
            log.warning("%s: %d line(s) do not parse (a write cut short by a kill); skipped", self.path, torn)
        if not pending:
            return True
        if supersede_status:
            for e in [e for e in pending if e["op"] == "status"]:
                log.info("MLflow: %s from an earlier attempt is superseded by this one", _describe(e))
                self._done(e, "superseded")
            pending = [e for e in pending if e["op"] != "status"]
        client = _client(uri)
        have: Seen = {}
        sent = points = 0
        for e in pending:
            try:
                how = _send(client, e, have)
            except Exception as err:  # noqa: BLE001 - MLflow raises many types (HTTP, database, OS)
                if not _refused(err):
                    log.debug("MLflow: flushing %s stopped at %s (%s)", self.path, _describe(e), err)
                    self.error = err
                    return False
                log.warning("MLflow refused %s from %s (%s); dropped", _describe(e), self.path, err)
                how = "dropped"
            self._done(e, how)
            sent += how != "dropped"
            points += len(e.get("metrics", ())) if how == "sent" else 0
        log.debug("MLflow: sent %d entries (%d metric points) that waited in %s", sent, points, self.path)
        return True

    def send_or_keep(self, uri: str, later: str) -> bool:
        """Send what waits and remove the file; or warn how much still waits, and that it is sent ``later``
        ("when this stage runs again"). True when everything went."""
        if self.flush(uri):
            self.clear()
            return True
        log.warning("MLflow at %s did not answer: %d entries wait in %s; they are sent %s (until then the run "
                    "reads RUNNING)", redact_uri(uri), self.counts()["waiting"], self.path, later)  # fmt: skip
        return False

    def settle(self, uri: str) -> bool:
        """Before a rerun continues a run: send what an earlier attempt left, except the end it could not
        send (the rerun ends the run itself). An unreachable server leaves everything for later."""
        if not self.flush(uri, supersede_status=True):  # True at once when nothing waits
            return False
        self.path.unlink(missing_ok=True)
        return True

    def clear(self) -> None:
        """Remove the file once nothing waits (its counts go with it)."""
        if self.read()[0]:
            raise RuntimeError(f"{self.path}: entries still wait; flush it first")
        self.path.unlink(missing_ok=True)


class Run:
    """One MLflow run, addressed by id; safe to construct in any process.

    With an ``outbox``, nothing MLflow fails to take raises: it waits in the outbox, and every later call
    sends what waits first. Without one, MLflow's errors reach the caller.
    """

    def __init__(self, uri: str, run_id: str, outbox: Outbox | None = None):
        self.uri = uri
        self.run_id = run_id
        self.outbox = outbox

    def with_outbox(self, path: str | Path) -> Run:
        """This run, logging through the outbox at ``path``."""
        return Run(self.uri, self.run_id, Outbox(path))

    @classmethod
    def open(
        cls,
        tracking: TrackingConfig,
        uri: str,
        run_key: str,
        run_name: str,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        parent: Run | None = None,
    ) -> Run:
        """Continue the run tagged ``run_key`` if one exists, else create it (with params and tags)."""
        client = _client(uri)
        exp = experiment_id(uri, tracking.experiment)
        found = client.search_runs([exp], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1)
        if found:
            run = cls(uri, found[0].info.run_id)
            client.update_run(run.run_id, status="RUNNING")
            log.info("mlflow: continuing run %s (%s)", run_name, run.run_id)
            return run
        all_tags = {RUN_KEY_TAG: run_key, **{k: safe_value(v, k) for k, v in (tags or {}).items()}}
        if parent is not None:
            all_tags[PARENT_TAG] = parent.run_id
        info = client.create_run(exp, run_name=run_name, tags=all_tags)
        run = cls(uri, info.info.run_id)
        if params:
            run.log_params(params)
        return run

    def _deliver(self, entry: dict[str, Any]) -> None:
        """Send ``entry``; with an outbox, after what waits there, and into it when MLflow fails."""
        entry = {"run": self.run_id, **entry}
        if self.outbox is None:
            _send(_client(self.uri), entry, None)
            return
        if not self.outbox.flush(self.uri):  # True at once when nothing waits
            self.outbox.add(entry, self.outbox.error)  # behind what waits: MLflow gets everything in order
            return
        try:
            _send(_client(self.uri), entry, None)
        except Exception as e:  # noqa: BLE001 - MLflow raises many types (HTTP, database, OS)
            if _refused(e):
                log.warning("MLflow refused %s (%s); dropped", _describe(entry), e)
            else:
                self.outbox.add(entry, e)

    def defer(self, *entries: dict[str, Any]) -> None:
        """Put ``entries`` (:meth:`artifact_entry`, :meth:`tags_entry`, :meth:`status_entry`) in the outbox
        unsent: whoever sends several things at once writes them all first, so a kill part-way leaves the
        rest to the rerun."""
        assert self.outbox is not None, "defer needs a run with an outbox"
        for e in entries:
            self.outbox.put({"run": self.run_id, **e})

    def log_params(self, params: dict[str, Any]) -> None:
        flat = flatten(params)  # credentials redacted by flatten; and again here, whoever changes flatten
        self._deliver({"op": "params", "params": {k: v if credential_kind(v, k) is None else REDACTED
                                                  for k, v in flat.items()}})  # fmt: skip

    @staticmethod
    def metrics_entry(values: dict[str, float], step: int) -> dict[str, Any]:
        """The outbox entry of ``values`` at ``step``, stamped now (a point sent later keeps this time); NaN
        values are left out."""
        now = int(time.time() * 1000)
        return {
            "op": "metrics",
            "metrics": [[k, float(v), now, int(step)] for k, v in values.items() if v == v],
        }

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        self._deliver(self.metrics_entry(values, step))

    @staticmethod
    def artifact_entry(path: str | Path, artifact_path: str | None = None) -> dict[str, Any]:
        """The outbox entry of a file or folder to log (by absolute path: it is read when sent)."""
        return {"op": "artifact", "path": str(Path(path).absolute()), "artifact_path": artifact_path}

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._deliver(self.artifact_entry(path, artifact_path))

    def log_manifest(self, manifest: Path, n_rows: int, digest: str, context: str) -> None:
        """The corpus manifest as the run's dataset input (MLflow's "Datasets used" column)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(
            name=f"manifest {digest[:8]}",
            digest=digest[:20],
            source_type="local",
            source=json.dumps({"uri": str(manifest)}),
            profile=json.dumps({"num_rows": n_rows}),
        )
        _client(self.uri).log_inputs(
            self.run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])]
        )

    @staticmethod
    def tags_entry(tags: dict[str, str]) -> dict[str, Any]:
        """The outbox entry of tags (values that look like credentials redacted)."""
        return {"op": "tags", "tags": {k: safe_value(v, k) for k, v in tags.items()}}

    def set_tags(self, tags: dict[str, str]) -> None:
        self._deliver(self.tags_entry(tags))

    @staticmethod
    def status_entry(status: str) -> dict[str, Any]:
        """The outbox entry of a run's end."""
        return {"op": "status", "status": status}

    def finish(self, status: str = "FINISHED") -> None:
        self._deliver(self.status_entry(status))
