"""A sweep logging through the MLflow tracking server (started on a loopback port by the project's
launcher), which serves the parent run's diagram artifacts over HTTP."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import (
    RUN_PY,
    free_port,
    isolated_env,
    load_smoke_spec,
    run_sweep_cli,
    start_tracking_server,
    stop_tracking_server,
    sweep_with_an_event,
    write_spec,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def tracking_server(tmp_path):
    """The launcher's server with a SQLite backend and served artifacts, on a loopback port."""
    server, url = start_tracking_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "served", tmp_path)
    try:
        yield url
    finally:
        stop_tracking_server(server)


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


def test_a_tracking_server_that_is_down_stops_the_sweep_before_any_trial(tmp_path):
    env = isolated_env(tmp_path)
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    completed = run_sweep_cli(write_spec(tmp_path / "smoke.yaml", load_smoke_spec()), tmp_path, timeout=120, env=env)
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not answer" in lines[0] and env["MLFLOW_TRACKING_URI"] in lines[0]
    assert not (tmp_path / "ray_results").exists()
    assert not any(Path(env["RAY_TMPDIR"]).iterdir())  # Ray was never started


def children_finished(backend_db: Path, experiment: str) -> int:
    """Finished child runs, read from the server's own database (it may be down)."""
    if not backend_db.exists():
        return 0
    client = MlflowClient(f"sqlite:///{backend_db}")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return 0
    runs = client.search_runs([found.experiment_id], filter_string="attributes.status = 'FINISHED'")
    return sum("mlflow.parentRunId" in run.data.tags for run in runs)


def test_a_server_gone_mid_sweep_loses_no_finished_trial(tmp_path):
    """The server stops after the first trial: the sweep goes on, keeps the later trials' writes, exits
    1 naming --send-outbox, which sends them all once the server is back."""
    backend_db, artifacts, port = tmp_path / "server.db", tmp_path / "served", free_port()
    server, url = start_tracking_server(f"sqlite:///{backend_db}", artifacts, tmp_path, port=port)
    spec = load_smoke_spec()
    spec.update(name="gone", num_samples=2, max_concurrent_trials=1)
    spec["base"]["train"].update({"steps": 200, "eval_every": 100})
    workdir = tmp_path / "work"
    workdir.mkdir()
    spec_path = write_spec(workdir / "gone.yaml", spec)
    env = isolated_env(workdir)
    env.update(MLFLOW_TRACKING_URI=url, RDT_OUTBOX_WAIT_S="5")
    returncode, stdout, stderr = sweep_with_an_event(
        spec_path, workdir, env,
        moment=lambda: children_finished(backend_db, "gone") >= 1,
        event=lambda _: stop_tracking_server(server, crash=True),
    )
    assert returncode == 1, stdout[-3000:] + stderr[-3000:]
    assert "--send-outbox" in stderr.strip().splitlines()[-1]
    assert "sweep gone: 2 trials, 0 failed" in stdout  # the trials themselves never noticed
    kept = workdir / "mlflow-outbox" / "gone.jsonl"
    assert kept.exists()
    assert children_finished(backend_db, "gone") == 1

    server, url = start_tracking_server(f"sqlite:///{backend_db}", artifacts, tmp_path, port=port)
    try:
        sent = subprocess.run([sys.executable, str(RUN_PY), str(spec_path), "--send-outbox"], cwd=workdir,
                              env=env, capture_output=True, text=True, timeout=300)
        assert sent.returncode == 0, sent.stdout[-3000:] + sent.stderr[-3000:]
        assert not kept.exists()
        client = MlflowClient(url)
        runs = client.search_runs([client.get_experiment_by_name("gone").experiment_id])
        (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
        children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
        assert parent.info.status == "FINISHED" and "best/acc/id_val" in parent.data.metrics
        assert sorted(run.info.run_name for run in children) == ["gone-000", "gone-001"]
        for child in children:
            assert child.info.status == "FINISHED"
            assert [m.step for m in client.get_metric_history(child.info.run_id, "acc/id")] == [100, 200]
            assert "trial/finished" in child.data.metrics
            assert [a.path for a in client.list_artifacts(child.info.run_id, "checkpoint")] == ["checkpoint/model.pt"]
    finally:
        stop_tracking_server(server)
