"""Structural nulls: what a model scores on a split without composing anything, beyond chance.

Chance (1 / n_entities) is the wrong null on a permutation graph. Two shortcuts beat it without any
multi-hop reasoning, and a claimed generalisation must beat them, not chance:

- answer elimination: every composition of relations is itself a bijection, so the answers of the
  trained queries with the same relation sequence belong to other heads and cannot be this query's
  answer. A model that memorised training and guesses among the rest scores 1 / (n_entities - eliminated).
  It holds on a bijective graph only: where tails repeat (the composition construction, or an entity
  missing a relation) two heads may share an answer, and nothing is eliminated.
- last-relation shortcut: the answer is a tail of the last relation, reached through a fact of the
  split's own kind (a held-out fact for ``ood`` queries, another for ``id``); a model that knows which
  facts are held out guesses among those tails only.

``structural`` applies both eliminations at once. Each value is the expected accuracy of a uniform guess
among the candidates left (the true answer is always among them), averaged over the queries.
"""

from __future__ import annotations

import torch

from rdt_core.data.queries import QuerySet, Splits, query_keys
from rdt_core.metrics import NULL, NULL_CHANCE

NULL_SHORTCUTS = ("answer_elimination", "last_relation", "structural")


def candidate_masks(splits: Splits, queries: QuerySet, split: str) -> dict[str, torch.Tensor]:
    """The answers each shortcut leaves possible: -> ``{name: (Q, n_entities) bool}``."""
    graph = splits.graph
    n_entities, n_relations = graph.n_entities, graph.n_relations
    everything = torch.ones(len(queries), n_entities, dtype=torch.bool)

    # Answer elimination: answers of trained queries with the same relation sequence are taken.
    train = splits.train
    eliminated = torch.zeros_like(everything)
    for hops in queries.hop_counts():
        trained = train.hops == hops
        asked = queries.hops == hops
        if not trained.any():
            continue
        no_head = torch.zeros(int(trained.sum()), dtype=torch.long)
        taken_keys = query_keys(no_head, train.relations[trained, :hops], n_relations) * n_entities
        taken_keys = taken_keys + train.answers[trained]  # (n_trained,): relation sequence and answer
        asked_keys = query_keys(torch.zeros(int(asked.sum()), dtype=torch.long), queries.relations[asked, :hops], n_relations)
        every_answer = asked_keys[:, None] * n_entities + torch.arange(n_entities)  # (n_asked, E)
        eliminated[asked] = torch.isin(every_answer, taken_keys)
    answer_elimination = everything & ~eliminated if graph.bijective else everything

    # Last-relation shortcut: tails of the split's own kind of fact under the query's last relation.
    allowed_facts = splits.fact_is_ood if split.startswith("ood") else ~splits.fact_is_ood  # (M, E) by head
    relation, head = (allowed_facts & graph.present).nonzero(as_tuple=True)  # the split's kind of fact
    allowed_tails = torch.zeros(n_relations, n_entities, dtype=torch.bool)
    allowed_tails[relation, graph.tails[relation, head]] = True  # (M, E): a tail of such a fact under r
    last_relation = queries.relations.gather(1, (queries.hops - 1)[:, None]).squeeze(1)  # (Q,)
    last_relation_mask = allowed_tails[last_relation]  # (Q, E)
    return {
        "answer_elimination": answer_elimination,
        "last_relation": last_relation_mask,
        "structural": answer_elimination & last_relation_mask,
    }


def null_metrics(splits: Splits, queries: QuerySet, split: str) -> dict[str, float]:
    """``null/<split>/hops_<k>/<shortcut>`` for every hop count of ``queries``, and ``null/chance``."""
    queries = queries.to("cpu")
    metrics = {NULL_CHANCE.name(): 1.0 / splits.graph.n_entities}
    for name, candidates in candidate_masks(splits, queries, split).items():
        expected = 1.0 / candidates.sum(1).clamp(min=1).float()  # (Q,)
        for hops in queries.hop_counts():
            metrics[NULL.name(split=split, hops=hops, stat=name)] = expected[queries.hops == hops].mean().item()
    return metrics
