"""Logit lens: which loop puts which intermediate entity where the answer is read.

The readout (coda, final norm, tied unembedding) is applied to the state after every loop
(``loop.{t}.resid_post``), and the rank of each target entity is taken among the entity logits. Two
readings, which answer different questions:

- Answer position (``answer_position_ranks``, the paper's reading): every bridge and the answer are read
  at the last position, where the model must produce the answer. Bridge 1 ranked first there after loop 1,
  bridge 2 after loop 2, ..., the answer after loop k is the signature of a model that composes one hop per
  loop in the residual stream it will answer from.
- Prefix (``prefix_ranks``): bridge j is read at the position of relation j. In a causal model that
  position sees only (head, r1..rj), so its output is the answer of the j-hop prefix query: "bridge j
  resolves at loop t" there only restates the j-hop accuracy after loop t, not how the k-hop query is
  computed.

At the last loop the answer's lens is the model's own output, by construction: that cell is not evidence.
"""

from __future__ import annotations

import torch

from rdt_core.data.queries import QuerySet
from rdt_core.metrics import LENS_RESOLVED, LENS_TOP1, PREFIX_LENS_RESOLVED
from rdt_core.model.hooks import ActivationCache
from rdt_core.model.transformer import RecurrentDepthTransformer


@torch.no_grad()
def answer_position_ranks(model: RecurrentDepthTransformer, queries: QuerySet, n_loops: int) -> torch.Tensor:
    """Rank (0 = top) of each bridge and of the answer at the last position after each loop:
    -> (n_loops, Q, K) long; column j - 1 is bridge j (j < hops), column K - 1 the answer, unused -1."""
    length = queries.tokens.shape[1]
    positions = torch.full_like(_targets(queries), length - 1)  # (Q, K): everything at the last position
    return _ranks_at(model, queries, n_loops, positions)


@torch.no_grad()
def prefix_ranks(model: RecurrentDepthTransformer, queries: QuerySet, n_loops: int) -> torch.Tensor:
    """Rank of bridge j at the position of relation j after each loop, i.e. whether the j-hop prefix
    query (head, r1..rj) is answered there: -> (n_loops, Q, K) long, laid out as ``answer_position_ranks``
    (the answer column, read at the last position, is the same in both)."""
    length = queries.tokens.shape[1]
    first_relation = length - queries.hops  # (Q,) position of r1 in the left-padded row
    columns = torch.arange(queries.bridges.shape[1] + 1, device=queries.tokens.device)  # (K,)
    positions = (first_relation[:, None] + columns).clamp(max=length - 1)  # (Q, K): bridge j at r_j
    positions[:, -1] = length - 1
    return _ranks_at(model, queries, n_loops, positions)


def lens_metrics(split: str, hops: int, ranks: torch.Tensor) -> dict[str, float]:
    """Metrics for queries of one hop count from their answer-position ranks (n_loops, Q, K):
    ``lens/<split>/hops_<k>/bridge_<j>/top1/loop_<tt>`` (fraction ranked first), the same for
    ``answer``, and ``.../resolved_loop``: the first loop at which at least half rank the target first
    (0 if never)."""
    metrics: dict[str, float] = {}
    targets = [(f"bridge_{j}", j - 1) for j in range(1, hops)] + [("answer", ranks.shape[2] - 1)]
    for target_name, column in targets:
        top1 = _top1_by_loop(ranks, column)
        where = {"split": split, "hops": hops, "target": target_name}
        for loop, fraction in enumerate(top1.tolist(), start=1):
            metrics[LENS_TOP1.name(**where, loop=loop)] = fraction
        metrics[LENS_RESOLVED.name(**where)] = _resolved_loop(top1)
    return metrics


def prefix_lens_metrics(split: str, hops: int, ranks: torch.Tensor) -> dict[str, float]:
    """From prefix ranks (n_loops, Q, K), the loop at which the j-hop prefix query is answered at
    relation j's position: ``lens_prefix/<split>/hops_<k>/prefix_<j>/resolved_loop`` for j < k."""
    metrics: dict[str, float] = {}
    for j in range(1, hops):
        top1 = _top1_by_loop(ranks, j - 1)
        metrics[PREFIX_LENS_RESOLVED.name(split=split, hops=hops, prefix=j)] = _resolved_loop(top1)
    return metrics


def _targets(queries: QuerySet) -> torch.Tensor:
    """Bridges then the answer: -> (Q, K) long, -1 where a query has fewer bridges."""
    return torch.cat([queries.bridges, queries.answers[:, None]], dim=1)


def _ranks_at(
    model: RecurrentDepthTransformer, queries: QuerySet, n_loops: int, positions: torch.Tensor
) -> torch.Tensor:
    """Rank of each target at its position (Q, K) in the readout after every loop -> (n_loops, Q, K)."""
    cache = ActivationCache(keep=lambda name: name.endswith(".resid_post"))
    model(queries.tokens, n_loops, every_loop=False, hook=cache)
    attn_mask = model.attention_mask(queries.tokens)
    targets = _targets(queries)  # (Q, K)
    rows = torch.arange(len(queries), device=targets.device)[:, None]  # (Q, 1)
    ranks = torch.full((n_loops, *targets.shape), -1, dtype=torch.long, device=targets.device)
    for loop in range(1, n_loops + 1):
        logits = model.readout(cache[f"loop.{loop}.resid_post"], attn_mask, all_positions=True)  # (Q, T, E)
        at_targets = logits[rows, positions]  # (Q, K, E): the logits where each target is read
        target_logit = at_targets.gather(-1, targets.clamp(min=0)[..., None])  # (Q, K, 1)
        rank = (at_targets > target_logit).sum(-1)  # (Q, K)
        ranks[loop - 1] = torch.where(targets >= 0, rank, -1)
    return ranks


def _top1_by_loop(ranks: torch.Tensor, column: int) -> torch.Tensor:
    """Fraction of queries ranking the target of ``column`` first: (n_loops, Q, K) -> (n_loops,)."""
    return (ranks[:, :, column] == 0).float().mean(dim=1)


def _resolved_loop(top1: torch.Tensor) -> float:
    """First loop (1-based) at which at least half rank the target first; 0 if never."""
    resolved = (top1 >= 0.5).nonzero()
    return float(resolved[0].item() + 1) if resolved.numel() else 0.0
