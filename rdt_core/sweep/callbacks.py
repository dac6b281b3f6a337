"""The Ray Tune callback that mirrors every trial into an MLflow child run of the sweep's parent run."""

from __future__ import annotations

from typing import Any, Mapping

from ray import tune
from ray.train import Checkpoint

from rdt_core.sweep.outbox import Outbox, trial_key
from rdt_core.sweep.spec import trial_params
from rdt_core.sweep.storage import is_local
from rdt_core.sweep.tracking import metrics_of, per_loop_table


def checkpoint_uri(checkpoint: Checkpoint) -> str:
    """Where a checkpoint lives, as a path or a URI (``s3://...``) that ``Checkpoint`` reads back."""
    if is_local(checkpoint.filesystem):
        return checkpoint.path
    return f"{checkpoint.filesystem.type_name}://{checkpoint.path}"


class MlflowTrialCallback(tune.Callback):
    """Mirrors every Tune trial into a child run of the sweep's parent run, through the sweep's outbox.

    Child runs are named ``<sweep>-<n>`` in the order trials start (counted in the store, so a resumed
    sweep continues the numbering): deterministic for a seeded sampler. A trial restarted after its
    process died keeps its run, tagged with the number of restarts.
    """

    def __init__(self, outbox: Outbox, base: Mapping[str, Any]):
        self.outbox = outbox
        self.base = base
        self.started: set[str] = set()  # trials whose run this driver has started

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.started:  # restarted after a failure, or unpaused
            self.outbox.reopen(trial_key(trial.trial_id))
            return
        self.started.add(trial.trial_id)
        params = trial_params(self.base, trial.config)  # the real seeds, and the replicate index if any
        self.outbox.start_trial_run(trial.trial_id, params=params, tags={})

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        step = int(result.get("step", iteration))
        self.outbox.log_metrics(trial_key(trial.trial_id), metrics_of(result), step=step)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.outbox.set_tag(trial_key(trial.trial_id), "ray.restarts", str(trial.num_failures))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key = trial_key(trial.trial_id)
        result = trial.last_result or {}
        table = per_loop_table(result)
        if table:
            self.outbox.log_text(key, table, "per_loop_accuracy.csv")
        checkpoint = trial.checkpoint or (  # a TorchTrainer trial forwards its checkpoint's path
            Checkpoint(result["checkpoint_path"]) if result.get("checkpoint_path") else None
        )
        if checkpoint is not None:
            self.outbox.log_checkpoint(key, checkpoint_uri(checkpoint))
        self.outbox.finish(key, succeeded=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.outbox.finish(trial_key(trial.trial_id), succeeded=False)
