"""Activation patching (``rdt_core.patching``) of the state and of the injected input, over loops and
positions, for the trained model and for a randomly initialised one of the same shape
(``patching_null/...``): a recovery that also shows on the null is the architecture's, not training's.

It runs on in-distribution test queries of the deepest trained hop count, at the trained loop count
(``eval.patching_loops`` overrides it), with cells trivial by construction left out.
"""

from __future__ import annotations

import torch

from rdt_core.config import ExperimentConfig
from rdt_core.instruments.registry import Context, Instrument
from rdt_core.metrics import PATCHING, PATCHING_GAP
from rdt_core.patching import (
    PatchingGrid,
    corrupt_first_relation,
    patching_grid,
    patching_metrics,
    random_null_model,
    trivial_cells,
)

PATCHING_POINTS = ("state", "injected")
MODELS = ("patching", "patching_null")  # the trained model, then its random-weight null


def patching_hops(config: ExperimentConfig) -> int:
    """Patching runs on in-distribution test queries of the deepest trained hop count (at least 2)."""
    return max(2, config.data.train_max_hops)


def patching_loops(config: ExperimentConfig) -> int:
    return config.eval.patching_loops or config.train.train_loops


def patching(context: Context) -> dict[str, float]:
    """Both points on both models; nothing when no corrupted query changes its answer."""
    config, splits, device = context.config, context.splits, context.device
    hops = patching_hops(config)
    clean = context.eval_sets["id"].with_hops(hops)
    generator = torch.Generator().manual_seed(config.train.seed + 11)
    corrupted, changed, position = corrupt_first_relation(clean, splits.vocab, splits.graph.tails.to(device), generator)
    keep = changed.nonzero().squeeze(1)[: config.eval.n_patching_queries]
    if not keep.numel():
        return {}
    n_loops = patching_loops(config)
    null = random_null_model(context.model, seed=config.train.seed + 13)
    metrics: dict[str, float] = {}
    for prefix, patched_model in zip(MODELS, (context.model, null)):
        for point in PATCHING_POINTS:
            grid = patching_grid(patched_model, clean.subset(keep), corrupted[keep], n_loops, point)
            trivial = trivial_cells(patched_model, position, corrupted.shape[1], n_loops, point)
            metrics.update(patching_metrics(point, hops, grid, trivial, prefix))
    return metrics


def names(config: ExperimentConfig) -> set[str]:
    """Every cell a run may report (which cells are trivial depends on the model and the corrupted
    position, so none is left out here) and the gaps, from ``patching_metrics`` on a placeholder grid."""
    length = config.data.test_max_hops + 1  # the head and up to test_max_hops relations
    no_cell = torch.zeros(patching_loops(config), length, dtype=torch.bool)  # (loops, T): none trivial
    grid = PatchingGrid(torch.zeros(no_cell.shape), 0.0)
    return {
        name
        for point in PATCHING_POINTS
        for prefix in MODELS
        for name in patching_metrics(point, patching_hops(config), grid, no_cell, prefix)
    }


INSTRUMENT = Instrument("patching", (PATCHING, PATCHING_GAP), names, at_end=patching, figures=("patching",))
