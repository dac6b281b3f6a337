"""A sweep as MLflow holds it: the parent run and one child run per trial, read once.

The diagrams need the final value of many metrics per trial: the run's headline metrics
(``run.data.metrics`` holds the latest value of each) and its tables (``tables/*.json``, one download
per run), read back into metric names by ``rdt_core.metrics.from_tables``; and the history of a few
(``Sweep.history``). Names are built and parsed by ``rdt_core.metrics`` alone.

Trials that differ only in their seeds (a replicated sweep's ``replicate`` index, ``train.seed``,
``data.seed``) are one :class:`Setting`: the diagrams draw the mean over its replicates, with the spread.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from rdt_core.metrics import ACC, Kind, from_tables, names_of
from rdt_core.tracking import store as tracking_store
from rdt_core.tracking.reports import TABLES_DIR, table_rows

DEFAULT_METRIC, DEFAULT_MODE = ACC.name(split="id"), "max"  # the best trial's criterion when the parent has none
# The param of a replicated sweep's replicate index: ``rdt_core.sweep.spec.REPLICATE_KEY`` (the report does
# not import the sweep); with the seeds it sets, what replicates of one setting differ in.
REPLICATE_PARAM = "replicate"
SEED_PARAMS = frozenset({REPLICATE_PARAM, "train.seed", "data.seed"})
# The params whose values tell the settings of a table or figure apart: one name, a list of names, or a
# mapping of names to the headings a table gives them (``{model.architecture: architecture}``).
By = str | Sequence[str] | Mapping[str, str]


class ReportError(ValueError):
    """What the report cannot work with (unknown experiment, run or diagram); the message names it."""


@dataclass(frozen=True)
class Trial:
    """One child run: its config (flattened, as strings), the final value of every metric, and which of
    them MLflow holds as metrics, with a history (the others come from the run's tables)."""

    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    logged: frozenset[str] = frozenset()

    def number(self, key: str) -> float | None:
        """A numeric param, or None when absent or not a number (``None`` for a threshold that is off)."""
        try:
            return float(self.params[key])
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (NaN for one value) and number of the values of one replicated
    quantity; the values that are not finite are left out."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> "Spread":
        finite = [value for value in values if math.isfinite(value)]
        if not finite:
            return cls(math.nan, math.nan, 0)
        std = statistics.stdev(finite) if len(finite) > 1 else math.nan
        return cls(statistics.fmean(finite), std, len(finite))

    def text(self, digits: int = 3, of: int | None = None) -> str:
        """``0.420 ± 0.050 (n=3)``; ``(n=2 of 3)`` when ``of`` replicates were expected."""
        count = f"n={self.n}" + (f" of {of}" if of is not None and of != self.n else "")
        spread = f" ± {self.std:.{digits}f}" if self.n > 1 else ""
        return f"{self.mean:.{digits}f}{spread} ({count})"


@dataclass(frozen=True)
class Setting:
    """The trials of one setting (replicates, which differ only in their seeds) as one: the params they
    share and, per metric, the mean over the replicates that report it and its spread."""

    name: str
    params: dict[str, str]
    replicates: tuple[Trial, ...]
    spread: dict[str, Spread] = field(default_factory=dict)

    @cached_property
    def metrics(self) -> dict[str, float]:
        return {key: spread.mean for key, spread in self.spread.items()}

    @property
    def n(self) -> int:
        return len(self.replicates)

    def number(self, key: str) -> float | None:
        """A numeric param shared by the replicates, or None (as :meth:`Trial.number`)."""
        try:
            return float(self.params[key])
        except (KeyError, ValueError):
            return None


def setting_key(trial: Trial) -> tuple[tuple[str, str], ...]:
    """What a trial's setting is: its params but the seeds."""
    return tuple(sorted((key, value) for key, value in trial.params.items() if key not in SEED_PARAMS))


def group_replicates(trials: list[Trial]) -> list[Setting]:
    """The trials as settings, in the order of their first trial; a setting of one trial keeps its
    name, params and metrics; one of several is named after its first trial (``sweep-000 ×3``)."""
    groups: dict[tuple, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(setting_key(trial), []).append(trial)
    settings = []
    for replicates in groups.values():
        keys = sorted({key for trial in replicates for key in trial.metrics})
        first = replicates[0]
        settings.append(Setting(
            first.name if len(replicates) == 1 else f"{first.name} ×{len(replicates)}",
            first.params if len(replicates) == 1 else dict(setting_key(first)),
            tuple(replicates),
            {key: Spread.of(t.metrics[key] for t in replicates if key in t.metrics) for key in keys},
        ))
    return settings


@dataclass
class Sweep:
    """The parent run, its trials, and the criterion that picks the best trial. Read from an MLflow store
    (``client``), or from an export (``rdt_core.report.export``: no client, the histories it kept)."""

    client: MlflowClient | None
    experiment: str
    parent_run_id: str
    trials: list[Trial]
    metric: str
    mode: str
    stored_histories: dict[str, dict[str, dict[int, float]]] | None = None  # run id -> metric -> step -> value

    def history(self, trial: Trial, key: str) -> dict[int, float]:
        """Value by step of one metric of one trial; of two values at one step (a restarted trial) the
        later one."""
        if self.stored_histories is not None:
            return dict(self.stored_histories[trial.run_id].get(key, {}))
        entries = sorted(self.client.get_metric_history(trial.run_id, key), key=lambda m: (m.step, m.timestamp))
        return {entry.step: entry.value for entry in entries}

    def setting_history(self, setting: Setting, key: str) -> dict[int, Spread]:
        """Mean and spread by step of one metric over the replicates of a setting."""
        histories = [self.history(trial, key) for trial in setting.replicates]
        steps = sorted({step for history in histories for step in history})
        return {step: Spread.of(h[step] for h in histories if step in h) for step in steps}

    @cached_property
    def settings(self) -> list[Setting]:
        """The trials grouped into settings (one per trial unless the sweep replicates over seeds)."""
        return group_replicates(self.trials)

    @property
    def replicated(self) -> bool:
        return any(setting.n > 1 for setting in self.settings)

    def settings_by(self, by: By) -> list[tuple[tuple[str, ...], Setting]]:
        """The settings keyed by their values of the params ``by`` (one name or several), in numeric order
        of numeric values, else in text order; keys that do not tell the settings apart are an error,
        since a table or figure would show one of them in place of several."""
        params = param_names(by)
        keyed = {tuple(setting.params.get(param, "") for param in params): setting for setting in self.settings}
        if len(keyed) < len(self.settings):
            raise ReportError(f"{', '.join(params)} do not tell the settings of {self.experiment!r} apart")
        return sorted(keyed.items(), key=lambda item: [value_order(value) for value in item[0]])

    def best_setting(self) -> Setting | None:
        """The setting with the best mean (over its replicates) of the sweep's metric; None when no
        trial reports it."""
        scored = [s for s in self.settings if math.isfinite(s.metrics.get(self.metric, math.nan))]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda s: s.metrics[self.metric])


def param_names(by: By) -> tuple[str, ...]:
    """``by`` of a table or figure (one param's name, a list of them, or a mapping of them to headings)
    as a tuple of names."""
    return (by,) if isinstance(by, str) else tuple(by)


def value_order(value: str) -> tuple[float, str]:
    """A param's values in numeric order where they are numbers (``2`` before ``16``), else in text order."""
    try:
        return float(value), ""
    except ValueError:
        return math.inf, value


def open_store(tracking_uri: str) -> MlflowClient:
    """A client of an existing store: MLflow would create a missing SQLite file (and print its
    migrations), and a report only reads what a sweep wrote. A SQLite store is opened under its lock, and
    repaired if an older run left it half-migrated (``rdt_core.tracking.open_store``)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per run's tables says nothing
    try:
        return tracking_store.open_store(tracking_uri, create=False)
    except tracking_store.StoreRefused as error:
        raise ReportError(str(error)) from None


def load_sweep(client: MlflowClient, experiment: str, parent_run_id: str | None = None) -> Sweep:
    """The given parent run of ``experiment`` (else its most recent one) and its child runs."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ReportError(f"no experiment {experiment!r} in {client.tracking_uri}")
    parent = parent_run(client, found.experiment_id, experiment, parent_run_id)
    children = runs_of(client, found.experiment_id, f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}'")
    trials = [
        Trial(run.info.run_id, run.info.run_name or run.info.run_id, dict(run.data.params),
              {**run_tables(client, run), **run.data.metrics}, frozenset(run.data.metrics))
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


def run_tables(client: MlflowClient, run: Run) -> dict[str, float]:
    """The metrics a run's tables hold (``rdt_core.tracking.reports``), by name; none for a run with none."""
    with tempfile.TemporaryDirectory(prefix="rdt-tables-") as scratch:
        try:
            folder = Path(client.download_artifacts(run.info.run_id, TABLES_DIR, scratch))
        except (MlflowException, OSError):
            return {}
        tables = {}
        for path in sorted(folder.glob("*.json")):
            tables[path.stem] = table_rows(json.loads(path.read_text()))
    return from_tables(tables)


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


def numbered(metrics: dict[str, float], kind: Kind, word: str, **fields: object) -> dict[int, float]:
    """``{n: value}`` of the metrics of ``kind`` with these ``fields``, keyed by their field ``word``:
    ``numbered(m, ACC_LOOP, "loop", split="id")`` is accuracy by inference loop."""
    return {n: metrics[key] for n, key in numbered_keys(metrics, kind, word, **fields).items()}


def numbered_keys(metrics: Iterable[str], kind: Kind, word: str, **fields: object) -> dict[int, str]:
    """``{n: key}`` of the names of ``kind`` with these ``fields``, keyed by their field ``word``."""
    return {
        values[word]: key
        for key, values in names_of(kind, metrics).items()
        if all(values.get(name) == value for name, value in fields.items())
    }


def splits_of(trials: list[Trial] | list[Setting]) -> list[str]:
    """The evaluation splits that any trial reports, in the order train, id, ood."""
    return [split for split in ("train", "id", "ood") if any(ACC.name(split=split) in t.metrics for t in trials)]
