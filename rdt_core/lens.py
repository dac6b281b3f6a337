"""Logit lens: which loop resolves which hop.

The readout (coda, final norm, tied unembedding) is applied to the state after every loop, at the last
position; for each k-hop query we record the rank of each bridge entity and of the answer among all
entities. A bridge ranked first after loop t and the answer only after a later loop is the signature of a
model that resolves one hop per loop. At the last loop the lens is the model's own output, by construction.
"""

from __future__ import annotations

import torch

from rdt_core.data.queries import QuerySet
from rdt_core.model.transformer import RecurrentDepthTransformer


@torch.no_grad()
def target_ranks(model: RecurrentDepthTransformer, queries: QuerySet, n_loops: int) -> torch.Tensor:
    """Rank (0 = top) of each bridge and of the answer after each loop: -> (n_loops, Q, K) long, where
    column j < hops - 1 is bridge j + 1, column K - 1 the answer, and unused columns -1."""
    logits = model(queries.tokens, n_loops).float()  # (n_loops, Q, E)
    targets = torch.cat([queries.bridges, queries.answers[:, None]], dim=1)  # (Q, K), -1 padded
    ranks = torch.full((n_loops, *targets.shape), -1, dtype=torch.long, device=logits.device)
    for column in range(targets.shape[1]):
        target = targets[:, column].clamp(min=0)  # (Q,)
        target_logit = logits.gather(-1, target[None, :, None].expand(n_loops, -1, 1))  # (n_loops, Q, 1)
        rank = (logits > target_logit).sum(-1)  # (n_loops, Q)
        ranks[:, :, column] = torch.where(targets[:, column] >= 0, rank, -1)
    return ranks


def lens_metrics(split: str, hops: int, ranks: torch.Tensor) -> dict[str, float]:
    """Metrics for queries of one hop count from their ranks (n_loops, Q, K):
    ``lens/<split>/hops_<k>/bridge_<j>/top1/loop_<t>`` (fraction ranked first) and ``.../answer/...``,
    and the first loop at which at least half of them rank each target first (``resolved_loop``, 0 if
    never)."""
    metrics: dict[str, float] = {}
    targets = [(f"bridge_{j}", j - 1) for j in range(1, hops)] + [("answer", ranks.shape[2] - 1)]
    for target_name, column in targets:
        top1 = (ranks[:, :, column] == 0).float().mean(dim=1)  # (n_loops,)
        prefix = f"lens/{split}/hops_{hops}/{target_name}"
        for loop, fraction in enumerate(top1.tolist(), start=1):
            metrics[f"{prefix}/top1/loop_{loop:02d}"] = fraction
        resolved = (top1 >= 0.5).nonzero()
        metrics[f"{prefix}/resolved_loop"] = float(resolved[0].item() + 1) if resolved.numel() else 0.0
    return metrics
