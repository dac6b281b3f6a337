"""The knowledge graph: ``tails[r, h]`` is the tail of the fact (head h, relation r), where there is one.

Two constructions, both the paper's:

- ``permutation`` (the default; the paper's depth data, its getNhopfact.py): every relation is a random
  bijection of the entities. Every (head, relation) has one tail and every entity is the tail of one head
  per relation, so no answer can be guessed from tail frequencies, nor from the last relation alone.
- ``composition`` (the Grokked-Transformer composition set of the paper's systematicity data): every tail
  is drawn uniformly at random, so tails repeat and some entities are no fact's tail.

With ``out_degree`` below the relation count, each entity is the head of that many relations, drawn
without replacement per entity; its other (head, relation) pairs hold no fact (``present`` False, tail
-1). A k-hop query (head, r1..rk) is answered by following its facts in turn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CONSTRUCTIONS = ("permutation", "composition")


@dataclass(frozen=True)
class KnowledgeGraph:
    tails: torch.Tensor  # (n_relations, n_entities) long: tails[r, h], -1 where (h, r) holds no fact

    @property
    def present(self) -> torch.Tensor:
        """(n_relations, n_entities) bool: (h, r) holds a fact."""
        return self.tails >= 0

    @property
    def bijective(self) -> bool:
        """Every relation a permutation of the entities (every fact present, no tail twice)."""
        return bool((self.tails.sort(dim=1).values == torch.arange(self.n_entities)).all())

    @property
    def n_relations(self) -> int:
        return self.tails.shape[0]

    @property
    def n_entities(self) -> int:
        return self.tails.shape[1]

    @classmethod
    def generate(
        cls, n_entities: int, n_relations: int, seed: int, construction: str = "permutation", out_degree: int | None = None
    ) -> "KnowledgeGraph":
        """The graph of ``construction`` from ``seed`` alone (vectorised): the relations' tails first, then
        (with ``out_degree`` below ``n_relations``) which relations each entity is the head of."""
        if construction not in CONSTRUCTIONS:
            raise ValueError(f"unknown construction {construction!r}: expected one of {', '.join(CONSTRUCTIONS)}")
        generator = torch.Generator().manual_seed(seed)
        if construction == "permutation":
            scores = torch.rand(n_relations, n_entities, generator=generator)  # (M, N)
            tails = scores.argsort(dim=1)
        else:
            tails = torch.randint(n_entities, (n_relations, n_entities), generator=generator)  # (M, N)
        if out_degree is not None and out_degree < n_relations:
            picks = torch.rand(n_entities, n_relations, generator=generator).argsort(dim=1)[:, :out_degree]  # (N, D)
            present = torch.zeros(n_entities, n_relations, dtype=torch.bool).scatter_(1, picks, True).T  # (M, N)
            tails = tails.masked_fill(~present, -1)
        return cls(tails=tails)

    @classmethod
    def from_facts(cls, heads: torch.Tensor, relations: torch.Tensor, tails: torch.Tensor, n_entities: int,
                   n_relations: int) -> "KnowledgeGraph":
        """The graph holding exactly the facts (heads[i], relations[i], tails[i]), each (F,) long; a
        (head, relation) given twice keeps one of its tails (the caller checks for conflicts)."""
        table = torch.full((n_relations, n_entities), -1, dtype=torch.long)
        table[relations, heads] = tails
        return cls(tails=table)

    def follow(self, heads: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
        """Entities visited by each query: heads (Q,), relations (Q, k) -> path (Q, k + 1).

        ``path[:, 0]`` is the head, ``path[:, 1:-1]`` the bridge entities, ``path[:, -1]`` the answer.
        Every fact followed must be present (walks are drawn among present facts only).
        """
        path = [heads]
        for hop in range(relations.shape[1]):
            path.append(self.tails[relations[:, hop], path[-1]])
        return torch.stack(path, dim=1)
