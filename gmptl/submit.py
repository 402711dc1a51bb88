"""Job submission, what travels: the working_dir of a ``gmptl submit`` job and the config it runs.

``gmptl submit CONFIG --address http://HEAD:8265 [--set k=v ...] [--mode run|tune] [-- ARGS]``
builds a small working_dir (this module) and submits ``python -m gmptl.cli <mode> gmptl_job/<config>.yaml
ARGS`` through the Ray Jobs API (:mod:`gmptl.submit_client`, which also follows the job to its end);
the commands ``gmptl submit`` and ``gmptl jobs`` are in :mod:`gmptl.cli.jobs`.

What travels (the working_dir, a fresh temporary folder, never the repository itself) is an
allow-list of what a job reads (:data:`STAGED_DIRS`): the ``.py`` files of ``gmptl/``, the YAML of
``jobs/`` and ``tune_spaces/`` (and its README), ``pyproject.toml``, and ``gmptl_job/<config>.yaml``:
the config resolved here with its ``--set`` overrides and ``runtime.address=auto`` (the job joins the
cluster it runs on), plus ``<config>.ablations.yaml`` when one sits beside the config and any YAML or
JSON file named in ARGS (``--space FILE``), rewritten to its path in the working_dir. Everything else
is left behind, counted and reported by reason: data and model files, caches and output folders,
secret-looking names (``.env``, keys, credentials), hidden files, symlinks, other file types and
files over ``MAX_FILE_MB``.

Every file that would travel is also read: a private key, an AWS access key id, a GitHub, Hugging
Face or Slack token, a password in a URL, or a ``password:``/``token:`` literal in YAML stops the
submission with a :class:`SubmitError` naming each file and line, never the secret
(:func:`find_secrets`). A ``tracking.uri`` with credentials is refused before anything is written
(:func:`gmptl.tracking.check_uri`).

Paths in the config must mean the same on every node: ``output_dir`` (and ``data.root``,
``runtime.storage_path``, a ``sqlite:///`` tracking.uri, a local ``model.backbone`` folder) must be
absolute, on storage the cluster shares; a relative one is a config error naming the key.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import re
import shlex
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gmptl.config import PRESETS, Config, non_absolute_paths, save_config
from gmptl.errors import ConfigError, GmptlError
from gmptl.tracking import CREDENTIAL_PATTERNS, SECRET_KEY_NAME, check_uri

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- what travels

# The allow-list: each staged folder of the source with the file types a job reads from it (anything
# else, audio, Parquet, CSV, archives, models, notes, stays behind).
STAGED_DIRS: dict[str, tuple[str, ...]] = {
    "gmptl": (".py",),  # the package: its code
    "jobs": (".yaml", ".yml"),  # configs and their ablations files
    "tune_spaces": (".yaml", ".yml", ".md"),  # search spaces, and the README that documents them
}
STAGED_FILES: dict[str, tuple[str, ...]] = {"pyproject.toml": (".toml",)}
ARG_FILE_SUFFIXES = (".yaml", ".yml", ".json")  # files named in ARGS: --space, --ablations-file
JOB_DIR = "gmptl_job"  # inside the working_dir: the resolved config and any input files of ARGS
# The job runs `python -m gmptl.cli` (build_entrypoint): the source must hold that module.
ENTRYPOINT_MODULES = ("gmptl/cli/__main__.py", "gmptl/cli.py")
# Every file type any staged entry may have (exclusion_reason's default).
CODE_SUFFIXES = frozenset().union(*STAGED_DIRS.values(), *STAGED_FILES.values(), ARG_FILE_SUFFIXES)
MAX_FILE_MB = 5.0
MAX_TOTAL_MB = 50.0  # Ray's own limit is 512 MiB; gmptl's code is well under 1 MB
SKIP_DIRS = frozenset({"__pycache__", "mlruns", "mlartifacts", "ray_results", "checkpoints", "out", "outputs",
                       "wandb", "lightning_logs", "node_modules", "synthetic_corpus"})  # fmt: skip
SECRET_PATTERNS = (".env", ".env.*", "*.env", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore",
                   "*.kdbx", "credentials*", "*credentials*.json", "*secret*", "id_rsa*", "id_dsa*",
                   "id_ecdsa*", "id_ed25519*", ".netrc", ".pypirc", ".git-credentials", "auth_token",
                   "*api_key*", "*api-key*", "*apikey*", "*_token*", "*-token*", "token", "token.*",
                   "*password*", "*passwd*", "service_account*", "service-account*", "*_key.json", "*-key.json",
                   "kubeconfig*")  # fmt: skip
DATA_PATTERNS = ("*.wav", "*.flac", "*.mp3", "*.ogg", "*.opus", "*.m4a", "*.sph", "*.parquet", "*.arrow",
                 "*.feather", "*.npy", "*.npz", "*.h5", "*.hdf5", "*.csv", "*.tsv", "*.jsonl", "*.pt",
                 "*.pth", "*.ckpt", "*.bin", "*.safetensors", "*.onnx", "*.pkl", "*.pickle", "*.joblib",
                 "*.db", "*.sqlite", "*.sqlite3", "*.zip", "*.tar", "*.gz", "*.tgz", "*.xz")  # fmt: skip
CACHE_PATTERNS = ("*.pyc", "*.pyo", "*.so", "*.egg-info")


class SubmitError(GmptlError):
    """The cluster, the job server or a job cannot be used as asked; the message says how to fix it."""


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name.lower(), p) for p in patterns)


def exclusion_reason(
    path: Path, max_file_mb: float = MAX_FILE_MB, allowed: tuple[str, ...] | frozenset[str] = CODE_SUFFIXES
) -> str | None:
    """Why a file must not be shipped (None: it may go): only the suffixes ``allowed`` travel. Checked in
    this order: a secret is always reported as a secret, even when it is also hidden or large."""
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
    if path.suffix.lower() not in allowed:
        return "not code/config"
    if path.stat().st_size > max_file_mb * 1024**2:
        return f"over {max_file_mb:g} MB"
    return None


# ----------------------------------------------------------------------------- secrets in what travels

# A YAML mapping line `key: value` (also as a list item `- key: value`).
_YAML_KEY_LINE = re.compile(
    r"""^\s*(?:-\s+)?["']?(?P<key>[^\s"':#][^"':#]*?)["']?\s*:(?:\s+(?P<value>.*?))?\s*$"""
)
_YAML_NOT_LITERAL = re.compile(
    r"""(?ix)^(?: |null|~|true|false|yes|no|on|off|[-+]?[0-9._]+(?:e[-+]?[0-9]+)?|""|''
    |\$\{[A-Za-z_][A-Za-z0-9_]*\}|\$[A-Za-z_][A-Za-z0-9_]*|[\[{&*].*)$"""
)  # empty, null, a bool or number, a $ENV reference, a flow collection, an anchor or alias: no literal


def _yaml_literal_secret(line: str) -> str | None:
    """``password: hunter2``-style lines: a key naming a secret bound to a literal value (its name only)."""
    m = _YAML_KEY_LINE.match(line)
    if m is None or not SECRET_KEY_NAME.search(m["key"].strip()):
        return None
    value = re.sub(r"\s+#.*$", "", m["value"] or "").strip()
    value = re.sub(r"^&\S+\s*", "", value)  # an anchor names the value that follows it
    if _YAML_NOT_LITERAL.match(value):
        return None
    return f"a literal value for {m['key'].strip()!r}"


def find_secrets(text: str, yaml_file: bool = False) -> list[tuple[int, str]]:
    """(1-based line, what) of every credential in ``text``: :data:`gmptl.tracking.CREDENTIAL_PATTERNS`
    and, in YAML, a key naming a secret (``password``, ``token``, ``api_key``...) with a literal value.
    What is found is named, never quoted."""
    hits = []
    for n, line in enumerate(text.splitlines(), 1):
        found = [what for what, rx in CREDENTIAL_PATTERNS.items() if rx.search(line)]
        if yaml_file and not line.lstrip().startswith("#") and (what := _yaml_literal_secret(line)):
            found.append(what)
        hits += [(n, what) for what in found]
    return hits


def _scan(src: Path, shown: str, note: str = "") -> list[str]:
    """``shown:line: what`` for each credential in the file ``src`` (read whole: staged files are small)."""
    text = src.read_bytes().decode("utf-8", errors="replace")
    yaml_file = src.suffix.lower() in (".yaml", ".yml")
    return [f"{shown}:{n}: {what}{note}" for n, what in find_secrets(text, yaml_file)]


def refuse_secrets(hits: list[str]) -> None:
    """A SubmitError listing where credentials were found, and how to keep them out of the working_dir."""
    if not hits:
        return
    more = f"\n  ... and {len(hits) - 20} more" if len(hits) > 20 else ""
    raise SubmitError(
        "cannot submit: these files would be shipped to the cluster with credentials in them:\n  "
        + "\n  ".join(hits[:20])
        + more
        + "\nRemove them from the files: give credentials to the cluster through its environment or "
        "secret store (MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD for MLflow, RAY_AUTH_TOKEN for Ray, "
        "the nodes' cloud role for S3; cluster/README.md) and refer to them by name (`${VAR}` in YAML), "
        "or move the file out of the folders that travel (gmptl/, jobs/, tune_spaces/)"
    )


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
    secrets: list[str] = field(default_factory=list)  # "file:line: what" of each credential found

    def summary(self) -> str:
        counts = Counter(reason for _, reason in self.excluded)
        left = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())) or "nothing"
        return f"working_dir: {len(self.files)} files, {self.total_bytes / 1024:.1f} KB (left out: {left})"


def _copy_tree(
    src: Path, dst_root: Path, rel: Path, staging: Staging, max_file_mb: float, allowed: tuple[str, ...]
) -> None:
    for entry in sorted(src.iterdir()):
        rel_entry = rel / entry.name
        if entry.is_dir() and not entry.is_symlink():
            if (reason := _skip_dir(entry)) is not None:
                staging.excluded.append((rel_entry.as_posix() + "/", reason))
            else:
                _copy_tree(entry, dst_root, rel_entry, staging, max_file_mb, allowed)
            continue
        if (reason := exclusion_reason(entry, max_file_mb, allowed)) is not None:
            staging.excluded.append((rel_entry.as_posix(), reason))
            continue
        _add_file(entry, dst_root, rel_entry, staging)


def _add_file(src: Path, dst_root: Path, rel: Path, staging: Staging) -> None:
    """Copy one file into the working_dir, after reading it for credentials (collected in ``staging.secrets``)."""
    staging.secrets += _scan(src, str(src))
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
    check_uri(cfg.tracking.uri)  # before anything is written: the config travels as a file
    if not any((source / rel).is_file() for rel in ENTRYPOINT_MODULES):
        raise SubmitError(
            f"--source {source}: no gmptl/cli.py or gmptl/cli/__main__.py there; pass the folder that holds "
            "the gmptl package (the repository root)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    config_rel = f"{JOB_DIR}/{config_name}"
    staging = Staging(root=dest, config=config_rel)
    for name, allowed in STAGED_DIRS.items():
        if (source / name).is_dir():
            _copy_tree(source / name, dest, Path(name), staging, max_file_mb, allowed)
    for name, allowed in STAGED_FILES.items():
        p = source / name
        if not p.exists() and not p.is_symlink():
            continue
        reason = exclusion_reason(p, max_file_mb, allowed) if p.is_file() or p.is_symlink() else "not a file"
        if reason is None:
            _add_file(p, dest, Path(name), staging)
        else:
            staging.excluded.append((name, reason))
    save_config(cfg, dest / config_rel)
    staging.files.append(config_rel)
    staging.total_bytes += (dest / config_rel).stat().st_size
    staging.secrets += _scan(
        dest / config_rel, config_rel, " (the resolved config: CONFIG and its --set overrides)"
    )
    refuse_secrets(staging.secrets)
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
        if (reason := exclusion_reason(p, allowed=ARG_FILE_SUFFIXES)) is not None:
            raise SubmitError(
                f"argument {arg!r}: {p} is not shipped to the cluster ({reason}); files named in ARGS travel "
                f"when they are {'/'.join(ARG_FILE_SUFFIXES)} and not secrets"
            )
        refuse_secrets(_scan(p, str(p)))
        rel_path = Path(JOB_DIR) / "inputs" / f"{len(staging.files)}_{p.name}"
        _add_file(p, staging.root, rel_path, staging)
        out.append(prefix + rel_path.as_posix())
    return out


def stage_ablations_file(config_file: str | Path, staging: Staging) -> None:
    """`gmptl run --ablations` reads <config>.ablations.yaml beside the config: it travels beside it too."""
    ablations = Path(config_file).with_name(Path(config_file).stem + ".ablations.yaml")
    if ablations.is_file() and exclusion_reason(ablations, allowed=(".yaml",)) is None:
        refuse_secrets(_scan(ablations, str(ablations)))
        _add_file(ablations, staging.root, Path(JOB_DIR) / ablations.name, staging)


# ----------------------------------------------------------------------------- the job's config


def _is_abs(path: str) -> bool:
    return Path(path).is_absolute()


def check_cluster_paths(cfg: Config) -> None:
    """Every path the job writes or reads must name the same place on every node (absolute, shared).

    Raises:
        ConfigError: naming each relative key and the override that fixes it.
    """
    why = "the job runs in a temporary working_dir on the cluster that is deleted when it ends"
    fixes = {
        "output_dir": f"{why}; set it to a folder on storage every node shares, e.g. --set output_dir=/shared/gmptl/demo",
        "data.root": "--set data.root=/shared/path/to/corpus",
        "runtime.storage_path": "use an absolute shared path or s3://...",
        "tracking.uri": "use sqlite:////shared/path/mlflow.db, an http(s):// MLflow server, or leave it unset "
        "(<output_dir>/mlflow.db)",
    }
    problems = [
        f"{key}={value!r} is relative ({fixes[key]})"
        for key, value in non_absolute_paths(cfg).items()
        if (key != "tracking.uri" or cfg.tracking.enabled) and key != "model.backbone"  # checked below
    ]
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
