"""Real sweeps: a real local Ray (one per test process, which each sweep joins), Optuna, and an MLflow SQLite
store in a temp dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import RUN_PY, isolated_env, load_smoke_spec, run_sweep_cli, write_spec

pytestmark = pytest.mark.slow


def runs_of(workdir: Path, experiment: str):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    return client, parents, children


def test_smoke_sweep_logs_one_parent_and_one_child_per_trial(tmp_path, shared_ray):
    spec = load_smoke_spec()
    spec["base"]["train"].update({"steps": 200, "eval_every": 50})  # the plumbing, not the accuracy
    path = write_spec(tmp_path / "smoke.yaml", spec)

    completed = run_sweep_cli(path, tmp_path, timeout=600, env=shared_ray.env(tmp_path))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "mlflow ui --backend-store-uri" in completed.stdout

    client, parents, children = runs_of(tmp_path, "smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == spec["num_samples"]
    parent_id = parents[0].info.run_id
    assert sorted(child.info.run_name for child in children) == [f"smoke-{n:03d}" for n in range(4)]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        assert child.info.status == "FINISHED"
        assert {"train.lr", "train.train_loops", "data.n_entities"} <= set(child.data.params)
        history = client.get_metric_history(child.info.run_id, "acc/id")
        assert [metric.step for metric in history] == [50, 100, 150, 200]
        curve = client.get_metric_history(child.info.run_id, "acc_by_loop/id")  # its step: the inference loop
        assert [metric.step for metric in curve] == list(range(1, spec["base"]["model"]["max_loops"] + 1))
        assert child.data.metrics["trial/finished"] == 1.0
        assert len(child.data.metrics) <= 40 and "acc/id/loop_01" not in child.data.metrics  # the rest: tables
        assert {"tables/accuracy_by_loop.json", "tables/halting.json"} <= {
            a.path for a in client.list_artifacts(child.info.run_id, "tables")}
    parent = parents[0]
    assert f"best/{spec['metric']}" in parent.data.metrics
    assert any(key.startswith("system/cpu_utilization") for key in parent.data.metrics)
    artifacts = [entry.path for entry in client.list_artifacts(parent_id)]
    assert {"spec.yaml", "plan.yaml", "leaderboard.json"} <= set(artifacts)
    assert any(path.startswith("diagrams") for path in artifacts)  # smoke names no diagram: all supported are drawn

    # The parent run is the sweep's summary: its description, the searched keys marked, a leaderboard.
    note = parent.data.tags["mlflow.note.content"]  # the spec's text, then links to the best run and more
    assert note.startswith(spec["description"]) and f"[{spec['name']}-00" in note and "leaderboard.json](" in note
    best_child = next(run for run in children if run.data.tags.get("sweep.best") == "true")
    assert parent.data.metrics[spec["metric"]] == best_child.data.metrics[spec["metric"]]  # the best's, by name
    assert parent.data.params["search.train.lr"].startswith("loguniform")
    assert "base.train.lr" not in parent.data.params and "base.train.steps" in parent.data.params
    board = json.loads(Path(client.download_artifacts(parent_id, "leaderboard.json", str(tmp_path))).read_text())
    rows = [dict(zip(board["columns"], row)) for row in board["data"]]
    assert sorted(row["trial"] for row in rows) == [0, 1, 2, 3] and {row["state"] for row in rows} == {"COMPLETE"}
    scores = [row[spec["metric"]] for row in rows]
    assert scores == sorted(scores, reverse=True)  # best first
    by_name = {child.info.run_name: child for child in children}
    assert {row["run_id"] for row in rows} == {child.info.run_id for child in children}
    best = [child for child in children if child.data.tags.get("sweep.best") == "true"]
    assert [child.info.run_id for child in best] == [rows[0]["run_id"]] == [parent.data.tags["sweep.best_run"]]

    # MLflow and Optuna in step: trial n is child run smoke-00n, each names the other.
    study_name = parent.data.tags["optuna.study_name"]
    assert study_name == "smoke-001"
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study.user_attrs["mlflow.parent_run_id"] == parent_id and study.metric_names == [spec["metric"]]
    for trial in study.trials:
        child = by_name[f"smoke-{trial.number:03d}"]
        assert trial.user_attrs["mlflow.run_id"] == child.info.run_id
        assert child.data.tags["optuna.trial_number"] == str(trial.number)
        assert sorted(trial.intermediate_values) == [50, 100, 150, 200]  # at optimizer steps
    assert len({trial.params["train.train_loops"] for trial in study.trials}) == 3  # 2, 3 and 4 all tried
    assert (tmp_path / "ray_results" / "smoke").is_dir()


def test_data_parallel_trial_runs_in_torch_trainer_with_two_workers(tmp_path, shared_ray):
    spec = load_smoke_spec()
    spec.update(
        name="ddp",
        num_samples=1,
        max_concurrent_trials=1,
        resources={"workers_per_trial": 2, "cpus_per_worker": 0.5},
        search_space={"train.train_loops": {"type": "choice", "values": [2]}},
    )
    spec["base"]["train"].update({"steps": 60, "eval_every": 30})
    path = write_spec(tmp_path / "ddp.yaml", spec)

    completed = run_sweep_cli(path, tmp_path, timeout=600, env=shared_ray.env(tmp_path))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    client, parents, children = runs_of(tmp_path, "ddp")
    assert len(parents) == 1 and len(children) == 1
    child = children[0]
    assert child.info.status == "FINISHED"
    assert child.data.metrics["dist/world_size"] == 2
    assert [a.path for a in client.list_artifacts(child.info.run_id, "checkpoint")] == ["checkpoint/model.pt"]
    assert [m.step for m in client.get_metric_history(child.info.run_id, "acc/id")] == [30, 60]
    # Ray Train's own run, named after the Tune trial, sits beside the Tune experiment.
    train_runs = [p.name for p in (tmp_path / "ray_results").iterdir() if p.name.startswith("train-")]
    assert len(train_runs) == 1


def test_early_stopped_trials_are_pruned_in_the_optuna_study(tmp_path, shared_ray):
    spec = load_smoke_spec()
    spec.update(
        name="asha",
        num_samples=4,
        max_concurrent_trials=2,
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
        # Training accuracy parts learning rates within 80 steps, where held-out accuracy ties near chance
        # (and ASHA stops no tie): the space-filling start gives one rate per quarter of the range.
        metric="acc/train",
        search_space={"train.lr": {"type": "loguniform", "low": 1.0e-5, "high": 3.0e-2}},
    )
    spec["base"]["train"].update({"steps": 160, "eval_every": 40})
    path = write_spec(tmp_path / "asha.yaml", spec)
    completed = run_sweep_cli(path, tmp_path, timeout=600, env=shared_ray.env(tmp_path))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    client, parents, children = runs_of(tmp_path, "asha")
    stopped_early = [run for run in children if "trial/finished" not in run.data.metrics]
    assert stopped_early, "ASHA stopped no trial: the test proves nothing"
    study = optuna.load_study(
        study_name=parents[0].data.tags["optuna.study_name"], storage=f"sqlite:///{tmp_path / 'optuna.db'}"
    )
    states = [trial.state for trial in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == len(stopped_early)
    assert states.count(optuna.trial.TrialState.COMPLETE) == len(children) - len(stopped_early)


def test_multi_objective_sweep_yields_a_pareto_front(tmp_path, shared_ray):
    spec = load_smoke_spec()
    spec.update(
        name="pareto",
        num_samples=3,
        metric=["halting/id/acc", "halting/id/mean_loops"],
        mode=["max", "min"],
        sampler={"type": "nsga2", "seed": 1},
    )
    spec["base"]["train"].update({"steps": 100, "eval_every": 50})
    path = write_spec(tmp_path / "pareto.yaml", spec)
    completed = run_sweep_cli(path, tmp_path, timeout=600, env=shared_ray.env(tmp_path))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    client, parents, children = runs_of(tmp_path, "pareto")
    front = json.loads(Path(client.download_artifacts(parents[0].info.run_id, "pareto_front.json", str(tmp_path))).read_text())
    values = [(run.data.metrics["halting/id/acc"], run.data.metrics["halting/id/mean_loops"]) for run in children]
    dominated = lambda a: any(b[0] >= a[0] and b[1] <= a[1] and b != a for b in values)  # noqa: E731
    assert sorted(tuple(point["values"]) for point in front["front"]) == sorted(v for v in values if not dominated(v))
    study = optuna.load_study(
        study_name=parents[0].data.tags["optuna.study_name"], storage=f"sqlite:///{tmp_path / 'optuna.db'}"
    )
    assert len(study.directions) == 2


def test_inference_only_sweep_searches_halting_over_a_trained_trial_without_training(tmp_path, shared_ray):
    """Train once, then search halting thresholds of that model, read back from its MLflow run."""
    spec = load_smoke_spec()
    spec.update(name="trained", num_samples=1, search_space={"train.train_loops": {"type": "choice", "values": [3]}})
    spec["base"]["train"].update({"steps": 60, "eval_every": 30})
    spec["base"]["eval"] = {"halt_entropy": None}  # KL alone: a 60-step model's answers are never confident
    env = shared_ray.env(tmp_path)
    completed = run_sweep_cli(write_spec(tmp_path / "train.yaml", spec), tmp_path, timeout=600, env=env)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    client, _, children = runs_of(tmp_path, "trained")
    trained_run = children[0]
    assert "checkpoint/model.pt" in [a.path for a in client.list_artifacts(trained_run.info.run_id, "checkpoint")]
    assert "tables" in [a.path for a in client.list_artifacts(trained_run.info.run_id)]

    search = {
        "name": "thresholds",
        "trained_model": {"mlflow_run": trained_run.info.run_id},
        "search_space": {"eval.halt_kl": {"type": "loguniform", "low": 1.0e-4, "high": 1.0}},
        "metric": "halting/id/acc",
        "num_samples": 3,
    }
    completed = run_sweep_cli(write_spec(tmp_path / "search.yaml", search), tmp_path, timeout=600, env=env)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    _, _, evaluations = runs_of(tmp_path, "thresholds")
    assert len(evaluations) == 3
    for run in evaluations:
        # One report each, at the trained model's step: nothing was trained.
        assert [m.step for m in client.get_metric_history(run.info.run_id, "halting/id/acc")] == [60]
        assert run.data.metrics["acc/id"] == trained_run.data.metrics["acc/id"]
        assert run.data.params["train.steps"] == "60"  # the trained model's config, not the defaults
    assert len({run.data.metrics["halting/id/mean_loops"] for run in evaluations}) > 1


def test_resume_without_an_interrupted_sweep_exits_2(tmp_path):
    path = write_spec(tmp_path / "smoke.yaml", load_smoke_spec())
    completed = subprocess.run([sys.executable, str(RUN_PY), str(path), "--resume"], cwd=tmp_path,
                               env=isolated_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert "no interrupted sweep" in completed.stderr and len(completed.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()
