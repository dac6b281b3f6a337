"""What a Tune trial runs: ``train_worker`` in the trial itself (one worker), in a TorchTrainer's workers
(data-parallel, Train V2, its reports forwarded to Tune), or an inference-only evaluation of a trained
checkpoint. A trial with one worker costs about 2 s of overhead; a TorchTrainer about 20 s.
"""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path
from typing import Any, Callable

from ray import train as ray_train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from rdt_core.config import ExperimentConfig
from rdt_core.sweep.spec import SweepSpec, trial_config
from rdt_core.sweep.storage import tune_filesystem
from rdt_core.train import CHECKPOINT_FILE, Reporter, evaluate_checkpoint, is_resumable, train_worker


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


class StopQuietly:
    """Mixed into a trial's Tune trainable: once the trial has stopped, SIGTERM ends its process at once.

    Tune removes a finished trial's placement group as soon as the trial's ``stop()`` returns, and the
    raylet then sends SIGTERM to the actor's process while it is still exiting (ray-project/ray#13487).
    Ray's handler raises SystemExit in whatever Python code runs at that moment, often a weakref
    callback of the teardown, where Python can only print it: a worker's traceback ("Exception ignored
    in ... SystemExit: 1") among the sweep's output. Once stopped, a trial has nothing left to save, so
    SIGTERM gets back its default action, which runs no Python code. ``stop()``, and with it
    ``cleanup()``, runs on the actor's main thread, the one thread that may set a signal handler.
    """

    def cleanup(self) -> None:
        super().cleanup()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def stopping_quietly(trial: Callable[..., None]) -> Callable[..., None]:
    """``trial`` with :class:`StopQuietly` mixed into the trainable Tune makes of it (Tune's
    ``wrap_function`` honours ``__mixins__``; ``tune.with_parameters`` passes them on)."""
    trial.__mixins__ = (StopQuietly,)
    return trial


def make_trainable(spec: SweepSpec, storage_path: str, checkpoint_bytes: bytes | None) -> Any:
    resources = spec.resources
    if checkpoint_bytes is not None:
        trainable = tune.with_parameters(stopping_quietly(run_inference_trial), checkpoint_bytes=checkpoint_bytes)
        return tune.with_resources(
            trainable, {"cpu": resources.cpus_per_worker, "gpu": resources.gpus_per_worker}
        )
    if resources.workers_per_trial == 1:
        trainable = tune.with_parameters(stopping_quietly(run_single_worker_trial), base=spec.base)
        return tune.with_resources(
            trainable, {"cpu": resources.cpus_per_worker, "gpu": resources.gpus_per_worker}
        )
    trainable = tune.with_parameters(
        stopping_quietly(run_data_parallel_trial),
        base=spec.base,
        resources=resources.model_dump(),
        storage_path=storage_path,
        max_failures=spec.max_failures,
    )
    # The driver only waits on its TorchTrainer; the workers hold the real resources. Tune needs some.
    return tune.with_resources(trainable, {"cpu": 0.01})
