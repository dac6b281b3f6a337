"""The tracking-server launcher (mlflow/serve.py) on PostgreSQL: a sweep of 8 concurrent trials logs
through it without a lost write, and a second start against the same store keeps every run."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import (
    LAUNCHER,
    free_port,
    isolated_env,
    load_smoke_spec,
    run_sweep_cli,
    start_tracking_server,
    stop_tracking_server,
    write_spec,
)

pytestmark = pytest.mark.slow


def test_eight_concurrent_trials_log_through_a_postgres_backed_server(tmp_path, postgres_url):
    artifacts = tmp_path / "artifacts"
    server, url = start_tracking_server(postgres_url, artifacts, tmp_path)
    try:
        spec = load_smoke_spec()
        spec.update(name="postgres", num_samples=8, max_concurrent_trials=8,
                    resources={"workers_per_trial": 1, "cpus_per_worker": 0.25},
                    sampler={"type": "random", "seed": 0})
        spec["base"]["train"].update({"steps": 40, "eval_every": 10})
        env = isolated_env(tmp_path)
        env["MLFLOW_TRACKING_URI"] = url
        completed = run_sweep_cli(write_spec(tmp_path / "postgres.yaml", spec), tmp_path, timeout=600, env=env)
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
        client = MlflowClient(url)
        children = client.search_runs(
            [client.get_experiment_by_name("postgres").experiment_id], filter_string="tags.`ray.trial_id` != ''"
        )
        assert len(children) == 8
        for run in children:  # every write arrived: all four evaluations of every trial
            assert run.info.status == "FINISHED"
            assert [m.step for m in client.get_metric_history(run.info.run_id, "acc/id")] == [10, 20, 30, 40]
        run_ids = {run.info.run_id for run in client.search_runs([client.get_experiment_by_name("postgres").experiment_id])}
    finally:
        stop_tracking_server(server)

    server, url = start_tracking_server(postgres_url, artifacts, tmp_path)  # the same store, started again
    try:
        client = MlflowClient(url)
        again = client.search_runs([client.get_experiment_by_name("postgres").experiment_id])
        assert {run.info.run_id for run in again} == run_ids
    finally:
        stop_tracking_server(server)


def test_an_unreachable_store_exits_2_with_one_line(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(LAUNCHER), "--backend-store-uri", "postgresql://nobody@127.0.0.1:1/none",
         "--port", str(free_port())],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2
    lines = [line for line in completed.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--backend-store-uri" in lines[0]
