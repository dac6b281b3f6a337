"""A sweep logging through an MLflow tracking server on a loopback port, its diagrams served over HTTP."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import free_port, isolated_env, load_smoke_spec, run_sweep_cli, write_spec

pytestmark = pytest.mark.slow


@pytest.fixture
def tracking_server(tmp_path):
    """``mlflow server`` on 127.0.0.1 with a SQLite backend and served artifacts; ended by its pid."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "served-artifacts"), "--serve-artifacts", "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("the MLflow tracking server did not start within 120 s")
        yield url
    finally:
        subprocess.run(["pkill", "-TERM", "-s", str(server.pid)], check=False)  # its whole session
        server.wait(timeout=30)


def test_sweep_logs_through_the_server_which_serves_its_diagrams(tmp_path, tracking_server):
    spec = load_smoke_spec()
    spec.update(name="served", num_samples=2, phase_diagrams=["overthinking", "halting"])
    spec["base"]["train"].update({"steps": 60, "eval_every": 30})
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = isolated_env(workdir)
    env["MLFLOW_TRACKING_URI"] = tracking_server
    completed = run_sweep_cli(write_spec(workdir / "served.yaml", spec), workdir, timeout=600, env=env)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert not (workdir / "mlflow.db").exists()  # everything went through the server

    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("served")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(runs) == 3
    diagrams = [entry.path for entry in client.list_artifacts(parent.info.run_id, "diagrams")]
    assert any(path.endswith(".png") for path in diagrams) and any(path.endswith(".html") for path in diagrams)
    png = next(path for path in diagrams if path.endswith(".png"))
    with urllib.request.urlopen(f"{tracking_server}/get-artifact?path={png}&run_uuid={parent.info.run_id}") as response:
        assert response.status == 200
        assert response.read(8) == b"\x89PNG\r\n\x1a\n"
