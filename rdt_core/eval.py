"""Accuracy at every inference loop, from one forward pass per chunk of queries.

Inference-only settings (how many loops to run at test time) never need another pass: the model's
per-loop readout gives the logits after every loop 1..max_loops at once.
"""

from __future__ import annotations

import torch

from rdt_core.data.queries import QuerySet
from rdt_core.model.transformer import RecurrentDepthTransformer


@torch.no_grad()
def accuracy_by_loop(
    model: RecurrentDepthTransformer, queries: QuerySet, n_loops: int, chunk_size: int = 4096
) -> torch.Tensor:
    """Fraction of queries answered correctly after each loop: -> (n_loops,) float on the CPU."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(n_loops, device=queries.answers.device)
    for start in range(0, len(queries), chunk_size):
        chunk = queries.subset(torch.arange(start, min(start + chunk_size, len(queries))))
        logits = model(chunk.tokens, n_loops)  # (n_loops, B, n_entities)
        correct += (logits.argmax(-1) == chunk.answers).sum(dim=1)
    model.train(was_training)
    return (correct / len(queries)).cpu()


def loop_metric_name(split: str, loop: int) -> str:
    """``acc/test/loop_03``: zero-padded so that the MLflow UI lists loops in order."""
    return f"acc/{split}/loop_{loop:02d}"


def evaluation_metrics(
    model: RecurrentDepthTransformer, splits: dict[str, QuerySet], max_loops: int, train_loops: int
) -> dict[str, float]:
    """``acc/<split>`` at the trained loop count, ``acc/<split>/loop_k`` for k in 1..max_loops, and
    ``acc/<split>/best`` with ``best_loop/<split>``: the peak over inference loops."""
    metrics: dict[str, float] = {}
    for split, queries in splits.items():
        by_loop = accuracy_by_loop(model, queries, max_loops)
        for loop, accuracy in enumerate(by_loop.tolist(), start=1):
            metrics[loop_metric_name(split, loop)] = accuracy
        metrics[f"acc/{split}"] = by_loop[train_loops - 1].item()
        metrics[f"acc/{split}/best"] = by_loop.max().item()
        metrics[f"best_loop/{split}"] = float(by_loop.argmax().item() + 1)
    return metrics
