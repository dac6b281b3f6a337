"""Activation patching: where, over loops and positions, does the model carry the information that a
relation changes?

A clean query and a corrupted copy with its first relation replaced (so that the bridge, and with it the
answer, changes) are run. Then, for every (loop t, position p), the corrupted run is repeated with the
state after loop t at position p replaced by the clean run's. Recovery is the share of the clean answer's
logit (at the last loop) that the patch brings back: 0 = nothing, 1 = all of it.
"""

from __future__ import annotations

import torch

from rdt_core.data.queries import QuerySet
from rdt_core.data.tokens import Vocabulary
from rdt_core.model.hooks import ActivationCache, patch_position
from rdt_core.model.transformer import RecurrentDepthTransformer


def corrupt_first_relation(
    queries: QuerySet, vocab: Vocabulary, tails: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens with the first relation replaced by another one, and a mask of the queries whose answer
    changed (two permutations can agree on an entity): -> tokens (Q, T), changed (Q,) bool."""
    offset = torch.randint(1, vocab.n_relations, (len(queries),), generator=generator)
    new_first = (queries.relations[:, 0] + offset.to(queries.relations.device)) % vocab.n_relations
    relations = queries.relations.clone()
    relations[:, 0] = new_first
    position = queries.tokens.shape[1] - queries.hops  # where r1 sits in the left-padded row
    tokens = queries.tokens.clone()
    tokens[torch.arange(len(queries)), position] = vocab.relation_token(new_first)
    answer = queries.heads
    for hop in range(relations.shape[1]):
        in_query = hop < queries.hops
        stepped = tails[relations[:, hop].clamp(min=0), answer]
        answer = torch.where(in_query, stepped, answer)
    return tokens, answer != queries.answers


@torch.no_grad()
def patching_grid(
    model: RecurrentDepthTransformer, clean: QuerySet, corrupted_tokens: torch.Tensor, n_loops: int
) -> torch.Tensor:
    """Recovery of the clean answer's logit for every patched (loop, position): -> (n_loops, T)."""
    answer_index = clean.answers[:, None]  # (Q, 1)

    def clean_answer_logit(logits: torch.Tensor) -> torch.Tensor:
        return logits[-1].float().gather(1, answer_index).mean()

    cache = ActivationCache(keep=lambda name: name.endswith("resid_post"))
    clean_logit = clean_answer_logit(model(clean.tokens, n_loops, hook=cache))
    corrupt_logit = clean_answer_logit(model(corrupted_tokens, n_loops))
    gap = clean_logit - corrupt_logit
    length = clean.tokens.shape[1]
    recovery = torch.zeros(n_loops, length)
    for loop in range(1, n_loops + 1):
        name = f"loop.{loop}.resid_post"
        for position in range(length):
            hook = patch_position(name, position, cache[name])
            patched = clean_answer_logit(model(corrupted_tokens, n_loops, hook=hook))
            recovery[loop - 1, position] = ((patched - corrupt_logit) / gap).item()
    return recovery


def patching_metrics(hops: int, recovery: torch.Tensor) -> dict[str, float]:
    """``patching/hops_<k>/loop_<t>/pos_<p>``: the grid as metrics."""
    return {
        f"patching/hops_{hops}/loop_{loop:02d}/pos_{position}": value
        for loop, row in enumerate(recovery.tolist(), start=1)
        for position, value in enumerate(row)
    }
