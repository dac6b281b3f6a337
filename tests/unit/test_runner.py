"""Pure wiring of rdt_core.sweep.runner: samplers, schedulers, storage paths (no Ray started)."""

import optuna
import pytest
from ray.tune.schedulers import ASHAScheduler, HyperBandScheduler

from rdt_core.sweep.runner import default_optuna_storage, make_sampler, make_scheduler, resolve_storage_path
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
