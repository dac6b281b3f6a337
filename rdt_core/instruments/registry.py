"""What an instrument is, and the one list of them that everything else is derived from.

An instrument measures something beyond accuracy: halting's saved loops, the structural nulls, the logit
lens, activation patching, the state norm. Each is one :class:`Instrument`, declared in one module of this
package and registered once (``rdt_core/instruments/__init__.py``). From the registry come:

- the end-of-run analysis (``rdt_core.train.analysis.final_analysis`` runs every ``at_end``);
- what an evaluation adds beside accuracy (``rdt_core.eval.evaluate`` runs every ``at_evaluation``);
- the metric names a run reports (``reported_metric_names`` gathers every ``names``), so a sweep may
  optimise any of them and a spec naming another is refused;
- the run's tables: each kind of ``rdt_core.metrics`` names the table its values go to
  (``metrics.tables``), and registering an instrument makes its kinds known there, so its values reach
  the run's ``tables/*.json`` and come back from them into the report (``metrics.from_tables``);
- ``figures`` names what in the report shows it: diagrams (``rdt_core.report.diagrams.DIAGRAMS``), line
  figures (``report.figures.LINE_FIGURES``) or number tables (``report.numbers.TABLES``); the drawing
  stays in the report, which reads tracked runs and needs neither torch nor this package.

``names`` is computed, never a second copy of ``at_end``: an instrument builds its names with the same
metric functions that its computation calls, on placeholder inputs of the right shapes (a test runs every
instrument on a small real model and checks the two agree).

This module stands below the report and the sweep: it imports no MLflow, Ray or Optuna.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from rdt_core import metrics
from rdt_core.config import ExperimentConfig
from rdt_core.data.queries import QuerySet, Splits, n_held_out_facts
from rdt_core.model.transformer import RecurrentDepthTransformer


@dataclass(frozen=True)
class Context:
    """Everything the end-of-run analysis may read: the trained model, the data, the query sets of
    every evaluation (``rdt_core.train.analysis.device_eval_sets``), the config and the device."""

    model: RecurrentDepthTransformer
    splits: Splits
    eval_sets: dict[str, QuerySet]
    config: ExperimentConfig
    device: torch.device

    def test_splits(self) -> dict[str, QuerySet]:
        """The test splits (``id``, ``ood``): neither the training sample nor a validation split."""
        return {
            split: queries
            for split, queries in self.eval_sets.items()
            if split != "train" and not metrics.is_validation(split)
        }


@dataclass(frozen=True, eq=False)  # an instrument is itself: registered and removed by identity
class Instrument:
    """One instrument: its name, its metric kinds, the names it may report for a config, what it
    computes at the end of a run and at each evaluation, and what in the report shows it.

    ``names`` lists every name it may report for a config (a superset where what is reported depends on
    the trained model, as patching's trivial cells do). ``at_evaluation`` reads the per-split results of
    one evaluation pass (``rdt_core.eval.SplitResult`` by split; not imported here, since
    ``rdt_core.eval`` runs the registry)."""

    name: str
    kinds: tuple[metrics.Kind, ...]
    names: Callable[[ExperimentConfig], set[str]]
    at_end: Callable[[Context], dict[str, float]] | None = None
    at_evaluation: Callable[[Mapping[str, Any], ExperimentConfig], dict[str, float]] | None = None
    figures: tuple[str, ...] = ()

    @property
    def tables(self) -> dict[str, list[metrics.Kind]]:
        """Table name -> the kinds whose values fill it: ``metrics.tables`` makes one row per combination
        of a kind's fields (its ``stat`` aside, which names a column) from a run's final metrics."""
        by_table: dict[str, list[metrics.Kind]] = {}
        for kind in self.kinds:
            if kind.table is not None:
                by_table.setdefault(kind.table, []).append(kind)
        return by_table


INSTRUMENTS: list[Instrument] = []
_ADDED_KINDS: dict[int, list[metrics.Kind]] = {}  # id(instrument) -> kinds its registration made known


def register(instrument: Instrument) -> Instrument:
    """Add ``instrument`` to the registry, and its kinds to those ``rdt_core.metrics`` parses (so that its
    names go to its tables and round-trip through them). A second instrument of the same name is an error."""
    if any(known.name == instrument.name for known in INSTRUMENTS):
        raise ValueError(f"an instrument named {instrument.name!r} is registered already")
    added = [kind for kind in instrument.kinds if kind not in metrics.KINDS]
    metrics.KINDS.extend(added)
    _ADDED_KINDS[id(instrument)] = added
    INSTRUMENTS.append(instrument)
    return instrument


def unregister(instrument: Instrument) -> None:
    """Remove ``instrument`` and the kinds its registration added (a test's toy instrument leaves no trace)."""
    INSTRUMENTS.remove(instrument)
    for kind in _ADDED_KINDS.pop(id(instrument)):
        metrics.KINDS.remove(kind)


def split_hop_counts(config: ExperimentConfig) -> dict[str, list[int]]:
    """The reported evaluation splits of ``config`` and the hop counts each holds."""
    data = config.data
    tested = list(range(2, data.test_max_hops + 1))
    splits = {"train": list(range(1, data.train_max_hops + 1)), "id": tested}
    if n_held_out_facts(data):
        splits["ood"] = tested
    return splits


def hop_counts_of_test_splits(config: ExperimentConfig) -> dict[str, list[int]]:
    """As :func:`split_hop_counts`, the training sample left out."""
    return {split: hops for split, hops in split_hop_counts(config).items() if split != "train"}
