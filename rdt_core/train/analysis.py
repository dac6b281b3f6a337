"""What a trained model is measured by beyond accuracy, once, at the end of a run: the structural nulls,
the logit lens, activation patching beside a random-weight null, and the loops that halting really saves.
Also the list of every metric name a run reports (what a sweep may optimise), derived from the same
metric functions, and the inference-only re-evaluation of a checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rdt_core.config import ExperimentConfig
from rdt_core.data.nulls import NULL_SHORTCUTS, null_metrics
from rdt_core.data.queries import QuerySet, Splits, build_splits, n_held_out_facts
from rdt_core.eval import (
    SplitResult,
    evaluate,
    halting_rules,
    split_metrics,
    state_norm_metrics,
    validation_metrics,
)
from rdt_core.halting import halting_inference
from rdt_core import metrics as names
from rdt_core.lens import answer_position_ranks, lens_metrics, prefix_lens_metrics, prefix_ranks
from rdt_core.model.transformer import RecurrentDepthTransformer
from rdt_core.patching import (
    PatchingGrid,
    corrupt_first_relation,
    patching_grid,
    patching_metrics,
    random_null_model,
    trivial_cells,
)
from rdt_core.train.checkpoints import Reporter, load_checkpoint
from rdt_core.train.devices import pick_device

PATCHING_POINTS = ("state", "injected")


def split_hop_counts(config: ExperimentConfig) -> dict[str, list[int]]:
    """The reported evaluation splits of ``config`` and the hop counts each holds."""
    data = config.data
    tested = list(range(2, data.test_max_hops + 1))
    splits = {"train": list(range(1, data.train_max_hops + 1)), "id": tested}
    if n_held_out_facts(data):
        splits["ood"] = tested
    return splits


def reported_metric_names(config: ExperimentConfig) -> set[str]:
    """Every metric name ``train_worker`` reports for ``config``: what a sweep may optimise.

    Derived by running the pure metric functions on placeholder results of the right shapes, so the
    list cannot drift from what training really reports.
    """
    max_loops = config.model.max_loops
    rules = halting_rules(config.eval, with_grid=True)
    reported = {kind.name() for kind in (names.STEP, names.LR, names.CURRICULUM_MAX_HOPS, names.ELAPSED_S,
                                         names.RESUMED_FROM_STEP, names.FINISHED, names.TRAIN_S, names.N_PARAMS,
                                         names.WORLD_SIZE, names.NULL_CHANCE)}
    reported |= {names.LOSS.name(split="train"), names.TRAINED_LOOPS.name(split="train")}

    def placeholder(hop_counts: list[int]) -> SplitResult:
        """Two queries per hop count, one with a trained prefix and one without, so every name is listed."""
        n = 2 * len(hop_counts)
        return SplitResult(
            correct=torch.zeros(max_loops, n, dtype=torch.bool),
            hops=torch.tensor(hop_counts).repeat_interleave(2),
            halt_loops=torch.ones(len(rules), n, dtype=torch.long),
            prefix_trained=torch.arange(n) % 2 == 0,
            state_norms=torch.zeros(max_loops, n),
        )

    for split, hop_counts in split_hop_counts(config).items():
        validation = None if split == "train" else placeholder(hop_counts)
        reported |= set(split_metrics(split, placeholder(hop_counts), config, rules, validation))
        reported |= {kind.name(split=split) for kind in (names.PHASE_STEP, names.PHASE_REACHED, names.LOOPS_SAVED)}
        if split != "train":
            reported |= set(validation_metrics(names.validation_split(split), placeholder(hop_counts), config, rules))
            reported |= set(state_norm_metrics(placeholder(hop_counts)))
            for k in hop_counts:
                reported |= {names.NULL.name(split=split, hops=k, stat=shortcut) for shortcut in NULL_SHORTCUTS}
                ranks = torch.zeros(max_loops, 1, max(hop_counts), dtype=torch.long)
                reported |= set(lens_metrics(split, k, ranks)) | set(prefix_lens_metrics(split, k, ranks))
    length = config.data.test_max_hops + 1
    every_cell = torch.zeros(config.eval.patching_loops or config.train.train_loops, length, dtype=torch.bool)
    grid = PatchingGrid(torch.zeros(every_cell.shape), 0.0)
    for point in PATCHING_POINTS:
        for prefix in ("patching", "patching_null"):
            reported |= set(patching_metrics(point, patching_hops(config), grid, every_cell, prefix))
    return reported


def patching_hops(config: ExperimentConfig) -> int:
    """Patching runs on in-distribution test queries of the deepest trained hop count (at least 2)."""
    return max(2, config.data.train_max_hops)


def device_eval_sets(splits: Splits, config: ExperimentConfig, device: torch.device) -> dict[str, QuerySet]:
    """The query sets every evaluation measures (a training sample, the test splits and the validation
    splits that choose their loop budgets), on ``device``."""
    sample = splits.eval_sets(config.eval.n_train_eval_per_hop, config.train.seed)
    return {name: queries.to(device) for name, queries in sample.items()}


@torch.no_grad()
def final_analysis(
    model: RecurrentDepthTransformer,
    splits: Splits,
    eval_sets: dict[str, QuerySet],
    config: ExperimentConfig,
    device: torch.device,
) -> dict[str, float]:
    """Structural nulls, the logit lens (both readings) on every test split and hop count, activation
    patching, and the share of loops that the stopping halting path saves (``halting/<split>/loops_saved``)."""
    model.eval()
    max_loops = config.model.max_loops
    rule = halting_rules(config.eval, with_grid=False)[0]
    metrics: dict[str, float] = {}
    for split, queries in eval_sets.items():
        if names.is_validation(split):
            continue
        halted = halting_inference(model, queries.tokens, max_loops, rule)
        metrics[names.LOOPS_SAVED.name(split=split)] = halted.loops_saved / (len(queries) * max_loops)
        if split == "train":
            continue
        metrics.update(null_metrics(splits, queries, split))
        for hops in queries.hop_counts():
            sample = queries.with_hops(hops).first(config.eval.n_lens_queries)
            metrics.update(lens_metrics(split, hops, answer_position_ranks(model, sample, max_loops)))
            metrics.update(prefix_lens_metrics(split, hops, prefix_ranks(model, sample, max_loops)))
    metrics.update(patching_analysis(model, splits, eval_sets["id"], config, device))
    return metrics


def patching_analysis(
    model: RecurrentDepthTransformer, splits: Splits, id_queries: QuerySet, config: ExperimentConfig, device: torch.device
) -> dict[str, float]:
    """Patching of the state and of the injected input at the trained loop count (``eval.patching_loops``),
    for the model and for a randomly initialised one of the same shape (``patching_null/...``), cells
    trivial by construction left out."""
    hops = patching_hops(config)
    clean = id_queries.with_hops(hops)
    generator = torch.Generator().manual_seed(config.train.seed + 11)
    corrupted, changed, position = corrupt_first_relation(clean, splits.vocab, splits.graph.tails.to(device), generator)
    keep = changed.nonzero().squeeze(1)[: config.eval.n_patching_queries]
    if not keep.numel():
        return {}
    n_loops = config.eval.patching_loops or config.train.train_loops
    null = random_null_model(model, seed=config.train.seed + 13)
    metrics: dict[str, float] = {}
    for prefix, patched_model in (("patching", model), ("patching_null", null)):
        for point in PATCHING_POINTS:
            grid = patching_grid(patched_model, clean.subset(keep), corrupted[keep], n_loops, point)
            trivial = trivial_cells(patched_model, position, corrupted.shape[1], n_loops, point)
            metrics.update(patching_metrics(point, hops, grid, trivial, prefix))
    return metrics


def evaluate_checkpoint(path: Path, eval_overrides: dict[str, object], reporter: Reporter) -> dict[str, float]:
    """Every measurement of a trained model under other inference-only settings (``eval.*``), with no
    training: one report, shaped like a trial's final one, so sweeps treat it the same way."""
    started = time.perf_counter()
    device = pick_device()
    trained_config, model = load_checkpoint(path, device)
    config = ExperimentConfig.from_dict(trained_config.model_dump(), eval_overrides)
    splits = build_splits(config.data)
    eval_sets = device_eval_sets(splits, config, device)
    metrics = evaluate(model, eval_sets, config, with_grid=True)
    metrics.update(final_analysis(model, splits, eval_sets, config, device))
    metrics.update(
        {
            names.STEP.name(): float(config.train.steps),
            names.TRAIN_S.name(): time.perf_counter() - started,
            names.N_PARAMS.name(): float(sum(p.numel() for p in model.parameters())),
            names.FINISHED.name(): 1.0,
        }
    )
    reporter(metrics, None)
    return metrics
