"""Ray Tune wiring: a seeded Optuna searcher over the spec's space, one trial per sampled config.

A trial with one worker runs ``train_worker`` directly in its Tune trial (about 2 s of overhead); a trial
with ``workers_per_trial > 1`` is a small driver that runs Ray Train's TorchTrainer (data-parallel,
Train V2) and forwards its workers' reports to Tune through ``TuneReportCallback``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
import yaml
from ray import train as ray_train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from rdt_core.config import ExperimentConfig
from rdt_core.sweep.spec import Choice, FloatRange, IntRange, SweepSpec
from rdt_core.sweep.tracking import MlflowTrialCallback, SweepTracker, metrics_of, resolve_tracking_uri
from rdt_core.train import train_worker


@dataclass(frozen=True)
class SweepOutcome:
    parent_run_id: str
    tracking_uri: str
    best_config: dict[str, Any]
    best_metrics: dict[str, float]
    n_trials: int
    n_failed: int


def tune_search_space(spec: SweepSpec) -> dict[str, Any]:
    """The spec's distributions as Tune domains, keyed by dotted config key."""
    space: dict[str, Any] = {}
    for key, distribution in spec.search_space.items():
        if isinstance(distribution, IntRange):
            space[key] = tune.randint(distribution.low, distribution.high + 1)  # high is inclusive
        elif isinstance(distribution, FloatRange) and distribution.type == "loguniform":
            space[key] = tune.loguniform(distribution.low, distribution.high)
        elif isinstance(distribution, FloatRange):
            space[key] = tune.uniform(distribution.low, distribution.high)
        elif isinstance(distribution, Choice):
            space[key] = tune.choice(distribution.values)
    return space


def run_single_worker_trial(overrides: dict[str, Any], base: dict[str, Any]) -> None:
    """A whole trial in its Tune actor: the cheapest path for small models."""
    train_worker(ExperimentConfig.from_dict(base, overrides), tune.report)


def data_parallel_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: the same ``train_worker``, reporting to Ray Train."""
    config = ExperimentConfig.from_dict(loop_config["base"], loop_config["overrides"])
    train_worker(config, ray_train.report)


def run_data_parallel_trial(
    overrides: dict[str, Any], base: dict[str, Any], resources: dict[str, Any], storage_path: str
) -> None:
    """A Tune trial that drives a TorchTrainer; its run is named after the trial, with no timestamp."""
    gpus = resources["gpus_per_worker"]
    per_worker = {"CPU": resources["cpus_per_worker"], **({"GPU": gpus} if gpus else {})}
    trainer = TorchTrainer(
        data_parallel_worker,
        train_loop_config={"base": base, "overrides": overrides},
        scaling_config=ray_train.ScalingConfig(
            num_workers=resources["workers_per_trial"],
            use_gpu=gpus > 0,
            resources_per_worker=per_worker,
        ),
        run_config=ray_train.RunConfig(
            name=f"train-{tune.get_context().get_trial_id()}",
            storage_path=storage_path,
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def make_trainable(spec: SweepSpec, storage_path: str) -> Any:
    resources = spec.resources
    if resources.workers_per_trial == 1:
        trainable = tune.with_parameters(run_single_worker_trial, base=spec.base)
        return tune.with_resources(
            trainable, {"cpu": resources.cpus_per_worker, "gpu": resources.gpus_per_worker}
        )
    trainable = tune.with_parameters(
        run_data_parallel_trial,
        base=spec.base,
        resources=resources.model_dump(),
        storage_path=storage_path,
    )
    # The driver only waits on its TorchTrainer; the workers hold the real resources. Tune needs some.
    return tune.with_resources(trainable, {"cpu": 0.01})


def run_sweep(spec: SweepSpec, spec_path: Path) -> SweepOutcome:
    """Run the whole sweep: parent run, trials, best trial; Ray is joined or started as needed."""
    tracking_uri = resolve_tracking_uri(spec.tracking_uri)
    storage_path = str(Path(spec.storage_path or "ray_results").resolve())
    tracker = SweepTracker(tracking_uri, spec.name)
    parent_run_id = tracker.start_parent(
        spec.name,
        params={f"base.{key}": value for key, value in spec.base_config().to_flat_dict().items()},
        tags={"sweep.spec_path": str(spec_path), "sweep.metric": spec.metric, "sweep.mode": spec.mode},
    )
    tracker.client.log_text(parent_run_id, yaml.safe_dump(spec.model_dump(), sort_keys=False), "spec.yaml")

    started_ray = not ray.is_initialized()
    succeeded = False
    try:
        if started_ray:
            ray.init()  # joins RAY_ADDRESS (or the job's cluster) when set, else starts a local Ray
        searcher = OptunaSearch(
            metric=spec.metric, mode=spec.mode, sampler=optuna.samplers.TPESampler(seed=spec.seed)
        )
        tuner = tune.Tuner(
            make_trainable(spec, storage_path),
            param_space=tune_search_space(spec),
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent_trials),
                num_samples=spec.num_samples,
                metric=spec.metric,
                mode=spec.mode,
                trial_dirname_creator=lambda trial: f"trial-{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=storage_path,
                callbacks=[MlflowTrialCallback(tracker, spec.name, spec.base)],
                verbose=1,
            ),
        )
        results = tuner.fit()
        best = results.get_best_result()
        best_metrics = metrics_of(best.metrics or {})
        tracker.log_params(parent_run_id, {f"best.{key}": value for key, value in best.config.items()})
        tracker.log_metrics(
            parent_run_id, {f"best/{spec.metric}": best_metrics.get(spec.metric, float("nan"))}, step=0
        )
        succeeded = results.num_errors == 0
        return SweepOutcome(
            parent_run_id=parent_run_id,
            tracking_uri=tracking_uri,
            best_config=dict(best.config),
            best_metrics=best_metrics,
            n_trials=len(results),
            n_failed=results.num_errors,
        )
    finally:
        tracker.finish(parent_run_id, succeeded=succeeded)
        if started_ray:
            ray.shutdown()
