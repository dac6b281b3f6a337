"""The default sampler's first trials spread over the space: a small sweep tries every value of a searched
integer before any twice. Real Optuna studies in memory, asked for the parameters as Ray's OptunaSearch
asks (the spec's space as fixed distributions); no Ray started."""

import math
import pickle
from collections import Counter
from functools import partial

import optuna
import pytest
from ray.tune.search.optuna import OptunaSearch

from rdt_core.sweep.search import PruningAwareOptunaSearch, make_sampler, tune_search_space
from rdt_core.sweep.spec import SweepSpec, validate_spec
from tests.helpers import load_smoke_spec

SEEDS = range(5)


def smoke_spec(seed: int = 0, **changes) -> SweepSpec:
    raw = {**load_smoke_spec(), "sampler": {"type": "tpe", "seed": seed}, **changes}
    return validate_spec(raw, "smoke.yaml")


def draw(spec: SweepSpec, n_trials: int, sampler: optuna.samplers.BaseSampler | None = None) -> list[dict]:
    """The parameters of ``n_trials`` trials, asked two at a time (the smoke sweep's concurrency) and
    told a result after each pair."""
    study = optuna.create_study(sampler=sampler or make_sampler(spec), direction="maximize")
    space = OptunaSearch.convert_search_space(tune_search_space(spec))
    for start in range(0, n_trials, 2):
        asked = [study.ask(fixed_distributions=space) for _ in range(min(2, n_trials - start))]
        for trial in asked:
            study.tell(trial, 0.5)
    return [trial.params for trial in study.trials]


@pytest.mark.parametrize("seed", SEEDS)
def test_the_smoke_sweeps_four_trials_try_every_train_loops_value(seed):
    """smoke.yaml searches train.train_loops in 2..4 with four trials (seed 0 once drew 3 four times)."""
    spec = smoke_spec(seed)
    assert spec.trial_count() == 4
    trials = draw(spec, 4)
    assert {params["train.train_loops"] for params in trials[:3]} == {2, 3, 4}  # each once before any twice
    # The log-uniform learning rate: one trial in each quarter of [1e-3, 1e-2] on the log scale.
    quarters = {int(4 * math.log(params["train.lr"] / 1e-3) / math.log(10)) for params in trials}
    assert quarters == {0, 1, 2, 3}


def test_the_same_seed_draws_the_same_parameters_and_another_seed_others():
    assert draw(smoke_spec(3), 4) == draw(smoke_spec(3), 4)
    assert draw(smoke_spec(3), 4) != draw(smoke_spec(4), 4)


def test_a_choice_with_as_many_values_as_trials_gives_each_value_once():
    values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    spec = smoke_spec(search_space={"train.lr": {"type": "choice", "values": values}}, num_samples=6)
    assert sorted(params["train.lr"] for params in draw(spec, 6)) == values


def test_a_longer_sweep_starts_with_ten_balanced_trials_and_stays_in_the_space():
    """The design covers TPE's ten startup trials (train_loops as even as ten allows); TPE proposes the
    rest."""
    spec = smoke_spec(num_samples=14)
    trials = draw(spec, 14)
    assert sorted(Counter(params["train.train_loops"] for params in trials[:10]).values()) == [3, 3, 4]
    assert all(2 <= params["train.train_loops"] <= 4 and 1e-3 <= params["train.lr"] <= 1e-2 for params in trials)


def test_the_sampler_pickles_with_tunes_searcher_state():
    sampler = pickle.loads(pickle.dumps(make_sampler(smoke_spec(2))))
    assert draw(smoke_spec(2), 4, sampler) == draw(smoke_spec(2), 4)


def test_every_sampler_pickles_and_nsga2_keeps_its_study_keys():
    """Ray Tune pickles its searcher, sampler included, when the tuner starts: Optuna 5.1's NSGA-II holds
    a thread lock, which failed every multi-objective sweep before its first trial."""
    unpickled = {}
    for kind in ("tpe", "random", "cmaes", "nsga2", "grid"):
        changes = {"sampler": {"type": kind, "seed": 3}}
        if kind == "grid":
            changes |= {"num_samples": 2, "search_space": {"train.lr": {"type": "grid", "values": [0.01, 0.02]}}}
        sampler = make_sampler(validate_spec({**load_smoke_spec(), **changes}, "smoke.yaml"))
        unpickled[kind] = pickle.loads(pickle.dumps(sampler))
        assert type(unpickled[kind]) is type(sampler)
    nsga2 = unpickled["nsga2"]
    assert isinstance(nsga2, optuna.samplers.NSGAIISampler)
    with nsga2._thread_lock:  # a working lock again after unpickling
        pass
    for key in ("_GENERATION_KEY", "_PARENT_CACHE_KEY_PREFIX"):  # a study the plain sampler began resumes
        assert getattr(nsga2, key, None) == getattr(optuna.samplers.NSGAIISampler, key, None)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_resumed_sweeps_new_sampler_goes_on_through_the_same_design(seed, tmp_path):
    """As in a killed sweep (a real Optuna storage, Tune's save and restore of the searcher): trial c was
    given out after Tune last saved the searcher. The resumed searcher gives c's trial to the trial
    Tune asks for in its place, then draws with ``make_sampler(spec, 3)``: the four trials that run
    still try every train_loops value, and no learning rate twice."""
    spec, storage, saved = smoke_spec(seed), f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path / "searcher.pkl"

    def searcher() -> PruningAwareOptunaSearch:
        return PruningAwareOptunaSearch(
            space=OptunaSearch.convert_search_space(tune_search_space(spec)), metric="acc/id_val", mode="max",
            new_sampler=partial(make_sampler, spec), storage=optuna.storages.RDBStorage(storage), study_name="smoke",
        )

    killed = searcher()
    ran = [killed.suggest("a"), killed.suggest("b")]
    killed.save(str(saved))
    given_out = killed.suggest("c")
    resumed = searcher()
    resumed.restore(str(saved))
    ran += [resumed.suggest("d"), resumed.suggest("e")]
    assert given_out in ran
    assert {params["train.train_loops"] for params in ran} == {2, 3, 4}
    assert len({params["train.lr"] for params in ran}) == 4
