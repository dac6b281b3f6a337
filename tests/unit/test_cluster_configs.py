"""The cluster configs in ``cluster/``, checked offline: nothing is launched, no cloud is called.

- Autoscaler YAMLs pass Ray's own validator, ``ray.autoscaler._private.util.validate_config`` (the
  JSON schema ``ray/autoscaler/ray-schema.json`` plus Ray's cross-field checks), on the config as each
  consumer sees it: the AWS file after ``prepare_config`` (what ``ray up`` does before it first calls
  AWS), and both files as written (what the head's autoscaler reads from ``--autoscaling-config``).
- The AWS config's GPU worker types, its head started from the fixed project path, the fake
  multi-node config's fit to Ray's fake provider, the KubeRay manifests' required fields, and no secret
  anywhere under ``cluster/``.
- The MLflow credentials reach the head (where the sweep's driver runs) from outside the repository, a
  file on AWS and a Kubernetes Secret on KubeRay, and no worker: the AWS start commands are run in bash
  against a stand-in of the mounted folder.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.providers import _get_default_config
from ray.autoscaler._private.util import prepare_config, validate_config

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER = REPO_ROOT / "cluster"
AWS = CLUSTER / "aws-gpu.yaml"
FAKE = CLUSTER / "fake-multinode.yaml"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
PROJECT_PATH = "/home/ray/rdt"
MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def load_kind(path: Path, kind: str) -> dict:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    matching = [doc for doc in docs if doc.get("kind") == kind]
    assert len(matching) == 1, f"{path.name}: expected one {kind}, found {len(matching)}"
    return matching[0]


def command_with(commands: list[str], needle: str) -> str:
    found = [command for command in commands if needle in command]
    assert len(found) == 1, f"expected one command with {needle!r}, found {found}"
    return found[0]


# --- Ray's own validation -------------------------------------------------------------------------


@pytest.mark.parametrize("path", [AWS, FAKE], ids=lambda path: path.name)
def test_autoscaler_config_as_written_passes_rays_validator(path):
    # The head's autoscaler (v1) reads --autoscaling-config as it is and validates it with this.
    validate_config(copy.deepcopy(load(path)))


def test_aws_config_passes_ray_up_validation():
    # ray up: prepare_config (defaults, setup-command merging, docker checks, per-type max_workers),
    # then, after AWS fills in node resources, validate_config.
    prepared = prepare_config(copy.deepcopy(load(AWS)))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"


def test_aws_config_leaves_nothing_to_rays_defaults():
    # ray up fills missing top-level keys from Ray's AWS defaults, whose setup commands install a Ray
    # nightly over the image's Ray: every key of those defaults must be ours.
    raw = load(AWS)
    defaults = _get_default_config({"type": "aws"})
    assert set(defaults) <= set(raw), f"left to Ray's defaults: {sorted(set(defaults) - set(raw))}"


def test_validator_rejects_a_broken_config():
    # The validator really checks: an unknown top-level key and a fractional resource both fail.
    config = copy.deepcopy(load(FAKE))
    config["no_such_key"] = 1
    with pytest.raises(Exception, match="no_such_key"):
        validate_config(config)
    config = copy.deepcopy(load(FAKE))
    config["available_node_types"]["ray.worker.cpu"]["resources"]["CPU"] = 0.5
    with pytest.raises(Exception):
        validate_config(config)


# --- AWS ------------------------------------------------------------------------------------------


def test_aws_gpu_worker_types_declare_gpus():
    config = load(AWS)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU"), "trials must not land on the head"
    assert "InstanceMarketOptions" not in head["node_config"], "the head must be on-demand"

    workers = {name: spec for name, spec in types.items() if name != config["head_node_type"]}
    assert workers and all(spec["resources"].get("GPU", 0) >= 1 for spec in workers.values())
    single = [spec for spec in workers.values() if spec["resources"]["GPU"] == 1]
    multi = [spec for spec in workers.values() if spec["resources"]["GPU"] > 1]
    assert single and all(spec["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for spec in single)
    assert multi and all("InstanceMarketOptions" not in spec["node_config"] for spec in multi)
    for spec in workers.values():
        assert spec["min_workers"] == 0 <= spec["max_workers"]
        assert spec["node_config"]["InstanceType"].startswith(("g", "p")), "a GPU instance family"
    assert sum(spec["max_workers"] for spec in workers.values()) <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0


def test_aws_head_starts_ray_from_the_project_path():
    config = load(AWS)
    assert config["file_mounts"][PROJECT_PATH] == ".", "the checkout is copied to the fixed project path"
    for key in ("head_setup_commands", "worker_setup_commands"):
        installs = [command for command in config[key]
                    if re.fullmatch(rf"pip install --quiet -e '?{re.escape(PROJECT_PATH)}(\[\w+\])?'?", command)]
        assert len(installs) == 1, f"{key}: the project is not installed from {PROJECT_PATH}"

    head = command_with(config["head_start_ray_commands"], "ray start --head")
    assert re.search(rf"cd {re.escape(PROJECT_PATH)} &&.*ray start --head", head), head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    worker = command_with(config["worker_start_ray_commands"], "ray start --address=$RAY_HEAD_IP:6379")

    # Token and tracking URI: sourced from a file that file_mounts brings from outside the repository.
    sourced = {re.search(r"\. (\S+)", command).group(1) for command in (head, worker)}
    assert len(sourced) == 1
    env_dir = str(Path(sourced.pop()).parent)
    assert config["file_mounts"][env_dir].startswith("~/"), "the env file must come from outside the checkout"


def environment_of_start_command(command: str, env_dir: Path, tmp_path: Path) -> dict[str, str]:
    """What ``ray start`` would inherit from a start command, run in bash up to it, with the mounted
    folder and the project path pointed at stand-ins."""
    script = command.replace("/home/ray/.rdt-cluster", str(env_dir)).replace(PROJECT_PATH, str(tmp_path))
    script = script[: script.index("ray start")] + "env -0"
    completed = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert completed.returncode == 0, completed.stderr
    return dict(entry.split("=", 1) for entry in completed.stdout.split("\0") if entry)


def test_aws_mlflow_credentials_reach_the_head_only(tmp_path):
    config = load(AWS)
    head = command_with(config["head_start_ray_commands"], "ray start --head")
    worker = command_with(config["worker_start_ray_commands"], "ray start --address")
    (credentials,) = set(re.findall(r"/\S+/mlflow-credentials", head))
    env_dir = Path(credentials).parent
    assert config["file_mounts"][str(env_dir)].startswith("~/"), "the credentials must come from outside the checkout"

    stand_in = tmp_path / "rdt-cluster"
    stand_in.mkdir()
    (stand_in / "env").write_text("MLFLOW_TRACKING_URI=http://mlflow.internal:5000\n")
    assert not set(MLFLOW_CREDENTIALS) & set(environment_of_start_command(head, stand_in, tmp_path)), \
        "without the credentials file (a server without authentication) the head must start all the same"
    (stand_in / Path(credentials).name).write_text("MLFLOW_TRACKING_USERNAME=alice\nMLFLOW_TRACKING_PASSWORD=stand-in\n")
    on_head = environment_of_start_command(head, stand_in, tmp_path)
    assert on_head["MLFLOW_TRACKING_USERNAME"] == "alice" and on_head["MLFLOW_TRACKING_PASSWORD"] == "stand-in"
    on_worker = environment_of_start_command(worker, stand_in, tmp_path)
    assert on_worker["MLFLOW_TRACKING_URI"] and not set(MLFLOW_CREDENTIALS) & set(on_worker)

    # Shells opened on the head get them too (for rdt_core.report); no command meant for every node does.
    assert any(credentials in command for command in config["head_setup_commands"])
    everywhere = [*config["setup_commands"], *config["worker_setup_commands"], *config["worker_start_ray_commands"]]
    assert not [command for command in everywhere if "mlflow-credentials" in command]


def test_aws_images_match_the_installed_ray():
    docker = load(AWS)["docker"]
    for image in (docker["image"], docker["head_image"]):
        assert image.startswith(f"rayproject/ray:{ray.__version__}-py311-"), image
    assert docker["image"].endswith("-gpu") and docker["head_image"].endswith("-cpu")


# --- fake multi-node ------------------------------------------------------------------------------


def test_fake_multinode_config_fits_rays_fake_provider(monkeypatch):
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE, FakeMultiNodeProvider
    from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

    config = load(FAKE)
    provider = config["provider"]
    assert provider["type"] == "fake_multinode"
    assert provider["use_node_id_as_ip"] and provider["disable_node_updaters"] and provider["disable_launch_config_check"]
    assert config["head_node_type"] == FAKE_HEAD_NODE_TYPE

    # The provider as the head's autoscaler builds it (it refuses to without RAY_FAKE_CLUSTER): its head
    # node carries our head type, so the autoscaler finds the head's resources in this file.
    monkeypatch.setenv("RAY_FAKE_CLUSTER", "1")
    instance = FakeMultiNodeProvider(provider, config["cluster_name"])
    (head_id,) = instance.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD})
    assert instance.node_tags(head_id)[TAG_RAY_USER_NODE_TYPE] in config["available_node_types"]

    # The v1 autoscaler reads these without defaults.
    for key in ("auth", "file_mounts", "cluster_synced_files", "worker_setup_commands",
                "worker_start_ray_commands", "idle_timeout_minutes", "max_workers"):
        assert key in config, key


def test_fake_multinode_fits_a_two_core_machine():
    config = load(FAKE)
    types = config["available_node_types"]
    workers = {name: spec for name, spec in types.items() if name != config["head_node_type"]}
    assert workers
    assert types[config["head_node_type"]]["resources"]["CPU"] <= 1
    assert sum(spec["max_workers"] * spec["resources"]["CPU"] for spec in workers.values()) <= 2
    for spec in workers.values():
        assert spec["min_workers"] in (0, 1) and spec["max_workers"] >= 1
        assert not spec["resources"].get("GPU"), "a fake GPU would send trials to CUDA on a CPU machine"


# --- KubeRay --------------------------------------------------------------------------------------


def check_cluster_spec(spec: dict) -> None:
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"

    head = spec["headGroupSpec"]
    (head_container,) = head["template"]["spec"]["containers"]
    head_command = " ".join(head_container["args"])
    assert re.search(rf"cd {re.escape(PROJECT_PATH)} &&.*\$KUBERAY_GEN_RAY_START_CMD", head_command), head_command
    for name in ("MLFLOW_TRACKING_URI", "RDT_STORAGE_PATH"):  # what a plain `ray job submit` relies on
        (variable,) = [env for env in head_container["env"] if env["name"] == name]
        assert "value" not in variable and set(variable["valueFrom"]) <= {"secretKeyRef", "configMapKeyRef"}
    # The driver's MLflow user: keys of the Secret that holds the tracking URI, on the head only.
    (uri,) = [env for env in head_container["env"] if env["name"] == "MLFLOW_TRACKING_URI"]
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        (variable,) = [env for env in head_container["env"] if env["name"] == name]
        assert set(variable) == {"name", "valueFrom"} and set(variable["valueFrom"]) == {"secretKeyRef"}
        assert variable["valueFrom"]["secretKeyRef"]["name"] == uri["valueFrom"]["secretKeyRef"]["name"]

    groups = spec["workerGroupSpecs"]
    assert groups
    gpu_groups = []
    for group in groups:
        assert group["groupName"] and 0 <= group["minReplicas"] <= group["maxReplicas"]
        for container in group["template"]["spec"]["containers"]:
            if int(container["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1:
                gpu_groups.append(group)
                assert "$KUBERAY_GEN_RAY_START_CMD" in " ".join(container["args"])
    assert gpu_groups, "no worker group has an nvidia.com/gpu limit"

    images = [container["image"] for group in [head, *groups] for key in ("containers", "initContainers")
              for container in group["template"]["spec"].get(key, [])]
    assert all(image.startswith(f"rayproject/ray:{ray.__version__}-") for image in images), images
    worker_env = [env["name"] for group in groups for key in ("containers", "initContainers")
                  for container in group["template"]["spec"].get(key, []) for env in container.get("env", [])]
    assert not set(MLFLOW_CREDENTIALS) & set(worker_env), "trials report to the driver, never to MLflow"


def test_raycluster_manifest():
    cluster = load_kind(RAYCLUSTER, "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["metadata"]["name"]
    # Without it, KubeRay would run its own command and `ray start` would not start in the project dir.
    assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    check_cluster_spec(cluster["spec"])


def test_rayjob_manifest():
    job = load_kind(RAYJOB, "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert job["metadata"]["name"]
    assert job["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    entrypoint = job["spec"]["entrypoint"].split()
    assert entrypoint[:2] == ["python", "sweeps/run.py"], entrypoint
    assert (REPO_ROOT / entrypoint[2]).is_file(), f"{entrypoint[2]} is not a sweep spec of this repository"
    check_cluster_spec(job["spec"]["rayClusterSpec"])


def test_rayjob_cluster_is_the_raycluster():
    # rayjob.yaml repeats raycluster.yaml's cluster (a RayJob cannot reference it): they must not drift.
    assert load_kind(RAYJOB, "RayJob")["spec"]["rayClusterSpec"] == load_kind(RAYCLUSTER, "RayCluster")["spec"]


# --- no secrets -----------------------------------------------------------------------------------

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"(?i)aws_secret_access_key\W{0,3}[:=]\s*['\"]?[A-Za-z0-9/+]{40}"),
    "long hex token (a Ray token is 64 hex digits)": re.compile(r"\b[0-9a-fA-F]{32,}\b"),
    "credentials in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "assigned token, secret or password": re.compile(  # also as the end of a variable's name
        r"(?i)(?:\b|_)(?:token|secret|password|passwd|api_?key)\b['\"]?\s*[:=]\s*['\"]?[A-Za-z0-9+/_\-]{12,}"
    ),
}


def secrets_in(text: str) -> list[str]:
    return [f"{name}: {match.group(0)!r}" for name, pattern in SECRET_PATTERNS.items()
            for match in pattern.finditer(text)]


def test_secret_patterns_catch_secrets():
    # Built here, not written out, so that no scanner mistakes this file for a leak.
    samples = [
        "key: " + "AKIA" + "Q" * 16,
        "aws_secret_access_key = " + "a1B2" * 10,
        "RAY_AUTH_TOKEN=" + "0f" * 32,
        "MLFLOW_TRACKING_URI=https://alice:" + "hunter2" + "@mlflow.example.org",
        "-----BEGIN RSA " + "PRIVATE KEY-----",
        "password: " + "correct-horse-battery",
        "MLFLOW_TRACKING_PASSWORD=" + "correct-horse-battery",
    ]
    for sample in samples:
        assert secrets_in(sample), sample


def test_no_secrets_in_cluster_files():
    files = sorted(path for path in CLUSTER.rglob("*") if path.is_file() and "__pycache__" not in path.parts)
    assert {AWS, FAKE, RAYCLUSTER, RAYJOB, CLUSTER / "README.md"} <= set(files)
    found = {str(path.relative_to(REPO_ROOT)): secrets_in(path.read_text()) for path in files}
    assert not {path: hits for path, hits in found.items() if hits}
