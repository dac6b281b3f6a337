"""The permutation knowledge graph: every relation is a random bijection of the entities.

Because each relation is a permutation, every (head, relation) has exactly one tail and every entity is
the tail of exactly one head per relation: no answer can be guessed from tail frequencies, nor from the
last relation alone. A k-hop query (head, r1..rk) is answered by applying the permutations in turn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KnowledgeGraph:
    """``tails[r, h]`` is the tail of (head h, relation r)."""

    tails: torch.Tensor  # (n_relations, n_entities) long; each row a permutation

    @property
    def n_relations(self) -> int:
        return self.tails.shape[0]

    @property
    def n_entities(self) -> int:
        return self.tails.shape[1]

    @classmethod
    def generate(cls, n_entities: int, n_relations: int, seed: int) -> "KnowledgeGraph":
        """One independent uniform permutation per relation, from ``seed`` alone (vectorised)."""
        generator = torch.Generator().manual_seed(seed)
        scores = torch.rand(n_relations, n_entities, generator=generator)  # (M, N)
        return cls(tails=scores.argsort(dim=1))

    def follow(self, heads: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
        """Entities visited by each query: heads (Q,), relations (Q, k) -> path (Q, k + 1).

        ``path[:, 0]`` is the head, ``path[:, 1:-1]`` the bridge entities, ``path[:, -1]`` the answer.
        """
        path = [heads]
        for hop in range(relations.shape[1]):
            path.append(self.tails[relations[:, hop], path[-1]])
        return torch.stack(path, dim=1)
