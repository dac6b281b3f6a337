"""``run_sweep``: a sweep as plan -> tracking -> tuner -> summary, resumable at every step.

The plan (``plan``) is resolved from the spec before anything starts; the tracking (``parent``) opens the
parent run, the Optuna study and the outbox every MLflow write goes through; the tuner runs the trials
(``trainables``) under a seeded Optuna searcher (``search``) with each trial mirrored into a child run
(``callbacks``) and shown as it goes (``console``); the summary (``summary``) makes the parent run the
sweep's leaderboard and draws the phase diagrams. What ``--resume`` does is told step by step in
``resume``, whose ``Resumption`` is made here once and handed to the tracking and the tuner.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from functools import partial
from typing import Any, Iterator

import optuna
import ray
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from ray import tune
from ray.tune.schedulers import ASHAScheduler, HyperBandScheduler

from rdt_core.sweep.callbacks import MlflowTrialCallback
from rdt_core.sweep.console import ProgressCallback
from rdt_core.sweep.parent import OutboxError, SweepTracking
from rdt_core.sweep.plan import LocalResourcesError, SweepPlan, check_local_resources
from rdt_core.sweep.resume import ResumeError, Resumption
from rdt_core.sweep.search import (
    PruningAwareOptunaSearch,
    ResumableConcurrencyLimiter,
    make_sampler,
    tune_search_space,
)
from rdt_core.sweep.spec import SweepSpec
from rdt_core.sweep.storage import tune_filesystem
from rdt_core.sweep.summary import SweepOutcome, summarize
from rdt_core.sweep.trainables import make_trainable
from rdt_core.tracking import PARENT

__all__ = ["LocalResourcesError", "OutboxError", "ResumeError", "SweepOutcome", "SweepPlan", "check_local_resources",
           "run_sweep"]


def run_sweep(plan: SweepPlan, resume: bool = False) -> SweepOutcome:
    """Run the whole sweep: parent run, trials, leaderboard, phase diagrams.

    With ``resume``, continue the interrupted sweep of the same name and storage (``resume.Resumption``):
    Tune restores its experiment state (finished trials are not run again, unfinished ones restart from
    their latest checkpoint), the parent run and the Optuna study are reused, and a restarted trial logs
    into the child run it already had. Writes to MLflow go through the sweep's outbox, so a tracking
    store that goes away mid-sweep loses nothing (``SweepOutcome.unsent_writes``).
    """
    # Keeping one checkpoint per trial (num_to_keep=1) makes Tune save its experiment state at every
    # checkpoint, as it must so that the state never names a deleted checkpoint; its warning about that,
    # three lines per evaluation of every trial, says nothing a user can act on.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    resumption = Resumption.begin(plan, resume)
    tracking = SweepTracking.open(plan, resumption)
    finished = False
    try:
        with system_metrics_of(plan, tracking.parent_run_id), embedded_ray():
            results = make_tuner(plan, tracking, resumption).fit()
        outcome = summarize(plan, tracking, results)
        finished = True
        return outcome
    finally:
        if not finished:  # an exception: the parent run ends failed
            tracking.outbox.reload()
            tracking.outbox.finish(PARENT, succeeded=False)


@contextmanager
def system_metrics_of(plan: SweepPlan, parent_run_id: str) -> Iterator[None]:
    """CPU, memory, disk, network (and GPU where present) of the driver's node, as the parent's system/*."""
    monitor = SystemMetricsMonitor(parent_run_id, sampling_interval=10, tracking_uri=plan.tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


@contextmanager
def embedded_ray() -> Iterator[None]:
    """Ray for the sweep: the one already initialised, else RAY_ADDRESS's (or the job's) cluster, else a
    local Ray started here and shut down at the end."""
    started = not ray.is_initialized()
    if started:
        ray.init()
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def make_tuner(plan: SweepPlan, tracking: SweepTracking, resumption: Resumption) -> tune.Tuner:
    """The Tuner Tune saved, on ``--resume``, else a new one."""
    trainable = make_trainable(plan.spec, plan.storage_path, tracking.checkpoint_bytes)
    if (restored := resumption.restored_tuner(trainable)) is not None:
        with_progress(restored, plan.spec)
        return restored
    metrics, _ = plan.spec.objectives()
    callback = MlflowTrialCallback(tracking.outbox, tracking.base, metrics, tracking.study_name, plan.optuna_storage)
    progress = ProgressCallback(plan.spec, name_of=callback.run_name)
    return new_tuner(plan.spec, plan, trainable, tracking.study_name, [callback, progress])


def with_progress(restored: tune.Tuner, spec: SweepSpec) -> None:
    """A restored Tuner runs with the callbacks Tune saved; one saved by a sweep of an earlier version has
    no ``ProgressCallback``, which is added (Tune offers no public way: its run config is reached inside)."""
    local = getattr(restored, "_local_tuner", None)  # None through Ray Client
    run_config = local.get_run_config() if local is not None else None
    if run_config is None or any(isinstance(c, ProgressCallback) for c in run_config.callbacks or []):
        return
    mlflow = next((c for c in run_config.callbacks or [] if isinstance(c, MlflowTrialCallback)), None)
    run_config.callbacks = [*(run_config.callbacks or []),
                            ProgressCallback(spec, name_of=mlflow.run_name if mlflow is not None else None)]


def make_scheduler(spec: SweepSpec) -> Any:
    """ASHA or HyperBand over evaluations (one Tune iteration per report), or None for FIFO."""
    base = spec.base_config().train
    evaluations = math.ceil(base.steps / base.eval_every)
    if spec.scheduler.type == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=evaluations,
            grace_period=min(spec.scheduler.grace_period, evaluations),
            reduction_factor=spec.scheduler.reduction_factor,
        )
    if spec.scheduler.type == "hyperband":
        return HyperBandScheduler(
            time_attr="training_iteration", max_t=evaluations, reduction_factor=spec.scheduler.reduction_factor
        )
    return None


def new_tuner(spec: SweepSpec, plan: SweepPlan, trainable: Any, study_name: str,
              callbacks: list[tune.Callback]) -> tune.Tuner:
    metrics, modes = spec.objectives()
    single = len(metrics) == 1
    searcher = PruningAwareOptunaSearch(
        metric=metrics[0] if single else metrics,
        mode=modes[0] if single else modes,
        new_sampler=partial(make_sampler, spec),
        storage=optuna.storages.RDBStorage(plan.optuna_storage),
        study_name=study_name,
    )
    return tune.Tuner(
        trainable,
        param_space=tune_search_space(spec),
        tune_config=tune.TuneConfig(
            search_alg=ResumableConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent_trials),
            scheduler=make_scheduler(spec),
            num_samples=spec.trial_count(),
            metric=metrics[0] if single else None,
            mode=modes[0] if single else None,
            trial_dirname_creator=lambda trial: f"trial-{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=plan.storage_path,
            storage_filesystem=tune_filesystem(plan.storage_path),  # local files written whole
            callbacks=callbacks,
            verbose=1,  # Tune's result tables: to the sweep's log (rdt_core.sweep.console), shown with --verbose
            # A trial whose process dies is restarted from its latest checkpoint, up to max_failures times.
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # the latest: resumable, then the final model
        ),
    )
