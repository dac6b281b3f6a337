"""The logit lens in both readings (``rdt_core.lens``): at the answer position (when does each bridge and
the answer rank first there) and at each relation's own position (when is each prefix query answered),
on the first ``eval.n_lens_queries`` queries of every hop count of every test split."""

from __future__ import annotations

import torch

from rdt_core.config import ExperimentConfig
from rdt_core.instruments.registry import Context, Instrument, hop_counts_of_test_splits
from rdt_core.lens import answer_position_ranks, lens_metrics, prefix_lens_metrics, prefix_ranks
from rdt_core.metrics import LENS_RESOLVED, LENS_TOP1, PREFIX_LENS_RESOLVED


def lens(context: Context) -> dict[str, float]:
    model, max_loops = context.model, context.config.model.max_loops
    metrics: dict[str, float] = {}
    for split, queries in context.test_splits().items():
        for hops in queries.hop_counts():
            sample = queries.with_hops(hops).first(context.config.eval.n_lens_queries)
            metrics.update(lens_metrics(split, hops, answer_position_ranks(model, sample, max_loops)))
            metrics.update(prefix_lens_metrics(split, hops, prefix_ranks(model, sample, max_loops)))
    return metrics


def names(config: ExperimentConfig) -> set[str]:
    """The names of both readings, from their metric functions on placeholder ranks."""
    reported: set[str] = set()
    for split, hop_counts in hop_counts_of_test_splits(config).items():
        ranks = torch.zeros(config.model.max_loops, 1, max(hop_counts), dtype=torch.long)  # (T, Q, K)
        for hops in hop_counts:
            reported |= set(lens_metrics(split, hops, ranks)) | set(prefix_lens_metrics(split, hops, ranks))
    return reported


INSTRUMENT = Instrument("lens", (LENS_TOP1, LENS_RESOLVED, PREFIX_LENS_RESOLVED), names, at_end=lens, figures=("lens",))
