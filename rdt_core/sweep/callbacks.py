"""The Ray Tune callback that mirrors every trial into an MLflow child run of the sweep's parent run."""

from __future__ import annotations

from typing import Any, Mapping

from ray import tune
from ray.train import Checkpoint as RayTrainCheckpoint

from rdt_core.config import ExperimentConfig
from rdt_core.sweep.tracking import SweepTracker, metrics_of, per_loop_table


class MlflowTrialCallback(tune.Callback):
    """Mirrors every Tune trial into a child run of the sweep's parent run.

    Child runs are named ``<sweep>-<n>`` in the order trials start (counted in the store, so a resumed
    sweep continues the numbering): deterministic for a seeded sampler.
    """

    def __init__(self, tracker: SweepTracker, sweep_name: str, base: Mapping[str, Any]):
        self.tracker = tracker
        self.sweep_name = sweep_name
        self.base = base
        self.run_id_by_trial: dict[str, str] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        existing = self.run_id_by_trial.get(trial.trial_id) or self.tracker.child_of_trial(trial.trial_id)
        if existing:  # a restarted or resumed trial keeps its run
            self.run_id_by_trial[trial.trial_id] = existing
            self.tracker.reopen(existing)
            return
        run_name = f"{self.sweep_name}-{self.tracker.count_children():03d}"
        config = ExperimentConfig.from_dict(self.base, trial.config)
        self.run_id_by_trial[trial.trial_id] = self.tracker.start_child(
            run_name, params=config.to_flat_dict(), tags={"ray.trial_id": trial.trial_id}
        )

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id = self.run_id_by_trial[trial.trial_id]
        self.tracker.log_metrics(run_id, metrics_of(result), step=int(result.get("step", iteration)))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_id_by_trial[trial.trial_id]
        result = trial.last_result or {}
        table = per_loop_table(result)
        if table:
            self.tracker.client.log_text(run_id, table, "per_loop_accuracy.csv")
        checkpoint = trial.checkpoint or (  # a TorchTrainer trial forwards its checkpoint's path
            RayTrainCheckpoint(result["checkpoint_path"]) if result.get("checkpoint_path") else None
        )
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                self.tracker.client.log_artifacts(run_id, directory, "checkpoint")
        self.tracker.finish(run_id, succeeded=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.finish(self.run_id_by_trial[trial.trial_id], succeeded=False)
