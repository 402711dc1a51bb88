"""cluster/: the launcher YAMLs, the KubeRay manifests and the Dockerfile hold what a GPU cluster needs.

Nothing here starts a cluster: every file is parsed and checked for the fields that, when
missing or inconsistent, only show up after minutes of `ray up` / `kubectl apply` (or never:
a worker without the shared volume writes its checkpoints where no one reads them). Each check
is a function returning the problems it finds; the last tests feed it broken copies to show
that it does find them.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHERS = {"aws": CLUSTER / "aws.yaml", "gcp": CLUSTER / "gcp.yaml"}
KUBERAY = CLUSTER / "kuberay"
DOCKERFILE = CLUSTER / "Dockerfile"
SHARED = "/mnt/shared"
# What the image may contain: code, configs and the two files `pip install .` needs.
IMAGE_SOURCES = {"pyproject.toml", "README.md", "gmptl", "jobs", "tune_spaces"}
AWS_GPU_FAMILY = re.compile(r"^(g4dn|g5|g6|g6e|gr6|p3|p3dn|p4d|p4de|p5|p5e|p5en|p6)\.")


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def installed_ray_minor() -> str:
    return ".".join(importlib.metadata.version("ray").split(".")[:2])


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def torch_pin() -> str:
    pins = [d for d in pyproject()["project"]["dependencies"] if re.match(r"torch\s*==", d)]
    assert len(pins) == 1, f"pyproject.toml should pin torch exactly once, found {pins}"
    return pins[0].split("==", 1)[1].strip()


def readme_image() -> str:
    """The image name cluster/README.md documents (the bold one in its first section)."""
    m = re.search(r"\*\*`([^`\s]+:[^`\s]+)`\*\*", (CLUSTER / "README.md").read_text())
    assert m, "cluster/README.md should name the image as **`registry/name:tag`**"
    return m.group(1)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        op, _, args = pending.partition(" ")
        out.append((op.upper(), args.strip()))
        pending = ""
    return out


def test_every_cluster_yaml_parses_and_is_a_launcher_config_or_kubernetes_objects():
    yamls = sorted(CLUSTER.rglob("*.y*ml"))
    assert set(LAUNCHERS.values()) | {KUBERAY / "raycluster.yaml", KUBERAY / "rayjob.yaml"} <= set(yamls)
    for path in yamls:
        docs = load_all(path)
        assert docs, f"{path} is empty"
        if path in LAUNCHERS.values():
            continue
        for d in docs:
            assert d.get("apiVersion") and d.get("kind"), f"{path}: a document without apiVersion/kind"
            if d["kind"] in ("RayCluster", "RayJob", "RayService"):
                assert d["apiVersion"] == "ray.io/v1", f"{path}: {d['kind']} is {d['apiVersion']}"


# ---------------------------------------------------------------- launcher YAMLs


def launcher_problems(cfg: dict[str, Any], provider: str, image: str) -> list[str]:
    problems: list[str] = []
    if not cfg.get("cluster_name"):
        problems.append("cluster_name is empty")
    if cfg.get("provider", {}).get("type") != provider:
        problems.append(f"provider.type is {cfg.get('provider', {}).get('type')!r}, expected {provider!r}")
    types = cfg.get("available_node_types") or {}
    head = cfg.get("head_node_type")
    if head not in types:
        problems.append(f"head_node_type {head!r} is not in available_node_types {sorted(types)}")
    elif types[head].get("resources", {}).get("GPU", 0):
        problems.append(f"the head {head!r} asks for GPUs: it should be a CPU node")
    cluster_max = cfg.get("max_workers", 0)
    gpu_types = []
    for name, t in types.items():
        lo, hi = t.get("min_workers", 0), t.get("max_workers", 0)
        if name != head and not 0 <= lo <= hi <= cluster_max:
            problems.append(
                f"{name}: need 0 <= min_workers {lo} <= max_workers {hi} <= max_workers {cluster_max}"
            )
        if name == head or t.get("resources", {}).get("GPU", 0) <= 0:
            continue
        gpu_types.append(name)
        nc = t.get("node_config", {})
        if provider == "aws" and not AWS_GPU_FAMILY.match(nc.get("InstanceType", "")):
            problems.append(f"{name}: InstanceType {nc.get('InstanceType')!r} is not a GPU instance family")
        if provider == "gcp":
            accs = nc.get("guestAccelerators") or []
            if sum(a.get("acceleratorCount", 0) for a in accs) != t["resources"]["GPU"]:
                problems.append(f"{name}: guestAccelerators {accs} do not provide resources.GPU")
            if (nc.get("scheduling") or {}).get("onHostMaintenance") != "TERMINATE":
                problems.append(f"{name}: GPU VMs need scheduling.onHostMaintenance: TERMINATE")
        if "--gpus all" not in (t.get("docker") or {}).get("worker_run_options", []):
            problems.append(f"{name}: its container gets no GPU (docker.worker_run_options lacks --gpus all)")
    if not gpu_types:
        problems.append("no GPU worker type (a worker type with resources.GPU > 0)")
    docker = cfg.get("docker") or {}
    if docker.get("image") != image:
        problems.append(f"docker.image is {docker.get('image')!r}, cluster/README.md documents {image!r}")
    if not docker.get("container_name"):
        problems.append("docker.container_name is empty")
    if f"-v {SHARED}:{SHARED}" not in docker.get("run_options", []):
        problems.append(f"the container does not bind-mount {SHARED}")
    # With docker, setup_commands run inside the container: the NFS mount belongs on the host.
    mounts = [
        c
        for c in cfg.get("initialization_commands", [])
        if re.search(rf"\bmount -t nfs4?\b.*\s{SHARED}\b", c)
    ]
    if not mounts:
        problems.append(f"no initialization command mounts an NFS share at {SHARED}")
    if not any("ray start --head" in c for c in cfg.get("head_start_ray_commands", [])):
        problems.append("head_start_ray_commands does not start a Ray head")
    if not any("--address=$RAY_HEAD_IP" in c for c in cfg.get("worker_start_ray_commands", [])):
        problems.append("worker_start_ray_commands does not join the head")
    return problems


@pytest.mark.parametrize("provider", sorted(LAUNCHERS))
def test_launcher_yaml_has_cpu_head_gpu_workers_image_and_shared_mount(provider):
    cfg = yaml.safe_load(LAUNCHERS[provider].read_text())
    assert launcher_problems(cfg, provider, readme_image()) == []


@pytest.mark.parametrize("provider", sorted(LAUNCHERS))
def test_launcher_yaml_matches_rays_own_schema(provider):
    jsonschema = pytest.importorskip("jsonschema")
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations
    schema_file = Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    jsonschema.validate(yaml.safe_load(LAUNCHERS[provider].read_text()), json.loads(schema_file.read_text()))


def test_efs_share_is_in_the_clusters_region():
    cfg = yaml.safe_load(LAUNCHERS["aws"].read_text())
    regions = {
        m for c in cfg["initialization_commands"] for m in re.findall(r"\.efs\.([a-z0-9-]+)\.amazonaws", c)
    }
    assert regions == {cfg["provider"]["region"]}


# ---------------------------------------------------------------- KubeRay


def shared_claims(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == "PersistentVolumeClaim"}


def pod_problems(where: str, pod: dict[str, Any], claims: dict[str, dict[str, Any]]) -> list[str]:
    """Every container of the pod mounts a ReadWriteMany claim of this file at /mnt/shared."""
    problems = []
    rwx = {
        v["name"]
        for v in pod.get("volumes", [])
        if (c := v.get("persistentVolumeClaim", {}).get("claimName")) in claims
        and "ReadWriteMany" in claims[c]["spec"].get("accessModes", [])
    }
    if not rwx:
        problems.append(f"{where}: no volume from a ReadWriteMany PersistentVolumeClaim of this file")
    for c in pod.get("containers", []):
        if not any(m["name"] in rwx and m["mountPath"] == SHARED for m in c.get("volumeMounts", [])):
            problems.append(f"{where}/{c.get('name')}: shared volume not mounted at {SHARED}")
    return problems


def raycluster_spec_problems(
    spec: dict[str, Any], claims: dict[str, dict[str, Any]], image: str
) -> list[str]:
    problems = []
    if ".".join(str(spec.get("rayVersion", "")).split(".")[:2]) != installed_ray_minor():
        problems.append(
            f"rayVersion {spec.get('rayVersion')!r} is not the installed Ray {installed_ray_minor()}"
        )
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append("enableInTreeAutoscaling is not true")
    head = spec.get("headGroupSpec")
    if not head:
        return [*problems, "no headGroupSpec"]
    if head.get("rayStartParams", {}).get("dashboard-host") != "0.0.0.0":
        problems.append(
            "head rayStartParams.dashboard-host is not 0.0.0.0 (the head Service could not reach it)"
        )
    pods = [("head", head["template"]["spec"])]
    gpu_groups = []
    for g in spec.get("workerGroupSpecs") or []:
        pods.append((f"worker group {g.get('groupName')}", g["template"]["spec"]))
        if not 0 <= g.get("minReplicas", 0) <= g.get("maxReplicas", 0):
            problems.append(f"worker group {g.get('groupName')}: minReplicas > maxReplicas")
        limits = g["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
        if int(limits.get("nvidia.com/gpu", 0)) > 0:
            gpu_groups.append(g.get("groupName"))
    if not gpu_groups:
        problems.append("no worker group with an nvidia.com/gpu limit")
    for where, pod in pods:
        problems += pod_problems(where, pod, claims)
        for c in pod.get("containers", []):
            if c.get("image") != image:
                problems.append(
                    f"{where}/{c.get('name')}: image {c.get('image')!r}, README documents {image!r}"
                )
    return problems


def test_raycluster_has_head_gpu_workers_and_the_shared_volume_everywhere():
    docs = load_all(KUBERAY / "raycluster.yaml")
    rc = by_kind(docs, "RayCluster")
    assert rc["apiVersion"] == "ray.io/v1"
    assert raycluster_spec_problems(rc["spec"], shared_claims(docs), readme_image()) == []


def test_rayjob_cluster_and_claim_are_the_rayclusters():
    """Two copies of one cluster shape: keep them equal so that a fix lands in both."""
    rc_docs, rj_docs = load_all(KUBERAY / "raycluster.yaml"), load_all(KUBERAY / "rayjob.yaml")
    rj = by_kind(rj_docs, "RayJob")
    assert rj["apiVersion"] == "ray.io/v1"
    assert rj["spec"]["rayClusterSpec"] == by_kind(rc_docs, "RayCluster")["spec"]
    assert shared_claims(rj_docs) == shared_claims(rc_docs) != {}
    assert (
        raycluster_spec_problems(rj["spec"]["rayClusterSpec"], shared_claims(rj_docs), readme_image()) == []
    )


def rayjob_problems(spec: dict[str, Any]) -> list[str]:
    problems = []
    entry = spec.get("entrypoint", "")
    if not entry.startswith("gmptl "):
        problems.append(f"entrypoint does not start with `gmptl `: {entry[:40]!r}")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("shutdownAfterJobFinishes is not true (the GPU cluster would outlive the job)")
    if not isinstance(spec.get("ttlSecondsAfterFinished"), int):
        problems.append("ttlSecondsAfterFinished is not an integer")
    try:
        env = yaml.safe_load(spec.get("runtimeEnvYAML", ""))
    except yaml.YAMLError as e:
        return [*problems, f"runtimeEnvYAML does not parse: {e}"]
    if not isinstance(env, dict):
        return [*problems, "runtimeEnvYAML is not a mapping"]
    wd = env.get("working_dir")
    if wd is not None:
        parts = set(Path(wd).parts)
        if str(wd).startswith(SHARED) or parts & {"data", "corpora", "out", "runs"}:
            problems.append(f"working_dir {wd!r} is a data folder: it is uploaded with every job")
        workdirs = [a for op, a in dockerfile_instructions() if op == "WORKDIR"]
        if workdirs and wd != workdirs[-1]:
            problems.append(f"working_dir {wd!r} is not the image's code folder {workdirs[-1]!r}")
    return problems


def test_rayjob_runs_gmptl_and_cleans_up():
    rj = by_kind(load_all(KUBERAY / "rayjob.yaml"), "RayJob")
    assert rayjob_problems(rj["spec"]) == []


def test_rayjob_entrypoint_is_a_valid_gmptl_run_on_shared_storage():
    """The entrypoint's config and overrides load (tracking URI stubbed) and write under /mnt/shared."""
    from gmptl.config import load_config

    rj = by_kind(load_all(KUBERAY / "rayjob.yaml"), "RayJob")
    argv = shlex.split(rj["spec"]["entrypoint"])
    assert argv[:2] == ["gmptl", "run"], argv[:2]
    config = Path(argv[2])
    assert config.parts[0] == "jobs" and (REPO / config).is_file(), f"{config} is not a config under jobs/"
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    # Kubernetes substitutes $(MLFLOW_TRACKING_URI) in the submitter pod from the Secret.
    assert "tracking.uri=$(MLFLOW_TRACKING_URI)" in overrides
    stubbed = [o.replace("$(MLFLOW_TRACKING_URI)", "http://mlflow.test:5000") for o in overrides]
    cfg = load_config(REPO / config, stubbed)
    assert cfg.output_dir.startswith(SHARED + "/")
    assert (cfg.runtime.storage_path or cfg.output_dir).startswith(SHARED + "/")
    submitter = rj["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    uri_env = {e["name"]: e for e in submitter.get("env", [])}["MLFLOW_TRACKING_URI"]
    assert "value" not in uri_env and uri_env["valueFrom"]["secretKeyRef"]["name"]


# ---------------------------------------------------------------- no secrets anywhere

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "password in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"),
    "AWS secret key setting": re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*\S"),
}
SECRET_NAME = re.compile(r"(?i)(passw(or)?d|secret|token|api[_-]?key|credential)")


def literal_secret_values(node: Any, path: str = "") -> list[str]:
    """Secret-looking names bound to literal strings: `password: x`, `{name: X_TOKEN, value: x}`."""
    found = []
    if isinstance(node, dict):
        name = node.get("name")
        if isinstance(name, str) and SECRET_NAME.search(name) and isinstance(node.get("value"), str):
            found.append(f"{path}: env {name} has a literal value")
        for k, v in node.items():
            # file_mounts maps a node path to a local path: a token file is copied, never written here
            if path == ".file_mounts":
                continue
            if isinstance(k, str) and SECRET_NAME.search(k) and isinstance(v, str | int) and v != "":
                found.append(f"{path}.{k} is a literal")
            found += literal_secret_values(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += literal_secret_values(v, f"{path}[{i}]")
    return found


def secret_problems(files: dict[str, str]) -> list[str]:
    problems = []
    for name, text in files.items():
        problems += [f"{name}: {what}" for what, rx in SECRET_PATTERNS.items() if rx.search(text)]
        if name.endswith((".yaml", ".yml")):
            for doc in yaml.safe_load_all(text):
                problems += [f"{name}: {p}" for p in literal_secret_values(doc)]
    return problems


def cluster_files() -> dict[str, str]:
    return {str(p.relative_to(REPO)): p.read_text() for p in sorted(CLUSTER.rglob("*")) if p.is_file()}


def test_no_literal_secrets_in_cluster_files():
    files = cluster_files()
    assert {"cluster/aws.yaml", "cluster/gcp.yaml", "cluster/kuberay/rayjob.yaml"} <= set(files)
    assert secret_problems(files) == []


# ---------------------------------------------------------------- Dockerfile and versions


def dockerfile_problems(instructions: list[tuple[str, str]]) -> list[str]:
    problems = []
    froms = [a for op, a in instructions if op == "FROM"]
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+)\.\d+-py3\d+-cu12\d", froms[-1] if froms else "")
    if not m:
        problems.append(f"FROM {froms} is not a rayproject/ray:<version>-py3x-cu12x image")
    elif m.group(1) != installed_ray_minor():
        problems.append(f"FROM {froms[-1]} is Ray {m.group(1)}, the installed Ray is {installed_ray_minor()}")
    for op, args in instructions:
        if op not in ("COPY", "ADD"):
            continue
        if op == "ADD":
            problems.append(f"ADD {args}: use COPY of code paths only")
            continue
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        for src in words[:-1]:
            if src.rstrip("/") not in IMAGE_SOURCES:
                problems.append(f"COPY {src}: only {sorted(IMAGE_SOURCES)} belong in the image")
    runs = " && ".join(a for op, a in instructions if op == "RUN")
    torch = re.search(r"torch==([0-9][^\"'\s]*)", runs)
    if not torch or torch.group(1) != torch_pin():
        problems.append(
            f"the image installs torch {torch and torch.group(1)}, pyproject.toml pins {torch_pin()}"
        )
    index = re.search(r"ARG TORCH_INDEX_URL=(\S+)", "\n".join(f"{op} {a}" for op, a in instructions))
    if not index or not re.search(r"/whl/cu12\d$", index.group(1)):
        problems.append("torch does not come from a CUDA 12 wheel index (TORCH_INDEX_URL .../whl/cu12x)")
    gpu_at = runs.find('".[gpu]"')
    cpu_out = runs.find("pip uninstall -y faiss-cpu")
    gpu_back = runs.find("--force-reinstall", cpu_out)
    if gpu_at < 0:
        problems.append('the image does not install ".[gpu]"')
    if not gpu_at < cpu_out < gpu_back or "faiss-gpu" not in runs[gpu_back:]:
        problems.append("faiss-cpu is not uninstalled after .[gpu] and faiss-gpu reinstalled after that")
    users = [a for op, a in instructions if op == "USER"]
    if not users or users[-1] in ("root", "0") or users[-1].startswith(("root:", "0:")):
        problems.append(f"the image runs as {users[-1] if users else 'root'}: set a non-root USER last")
    return problems


def test_dockerfile_copies_code_only_and_pins_cuda12_torch_and_faiss_gpu():
    assert dockerfile_problems(dockerfile_instructions()) == []


def test_image_tag_carries_the_package_version():
    name, _, tag = readme_image().rpartition(":")
    assert name and tag.startswith(pyproject()["project"]["version"] + "-cu12"), readme_image()


# ---------------------------------------------------------------- the checks catch breakage


def test_checks_fail_on_broken_manifests():
    image = readme_image()
    aws = yaml.safe_load(LAUNCHERS["aws"].read_text())
    no_gpu = copy.deepcopy(aws)
    no_gpu["available_node_types"] = {
        k: v for k, v in no_gpu["available_node_types"].items() if not v.get("resources", {}).get("GPU")
    }
    assert any("no GPU worker type" in p for p in launcher_problems(no_gpu, "aws", image))
    no_mount = copy.deepcopy(aws)
    no_mount["initialization_commands"] = [c for c in aws["initialization_commands"] if "mount -t" not in c]
    assert any("mounts an NFS share" in p for p in launcher_problems(no_mount, "aws", image))
    assert any("docker.image" in p for p in launcher_problems(aws, "aws", "other/image:1"))

    docs = load_all(KUBERAY / "raycluster.yaml")
    claims, spec = shared_claims(docs), by_kind(docs, "RayCluster")["spec"]
    no_workers = copy.deepcopy(spec)
    no_workers["workerGroupSpecs"] = []
    assert "no worker group with an nvidia.com/gpu limit" in raycluster_spec_problems(
        no_workers, claims, image
    )
    unmounted = copy.deepcopy(spec)
    unmounted["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["volumeMounts"] = []
    assert any("not mounted" in p for p in raycluster_spec_problems(unmounted, claims, image))

    job = by_kind(load_all(KUBERAY / "rayjob.yaml"), "RayJob")["spec"]
    bad_job = {**job, "entrypoint": "python run.py", "shutdownAfterJobFinishes": False}
    bad_job["runtimeEnvYAML"] = f"working_dir: {SHARED}/corpora"
    found = " | ".join(rayjob_problems(bad_job))
    for expected in ("does not start with `gmptl `", "shutdownAfterJobFinishes", "is a data folder"):
        assert expected in found

    leaky = {
        "x.yaml": "env:\n  - name: MLFLOW_TRACKING_PASSWORD\n    value: hunter2\n",
        "y.md": "uri: https://user:pw@mlflow.example.com key AKIAABCDEFGHIJKLMNOP",
    }
    found = " | ".join(secret_problems(leaky))
    for expected in (
        "env MLFLOW_TRACKING_PASSWORD has a literal value",
        "password in a URL",
        "AWS access key id",
    ):
        assert expected in found

    bad_docker = [
        ("FROM", "rayproject/ray:2.1.0-py311-cu121"),
        ("COPY", ". ."),
        ("RUN", "pip install torch==9.9 faiss-cpu"),
        ("USER", "root"),
    ]
    found = " | ".join(dockerfile_problems(bad_docker))
    for expected in (
        "is Ray 2.1",
        "COPY .:",
        "pyproject.toml pins",
        "CUDA 12 wheel index",
        '".[gpu]"',
        "non-root",
    ):
        assert expected in found


@pytest.mark.parametrize("provider", sorted(LAUNCHERS))
def test_launcher_clusters_require_rays_token(provider):
    """Every Ray process of a launched cluster, and its job drivers, run with RAY_AUTH_MODE=token and one token."""
    cfg = yaml.safe_load(LAUNCHERS[provider].read_text())
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token ray start" in c for c in starts if "ray start" in c)
    assert "-e RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    assert cfg["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}  # the same token on every node


def test_kuberay_clusters_require_rays_token():
    rc = by_kind(load_all(KUBERAY / "raycluster.yaml"), "RayCluster")
    rj = by_kind(load_all(KUBERAY / "rayjob.yaml"), "RayJob")
    assert rc["spec"]["authOptions"] == {"mode": "token"}
    assert rj["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}


def test_a_job_server_that_wants_the_token_says_how_to_pass_it():
    from gmptl.submit_client import TOKEN_HINT, _auth_hint

    class AuthenticationError(Exception):
        pass

    assert _auth_hint(AuthenticationError("Unauthorized: Missing authentication token")) == f"; {TOKEN_HINT}"
    assert _auth_hint(ConnectionError("refused")) == ""
