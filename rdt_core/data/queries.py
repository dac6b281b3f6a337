"""Query splits over a knowledge graph, as index tensors ready to live on the training device.

Systematic split: a fraction ``ood_fraction`` of the atomic facts is held out. Those facts are trained only
as atomic facts; no trained multi-hop query composes them. ``id`` test queries compose only the other
facts and are never trained; ``ood`` test queries compose only held-out facts. Each test split has a
validation split beside it (``id_val``, ``ood_val``): drawn from the same pool, never overlapping the test
queries, it is where inference settings such as the loop budget are chosen, so the test split only measures.

Depth split: multi-hop queries of 2..``train_max_hops`` hops are trained (``inferred_ratio`` of them per
in-distribution atomic fact, shared evenly between hop counts); test splits hold every hop count from 2 to
``test_max_hops``, so hop counts above ``train_max_hops`` measure depth extrapolation; a deeper test query
whose 2..j-hop prefix is a trained query is marked (``prefix_trained``), for it may be answered by
extending a memorised composition rather than by composing every hop.

Queries are drawn as random walks through the allowed facts and de-duplicated, so every split is a set
of distinct queries, identical for identical configs, and train and test are disjoint by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from rdt_core.config import ConfigError, DataConfig
from rdt_core.data.kg import KnowledgeGraph
from rdt_core.data.tokens import Vocabulary

MAX_FRUITLESS_ROUNDS = 20  # walk rounds that find no new query before a pool counts as exhausted


@dataclass(frozen=True)
class QuerySet:
    """A batch-indexable set of queries; row i of every tensor is query i. Padding is -1."""

    heads: torch.Tensor  # (Q,) long
    relations: torch.Tensor  # (Q, K) long, the first ``hops`` entries used, then -1
    bridges: torch.Tensor  # (Q, K - 1) long, the first ``hops - 1`` entries used, then -1
    answers: torch.Tensor  # (Q,) long
    hops: torch.Tensor  # (Q,) long
    tokens: torch.Tensor  # (Q, K + 1) long, left-padded so that the answer is read at the last position
    prefix_trained: torch.Tensor  # (Q,) bool: a multi-hop prefix of the query is a trained query

    def __len__(self) -> int:
        return self.answers.shape[0]

    def to(self, device: torch.device | str) -> "QuerySet":
        return QuerySet(*(tensor.to(device) for tensor in self._tensors()))

    def subset(self, index: torch.Tensor) -> "QuerySet":
        return QuerySet(*(tensor[index] for tensor in self._tensors()))

    def first(self, count: int) -> "QuerySet":
        return self.subset(torch.arange(min(count, len(self))))

    def with_hops(self, hops: int) -> "QuerySet":
        return self.subset((self.hops == hops).nonzero().squeeze(1))

    def hop_counts(self) -> list[int]:
        return sorted(set(self.hops.tolist()))

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.heads, self.relations, self.bridges, self.answers, self.hops, self.tokens, self.prefix_trained)

    @staticmethod
    def concat(parts: list["QuerySet"]) -> "QuerySet":
        return QuerySet(*(torch.cat(tensors) for tensors in zip(*(part._tensors() for part in parts))))


@dataclass(frozen=True)
class Splits:
    graph: KnowledgeGraph
    vocab: Vocabulary
    fact_is_ood: torch.Tensor  # (n_relations, n_entities) bool: fact (head e, relation r) held out
    train: QuerySet  # every atomic fact and the trained multi-hop queries
    tests: dict[str, QuerySet]  # "id" and (with held-out facts) "ood", every hop count 2..test_max_hops
    validation: dict[str, QuerySet]  # "id_val" (and "ood_val"): like the test split, disjoint from it

    def eval_sets(self, n_per_hop: int, seed: int) -> dict[str, QuerySet]:
        """What evaluation measures: a fixed sample of training queries (``n_per_hop`` per hop count,
        to watch memorisation) and the test splits."""
        generator = torch.Generator().manual_seed(seed)
        picked = []
        for hops in self.train.hop_counts():
            rows = (self.train.hops == hops).nonzero().squeeze(1)
            picked.append(rows[torch.randperm(rows.numel(), generator=generator)[:n_per_hop]])
        return {"train": self.train.subset(torch.cat(picked)), **self.tests, **self.validation}


def n_held_out_facts(config: DataConfig) -> int:
    """Atomic facts held out of every trained multi-hop query; an ``ood`` split exists when > 0."""
    return round(config.ood_fraction * config.n_facts)


@dataclass(frozen=True)
class _Draw:
    """One set of walks to draw: ``wanted`` distinct ``hops``-hop queries over the ``allowed`` facts, the
    first ``n_trained`` of them trained, then validation, then test queries of ``split``."""

    hops: int
    split: str
    allowed: torch.Tensor  # (n_relations, n_entities) bool
    n_trained: int
    wanted: int


@dataclass(frozen=True)
class _Plan:
    graph: KnowledgeGraph
    fact_is_ood: torch.Tensor  # (n_relations, n_entities) bool
    facts: torch.Tensor  # (n_facts,) flat indices r * n_entities + h of the present facts
    draws: list[_Draw]
    generator: torch.Generator  # where the walks are drawn from, past the held-out facts' draw


def _plan(config: DataConfig) -> _Plan:
    """The graph, its held-out facts and every set of walks the splits need, each counted exactly against
    what the graph holds: a graph too small for its splits is a ``ConfigError`` here, before any walk is
    drawn (``check_splits``)."""
    if config.paper_dir is not None:
        raise ValueError("data.paper_dir names a directory to read: load_splits reads it, build_splits generates")
    graph = KnowledgeGraph.generate(
        config.n_entities, config.n_relations, config.seed, config.construction, config.out_degree
    )
    generator = torch.Generator().manual_seed(config.seed + 1)
    facts = graph.present.flatten().nonzero().squeeze(1)  # (n_facts,) in relation-major order
    n_ood_facts = n_held_out_facts(config)
    fact_is_ood = torch.zeros(graph.present.numel(), dtype=torch.bool)
    fact_is_ood[facts[torch.randperm(facts.numel(), generator=generator)[:n_ood_facts]]] = True
    fact_is_ood = fact_is_ood.view(config.n_relations, config.n_entities)

    n_held = config.n_validation + config.n_test_queries
    n_id_facts = facts.numel() - n_ood_facts
    trained_hops = range(2, config.train_max_hops + 1)
    n_train_per_hop = config.n_train_per_hop or round(config.inferred_ratio * n_id_facts / max(1, len(trained_hops)))
    splits = {"id": graph.present & ~fact_is_ood, **({"ood": fact_is_ood} if n_ood_facts else {})}
    draws = []
    for hops in range(2, config.test_max_hops + 1):
        for split, allowed in splits.items():
            n_trained = n_train_per_hop if hops in trained_hops and split == "id" else 0  # held-out facts: never trained
            draw = _Draw(hops, split, allowed, n_trained, n_trained + n_held)
            found = n_distinct_walks(graph, allowed, hops)
            if found < draw.wanted:
                raise _too_few(config, draw, found, n_id_facts)
            draws.append(draw)
    return _Plan(graph, fact_is_ood, facts, draws, generator)


def _too_few(config: DataConfig, draw: _Draw, found: int, n_id_facts: int) -> ConfigError:
    """The error of a draw that found ``found`` < ``draw.wanted`` distinct queries, naming the key to change."""
    n_held = config.n_validation + config.n_test_queries
    n_trained_hops = max(1, config.train_max_hops - 1)
    if found - draw.n_trained >= 1:
        remedy = f"at most {found - draw.n_trained} can be held out"
    elif config.n_train_per_hop:  # the trained queries alone exceed the graph
        remedy = f"n_train_per_hop at most {max(0, found - n_held)} leaves room for them"
    else:  # the trained queries alone exceed the graph: only a smaller phi helps
        largest_ratio = (found - n_held) * n_trained_hops / n_id_facts
        remedy = f"inferred_ratio at most {max(0.0, largest_ratio):.2f} leaves room for them"
    trained_key = "data.n_train_per_hop" if config.n_train_per_hop else "data.inferred_ratio"
    return ConfigError(
        trained_key if draw.n_trained else "data.n_test_queries",
        f"only {found} distinct {draw.hops}-hop {draw.split} queries exist, {draw.wanted} wanted "
        f"({draw.n_trained} trained + {config.n_validation} validation + {config.n_test_queries} test): " + remedy,
    )


def check_splits(config: DataConfig) -> None:
    """Whether the generated graph holds every query its splits ask for (a ``ConfigError`` naming the key
    where not), counted without drawing one: what a sweep checks of each trial's data before it starts
    (drawing the paper's depth set takes seconds)."""
    _plan(config)


def build_splits(config: DataConfig) -> Splits:
    """The generated graph and its train and test query sets, from ``config`` alone. A config may instead
    name a paper directory: ``rdt_core.data.splits.load_splits`` takes either."""
    plan = _plan(config)
    graph, fact_is_ood, facts = plan.graph, plan.fact_is_ood, plan.facts
    vocab = Vocabulary(config.n_entities, config.n_relations)
    atomic_heads, atomic_relations = facts % config.n_entities, (facts // config.n_entities)[:, None]
    train_parts = [make_query_set(graph, vocab, atomic_heads, atomic_relations, config.test_max_hops)]
    test_parts: dict[str, list[QuerySet]] = {split: [] for split in dict.fromkeys(draw.split for draw in plan.draws)}
    val_parts: dict[str, list[QuerySet]] = {f"{split}_val": [] for split in test_parts}
    n_id_facts = facts.numel() - n_held_out_facts(config)
    for draw in plan.draws:
        heads, relations = sample_distinct_walks(graph, draw.allowed, draw.hops, draw.wanted, plan.generator)
        if heads.numel() < draw.wanted:  # rounds of walks stopped finding new queries
            raise _too_few(config, draw, heads.numel(), n_id_facts)
        queries = make_query_set(graph, vocab, heads, relations, config.test_max_hops)
        n_trained = draw.n_trained
        if n_trained:
            train_parts.append(queries.subset(torch.arange(n_trained)))
        val_parts[f"{draw.split}_val"].append(queries.subset(torch.arange(n_trained, n_trained + config.n_validation)))
        test_parts[draw.split].append(queries.subset(torch.arange(n_trained + config.n_validation, draw.wanted)))

    train = QuerySet.concat(train_parts)
    held_out = {name: QuerySet.concat(parts) for name, parts in {**test_parts, **val_parts}.items()}
    held_out = {name: mark_trained_prefixes(queries, train, config) for name, queries in held_out.items()}
    return Splits(
        graph=graph,
        vocab=vocab,
        fact_is_ood=fact_is_ood,
        train=train,
        tests={name: held_out[name] for name in test_parts},
        validation={name: held_out[name] for name in val_parts},
    )


def query_keys(heads: torch.Tensor, relations: torch.Tensor, n_relations: int) -> torch.Tensor:
    """One integer per query, equal exactly for equal (head, r1..rj): heads (Q,), relations (Q, j) -> (Q,)."""
    keys = heads.clone()
    for hop in range(relations.shape[1]):
        keys = keys * (n_relations + 1) + relations[:, hop] + 1
    return keys


def mark_trained_prefixes(queries: QuerySet, train: QuerySet, config: DataConfig) -> QuerySet:
    """``queries`` with ``prefix_trained`` set where some 2..j-hop prefix (j < hops) is a trained query."""
    marked = torch.zeros(len(queries), dtype=torch.bool)
    for prefix_hops in range(2, config.train_max_hops + 1):
        trained = train.hops == prefix_hops
        trained_keys = query_keys(
            train.heads[trained], train.relations[trained, :prefix_hops], config.n_relations
        )
        longer = queries.hops > prefix_hops
        keys = query_keys(queries.heads, queries.relations[:, :prefix_hops].clamp(min=0), config.n_relations)
        marked |= longer & torch.isin(keys, trained_keys)
    return replace(queries, prefix_trained=marked)


def n_distinct_walks(graph: KnowledgeGraph, allowed: torch.Tensor, hops: int) -> int:
    """How many distinct ``hops``-hop queries have every fact allowed (allowed: (n_relations, n_entities)
    bool), counted from the last hop back: an entity's j + 1-hop walks are, over its allowed relations,
    the j-hop walks of the tail each leads to. Sampling more than there are would go round after fruitless
    round before giving up. Counted in float64 (deep walks outgrow int64): exact below 2**53."""
    walks_from = torch.ones(graph.n_entities, dtype=torch.float64)  # (E,) the 0-hop walk of each entity
    for _ in range(hops):
        walks_from = (allowed * walks_from[graph.tails]).sum(0)  # (M, E) -> (E,)
    return int(walks_from.sum().item())


def sample_distinct_walks(
    graph: KnowledgeGraph, allowed: torch.Tensor, hops: int, count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``count`` distinct ``hops``-hop queries whose every fact is allowed.

    allowed: (n_relations, n_entities) bool. Returns heads (Q,) and relations (Q, hops), Q <= count,
    in the order first drawn. Fewer than ``count`` only when rounds of walks stop finding new queries.
    """
    found = torch.empty(0, hops + 1, dtype=torch.long)  # rows: head, r1..rk
    fruitless = 0
    while found.shape[0] < count and fruitless < MAX_FRUITLESS_ROUNDS:
        walks = _random_walks(graph, allowed, hops, 2 * count, generator)
        merged = _unique_rows_in_order(torch.cat([found, walks]))
        fruitless = fruitless + 1 if merged.shape[0] == found.shape[0] else 0
        found = merged
    found = found[:count]
    return found[:, 0], found[:, 1:]


def _random_walks(
    graph: KnowledgeGraph, allowed: torch.Tensor, hops: int, n_walks: int, generator: torch.Generator
) -> torch.Tensor:
    """Walks that take, at each entity, a uniformly chosen allowed relation: -> (W, hops + 1) rows
    (head, r1..rk), W <= n_walks (walks that reach an entity with no allowed relation are dropped).

    Each entity's allowed relations are listed once (grouped by entity, as a compressed sparse row), and
    a step draws one uniform number per walk and indexes that list: the cost is O(walks) per hop whatever
    the relation count (a draw over a (walks, relations) weight table grew with their product)."""
    by_entity = allowed.T.nonzero()  # (F, 2) rows (entity, relation), grouped by entity
    relation_list = by_entity[:, 1]  # (F,)
    n_allowed = allowed.sum(0)  # (E,) allowed relations per entity
    first = n_allowed.cumsum(0) - n_allowed  # (E,) where each entity's relations start in relation_list
    current = torch.randint(graph.n_entities, (n_walks,), generator=generator)  # (W,)
    rows = [current]
    alive = torch.ones(n_walks, dtype=torch.bool)
    for _ in range(hops):
        count = n_allowed[current]  # (W,)
        alive &= count > 0
        uniform = torch.rand(n_walks, dtype=torch.float64, generator=generator)  # (W,)
        pick = (uniform * count).long().clamp(max=(count - 1).clamp(min=0))  # (W,) in [0, count)
        relation = relation_list[(first[current] + pick).clamp(max=max(0, relation_list.numel() - 1))]  # (W,)
        relation = relation.masked_fill(~alive, 0)  # a dead walk is dropped; any relation keeps it indexable
        rows.append(relation)
        current = graph.tails[relation, current].clamp(min=0)
    return torch.stack(rows, dim=1)[alive]


def _unique_rows_in_order(rows: torch.Tensor) -> torch.Tensor:
    """Distinct rows in the order of their first occurrence (torch.unique sorts them)."""
    if rows.shape[0] == 0:
        return rows
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
    first_seen = torch.full((unique.shape[0],), rows.shape[0]).scatter_reduce(
        0, inverse, torch.arange(rows.shape[0]), reduce="amin"
    )
    return unique[first_seen.argsort()]


def make_query_set(
    graph: KnowledgeGraph, vocab: Vocabulary, heads: torch.Tensor, relations: torch.Tensor, max_hops: int
) -> QuerySet:
    """Queries of one hop count: heads (Q,), relations (Q, k) -> a QuerySet padded to ``max_hops``."""
    n_queries, hops = relations.shape
    path = graph.follow(heads, relations)  # (Q, k + 1): head, bridges, answer
    padded_relations = torch.full((n_queries, max_hops), -1, dtype=torch.long)
    padded_relations[:, :hops] = relations
    bridges = torch.full((n_queries, max(0, max_hops - 1)), -1, dtype=torch.long)
    bridges[:, : hops - 1] = path[:, 1:-1]
    return QuerySet(
        heads=heads,
        relations=padded_relations,
        bridges=bridges,
        answers=path[:, -1],
        hops=torch.full((n_queries,), hops, dtype=torch.long),
        tokens=vocab.encode(heads, relations, max_hops + 1),
        prefix_trained=torch.zeros(n_queries, dtype=torch.bool),
    )
