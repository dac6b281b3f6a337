"""Logit lens: which loop resolves which hop.

The readout (coda, final norm, tied unembedding) is applied to the state after every loop. Bridge j of a
k-hop query is read at the position of relation j, where the causal model can first know it (head and
r1..rj are to its left); the answer is read at the last position, where the model reads it. A bridge
ranked first after loop t and the next one only after a later loop is the signature of a model that
resolves one hop per loop. At the last loop the answer's lens is the model's own output, by construction.
"""

from __future__ import annotations

import torch

from rdt_core.data.queries import QuerySet
from rdt_core.model.hooks import ActivationCache
from rdt_core.model.transformer import RecurrentDepthTransformer


@torch.no_grad()
def target_ranks(model: RecurrentDepthTransformer, queries: QuerySet, n_loops: int) -> torch.Tensor:
    """Rank (0 = top) of each bridge and of the answer after each loop: -> (n_loops, Q, K) long, where
    column j < hops - 1 is bridge j + 1, column K - 1 the answer, and unused columns -1."""
    cache = ActivationCache(keep=lambda name: name.endswith("resid_post"))
    model(queries.tokens, n_loops, every_loop=False, hook=cache)
    attn_mask = model.attention_mask(queries.tokens)
    n_queries, length = queries.tokens.shape
    targets = torch.cat([queries.bridges, queries.answers[:, None]], dim=1)  # (Q, K), -1 padded
    first_relation = length - queries.hops  # (Q,) position of r1 in the left-padded row
    columns = torch.arange(targets.shape[1], device=targets.device)
    positions = (first_relation[:, None] + columns).clamp(max=length - 1)  # (Q, K): bridge j at r_j
    positions[:, -1] = length - 1  # the answer at the last position
    rows = torch.arange(n_queries, device=targets.device)[:, None]
    ranks = torch.full((n_loops, *targets.shape), -1, dtype=torch.long, device=targets.device)
    for loop in range(1, n_loops + 1):
        logits = model.readout(cache[f"loop.{loop}.resid_post"], attn_mask, all_positions=True).float()
        at_targets = logits[rows, positions]  # (Q, K, E): the logits where each target is read
        target_logit = at_targets.gather(-1, targets.clamp(min=0)[..., None])  # (Q, K, 1)
        rank = (at_targets > target_logit).sum(-1)  # (Q, K)
        ranks[loop - 1] = torch.where(targets >= 0, rank, -1)
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
