"""The parent run as a user reads it in the MLflow UI, on a real SQLite MLflow store and Optuna storage in
tmp_path, without Ray: the best trial's (or, with seeds > 1, the best setting's mean) headline metrics under
the children's own names, a description linking the best run, the leaderboard and the study, and each
Optuna trial linking its MLflow run."""

import statistics
from types import SimpleNamespace

import optuna
import pytest

from rdt_core import metrics as names
from rdt_core.sweep.callbacks import RUN_ID_ATTR, RUN_URL_ATTR, MlflowTrialCallback, mlflow_ui, run_page
from rdt_core.sweep.parent import open_parent_run, open_study
from rdt_core.sweep.plan import SweepPlan
from rdt_core.sweep.spec import validate_spec
from rdt_core.sweep.summary import LEADERBOARD_FILE, best_of, log_best, parent_run_link
from rdt_core.tracking import Outbox, SweepTracker, log_evaluation, trial_key
from tests.helpers import load_smoke_spec

METRIC = names.ACC.name(split="id_val")
HEADLINE = [METRIC, names.ACC.name(split="id"), names.ACC_CHOSEN.name(split="id"), names.LOSS.name(split="train")]
NOT_HEADLINE = names.ACC_HOPS_LOOP.name(split="id", hops=2, loop=3)  # goes to the child's tables, not its metrics


class Grid(list):
    """What ``best_of`` reads of a Ray Tune ResultGrid: its results, and the best one by a metric."""

    def get_best_result(self, metric, mode):
        return max(self, key=lambda result: result.metrics[metric] * (1 if mode == "max" else -1))


def open_sweep(tmp_path, monkeypatch, seeds):
    monkeypatch.chdir(tmp_path)  # a SQLite store keeps its artifacts in ./mlruns
    raw = load_smoke_spec()
    if seeds > 1:  # replicates of settings: a grid
        raw = {**raw, "seeds": seeds, "num_samples": 4 * seeds, "sampler": {"type": "grid"}, "search_space": {
            "train.train_loops": {"type": "choice", "values": [2, 4]},
            "train.lr": {"type": "choice", "values": [0.003, 0.01]}}}
    spec = validate_spec(raw, "sweeps/smoke.yaml")
    plan = SweepPlan(spec, "sweeps/smoke.yaml", f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "ray"),
                     f"sqlite:///{tmp_path / 'optuna.db'}")
    tracker = SweepTracker(plan.tracking_uri, spec.name)
    parent_run_id, study_name = open_parent_run(tracker, plan, spec.base, None)
    open_study(plan, study_name, parent_run_id)
    outbox = Outbox(tracker, spec.name, tmp_path / "outbox.jsonl")
    return plan, tracker, outbox, study_name


def report(trial_id, value, step):
    return {METRIC: value, names.ACC.name(split="id"): value / 2, names.ACC_CHOSEN.name(split="id"): value / 3,
            names.LOSS.name(split="train"): 1 - value, NOT_HEADLINE: 0.25, names.STEP.name(): step,
            "trial_id": trial_id, "training_iteration": 3}


def run_trials(outbox, trials):
    """One child run per trial (``(config, final value)``), written as the sweep's callback writes them: two
    evaluations; returns the Tune-like results and each trial's run name and id."""
    results, board = Grid(), []
    for number, (config, value) in enumerate(trials):
        trial_id, name = f"t{number}", f"smoke-{number:03d}"
        outbox.start_trial_run(trial_id, params=config, tags={}, name=name)
        log_evaluation(outbox, trial_key(trial_id), report(trial_id, value / 2, step=750), also=[METRIC])
        final = report(trial_id, value, step=1500)
        log_evaluation(outbox, trial_key(trial_id), final, also=[METRIC])
        outbox.finish(trial_key(trial_id), succeeded=True)
        results.append(SimpleNamespace(config=config, metrics=final))
        board.append({"run": name, "run_id": outbox.run_id(trial_key(trial_id))})
    return results, board


def summarise(plan, tracker, outbox, study_name, results, board):
    study = optuna.load_study(study_name=study_name, storage=plan.optuna_storage)
    best = best_of(plan.spec, results)
    log_best(plan, outbox, best, board, study._study_id, study_name)
    return best, tracker.client.get_run(tracker.parent_run_id), study._study_id


def test_the_parent_carries_the_best_childs_headline_metrics_under_their_own_names(tmp_path, monkeypatch):
    plan, tracker, outbox, study_name = open_sweep(tmp_path, monkeypatch, seeds=1)
    trials = [({"train.lr": 0.01, "train.train_loops": 2}, 0.5), ({"train.lr": 0.003, "train.train_loops": 4}, 0.8),
              ({"train.lr": 0.005, "train.train_loops": 3}, 0.6)]
    results, board = run_trials(outbox, trials)
    _, parent, _ = summarise(plan, tracker, outbox, study_name, results, board)
    best_child = tracker.client.get_run(board[1]["run_id"])
    child_metrics = best_child.data.metrics
    assert set(HEADLINE) <= set(child_metrics) and NOT_HEADLINE not in child_metrics
    assert {name: parent.data.metrics[name] for name in child_metrics} == child_metrics  # the same, by name
    assert parent.data.metrics[f"best/{METRIC}"] == 0.8  # kept beside them
    assert NOT_HEADLINE not in parent.data.metrics and names.STEP.name() not in parent.data.metrics
    assert parent.data.tags["sweep.best_run"] == best_child.info.run_id


def test_with_seeds_the_parent_carries_the_best_settings_mean_over_its_replicates(tmp_path, monkeypatch):
    plan, tracker, outbox, study_name = open_sweep(tmp_path, monkeypatch, seeds=2)
    steady, spiky = {"train.lr": 0.003, "train.train_loops": 4}, {"train.lr": 0.01, "train.train_loops": 2}
    trials = [({**spiky, "replicate": 0}, 0.9), ({**steady, "replicate": 0}, 0.72),
              ({**spiky, "replicate": 1}, 0.3), ({**steady, "replicate": 1}, 0.68)]
    results, board = run_trials(outbox, trials)
    best, parent, _ = summarise(plan, tracker, outbox, study_name, results, board)
    assert best.config == steady and best.replicates == 2
    replicates = [tracker.client.get_run(board[i]["run_id"]).data.metrics for i in (1, 3)]
    for name in HEADLINE:
        assert parent.data.metrics[name] == pytest.approx(statistics.fmean(r[name] for r in replicates))
    assert parent.data.metrics[METRIC] == pytest.approx(0.70)
    assert parent.data.metrics[f"best/{METRIC}"] == pytest.approx(0.70)
    assert parent.data.tags["sweep.best_run"] == board[1]["run_id"]  # the best setting's best replicate (0.72)
    note = parent.data.tags["mlflow.note.content"]
    assert "smoke-001" in note and "mean over 2 replicates" in note


def test_the_parents_description_links_the_best_run_the_leaderboard_and_the_study(tmp_path, monkeypatch):
    plan, tracker, outbox, study_name = open_sweep(tmp_path, monkeypatch, seeds=1)
    results, board = run_trials(outbox, [({"train.lr": 0.003574716038555324, "train.train_loops": 4}, 0.609)])
    _, parent, study_id = summarise(plan, tracker, outbox, study_name, results, board)
    note = parent.data.tags["mlflow.note.content"]
    experiment, best_run = tracker.experiment_id, board[0]["run_id"]
    assert note.startswith(plan.spec.description)  # the spec's description stays first
    best_link = f"[smoke-000](#/experiments/{experiment}/runs/{best_run}?workflowType=machine_learning)"
    assert f"**Best run**: {best_link}: `{METRIC}` 0.609" in note
    assert "`train.lr` = 0.00357" in note  # 3 significant digits
    assert (f"[{LEADERBOARD_FILE}](#/experiments/{experiment}/runs/{parent.info.run_id}/artifacts/{LEADERBOARD_FILE}"
            "?workflowType=machine_learning)") in note
    dashboard = f"http://127.0.0.1:8080/dashboard/studies/{study_id}"
    assert f"`{study_name}` in `{plan.optuna_storage}`" in note and f"[{dashboard}]({dashboard})" in note


def test_each_optuna_trial_holds_the_full_link_to_its_mlflow_run(tmp_path, monkeypatch):
    plan, tracker, outbox, study_name = open_sweep(tmp_path, monkeypatch, seeds=1)
    study = optuna.load_study(study_name=study_name, storage=plan.optuna_storage)
    study.ask()
    outbox.start_trial_run("t0", params={}, tags={}, name="smoke-000")
    run_id = outbox.run_id(trial_key("t0"))
    callback = MlflowTrialCallback(outbox, plan.spec.base, [METRIC], study_name, plan.optuna_storage)
    callback.link_trial(study.trials[0], run_id, "smoke-000")
    trial = optuna.load_study(study_name=study_name, storage=plan.optuna_storage).trials[0]
    url = f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs/{run_id}?workflowType=machine_learning"
    assert trial.user_attrs[RUN_ID_ATTR] == run_id and trial.user_attrs[RUN_URL_ATTR] == url
    dashboard = pytest.importorskip("optuna_dashboard")
    assert dashboard.get_note(trial_in(study, trial)) == f"MLflow run [smoke-000]({url})"


def trial_in(study, frozen):
    """A live ``optuna.Trial`` for a stored trial: what optuna-dashboard's ``get_note`` reads a note of."""
    return optuna.Trial(study, frozen._trial_id)


def test_links_are_relative_in_mlflow_and_at_the_ui_of_the_store_elsewhere():
    assert run_page("3", "abc") == "#/experiments/3/runs/abc?workflowType=machine_learning"
    assert mlflow_ui("sqlite:////x/mlflow.db") == "http://127.0.0.1:5000"
    assert mlflow_ui("http://mlflow.example:5000/") == "http://mlflow.example:5000"
    outcome = SimpleNamespace(experiment_id="3", parent_run_id="p1")
    assert parent_run_link(outcome, "http://127.0.0.1:5000/") == \
        "http://127.0.0.1:5000/#/experiments/3/runs/p1?workflowType=machine_learning"
