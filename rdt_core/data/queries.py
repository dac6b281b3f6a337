"""Query splits over a knowledge graph, as index tensors ready to live on the training device.

Training holds every atomic fact (1-hop query) and ``inferred_ratio`` 2-hop queries per atomic fact; the
test split holds other 2-hop queries, never trained. Queries are drawn without replacement from the
space of all 2-hop queries, so splits are disjoint by construction and identical for identical seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rdt_core.config import ConfigError, DataConfig
from rdt_core.data.kg import KnowledgeGraph
from rdt_core.data.tokens import Vocabulary

QUERY_LENGTH = 3  # head, r1, r2: the longest query of these splits


@dataclass(frozen=True)
class QuerySet:
    """A batch-indexable set of queries; row i of every tensor is query i."""

    tokens: torch.Tensor  # (Q, L) long, left-padded
    answers: torch.Tensor  # (Q,) long entity ids
    hops: torch.Tensor  # (Q,) long

    def __len__(self) -> int:
        return self.answers.shape[0]

    def to(self, device: torch.device | str) -> "QuerySet":
        return QuerySet(self.tokens.to(device), self.answers.to(device), self.hops.to(device))

    def subset(self, index: torch.Tensor) -> "QuerySet":
        return QuerySet(self.tokens[index], self.answers[index], self.hops[index])

    @staticmethod
    def concat(parts: list["QuerySet"]) -> "QuerySet":
        return QuerySet(
            torch.cat([part.tokens for part in parts]),
            torch.cat([part.answers for part in parts]),
            torch.cat([part.hops for part in parts]),
        )


@dataclass(frozen=True)
class Splits:
    graph: KnowledgeGraph
    vocab: Vocabulary
    train: QuerySet
    test: QuerySet

    def named(self) -> dict[str, QuerySet]:
        return {"train": self.train, "test": self.test}


def sample_distinct(space_size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct ids from ``range(space_size)`` in random order, deterministic in ``generator``.

    A dense permutation when the draw is a large part of the space; otherwise oversampling and
    de-duplication, which needs memory in the draw, not in the space (2-hop spaces grow as N * M^2).
    """
    if count > space_size:
        raise ValueError(f"cannot draw {count} distinct ids from {space_size}")
    if 4 * count >= space_size:
        return torch.randperm(space_size, generator=generator)[:count]
    drawn = torch.empty(0, dtype=torch.long)
    while drawn.numel() < count:
        candidates = torch.randint(space_size, (2 * count,), generator=generator)
        drawn = _unique_in_order(torch.cat([drawn, candidates]))
    return drawn[:count]


def _unique_in_order(ids: torch.Tensor) -> torch.Tensor:
    """Distinct values of ``ids`` in the order of their first occurrence."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    first_seen = torch.full_like(unique, ids.numel()).scatter_reduce(
        0, inverse, torch.arange(ids.numel()), reduce="amin"
    )
    return unique[first_seen.argsort()]


def build_splits(config: DataConfig) -> Splits:
    """The graph and its train/test query sets, from ``config`` alone."""
    graph = KnowledgeGraph.generate(config.n_entities, config.n_relations, config.seed)
    vocab = Vocabulary(config.n_entities, config.n_relations)
    n_entities, n_relations = config.n_entities, config.n_relations

    atomic_heads = torch.arange(n_entities).repeat(n_relations)  # (N*M,)
    atomic_relations = torch.arange(n_relations).repeat_interleave(n_entities)[:, None]  # (N*M, 1)
    atomic = _query_set(graph, vocab, atomic_heads, atomic_relations)

    n_atomic = n_entities * n_relations
    n_train_2hop = round(config.inferred_ratio * n_atomic)
    space_size = n_entities * n_relations**2
    if n_train_2hop + config.n_test_queries > space_size:
        raise ConfigError(
            "data.inferred_ratio",
            f"{n_train_2hop} trained + {config.n_test_queries} test 2-hop queries exceed the "
            f"{space_size} that {n_entities} entities and {n_relations} relations allow",
        )
    generator = torch.Generator().manual_seed(config.seed + 1)
    query_ids = sample_distinct(space_size, n_train_2hop + config.n_test_queries, generator)
    heads = query_ids // n_relations**2
    relations = torch.stack([query_ids // n_relations % n_relations, query_ids % n_relations], 1)
    two_hop = _query_set(graph, vocab, heads, relations)

    train = QuerySet.concat([atomic, two_hop.subset(torch.arange(n_train_2hop))])
    test = two_hop.subset(torch.arange(n_train_2hop, len(two_hop)))
    return Splits(graph=graph, vocab=vocab, train=train, test=test)


def _query_set(
    graph: KnowledgeGraph, vocab: Vocabulary, heads: torch.Tensor, relations: torch.Tensor
) -> QuerySet:
    answers = graph.follow(heads, relations)[:, -1]
    hops = torch.full_like(answers, relations.shape[1])
    return QuerySet(vocab.encode(heads, relations, QUERY_LENGTH), answers, hops)
