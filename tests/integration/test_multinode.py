"""A sweep on an autoscaling two-node Ray: trials land on two worker nodes, results reach storage and MLflow.

One machine plays a cluster: ``ray start --head`` with Ray's fake multi-node provider
(``cluster/fake-multinode.yaml``), whose autoscaler starts each worker "node" as extra raylets on this
machine. The head has no CPU and each worker one, so the sweep's two concurrent 1-CPU trials make the
autoscaler launch both workers, one trial on each. The real sweep CLI joins the cluster through
``RAY_ADDRESS``; its trials write to a Tune storage path that every fake node shares (the same disk,
as a shared file system or bucket would be on a real cluster), and the driver mirrors them into a
SQLite MLflow store. Ray's state API maps each trial's pid (from its ``result.json``) to the node that
ran it: all fake nodes share this machine's IP, so only node ids tell them apart.

Unusual settings (the first four are what Ray 2.60's fake provider needs: see the YAML's header):
- ``RAY_FAKE_CLUSTER=1`` for ``ray start --head``: the provider refuses to run without it, and it gives
  the head the fixed node id the provider expects.
- ``--num-cpus=0`` on the head, matching the YAML's head type: nothing reconciles the two.
- A copy of the YAML with ``provider.gcs_address``: the head listens on a free port, not 6379 (which
  on these machines is Redis), and workers dial 6379 unless told otherwise.
- ``AUTOSCALER_UPDATE_INTERVAL_S=1``: the autoscaler checks demand every second instead of every 5.
- Free ports for every fixed-port service of the head (GCS, dashboard, its agent, Ray Client), and its
  own ``--temp-dir``, so that it runs beside any other Ray on the machine; everything ends through
  ``stop_ray_started_in`` (the worker raylets are children of the head's autoscaler), never ``ray stop``.
- Token authentication with a token of this test's own in ``RAY_AUTH_TOKEN`` (head, workers and the
  sweep's driver alike), instead of whatever ``~/.ray/auth_token`` holds.
- Short trials (100 steps), yet long enough, with their worker process's start-up, to still run when
  the second worker joins a few seconds after the first: a trial that ended sooner would free its
  worker for the other trial, and the placement check would fail.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient
from ray.util.state.api import StateApiClient
from ray.util.state.common import ListApiOptions, StateResource

from rdt_core.metrics import FINISHED
from tests.helpers import (
    REPO_ROOT,
    free_port,
    isolated_env,
    load_smoke_spec,
    run_sweep_cli,
    short_temp_dir,
    stop_ray_started_in,
    write_spec,
)

pytestmark = pytest.mark.slow

FAKE_CONFIG = REPO_ROOT / "cluster" / "fake-multinode.yaml"
FAKE_HEAD_NODE_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"  # the provider's fixed head id
RAY = str(Path(sys.executable).parent / "ray")


def tail(text: str | bytes | None, chars: int = 3000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-chars:]


def autoscaler_log(temp_dir: str) -> str:
    """The tail of the head's autoscaler (monitor) logs: what it launched, and why not."""
    logs = Path(temp_dir) / "session_latest" / "logs"
    parts = [f"--- {path.name} ---\n{tail(path.read_text(errors='replace'), 4000)}"
             for path in sorted(logs.glob("monitor*")) if path.is_file()]
    return "\n".join(parts) or f"(no monitor logs under {logs})"


def fake_cluster_config(path: Path, gcs_address: str) -> Path:
    config = yaml.safe_load(FAKE_CONFIG.read_text())
    config["provider"]["gcs_address"] = gcs_address
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def final_results(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def trial_window(reports: list[dict]) -> str:
    """When a trial ran (Unix seconds): if the first ended before the second worker joined, the other
    trial could reuse its node."""
    first, last = reports[0], reports[-1]
    return f"ran from {first['timestamp'] - first['time_total_s']:.0f} to {last['timestamp']:.0f}"


def state_api(dashboard_url: str, token: str):
    """Ray's state API client for this cluster's dashboard, with this test's token."""
    return StateApiClient(address=dashboard_url, headers={"Authorization": f"Bearer {token}"})


def test_sweep_trials_run_on_two_autoscaled_worker_nodes_into_shared_storage_and_mlflow(tmp_path):
    temp_dir = short_temp_dir()
    gcs_port, dashboard_port = free_port(), free_port()
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    token = secrets.token_hex(32)
    node_ip = ray.util.get_node_ip_address()  # what the head advertises, and so what workers must dial
    config = fake_cluster_config(tmp_path / "fake-multinode.yaml", f"{node_ip}:{gcs_port}")

    env = isolated_env(tmp_path)
    sweep_tmp = env.pop("RAY_TMPDIR")  # the driver joins the cluster: it starts no Ray of its own
    shutil.rmtree(sweep_tmp, ignore_errors=True)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    head_env = {**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    sweep_env = {**env, "RAY_ADDRESS": f"{node_ip}:{gcs_port}"}  # the sweep joins the cluster

    spec = load_smoke_spec()
    spec.update(
        name="multinode",
        num_samples=2,
        max_concurrent_trials=2,
        resources={"workers_per_trial": 1, "cpus_per_worker": 1},  # one trial fills one 1-CPU worker
        storage_path=str(tmp_path / "shared" / "ray_results"),
    )
    spec["base"]["train"].update({"steps": 100, "eval_every": 50})
    spec_path = write_spec(tmp_path / "multinode.yaml", spec)

    try:
        head = subprocess.run(
            [RAY, "start", "--head", "--num-cpus=0", f"--autoscaling-config={config}",
             f"--port={gcs_port}", f"--dashboard-port={dashboard_port}",
             f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
             "--object-store-memory=200000000", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
            cwd=tmp_path, env=head_env, capture_output=True, text=True, timeout=180,
        )
        assert head.returncode == 0, f"ray start --head failed:\n{tail(head.stdout)}\n{tail(head.stderr)}"

        try:
            sweep = run_sweep_cli(spec_path, tmp_path, timeout=420, env=sweep_env)
        except subprocess.TimeoutExpired as expired:
            pytest.fail(
                f"the sweep did not finish in {expired.timeout:.0f} s (did the cluster scale up?)\n"
                f"--- sweep stdout ---\n{tail(expired.stdout)}\n--- sweep stderr ---\n{tail(expired.stderr)}\n"
                f"{autoscaler_log(temp_dir)}"
            )
        sweep_output = f"--- sweep stdout ---\n{tail(sweep.stdout)}\n--- sweep stderr ---\n{tail(sweep.stderr)}"
        assert sweep.returncode == 0, f"the sweep exited {sweep.returncode}\n{sweep_output}\n{autoscaler_log(temp_dir)}"

        # Every trial finished into the shared storage: the final report, and a checkpoint with the model.
        experiment_dir = tmp_path / "shared" / "ray_results" / "multinode"
        trial_dirs = sorted(experiment_dir.glob("trial-*"))
        assert len(trial_dirs) == 2, f"trial dirs in {experiment_dir}: {trial_dirs}\n{sweep_output}"
        results = {path.name.removeprefix("trial-"): final_results(path) for path in trial_dirs}
        for trial_id, reports in results.items():
            assert reports and FINISHED.name() in reports[-1], f"trial {trial_id} has no final report\n{sweep_output}"
            assert list((experiment_dir / f"trial-{trial_id}").glob("checkpoint_*/model.pt")), (
                f"trial {trial_id} left no checkpoint with model.pt in {experiment_dir}"
            )

        # Each trial ran in its own actor on its own worker node, never on the (CPU-less) head.
        client = state_api(dashboard_url, token)
        actors = client.list(StateResource.ACTORS, options=ListApiOptions(detail=True, limit=1000),
                             raise_on_missing_output=False)
        nodes = client.list(StateResource.NODES, options=ListApiOptions(detail=True, limit=1000),
                            raise_on_missing_output=False)
        node_of_pid = {actor.pid: actor.node_id for actor in actors if actor.pid}
        trial_nodes = {trial_id: node_of_pid.get(reports[-1]["pid"]) for trial_id, reports in results.items()}
        placement = "\n".join([
            *(f"trial {trial} on node {trial_nodes[trial]}, {trial_window(reports)}"
              for trial, reports in results.items()),
            *(f"node {n.node_id} head={n.is_head_node} {n.state} {n.resources_total}"
              f" started at {(n.start_time_ms or 0) / 1000:.0f}" for n in nodes),
            *(f"actor {a.class_name} pid {a.pid} on node {a.node_id} {a.state}" for a in actors),
            autoscaler_log(temp_dir),
        ])
        assert None not in trial_nodes.values(), f"no actor found for a trial's pid\n{placement}"
        workers = {node.node_id for node in nodes if not node.is_head_node}
        heads = {node.node_id for node in nodes if node.is_head_node}
        assert heads == {FAKE_HEAD_NODE_ID}, f"the head is not the fake provider's head\n{placement}"
        assert len(workers) == 2, f"the autoscaler did not launch exactly two worker nodes\n{placement}"
        assert set(trial_nodes.values()) == workers, f"the two trials did not run on the two worker nodes\n{placement}"
        assert all(node.resources_total.get("CPU") == 1 for node in nodes if node.node_id in workers), placement
    finally:
        stop_ray_started_in(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)

    # The driver mirrored both trials into MLflow: children of one parent, finished, with the model.
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("multinode")
    assert experiment is not None, "no MLflow experiment 'multinode'"
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [r.info for r in parents]
    assert len(children) == 2, [r.info for r in children]
    assert {run.data.tags["ray.trial_id"] for run in children} == set(results)
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == "FINISHED", run.info
        assert "acc/id" in run.data.metrics and "trial/finished" in run.data.metrics, sorted(run.data.metrics)
        checkpoint = [artifact.path for artifact in client.list_artifacts(run.info.run_id, "checkpoint")]
        assert "checkpoint/model.pt" in checkpoint, checkpoint
