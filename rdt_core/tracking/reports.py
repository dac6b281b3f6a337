"""What of a run's reports its MLflow run holds, and how: a few headline metrics at every evaluation
(``rdt_core.metrics.is_headline``, plus what the sweep optimises), and at the end the rest as tables
(``tables/<name>.json``, rendered by the MLflow UI) and each split's accuracy over inference loops as one
curve. Ray Tune still receives every metric; MLflow keeps what a person reads.

Writes go to a ``RunWriter``: the sweep's outbox (keyed by run key) or a tracker (keyed by run id).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol

from rdt_core import metrics as names

TABLES_DIR = "tables"


class RunWriter(Protocol):
    def log_metrics(self, run: str, metrics: Mapping[str, float], step: int) -> None: ...
    def log_curve(self, run: str, key: str, values: Mapping[int, float]) -> None: ...
    def log_table(self, run: str, rows: list[Mapping[str, Any]], artifact_file: str) -> None: ...


def table_file(name: str) -> str:
    return f"{TABLES_DIR}/{name}.json"


def table_rows(written: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of a table as ``SweepTracker.log_table`` writes it (pandas' ``split`` orient JSON)."""
    return [dict(zip(written["columns"], row)) for row in written["data"]]


def headline(report: Mapping[str, Any], also: Iterable[str] = ()) -> dict[str, float]:
    """The report's headline metrics (the step aside: it is the step), and those named in ``also``."""
    kept = set(also)
    return {
        key: value
        for key, value in names.ours(report).items()
        if (names.is_headline(key) or key in kept) and key != names.STEP.name()
    }


def log_evaluation(writer: RunWriter, run: str, report: Mapping[str, Any], also: Iterable[str] = ()) -> None:
    """One evaluation's headline metrics, at its optimizer step."""
    step = int(report.get(names.STEP.name(), 0))
    writer.log_metrics(run, headline(report, also), step)


def log_final(writer: RunWriter, run: str, report: Mapping[str, Any]) -> None:
    """A run's last report (finished, or stopped early by a scheduler) as tables and per-loop curves."""
    metrics = names.ours(report)
    for key, curve in names.by_loop_curves(metrics).items():
        writer.log_curve(run, key, curve)
    for table, rows in names.tables(metrics).items():
        writer.log_table(run, rows, table_file(table))
