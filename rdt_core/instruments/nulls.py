"""The structural nulls beside chance (``rdt_core.data.nulls``): what a split scores by answer elimination
and the last-relation shortcut, per hop count, with no composition at all."""

from __future__ import annotations

from rdt_core.config import ExperimentConfig
from rdt_core.data.nulls import NULL_SHORTCUTS, null_metrics
from rdt_core.instruments.registry import Context, Instrument, hop_counts_of_test_splits
from rdt_core.metrics import NULL, NULL_CHANCE


def nulls(context: Context) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for split, queries in context.test_splits().items():
        metrics.update(null_metrics(context.splits, queries, split))
    return metrics


def names(config: ExperimentConfig) -> set[str]:
    """``null/chance`` and every shortcut of every hop count of every test split."""
    return {NULL_CHANCE.name()} | {
        NULL.name(split=split, hops=hops, stat=shortcut)
        for split, hop_counts in hop_counts_of_test_splits(config).items()
        for hops in hop_counts
        for shortcut in NULL_SHORTCUTS
    }


INSTRUMENT = Instrument("nulls", (NULL_CHANCE, NULL), names, at_end=nulls, figures=("curves", "loops", "hops"))
