"""The user's path: ``ray start --head`` in a copy of the repo, ``ray job submit`` of the smoke sweep."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import OUTSIDE_SETTINGS, REPO_ROOT, free_port, short_temp_dir, stop_ray_started_in

pytestmark = pytest.mark.slow

CHANCE = 1 / 32  # the smoke graph has 32 entities
NO_AGENT_YET = "No available agent to submit job"  # Ray's answer while the head's job agent is starting


def submit_when_the_head_takes_jobs(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``ray job submit``, again while Ray answers that the head has no job agent yet ("please try again
    later", as it says: `ray start` returns before its agent registers); any other outcome is returned as it
    is. A refused submission starts nothing."""
    deadline = time.monotonic() + 120  # a hang guard, not a speed check
    while True:
        submitted = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
        refused_for_now = submitted.returncode != 0 and NO_AGENT_YET in submitted.stdout + submitted.stderr
        if not refused_for_now or time.monotonic() > deadline:
            return submitted
        time.sleep(3)


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(
        REPO_ROOT,
        copy,
        ignore=shutil.ignore_patterns(".git", ".venv", "mlflow.db", "mlruns", "ray_results", "__pycache__"),
    )
    return copy


def test_ray_job_submit_runs_the_smoke_sweep_into_mlflow(repo_copy):
    temp_dir = short_temp_dir()
    dashboard_port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in OUTSIDE_SETTINGS}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the job's `python`
    env["RAY_AUTH_MODE"] = "token"  # Ray 2.60's local clusters require a token from job clients
    ray = str(Path(sys.executable).parent / "ray")
    # Ray 2.60 turns token authentication on for a local head only when a token exists: make sure one
    # does (~/.ray/auth_token), as the README tells users to, so the test does not depend on the machine.
    subprocess.run([ray, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    try:
        subprocess.run(
            # Every port its own: the dashboard agent's default (52365) is taken by any other Ray on the
            # machine (the suite runs three tests at a time), and a head whose agent cannot bind takes no job.
            [ray, "start", "--head", f"--port={free_port()}", f"--dashboard-port={dashboard_port}",
             f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
             "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
            cwd=repo_copy, env=env, check=True, capture_output=True, text=True, timeout=180,
        )
        submitted = submit_when_the_head_takes_jobs(
            [ray, "job", "submit", "--address", f"http://127.0.0.1:{dashboard_port}", "--",
             "python", "sweeps/run.py", "sweeps/smoke.yaml"],
            repo_copy, env,
        )
        assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-2000:]
        assert "succeeded" in submitted.stdout
        # What a user reads: the job's log (the sweep's compact console, <= 60 lines: test_console.py) and
        # the ray job submit client's own lines around it (~17).
        shown = (submitted.stdout + submitted.stderr).splitlines()
        assert len(shown) <= 80 and "sweep smoke: 4 trials, 0 failed" in shown, "\n".join(shown[-100:])
    finally:
        stop_ray_started_in(temp_dir)

    # The job ran where `ray start --head` ran: the repo copy, with its default SQLite store.
    client = MlflowClient(f"sqlite:///{repo_copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(runs) - len(children) == 1
    assert len(children) == 4 and all(run.info.status == "FINISHED" for run in children)
    best = max(run.data.metrics["acc/id"] for run in children)
    assert best > 10 * CHANCE, f"best held-out 2-hop accuracy {best:.3f} is not clearly above chance"
