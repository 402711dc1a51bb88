"""MLflow, and only here: runs, parameters, per-epoch metrics, artifacts.

Everything goes through an explicit ``MlflowClient(tracking_uri)``: no process-wide
``mlflow.set_tracking_uri`` state, so a Ray worker logs to exactly the store the
driver chose (Ray's MLflow integration has been seen to ignore the URI). Called
from the driver and from rank 0 only.

Runs are found again by a ``gmptl.run_key`` tag (stage, fold, config hash): a
restarted training run continues the same MLflow run instead of opening a new one.
Experiments are created with a retry, because two processes creating the same
experiment on a new SQLite store race ("table already exists").
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gmptl.config import Config, TrackingConfig
from gmptl.errors import GmptlError

log = logging.getLogger(__name__)

RUN_KEY_TAG = "gmptl.run_key"
PARENT_TAG = "mlflow.parentRunId"


class TrackingError(GmptlError):
    """The MLflow store cannot be used (unreachable server, bad URI)."""


def resolve_uri(cfg: Config) -> str:
    """``tracking.uri``, or the embedded default ``sqlite:///<output_dir>/mlflow.db`` (absolute)."""
    from gmptl.config import absolute, local_path
    from gmptl.paths import output_dir

    split = local_path("tracking.uri", cfg.tracking.uri)
    if split is not None:
        return split[0] + absolute(split[1])
    if cfg.tracking.uri:
        return cfg.tracking.uri
    return f"sqlite:///{output_dir(cfg) / 'mlflow.db'}"


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail before any training starts when the store cannot be used."""
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


def experiment_id(uri: str, name: str) -> str:
    """The id of experiment ``name`` (created, marked as model training, if it does not exist)."""
    client = _client(uri)
    for attempt in range(5):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if EXPERIMENT_KIND_TAG not in exp.tags:
                client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        artifacts = None
        if uri.startswith("sqlite:///"):
            # Next to the database, not MLflow's CWD-relative default.
            artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        try:
            return client.create_experiment(name, artifact_location=artifacts)
        except Exception as e:  # noqa: BLE001 - a concurrent creator won the race; read theirs
            log.debug("create_experiment %s raced (%s), retrying", name, e)
            time.sleep(0.2 * (attempt + 1))
    raise TrackingError(f"could not create or find MLflow experiment {name!r} at {uri}")


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
    base = uri if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id(uri, experiment)}?workflowType=machine_learning"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys -> string values (MLflow parameters), e.g. ``stages.gmp.lr``."""
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, key + ".")
        else:
            out[key] = str(v)[:6000]
    return out


class Run:
    """One MLflow run, addressed by id; safe to construct in any process."""

    def __init__(self, uri: str, run_id: str):
        self.uri = uri
        self.run_id = run_id

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
        all_tags = {RUN_KEY_TAG: run_key, **(tags or {})}
        if parent is not None:
            all_tags[PARENT_TAG] = parent.run_id
        info = client.create_run(exp, run_name=run_name, tags=all_tags)
        run = cls(uri, info.info.run_id)
        if params:
            run.log_params(params)
        return run

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(k, v) for k, v in flat.items()]
        client = _client(self.uri)
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, step) for k, v in values.items() if v == v]  # drop NaN
        _client(self.uri).log_batch(self.run_id, metrics=ms)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        p = Path(path)
        client = _client(self.uri)
        if p.is_dir():
            client.log_artifacts(self.run_id, str(p), artifact_path)
        else:
            client.log_artifact(self.run_id, str(p), artifact_path)

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

    def set_tags(self, tags: dict[str, str]) -> None:
        client = _client(self.uri)
        for k, v in tags.items():
            client.set_tag(self.run_id, k, v)

    def finish(self, status: str = "FINISHED") -> None:
        _client(self.uri).set_terminated(self.run_id, status=status)
