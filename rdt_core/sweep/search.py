"""The search side of a sweep: the spec's space as Tune domains, its Optuna sampler, and Ray Tune's Optuna
searcher made to record early-stopped trials as PRUNED and to keep the study whole across a killed and
resumed sweep."""

from __future__ import annotations

import math
import threading
import zlib
from typing import Any, Callable

import numpy as np
import optuna
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.util import unflatten_dict

from rdt_core.sweep.spec import REPLICATE_KEY, Choice, FloatRange, IntRange, SweepSpec
from rdt_core.metrics import FINISHED, STEP


def tune_search_space(spec: SweepSpec) -> dict[str, Any]:
    """The spec's distributions as Tune domains, keyed by dotted config key, and the replicate index
    (``REPLICATE_KEY``, a grid dimension) when ``seeds > 1``; ``spec.trial_config`` reads it."""
    space: dict[str, Any] = {}
    for key, distribution in spec.search_space.items():
        if isinstance(distribution, IntRange):
            space[key] = tune.randint(distribution.low, distribution.high + 1)  # high is inclusive
        elif isinstance(distribution, FloatRange) and distribution.type == "loguniform":
            space[key] = tune.loguniform(distribution.low, distribution.high)
        elif isinstance(distribution, FloatRange):
            space[key] = tune.uniform(distribution.low, distribution.high)
        elif isinstance(distribution, Choice):  # grid values too: the GridSampler walks them
            space[key] = tune.choice(distribution.values)
    if spec.seeds > 1:
        space[REPLICATE_KEY] = tune.choice(list(range(spec.seeds)))
    return space


# The Optuna trial's user attribute naming its Ray Tune trial, as the child run's tag of the same name does.
TUNE_TRIAL_ATTR = "ray.trial_id"


class PruningAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that records a trial stopped early by the scheduler as PRUNED, and keeps the study
    one Optuna trial per Tune trial across a killed and resumed sweep.

    Ray 2.60's OptunaSearch tells Optuna COMPLETE for every trial that ends without an error, early
    stopped or not, which feeds truncated runs to TPE as finished ones and misleads the dashboards.
    A trial that ran to its end sent the finished marker (``rdt_core.metrics.FINISHED``) in its last report; one that
    the scheduler stopped did not.

    A sweep killed after the study gave out a trial but before Tune saved its state leaves that trial
    RUNNING and unknown to the restored Tune, which asks for one in its place: it gets the abandoned
    trial. The sampler restored with Tune's state would draw those parameters again for the next one,
    so it is replaced by ``new_sampler(number of trials so far)``, the sweep's sampler seeded anew. A
    restored trial may also send again a final report that the study recorded before the kill: it is
    recorded once.
    """

    def __init__(self, *args: Any, new_sampler: Callable[[int], optuna.samplers.BaseSampler], **kwargs: Any):
        super().__init__(*args, sampler=new_sampler(0), **kwargs)
        self._new_sampler = new_sampler
        self._abandoned: list[optuna.Trial] | None = None  # found at the first suggestion

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._abandoned = None  # what the killed sweep left behind is looked for again

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._ot_trials and (abandoned := self._next_abandoned()) is not None:
            self._ot_trials[trial_id] = abandoned
            abandoned.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            return unflatten_dict(abandoned.params)
        asked = trial_id not in self._ot_trials
        params = super().suggest(trial_id)
        if asked and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ATTR, trial_id)
        return params

    def _next_abandoned(self) -> optuna.Trial | None:
        """A RUNNING trial of the study that no trial of this search holds, oldest first."""
        if self._abandoned is None:
            held = {trial.number for trial in self._ot_trials.values()}
            trials = self._ot_study.get_trials(deepcopy=False)
            self._abandoned = [
                optuna.Trial(self._ot_study, trial._trial_id)
                for trial in trials
                if trial.state == optuna.trial.TrialState.RUNNING and trial.number not in held
            ]
            if self._abandoned:
                self._ot_study.sampler = self._new_sampler(len(trials))
        return self._abandoned.pop(0) if self._abandoned else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Intermediate values at optimizer steps, the steps MLflow shows; Ray's would count reports.
        at_step = {**result, "training_iteration": int(result.get(STEP.name(), result["training_iteration"]))}
        try:
            super().on_trial_result(trial_id, at_step)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # a restored trial's report again, after the study recorded its end

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._ot_trials:
            return  # never suggested by this search
        closed = self._closed_in_study(trial_id)
        if closed is not None:  # the study recorded its end before the sweep was killed
            self._completed_trials.add(trial_id)
            if closed == optuna.trial.TrialState.FAIL and not error and result and FINISHED.name() in result:
                self._record_completed_again(trial_id, result)
            return
        stopped_early = result is not None and not error and FINISHED.name() not in result
        if stopped_early and trial_id not in self._completed_trials:
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)

    def _closed_in_study(self, trial_id: str) -> optuna.trial.TrialState | None:
        """How the study recorded the end of ``trial_id`` already (before the sweep was killed), if it did."""
        state = self._ot_study.get_trials(deepcopy=False)[self._ot_trials[trial_id].number].state
        return state if state.is_finished() else None

    def _record_completed_again(self, trial_id: str, result: dict) -> None:
        """A trial that failed for good, then ran to its end after ``--resume``: the study cannot reopen
        the FAIL trial, so it records the completed one as a new trial with the same parameters."""
        trials = self._ot_study.get_trials(deepcopy=False)
        if any(trial.user_attrs.get(TUNE_TRIAL_ATTR) == trial_id and trial.state.name == "COMPLETE" for trial in trials):
            return  # recorded by an earlier resume
        failed = trials[self._ot_trials[trial_id].number]
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        self._ot_study.add_trial(optuna.trial.create_trial(
            params=failed.params, distributions=failed.distributions, values=[result[m] for m in metrics],
            user_attrs={TUNE_TRIAL_ATTR: trial_id},
        ))


class ResumableConcurrencyLimiter(ConcurrencyLimiter):
    """Ray's ConcurrencyLimiter, except that it also passes on the end of a trial it no longer counts as
    running: one that failed for good, then ran to its end after ``--resume``. Ray's drops that end, and
    the study would never hear of the completion."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.live_trials or self.batch:
            super().on_trial_complete(trial_id, result=result, error=error)
        else:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)


def fail_running_trials(study: optuna.Study) -> int:
    """At the end of a sweep, mark FAIL each trial still RUNNING: one that a killed sweep gave out and no
    trial took up again. Returns how many."""
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    return len(running)


class SpaceFillingTPESampler(optuna.samplers.TPESampler):
    """TPE whose startup trials (the first ``n_startup_trials``, or all ``n_trials`` of a shorter sweep)
    come from a seeded space-filling design instead of independent random draws.

    A small sweep is nothing but its start: four random draws of three integers leave one of them
    untried about half the time (smoke.yaml's four trials once all drew train_loops 3). Here each
    parameter is stratified on its own, as in a Latin hypercube: one with at most as many values as
    the design has trials (an int range, a choice) gives every value once, in a seeded order, before
    any value twice; a wider one (or a float range) is cut into one equal stratum per trial, and each
    trial draws from another. Int ranges are cut on the linear scale, log or not (a spec's int ranges
    are linear).

    A trial's design values depend on ``design_seed``, the trial's number and the parameter alone: a
    resumed sweep's new sampler (``PruningAwareOptunaSearch``, TPE seeded anew) goes on through the
    same design without giving a point twice.
    """

    def __init__(self, *, n_trials: int, design_seed: int, **tpe_options: Any):
        super().__init__(**tpe_options)
        self._n_design = min(n_trials, self._n_startup_trials)
        self._design_seed = design_seed

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        if trial.number < self._n_design:
            return {}  # every parameter through sample_independent
        return super().infer_relative_search_space(study, trial)

    def sample_independent(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
        param_distribution: optuna.distributions.BaseDistribution,
    ) -> Any:
        if trial.number < self._n_design:
            return self._design_value(trial.number, param_name, param_distribution)
        return super().sample_independent(study, trial, param_name, param_distribution)

    def _design_value(self, number: int, name: str, distribution: optuna.distributions.BaseDistribution) -> Any:
        """Trial ``number``'s value of parameter ``name``."""
        # Python's str hash differs between processes; crc32 names the parameter's stream for good.
        rng = np.random.default_rng([self._design_seed, zlib.crc32(name.encode())])
        n_values = count_values(distribution)
        if n_values is not None and n_values <= self._n_design:
            passes, place = divmod(number, n_values)  # every value once per pass, each pass reshuffled
            for _ in range(passes):
                rng.permutation(n_values)
            return value_at(distribution, int(rng.permutation(n_values)[place]))
        strata, offsets = rng.permutation(self._n_design), rng.random(self._n_design)
        stratum, offset = int(strata[number]), float(offsets[number])
        if n_values is not None:  # the stratum's own values: a contiguous share of them
            first, end = stratum * n_values // self._n_design, (stratum + 1) * n_values // self._n_design
            return value_at(distribution, first + int(offset * (end - first)))
        fraction = (stratum + offset) / self._n_design
        low, high = distribution.low, distribution.high
        if distribution.log:
            value = math.exp(math.log(low) + fraction * (math.log(high) - math.log(low)))
        else:
            value = low + fraction * (high - low)
        return float(min(value, high))  # fraction < 1, but rounding may still step past high


def count_values(distribution: optuna.distributions.BaseDistribution) -> int | None:
    """How many values ``distribution`` holds; None for a continuous float range."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return len(distribution.choices)
    if distribution.step is None:
        return None
    return int(round((distribution.high - distribution.low) / distribution.step)) + 1


def value_at(distribution: optuna.distributions.BaseDistribution, index: int) -> Any:
    """The ``index``-th value of a distribution with countable values, from its low end."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return distribution.choices[index]
    value = distribution.low + index * distribution.step
    return int(value) if isinstance(distribution, optuna.distributions.IntDistribution) else float(value)


def make_sampler(spec: SweepSpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded with its seed (plus ``seed_offset``: a resumed sweep's new stream).
    TPE, the default, starts from a space-filling design (``SpaceFillingTPESampler``) seeded with the
    spec's seed alone, so that a resumed sweep continues the same design."""
    seed = spec.sampler.seed + seed_offset
    kind = spec.sampler.type
    if kind == "grid":
        return optuna.samplers.GridSampler(spec.grid(), seed=seed)  # the replicate index included
    if kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return PicklableNSGAIISampler(seed=seed)
    return SpaceFillingTPESampler(n_trials=spec.trial_count(), design_seed=spec.sampler.seed, seed=seed)


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II that survives pickling: Optuna 5.1's genetic samplers hold a ``threading.Lock``, and Ray
    Tune pickles its searcher (with the sampler) when the tuner starts and at every checkpoint, so a
    multi-objective sweep failed before its first trial. The lock guards a cache of the current
    generation; a fresh one after unpickling is what a fresh process would have."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


# A subclass would store its generations under its own name in the study; keep NSGA-II's, so that a
# study started by the plain sampler resumes with this one and optuna-dashboard reads it the same.
for _key in ("_GENERATION_KEY", "_PARENT_CACHE_KEY_PREFIX"):
    if hasattr(optuna.samplers.NSGAIISampler, _key):
        setattr(PicklableNSGAIISampler, _key, getattr(optuna.samplers.NSGAIISampler, _key))
del _key


def pareto_front(study: optuna.Study) -> list[dict[str, Any]]:
    """The non-dominated trials of a multi-objective study: their parameters and objective values."""
    return [{"params": trial.params, "values": trial.values} for trial in study.best_trials]
