"""The vocabulary: entity tokens first, then relation tokens, then padding.

Entity e is token e, so the readout over entities is the first ``n_entities`` rows of the tied embedding.
Queries are left-padded so that the answer is always read at the last position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Vocabulary:
    n_entities: int
    n_relations: int

    @property
    def pad_token(self) -> int:
        return self.n_entities + self.n_relations

    @property
    def size(self) -> int:
        return self.n_entities + self.n_relations + 1

    def relation_token(self, relations: torch.Tensor) -> torch.Tensor:
        return relations + self.n_entities

    def encode(self, heads: torch.Tensor, relations: torch.Tensor, length: int) -> torch.Tensor:
        """Queries as left-padded token rows: heads (Q,), relations (Q, k) -> tokens (Q, length)."""
        n_queries, hops = relations.shape
        if hops + 1 > length:
            raise ValueError(f"a {hops}-hop query needs {hops + 1} positions, got {length}")
        tokens = torch.full((n_queries, length), self.pad_token, dtype=torch.long)
        tokens[:, length - hops - 1] = heads
        tokens[:, length - hops :] = self.relation_token(relations)
        return tokens
