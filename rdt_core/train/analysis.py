"""The end of a run: every registered instrument's analysis of the trained model (``final_analysis``,
see ``rdt_core.instruments``), the list of every metric name a run reports (what a sweep may optimise),
derived from the same metric functions and the instruments' own lists, and the inference-only
re-evaluation of a checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rdt_core import metrics as names
from rdt_core.config import ExperimentConfig
from rdt_core.data.queries import QuerySet, Splits
from rdt_core.data.splits import load_splits
from rdt_core.eval import SplitResult, evaluate, halting_rules, split_metrics, validation_metrics
from rdt_core.instruments import INSTRUMENTS, Context
from rdt_core.instruments.registry import split_hop_counts
from rdt_core.model.transformer import RecurrentDepthTransformer
from rdt_core.train.checkpoints import Reporter, load_checkpoint
from rdt_core.train.devices import pick_device


def reported_metric_names(config: ExperimentConfig) -> set[str]:
    """Every metric name ``train_worker`` reports for ``config``: what a sweep may optimise.

    The accuracy and halting names of an evaluation are derived by running its pure metric functions on
    placeholder results of the right shapes, and each registered instrument lists its own names the same
    way, so the list cannot drift from what training really reports.
    """
    max_loops = config.model.max_loops
    rules = halting_rules(config.eval, with_grid=True)
    reported = {kind.name() for kind in (names.STEP, names.LR, names.CURRICULUM_MAX_HOPS, names.ELAPSED_S,
                                         names.RESUMED_FROM_STEP, names.FINISHED, names.TRAIN_S, names.N_PARAMS,
                                         names.WORLD_SIZE)}
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
        reported |= {kind.name(split=split) for kind in (names.PHASE_STEP, names.PHASE_REACHED)}
        if split != "train":
            reported |= set(validation_metrics(names.validation_split(split), placeholder(hop_counts), config, rules))
    for instrument in INSTRUMENTS:
        reported |= instrument.names(config)
    return reported


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
    """What every registered instrument measures at the end of a run (``rdt_core.instruments``: the loops
    that halting saves, the structural nulls, the logit lens in both readings, activation patching beside
    a random-weight null), in registration order."""
    model.eval()
    context = Context(model, splits, eval_sets, config, device)
    metrics: dict[str, float] = {}
    for instrument in INSTRUMENTS:
        if instrument.at_end is not None:
            metrics.update(instrument.at_end(context))
    return metrics


def evaluate_checkpoint(path: Path, eval_overrides: dict[str, object], reporter: Reporter) -> dict[str, float]:
    """Every measurement of a trained model under other inference-only settings (``eval.*``), with no
    training: one report, shaped like a trial's final one, so sweeps treat it the same way."""
    started = time.perf_counter()
    device = pick_device()
    trained_config, model = load_checkpoint(path, device)
    config = ExperimentConfig.from_dict(trained_config.model_dump(), eval_overrides)
    splits = load_splits(config.data)
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
