"""A sweep as MLflow holds it: the parent run and one child run per trial, read once.

The diagrams need the final value of many metrics per trial (``run.data.metrics`` already holds the
latest value of every key, so no per-key request), and the history of a few (``Sweep.history``).
Metric names follow ``rdt_core.eval``: ``acc/<split>[/hops_<k>][/loop_<t>]``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

DEFAULT_METRIC, DEFAULT_MODE = "acc/id", "max"  # the best trial's criterion when the parent has none


class ReportError(ValueError):
    """What the report cannot work with (unknown experiment, run or diagram); the message names it."""


@dataclass(frozen=True)
class Trial:
    """One child run: its config (flattened, as strings) and the final value of every metric."""

    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]

    def number(self, key: str) -> float | None:
        """A numeric param, or None when absent or not a number (``None`` for a threshold that is off)."""
        try:
            return float(self.params[key])
        except (KeyError, ValueError):
            return None


@dataclass
class Sweep:
    """The parent run, its trials, and the criterion that picks the best trial."""

    client: MlflowClient
    experiment: str
    parent_run_id: str
    trials: list[Trial]
    metric: str
    mode: str

    def history(self, trial: Trial, key: str) -> dict[int, float]:
        """Value by step of one metric of one trial; of two values at one step (a restarted trial) the
        later one."""
        entries = sorted(self.client.get_metric_history(trial.run_id, key), key=lambda m: (m.step, m.timestamp))
        return {entry.step: entry.value for entry in entries}

    def best_trial(self) -> Trial | None:
        """The trial with the best final value of the sweep's metric; None when no trial reports it."""
        scored = [t for t in self.trials if math.isfinite(t.metrics.get(self.metric, math.nan))]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda t: t.metrics[self.metric])


def open_store(tracking_uri: str) -> MlflowClient:
    """A client of an existing store: MLflow would create a missing SQLite file (and print its
    migrations), and a report only reads what a sweep wrote."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise ReportError(f"no MLflow store at {tracking_uri}")
    return MlflowClient(tracking_uri)


def load_sweep(client: MlflowClient, experiment: str, parent_run_id: str | None = None) -> Sweep:
    """The given parent run of ``experiment`` (else its most recent one) and its child runs."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ReportError(f"no experiment {experiment!r} in {client.tracking_uri}")
    parent = parent_run(client, found.experiment_id, experiment, parent_run_id)
    children = runs_of(client, found.experiment_id, f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}'")
    trials = [
        Trial(run.info.run_id, run.info.run_name or run.info.run_id, dict(run.data.params), dict(run.data.metrics))
        for run in children
    ]
    if not trials:
        raise ReportError(f"run {parent.info.run_id} of {experiment!r} has no child runs (trials)")
    tags = parent.data.tags
    return Sweep(
        client,
        experiment,
        parent.info.run_id,
        sorted(trials, key=lambda t: t.name),
        tags.get("sweep.metric", DEFAULT_METRIC),
        tags.get("sweep.mode", DEFAULT_MODE),
    )


def parent_run(client: MlflowClient, experiment_id: str, experiment: str, run_id: str | None) -> Run:
    """The sweep's parent run: ``run_id`` checked to be one, else the most recently started one."""
    if run_id is None:
        parents = (run for run in runs_of(client, experiment_id, "") if MLFLOW_PARENT_RUN_ID not in run.data.tags)
        latest = next(parents, None)
        if latest is None:
            raise ReportError(f"experiment {experiment!r} has no parent run (a sweep's run without a parent)")
        return latest
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ReportError(f"no run {run_id!r} in {client.tracking_uri}") from None
    if run.info.experiment_id != experiment_id:
        raise ReportError(f"run {run_id} is not in experiment {experiment!r}")
    if MLFLOW_PARENT_RUN_ID in run.data.tags:
        raise ReportError(f"run {run_id} is a trial's child run; pass its parent run")
    return run


def runs_of(client: MlflowClient, experiment_id: str, filter_string: str) -> Iterator[Run]:
    """Every run of the experiment matching the filter, newest first, page after page."""
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string, order_by=["attributes.start_time DESC"], page_token=token
        )
        yield from page
        token = page.token
        if not token:
            return


def numbered(metrics: dict[str, float], prefix: str, word: str) -> dict[int, float]:
    """``{n: value}`` of the keys ``<prefix>/<word>_<n>``: ``numbered(m, "acc/id", "loop")`` is accuracy
    by inference loop, ``numbered(m, "acc/id", "hops")`` by hop count."""
    pattern = re.compile(rf"{re.escape(prefix)}/{word}_(\d+)")
    return {int(match[1]): value for key, value in metrics.items() if (match := pattern.fullmatch(key))}


def splits_of(trials: list[Trial]) -> list[str]:
    """The evaluation splits that any trial reports, in the order train, id, ood."""
    return [split for split in ("train", "id", "ood") if any(f"acc/{split}" in t.metrics for t in trials)]
