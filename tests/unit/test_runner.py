"""Wiring of rdt_core.sweep.runner and .search: samplers, schedulers, storage paths, and the searcher on a
real Optuna storage (no Ray started)."""

import optuna
import pytest
from ray.tune.schedulers import ASHAScheduler, HyperBandScheduler

from rdt_core.metrics import FINISHED
from rdt_core.sweep.plan import default_optuna_storage, resolve_storage_path
from rdt_core.sweep.runner import make_scheduler
from rdt_core.sweep.search import (
    PruningAwareOptunaSearch,
    ResumableConcurrencyLimiter,
    fail_running_trials,
    make_sampler,
)
from rdt_core.sweep.spec import validate_spec
from tests.helpers import load_smoke_spec


def spec_with(**changes):
    raw = load_smoke_spec()
    raw.update(changes)
    return validate_spec(raw, "smoke.yaml")


@pytest.mark.parametrize(
    "sampler, expected",
    [("tpe", optuna.samplers.TPESampler), ("cmaes", optuna.samplers.CmaEsSampler),
     ("random", optuna.samplers.RandomSampler), ("nsga2", optuna.samplers.NSGAIISampler)],
)
def test_each_sampler_type_builds_its_optuna_sampler(sampler, expected):
    assert isinstance(make_sampler(spec_with(sampler={"type": sampler, "seed": 3})), expected)


def test_grid_sampler_walks_every_combination():
    spec = spec_with(sampler={"type": "grid"}, num_samples=None, search_space={
        "train.train_loops": {"type": "grid", "values": [2, 3]}, "train.lr": {"type": "grid", "values": [0.01, 0.02, 0.03]}})
    assert isinstance(make_sampler(spec), optuna.samplers.GridSampler)
    assert spec.trial_count() == 6


def test_schedulers_count_evaluations():
    asha = make_scheduler(spec_with(scheduler={"type": "asha", "grace_period": 2}))
    assert isinstance(asha, ASHAScheduler)
    assert isinstance(make_scheduler(spec_with(scheduler={"type": "hyperband"})), HyperBandScheduler)
    assert make_scheduler(spec_with()) is None


def test_storage_uris_stay_as_they_are_and_local_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RDT_STORAGE_PATH", raising=False)
    assert resolve_storage_path("s3://bucket/sweeps") == "s3://bucket/sweeps"
    assert resolve_storage_path(None) == str(tmp_path / "ray_results")
    assert resolve_storage_path("runs") == str(tmp_path / "runs")
    assert default_optuna_storage(f"sqlite:///{tmp_path}/x/mlflow.db") == f"sqlite:///{tmp_path}/x/optuna.db"
    assert default_optuna_storage("http://127.0.0.1:5000") == f"sqlite:///{tmp_path}/optuna.db"


def test_a_clusters_storage_default_applies_unless_the_spec_names_one(tmp_path, monkeypatch):
    """RDT_STORAGE_PATH, set where a cluster's Ray starts, lets a plain ``ray job submit`` use S3."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RDT_STORAGE_PATH", "s3://cluster-bucket/rdt")
    assert resolve_storage_path(None) == "s3://cluster-bucket/rdt"
    assert resolve_storage_path("s3://other/x") == "s3://other/x"  # the spec (or --set) wins
    monkeypatch.setenv("RDT_STORAGE_PATH", "shared")
    assert resolve_storage_path(None) == str(tmp_path / "shared")


def searcher_over(storage: str, study_name: str):
    return PruningAwareOptunaSearch(
        space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric="acc", mode="max",
        new_sampler=optuna.samplers.RandomSampler,  # seeded with the offset it is given
        storage=optuna.storages.RDBStorage(storage), study_name=study_name,
    )


def test_a_resumed_search_takes_up_the_trial_a_killed_sweep_gave_out_and_draws_no_parameters_twice(tmp_path):
    """Real Optuna storage. The killed sweep's searcher gave out trial c after Tune last saved its state:
    the restored searcher gives c's trial to the trial Tune asks for in its place, and draws new
    parameters after it (the restored sampler would draw c's again)."""
    storage, saved = f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path / "searcher.pkl"
    killed = searcher_over(storage, "sweep")
    first = [killed.suggest("a"), killed.suggest("b")]
    killed.save(str(saved))  # Tune's last saved state
    given_out = killed.suggest("c")

    resumed = searcher_over(storage, "sweep")
    resumed.restore(str(saved))
    assert resumed.suggest("d") == given_out
    later = resumed.suggest("e")
    study = optuna.load_study(study_name="sweep", storage=storage)
    assert [trial.user_attrs["ray.trial_id"] for trial in study.trials] == ["a", "b", "d", "e"]
    assert later not in [*first, given_out]


def test_a_final_report_sent_again_after_a_resume_is_recorded_once(tmp_path):
    storage, saved = f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path / "searcher.pkl"
    killed = searcher_over(storage, "sweep")
    killed.suggest("a")
    killed.suggest("b")
    killed.save(str(saved))
    killed.on_trial_complete("a", {"acc": 0.5, FINISHED.name(): 1.0, "training_iteration": 3})

    resumed = searcher_over(storage, "sweep")
    resumed.restore(str(saved))  # knows nothing of a's end
    resumed.on_trial_result("a", {"acc": 0.6, "training_iteration": 3})
    resumed.on_trial_complete("a", {"acc": 0.6, FINISHED.name(): 1.0, "training_iteration": 3})
    study = optuna.load_study(study_name="sweep", storage=storage)
    assert [(trial.state, trial.value) for trial in study.trials] == [
        (optuna.trial.TrialState.COMPLETE, 0.5), (optuna.trial.TrialState.RUNNING, None)]
    assert fail_running_trials(study) == 1
    assert study.trials[1].state == optuna.trial.TrialState.FAIL


def test_a_trial_that_failed_for_good_then_completed_after_a_resume_counts_as_completed(tmp_path):
    storage, saved = f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path / "searcher.pkl"
    killed = searcher_over(storage, "sweep")
    params = killed.suggest("a")
    killed.on_trial_complete("a", error=True)  # out of restarts: FAIL
    killed.save(str(saved))

    for _ in range(2):  # resumed twice, each time the trial's final report comes again
        resumed = searcher_over(storage, "sweep")
        resumed.restore(str(saved))
        resumed.on_trial_complete("a", {"acc": 0.5, FINISHED.name(): 1.0, "training_iteration": 3})
    study = optuna.load_study(study_name="sweep", storage=storage)
    assert [trial.state.name for trial in study.trials] == ["FAIL", "COMPLETE"]
    assert study.trials[1].params == params and study.trials[1].value == 0.5
    assert study.trials[1].user_attrs["ray.trial_id"] == "a"


def test_the_concurrency_limiter_passes_on_the_completion_of_a_trial_that_had_failed(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    limiter = ResumableConcurrencyLimiter(searcher_over(storage, "sweep"), max_concurrent=1)
    limiter.suggest("a")
    limiter.on_trial_complete("a", error=True)  # out of restarts: no longer counted as running
    limiter.on_trial_complete("a", {"acc": 0.5, FINISHED.name(): 1.0, "training_iteration": 3})  # after --resume
    study = optuna.load_study(study_name="sweep", storage=storage)
    assert [trial.state.name for trial in study.trials] == ["FAIL", "COMPLETE"]


def test_a_stopped_trial_leaves_sigterm_to_its_default_action():
    """Ray's SIGTERM handler raises SystemExit wherever the stopping trial's Python is (a traceback in the
    sweep's output); once the trial has stopped, SIGTERM gets its default action back."""
    import signal

    from ray import tune
    from ray.tune.trainable.function_trainable import wrap_function

    from rdt_core.sweep.trainables import StopQuietly, run_single_worker_trial, stopping_quietly

    trainable = wrap_function(tune.with_parameters(stopping_quietly(run_single_worker_trial), base={}))
    assert StopQuietly in trainable.__mro__

    class Stopped:
        def cleanup(self) -> None:
            pass

    class Trial(StopQuietly, Stopped):
        pass

    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        Trial().cleanup()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
