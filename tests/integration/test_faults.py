"""A trial's worker process killed mid-training, in a single-worker and in a data-parallel trial: the
trial resumes from its latest checkpoint into the same MLflow run. Real local Ray, real SQLite MLflow
store. (A tracking server that goes away mid-sweep: ``test_tracking_server``.)"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Callable

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tests.helpers import isolated_env, load_smoke_spec, ray_actor_pids, sweep_with_an_event, write_spec

pytestmark = pytest.mark.slow


STEPS, EVAL_EVERY = 800, 100  # a checkpoint at every evaluation; the kill comes after the first


def checkpointed_tune_result(storage: Path) -> dict | None:
    """The first result that Tune recorded with a checkpoint (a single-worker trial's results name it in
    ``checkpoint_dir_name``): from then on a restarted trial resumes from it. A checkpoint only written
    to storage, not yet reported, does not count."""
    for results in storage.glob("*/trial-*/result.json"):  # <storage>/<sweep name>/trial-<id>/
        for line in results.read_text().splitlines():
            result = json.loads(line)
            if result.get("checkpoint_dir_name"):
                return result
    return None


def checkpoint_registered_by_ray_train(storage: Path) -> dict | None:
    """The metrics of the latest checkpoint that Ray Train's controller has registered (its snapshot
    file): a worker group restarted by Ray Train resumes from it. Tune hears of it only later, by which
    time a short data-parallel trial may have ended."""
    for snapshot in storage.glob("train-*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
        except ValueError:  # being written
            continue
        if latest:
            return latest["metrics"]
    return None


def sweep_with_a_kill(
    tmp_path: Path,
    name: str,
    find_checkpoint: Callable[[Path], dict | None],
    kill: Callable[[dict, str], None],
    **spec_changes,
) -> dict:
    """Run a one-trial sweep, call ``kill(checkpointed metrics, Ray temp dir)`` as soon as
    ``find_checkpoint(storage)`` finds a checkpoint, and return the sweep's environment once it has ended
    with status 0 (the trial resumed and finished)."""
    spec = load_smoke_spec()
    spec.update(name=name, num_samples=1, max_concurrent_trials=1,
                search_space={"train.train_loops": {"type": "choice", "values": [2]}}, **spec_changes)
    spec["base"]["train"].update({"steps": STEPS, "eval_every": EVAL_EVERY})
    path = write_spec(tmp_path / f"{name}.yaml", spec)
    env = isolated_env(tmp_path)

    def kill_after_the_checkpoint(checkpointed: dict) -> None:
        assert checkpointed["step"] < STEPS, "the trial had finished before the kill: the test proves nothing"
        kill(checkpointed, env["RAY_TMPDIR"])

    returncode, stdout, stderr = sweep_with_an_event(
        path, tmp_path, env, lambda: find_checkpoint(tmp_path / "ray_results"), kill_after_the_checkpoint
    )
    assert returncode == 0, stdout[-3000:] + stderr[-3000:]
    return env


def assert_one_run_resumed_without_gaps(env: dict, name: str) -> Run:
    """The trial's one MLflow run: finished, resumed after step 0, every evaluation logged exactly once."""
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(children) == 1, "a restarted trial must keep its one MLflow run"
    child = children[0]
    assert child.info.status == "FINISHED"
    resumed_from = [metric.value for metric in client.get_metric_history(child.info.run_id, "resume/from_step")]
    assert resumed_from[0] == 0 and resumed_from[-1] >= EVAL_EVERY, "the restarted worker began again at step 0"
    steps = [metric.step for metric in client.get_metric_history(child.info.run_id, "loss/train")]
    assert steps == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY)), "an evaluation trained twice, or missing"
    assert [a.path for a in client.list_artifacts(child.info.run_id, "checkpoint")] == ["checkpoint/model.pt"]
    return child


def test_a_killed_trial_worker_resumes_from_its_checkpoint_into_one_finished_run(tmp_path):
    def kill_the_trial_actor(checkpointed: dict, ray_temp_dir: str) -> None:
        os.kill(checkpointed["pid"], signal.SIGKILL)  # the Tune actor that runs train_worker

    env = sweep_with_a_kill(tmp_path, "killed", checkpointed_tune_result, kill_the_trial_actor, max_failures=2)
    child = assert_one_run_resumed_without_gaps(env, "killed")
    assert child.data.tags["ray.restarts"] == "1"


def test_a_killed_data_parallel_worker_resumes_the_group_from_its_checkpoint(tmp_path):
    def kill_one_train_worker(checkpointed: dict, ray_temp_dir: str) -> None:
        workers = ray_actor_pids(ray_temp_dir, "RayTrainWorker")
        assert len(workers) == 2, f"expected 2 Ray Train workers, found {workers}"
        os.kill(workers[-1], signal.SIGKILL)

    env = sweep_with_a_kill(tmp_path, "killed-ddp", checkpoint_registered_by_ray_train, kill_one_train_worker,
                            resources={"workers_per_trial": 2, "cpus_per_worker": 0.5})
    child = assert_one_run_resumed_without_gaps(env, "killed-ddp")
    assert child.data.metrics["dist/world_size"] == 2
