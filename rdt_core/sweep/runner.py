"""Ray Tune wiring: a seeded Optuna searcher over the spec's space, one trial per sampled config.

A trial with one worker runs ``train_worker`` directly in its Tune trial (about 2 s of overhead); a trial
with ``workers_per_trial > 1`` is a small driver that runs Ray Train's TorchTrainer (data-parallel,
Train V2) and forwards its workers' reports to Tune through ``TuneReportCallback``.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import optuna
import ray
import torch
import yaml
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from ray import train as ray_train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, HyperBandScheduler

from rdt_core.config import ExperimentConfig
from rdt_core.report import draw_report
from rdt_core.sweep.callbacks import MlflowTrialCallback
from rdt_core.sweep.resume import (
    delete_runs_of_unknown_trials,
    mark_started,
    put_back_lost_checkpoints,
    saved_tune_trials,
    was_started,
)
from rdt_core.sweep.search import (
    PruningAwareOptunaSearch,
    ResumableConcurrencyLimiter,
    fail_running_trials,
    make_sampler,
    pareto_front,
    tune_search_space,
)
from rdt_core.sweep.spec import SweepSpec, trial_config
from rdt_core.sweep.storage import tune_filesystem
from rdt_core.sweep.outbox import PARENT, Outbox, outbox_path
from rdt_core.sweep.tracking import (
    SweepTracker,
    check_reachable,
    metrics_of,
    resolve_tracking_uri,
    store_must_answer,
)
from rdt_core.train import (
    CHECKPOINT_FILE,
    Reporter,
    evaluate_checkpoint,
    is_resumable,
    read_checkpoint_config,
    train_worker,
)


@dataclass(frozen=True)
class SweepOutcome:
    parent_run_id: str
    tracking_uri: str
    best_config: dict[str, Any]
    best_metrics: dict[str, float]
    n_trials: int
    n_failed: int
    study_name: str
    pareto_front: list[dict[str, Any]]
    report_notes: list[str]
    unsent_writes: int  # MLflow writes kept in outbox_path because the store stopped answering
    outbox_path: str


def checkpointing_reporter(report: Callable[..., None], checkpoint_type: type) -> Reporter:
    """``train_worker``'s reporter for Ray: the checkpoint directory (if any) goes with the report.

    ``report`` and ``checkpoint_type`` are Tune's or Ray Train's: Train V2 keeps its own. Either
    ``report`` copies the checkpoint to the run's storage before it returns.
    """

    def reporter(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        report(metrics, checkpoint=checkpoint_type.from_directory(checkpoint_dir) if checkpoint_dir else None)

    return reporter


def train_resuming(config: ExperimentConfig, reporter: Reporter, latest: Any) -> None:
    """``train_worker`` from ``latest`` (the trial's last reported checkpoint, after a restart), or from
    the start when it is None, or when it cannot be read whole (a sweep killed while it was stored)."""
    checkpoint_dir = Path(tempfile.mkdtemp(prefix="rdt-checkpoint-"))
    if latest is not None:
        with latest.as_directory() as resume_from:
            if is_resumable(Path(resume_from)):
                train_worker(config, reporter, checkpoint_dir, resume_from=Path(resume_from))
                return
        print(f"checkpoint {latest.path} cannot be read whole: the trial starts again from step 0", flush=True)
    train_worker(config, reporter, checkpoint_dir)


def run_single_worker_trial(overrides: dict[str, Any], base: dict[str, Any]) -> None:
    """A whole trial in its Tune actor: the cheapest path for small models."""
    config = trial_config(base, overrides)
    train_resuming(config, checkpointing_reporter(tune.report, tune.Checkpoint), tune.get_checkpoint())


def run_inference_trial(overrides: dict[str, Any], checkpoint_bytes: bytes) -> None:
    """An inference-only trial: the sweep's trained model under this trial's ``eval.*`` settings."""
    path = Path(tempfile.mkdtemp(prefix="rdt-trained-")) / CHECKPOINT_FILE
    path.write_bytes(checkpoint_bytes)
    evaluate_checkpoint(path, overrides, lambda metrics, _: tune.report(metrics))


def data_parallel_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: the same ``train_worker``, reporting to Ray Train."""
    config = trial_config(loop_config["base"], loop_config["overrides"])
    reporter = checkpointing_reporter(ray_train.report, ray_train.Checkpoint)
    train_resuming(config, reporter, ray_train.get_checkpoint())


def run_data_parallel_trial(
    overrides: dict[str, Any], base: dict[str, Any], resources: dict[str, Any], storage_path: str, max_failures: int
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
        # A worker that dies restarts the group from the latest checkpoint; a restarted trial makes a
        # trainer of the same name and storage, which Train V2 resumes from that run's latest checkpoint.
        run_config=ray_train.RunConfig(
            name=f"train-{tune.get_context().get_trial_id()}",
            storage_path=storage_path,
            storage_filesystem=tune_filesystem(storage_path),  # local files written whole, as Tune's
            callbacks=[TuneReportCallback()],
            failure_config=ray_train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray_train.CheckpointConfig(num_to_keep=1),
        ),
    )
    trainer.fit()


def make_trainable(spec: SweepSpec, storage_path: str, checkpoint_bytes: bytes | None) -> Any:
    resources = spec.resources
    if checkpoint_bytes is not None:
        trainable = tune.with_parameters(run_inference_trial, checkpoint_bytes=checkpoint_bytes)
        return tune.with_resources(
            trainable, {"cpu": resources.cpus_per_worker, "gpu": resources.gpus_per_worker}
        )
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
        max_failures=spec.max_failures,
    )
    # The driver only waits on its TorchTrainer; the workers hold the real resources. Tune needs some.
    return tune.with_resources(trainable, {"cpu": 0.01})


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


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep will do, resolved from the spec and the environment, before anything starts."""

    spec: SweepSpec
    spec_path: str
    tracking_uri: str
    storage_path: str
    optuna_storage: str

    @classmethod
    def resolve(cls, spec: SweepSpec, spec_path: Path) -> "SweepPlan":
        tracking_uri = resolve_tracking_uri(spec.tracking_uri)
        return cls(
            spec=spec,
            spec_path=str(spec_path),
            tracking_uri=tracking_uri,
            storage_path=resolve_storage_path(spec.storage_path),
            optuna_storage=spec.optuna_storage or default_optuna_storage(tracking_uri),
        )

    def as_dict(self) -> dict[str, Any]:
        spec = self.spec
        metrics, modes = spec.objectives()
        return {
            "name": spec.name,
            "spec": self.spec_path,
            "objectives": [{"metric": metric, "mode": mode} for metric, mode in zip(metrics, modes)],
            "trials": spec.trial_count(),
            "seeds": spec.seeds,
            "max_concurrent_trials": spec.max_concurrent_trials,
            "sampler": spec.sampler.model_dump(),
            "scheduler": spec.scheduler.model_dump(),
            "search_space": {key: dist.model_dump() for key, dist in spec.search_space.items()},
            "resources_per_trial": {
                **spec.resources.model_dump(),
                "runs_in": "Ray Train TorchTrainer" if spec.resources.workers_per_trial > 1 else "the Tune trial",
            },
            "tracking_uri": self.tracking_uri,
            "storage_path": f"{self.storage_path}/{spec.name}",
            "optuna_storage": self.optuna_storage,
            "optuna_study": f"{spec.name}-<parent run id>",
            "phase_diagrams": list(spec.phase_diagrams),
            "base_config": spec.base_config().to_flat_dict(),
        }


STORAGE_PATH_ENV = "RDT_STORAGE_PATH"


def resolve_storage_path(storage_path: str | None) -> str:
    """Where Ray Tune keeps results and checkpoints: the spec's ``storage_path``, else ``RDT_STORAGE_PATH``
    (a cluster's shared default, set where Ray starts, so that a plain ``ray job submit`` finds it), else
    ``./ray_results``. A URI (``s3://...``, shared by every node) stays as it is; a path is made absolute."""
    chosen = storage_path or os.environ.get(STORAGE_PATH_ENV) or "ray_results"
    if "://" in chosen:
        return chosen
    return str(Path(chosen).resolve())


def default_optuna_storage(tracking_uri: str) -> str:
    """``optuna.db`` beside a SQLite MLflow store, else in the working directory."""
    if tracking_uri.startswith("sqlite:///"):
        store = Path(tracking_uri.removeprefix("sqlite:///"))
        return f"sqlite:///{store.resolve().parent / 'optuna.db'}"
    return f"sqlite:///{Path('optuna.db').resolve()}"


class LocalResourcesError(ValueError):
    """A trial asks for more than the machine of an embedded Ray has; Tune would wait for it forever."""


def check_local_resources(spec: SweepSpec) -> None:
    """For an embedded Ray (no ``RAY_ADDRESS``), one trial must fit on this machine. A cluster may add
    nodes on demand, so a sweep that joins one is not checked here."""
    if os.environ.get("RAY_ADDRESS"):
        return
    resources = spec.resources
    gpus, cpus = torch.cuda.device_count(), os.cpu_count() or 1
    if resources.gpus_per_worker * resources.workers_per_trial > gpus:
        raise LocalResourcesError(
            f"resources.gpus_per_worker: a trial needs {resources.gpus_per_worker * resources.workers_per_trial:g} "
            f"GPUs and this machine has {gpus} (use --set resources.gpus_per_worker=0, or RAY_ADDRESS for a cluster)"
        )
    if resources.cpus_per_worker * resources.workers_per_trial > cpus:
        raise LocalResourcesError(
            f"resources.cpus_per_worker: a trial needs {resources.cpus_per_worker * resources.workers_per_trial:g} "
            f"CPUs and this machine has {cpus}"
        )


class ResumeError(ValueError):
    """``--resume`` found nothing to resume; the message names what is missing."""


class OutboxError(ValueError):
    """A new sweep would mix its MLflow writes with an earlier one's that were never sent."""


def run_sweep(plan: SweepPlan, resume: bool = False) -> SweepOutcome:
    """Run the whole sweep: parent run, trials, best trial, Pareto front, phase diagrams.

    With ``resume``, continue the interrupted sweep of the same name and storage: Tune restores its
    experiment state (finished trials are not run again, unfinished ones restart from their latest
    checkpoint), the parent run and the Optuna study are reused, and a restarted trial logs into the
    child run it already had. Writes to MLflow go through the sweep's outbox, so a tracking store that
    goes away mid-sweep loses nothing (``SweepOutcome.unsent_writes``).
    """
    spec = plan.spec
    metrics, modes = spec.objectives()
    experiment_path = f"{plan.storage_path}/{spec.name}"
    if resume and not was_started(experiment_path):  # before MLflow is touched
        raise ResumeError(f"--resume: no interrupted sweep {spec.name!r} at {experiment_path}")
    kept = outbox_path(spec.name)
    if kept.exists() and not resume:
        raise OutboxError(
            f"{kept} holds MLflow writes of an earlier {spec.name!r} sweep that were never sent: "
            "send them first with --send-outbox (or delete the file)"
        )
    check_reachable(plan.tracking_uri)
    # The client's own retries would stall the sweep for minutes on a store that has gone; the outbox
    # retries instead, for as long as it takes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # Keeping one checkpoint per trial (num_to_keep=1) makes Tune save its experiment state at every
    # checkpoint, as it must so that the state never names a deleted checkpoint; its warning about that,
    # three lines per evaluation of every trial, says nothing a user can act on.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    with store_must_answer(plan.tracking_uri):
        tracker = SweepTracker(plan.tracking_uri, spec.name)
        checkpoint_bytes = trained_checkpoint(spec, tracker)
        base = spec.base if checkpoint_bytes is None else read_checkpoint_config(io.BytesIO(checkpoint_bytes)).model_dump()
        mark_started(experiment_path)  # before the parent run: from here on, --resume finds what it needs
        parent_run_id, study_name = open_parent_run(tracker, plan, base, experiment_path, resume)
        outbox = Outbox(tracker, spec.name, kept)
        outbox.flush()  # what a resumed sweep's first driver could not send
        tune_trials = saved_tune_trials(experiment_path) if resume else None
        if resume:
            delete_runs_of_unknown_trials(tracker, tune_trials or [])
            put_back_lost_checkpoints(tune_trials or [])

    # CPU, memory, disk, network (and GPU where present) of the driver's node, as system/* metrics.
    system_metrics = SystemMetricsMonitor(parent_run_id, sampling_interval=10, tracking_uri=plan.tracking_uri)
    system_metrics.start()
    started_ray = not ray.is_initialized()
    parent_finished = False
    try:
        if started_ray:
            ray.init()  # joins RAY_ADDRESS (or the job's cluster) when set, else starts a local Ray
        trainable = make_trainable(spec, plan.storage_path, checkpoint_bytes)
        if tune_trials is not None:  # the searcher, scheduler and callbacks come back from the saved state
            tuner = tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, resume_errored=True,
                                       storage_filesystem=tune_filesystem(experiment_path))
        else:
            tuner = new_tuner(spec, plan, trainable, study_name, MlflowTrialCallback(Outbox(tracker, spec.name, kept), base))
        results = tuner.fit()
        outbox = Outbox(tracker, spec.name, kept)  # what the callback's outbox left unsent, from its file
        best = results.get_best_result(metric=metrics[0], mode=modes[0])
        best_metrics = metrics_of(best.metrics or {})
        outbox.log_params(PARENT, {f"best.{key}": value for key, value in best.config.items()})
        outbox.log_metrics(PARENT, {f"best/{m}": best_metrics.get(m, float("nan")) for m in metrics}, step=0)
        study = optuna.load_study(study_name=study_name, storage=plan.optuna_storage)
        fail_running_trials(study)
        front = pareto_front(study) if len(metrics) > 1 else []
        if front:
            outbox.log_text(PARENT, json.dumps({"metrics": metrics, "modes": modes, "front": front}, indent=2),
                            "pareto_front.json")
        outbox.finish(PARENT, succeeded=results.num_errors == 0)
        parent_finished = True
        all_sent = wait_until_sent(outbox, OUTBOX_WAIT_S)
        report_notes = draw_phase_diagrams(plan, parent_run_id) if all_sent else []
        return SweepOutcome(
            parent_run_id=parent_run_id,
            tracking_uri=plan.tracking_uri,
            best_config=dict(best.config),
            best_metrics=best_metrics,
            n_trials=len(results),
            n_failed=results.num_errors,
            study_name=study_name,
            pareto_front=front,
            report_notes=report_notes,
            unsent_writes=len(outbox.pending),
            outbox_path=str(kept),
        )
    finally:
        system_metrics.finish()
        if not parent_finished:  # an exception: the parent run ends failed
            Outbox(tracker, spec.name, kept).finish(PARENT, succeeded=False)
        if started_ray:
            ray.shutdown()


def open_parent_run(
    tracker: SweepTracker, plan: SweepPlan, base: dict[str, Any], experiment_path: str, resume: bool
) -> tuple[str, str]:
    """The sweep's parent run (the interrupted sweep's on ``resume``, else a new one), with what a killed
    sweep may not have written yet written now; returns its id and the Optuna study's name."""
    spec = plan.spec
    metrics, modes = spec.objectives()
    parent_run_id = tracker.resume_parent(experiment_path) if resume else None
    if parent_run_id is None:
        parent_run_id = tracker.start_parent(
            spec.name,
            params={},
            tags={
                "sweep.spec_path": plan.spec_path,
                "sweep.metric": metrics[0],
                "sweep.mode": modes[0],
                "sweep.tune_path": experiment_path,
                "optuna.storage": plan.optuna_storage,
            },
        )
    parent = tracker.client.get_run(parent_run_id)
    params = {f"base.{key}": value for key, value in ExperimentConfig.from_dict(base).to_flat_dict().items()}
    tracker.log_params(parent_run_id, {key: value for key, value in params.items() if key not in parent.data.params})
    # Unique per sweep; optuna-dashboard lists it by name.
    study_name = parent.data.tags.get("optuna.study_name") or f"{spec.name}-{parent_run_id}"
    tracker.client.set_tag(parent_run_id, "optuna.study_name", study_name)
    logged = {artifact.path for artifact in tracker.client.list_artifacts(parent_run_id)}
    for name, content in (("spec.yaml", spec.model_dump()), ("plan.yaml", plan.as_dict())):
        if name not in logged:
            tracker.client.log_text(parent_run_id, yaml.safe_dump(content, sort_keys=False), name)
    return parent_run_id, study_name


# At the end of a sweep, how long a store that has gone is waited for before its writes are left kept.
OUTBOX_WAIT_S = float(os.environ.get("RDT_OUTBOX_WAIT_S", "60"))


def wait_until_sent(outbox: Outbox, timeout_s: float) -> bool:
    """Send what the outbox holds, waiting up to ``timeout_s`` for a store that has gone to return."""
    deadline = time.monotonic() + timeout_s
    while not outbox.flush():
        if time.monotonic() > deadline:
            return False
        time.sleep(5)
    return True


def new_tuner(spec: SweepSpec, plan: SweepPlan, trainable: Any, study_name: str, callback: tune.Callback) -> tune.Tuner:
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
            callbacks=[callback],
            verbose=1,
            # A trial whose process dies is restarted from its latest checkpoint, up to max_failures times.
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # the latest: resumable, then the final model
        ),
    )


def trained_checkpoint(spec: SweepSpec, tracker: SweepTracker) -> bytes | None:
    """The trained model an inference-only sweep evaluates: a checkpoint file, or a trial's MLflow run."""
    trained = spec.trained_model
    if trained is None:
        return None
    if trained.checkpoint:
        return Path(trained.checkpoint).read_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        local = tracker.client.download_artifacts(trained.mlflow_run, f"checkpoint/{CHECKPOINT_FILE}", scratch)
        return Path(local).read_bytes()


def draw_phase_diagrams(plan: SweepPlan, parent_run_id: str) -> list[str]:
    """The spec's phase diagrams, drawn from the MLflow runs alone and logged to the parent run."""
    if not plan.spec.phase_diagrams:
        return []
    with tempfile.TemporaryDirectory(prefix="rdt-report-") as scratch:
        report = draw_report(plan.tracking_uri, plan.spec.name, parent_run_id, list(plan.spec.phase_diagrams), Path(scratch))
    return [*report.notes, *(f"logged diagrams/{path.name}" for path in report.files)]
