"""Everything measured at an evaluation step, from one forward pass per chunk of queries.

Inference-only settings never cost another pass: the per-loop readout gives the logits after every loop
1..max_loops at once, from which come the accuracy at every inference loop count (per split and hop
count), the overthinking summary, and the halting loop of every example under every threshold pair.

Metric names (``/`` separated; loops zero-padded so that the MLflow UI lists them in order):
    acc/<split>                          at the trained loop count, all hop counts
    acc/<split>/loop_<t>                 at inference loop t, all hop counts
    acc/<split>/hops_<k>[/loop_<t>]      the same for one hop count
    acc/<split>/best, best_loop/<split>  the peak over inference loops
    overthinking/<split>/hops_<k>/{peak_acc,peak_loop,final_acc,drop}
    halting/<split>/{acc,mean_loops}     under the configured halting rule
    halting/<split>/<rule>/{acc,mean_loops}   every rule of the grid (with_grid=True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rdt_core.config import EvalConfig
from rdt_core.data.queries import QuerySet
from rdt_core.halting import HaltingRule, halting_loops, rule_grid
from rdt_core.model.transformer import RecurrentDepthTransformer


@dataclass(frozen=True)
class SplitResult:
    """What one pass over a split yields; everything else is arithmetic on it."""

    correct: torch.Tensor  # (T, Q) bool: query q answered right after loop t + 1
    hops: torch.Tensor  # (Q,) long
    halt_loops: torch.Tensor  # (n_rules, Q) long: loop at which q halts under each rule


def loop_metric_name(split: str, loop: int) -> str:
    return f"acc/{split}/loop_{loop:02d}"


def halting_rules(config: EvalConfig, with_grid: bool) -> list[HaltingRule]:
    """The configured rule first, then (optionally) the whole grid."""
    rules = [HaltingRule(config.halt_kl, config.halt_entropy)]
    if with_grid:
        rules += rule_grid(config.halt_kl_grid, config.halt_entropy_grid)
    return rules


@torch.no_grad()
def run_split(
    model: RecurrentDepthTransformer,
    queries: QuerySet,
    max_loops: int,
    rules: list[HaltingRule],
    chunk_size: int = 2048,
) -> SplitResult:
    was_training = model.training
    model.eval()
    correct, halt_loops = [], []
    for start in range(0, len(queries), chunk_size):
        chunk = queries.subset(torch.arange(start, min(start + chunk_size, len(queries))))
        logits = model(chunk.tokens, max_loops)  # (T, B, E)
        correct.append((logits.argmax(-1) == chunk.answers).cpu())
        halt_loops.append(halting_loops(logits, rules).cpu())
    model.train(was_training)
    return SplitResult(torch.cat(correct, dim=1), queries.hops.cpu(), torch.cat(halt_loops, dim=1))


def split_metrics(
    split: str, result: SplitResult, inference_loops: int, rules: list[HaltingRule]
) -> dict[str, float]:
    """The metrics of one split (names in the module docstring). Pure: no model involved."""
    metrics: dict[str, float] = {}
    by_loop = result.correct.float().mean(dim=1)  # (T,)
    for loop, accuracy in enumerate(by_loop.tolist(), start=1):
        metrics[loop_metric_name(split, loop)] = accuracy
    metrics[f"acc/{split}"] = by_loop[inference_loops - 1].item()
    metrics[f"acc/{split}/best"] = by_loop.max().item()
    metrics[f"best_loop/{split}"] = float(by_loop.argmax().item() + 1)

    for hops in sorted(set(result.hops.tolist())):
        hop_by_loop = result.correct[:, result.hops == hops].float().mean(dim=1)  # (T,)
        prefix = f"acc/{split}/hops_{hops}"
        for loop, accuracy in enumerate(hop_by_loop.tolist(), start=1):
            metrics[f"{prefix}/loop_{loop:02d}"] = accuracy
        metrics[prefix] = hop_by_loop[inference_loops - 1].item()
        metrics.update(overthinking_metrics(f"overthinking/{split}/hops_{hops}", hop_by_loop))

    query_index = torch.arange(result.correct.shape[1])
    for index, rule in enumerate(rules):
        loops = result.halt_loops[index]  # (Q,)
        prefix = f"halting/{split}" if index == 0 else f"halting/{split}/{rule.name}"
        metrics[f"{prefix}/acc"] = result.correct[loops - 1, query_index].float().mean().item()
        metrics[f"{prefix}/mean_loops"] = loops.float().mean().item()
    return metrics


def overthinking_metrics(prefix: str, accuracy_by_loop: torch.Tensor) -> dict[str, float]:
    """Peak accuracy over inference loops, its loop, the accuracy at the last loop, and the drop."""
    peak = accuracy_by_loop.max().item()
    final = accuracy_by_loop[-1].item()
    return {
        f"{prefix}/peak_acc": peak,
        f"{prefix}/peak_loop": float(accuracy_by_loop.argmax().item() + 1),
        f"{prefix}/final_acc": final,
        f"{prefix}/drop": peak - final,
    }


def evaluate(
    model: RecurrentDepthTransformer,
    eval_sets: dict[str, QuerySet],
    max_loops: int,
    inference_loops: int,
    config: EvalConfig,
    with_grid: bool = False,
) -> dict[str, float]:
    """All split metrics at one evaluation step; ``with_grid`` adds every halting rule of the grid."""
    rules = halting_rules(config, with_grid)
    metrics: dict[str, float] = {}
    for split, queries in eval_sets.items():
        metrics.update(split_metrics(split, run_split(model, queries, max_loops, rules), inference_loops, rules))
    return metrics
