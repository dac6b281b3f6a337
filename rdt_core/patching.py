"""Activation patching: where, over loops and positions, does the model carry what a relation changes?

Method. A clean query and a corrupted copy with its first relation replaced (so that the first bridge, and
with it the answer, changes) are run for the trained loop count. Then, for every cell (loop t, position p),
the corrupted run is repeated with one activation of that cell replaced by the clean run's. Recovery is the
share of the gap (the clean answer's mean logit at the last loop, clean run minus corrupted run) that the
patch brings back: 0 = nothing, 1 = all of it. The gap is reported beside the grid: a recovery over a tiny
gap is noise (and over no gap, NaN).

Two points, because the corrupted token reaches a loop by two roads:
- ``state``: the state after loop t (``loop.t.resid_post``), what loop t has computed so far;
- ``injected``: the injected input that loop t adds to its state (``loop.t.injected``). Input injection
  re-adds the corrupted token every loop, which partly undoes a state patch; this point shows which loop
  still needs to read the query, and where.

Trivial cells, which recover 0 or 1 by construction and are therefore no evidence (never reported):
- positions before the corrupted one: with causal attention they are identical in both runs (recovery 0);
- for ``state`` when the model has no coda layers, the whole last loop: the readout reads the last
  position's state after the last loop and nothing else, so patching it recovers 1 and patching any other
  position recovers 0;
- for ``injected`` when the model has no prelude layers, every position but the corrupted one: the injected
  input is then the token embedding, which differs between the runs at the corrupted token alone (0);
- for ``injected`` in the vanilla baseline, every loop after the first: it injects the input once, so
  there is nothing to patch (recovery 0).

The null: every reading is shown beside the same reading on ``random_null_model``, a randomly initialised
copy. A recovery curve that also rises there over loops is a property of the architecture, not of training.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rdt_core.data.queries import QuerySet
from rdt_core.data.tokens import Vocabulary
from rdt_core.metrics import PATCHING, PATCHING_GAP
from rdt_core.model.hooks import ActivationCache, Hook
from rdt_core.model.transformer import RecurrentDepthTransformer

Point = Literal["state", "injected"]
HOOK_SUFFIX: dict[str, str] = {"state": "resid_post", "injected": "injected"}  # point -> loop.<t>.<suffix>


@dataclass(frozen=True)
class PatchingGrid:
    recovery: torch.Tensor  # (n_loops, T): share of the gap that patching cell (loop, position) brings back
    gap: float  # clean minus corrupted mean logit of the clean answer at the last loop: recovery's denominator


def corrupt_first_relation(
    queries: QuerySet, vocab: Vocabulary, tails: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The queries (all of one hop count) with their first relation replaced by another one: -> tokens
    (Q, T), a mask of the queries whose answer changed (Q,) bool (two permutations can agree on an entity),
    and the corrupted position (where r1 sits in the left-padded rows)."""
    hop_counts = queries.hop_counts()
    if len(hop_counts) != 1:
        raise ValueError(f"corrupt_first_relation needs queries of one hop count, got {hop_counts}")
    hops = hop_counts[0]
    position = queries.tokens.shape[1] - hops
    offset = torch.randint(1, vocab.n_relations, (len(queries),), generator=generator)  # never 0: a new relation
    relations = queries.relations[:, :hops].clone()  # (Q, hops)
    relations[:, 0] = (relations[:, 0] + offset.to(relations.device)) % vocab.n_relations
    tokens = queries.tokens.clone()
    tokens[:, position] = vocab.relation_token(relations[:, 0])
    answer = queries.heads
    for hop in range(hops):
        answer = tails[relations[:, hop], answer]
    return tokens, answer != queries.answers, position


def hook_name(point: Point, loop: int) -> str:
    """The hook point that ``point`` patches in loop ``loop``; an unknown point is an error."""
    if point not in HOOK_SUFFIX:
        raise ValueError(f"unknown patching point {point!r}; known: {sorted(HOOK_SUFFIX)}")
    return f"loop.{loop}.{HOOK_SUFFIX[point]}"


@torch.no_grad()
def patching_grid(
    model: RecurrentDepthTransformer, clean: QuerySet, corrupted_tokens: torch.Tensor, n_loops: int, point: Point
) -> PatchingGrid:
    """Recovery for every patched (loop, position) of ``point``; run at ``n_loops``, the trained loop count.
    One forward per loop patches every position at once: row block p of the batch patches position p."""
    n_queries, length = corrupted_tokens.shape
    names = [hook_name(point, loop) for loop in range(1, n_loops + 1)]

    def answer_logit(tokens: torch.Tensor, hook: Hook | None = None) -> torch.Tensor:
        """Mean logit of the clean answer at the last loop, per block of Q rows: -> (rows / Q,)."""
        logits = model(tokens, n_loops, every_loop=False, hook=hook)[-1].float()  # (rows, E)
        blocks = logits.view(-1, n_queries, logits.shape[-1])  # (rows / Q, Q, E)
        return blocks[:, torch.arange(n_queries, device=blocks.device), clean.answers].mean(1)

    cache = ActivationCache(keep=lambda name: name in names)
    clean_logit = answer_logit(clean.tokens, cache)
    corrupt_logit = answer_logit(corrupted_tokens)
    gap = (clean_logit - corrupt_logit).item()
    every_position = torch.arange(length, device=corrupted_tokens.device)
    recovery = torch.zeros(n_loops, length)
    for loop, name in enumerate(names, start=1):
        if name not in cache.activations:  # the vanilla baseline injects before loop 1 only: no such point
            continue
        source = cache[name].transpose(0, 1)  # (T positions, Q, D)

        def patch(at: str, tensor: torch.Tensor, name=name, source=source) -> torch.Tensor | None:
            if at != name:
                return None
            blocks = tensor.reshape(length, n_queries, length, -1).clone()  # (block p, Q, T, D)
            blocks[every_position, :, every_position] = source  # block p takes the clean position p
            return blocks.view_as(tensor)

        patched = answer_logit(corrupted_tokens.repeat(length, 1), patch)  # (T,)
        recovery[loop - 1] = ((patched - corrupt_logit) / gap).cpu()
    return PatchingGrid(recovery, gap)


def trivial_cells(
    model: RecurrentDepthTransformer, corrupted_position: int, length: int, n_loops: int, point: Point
) -> torch.Tensor:
    """Cells whose recovery is fixed by construction (see the module docstring): -> (n_loops, T) bool."""
    hook_name(point, 1)  # an unknown point fails here as in patching_grid
    trivial = torch.zeros(n_loops, length, dtype=torch.bool)
    trivial[:, :corrupted_position] = True  # identical in both runs: recovery 0
    if point == "state" and len(model.coda) == 0:
        trivial[-1] = True  # the readout reads the last position's state alone: 1 there, 0 elsewhere
    if point == "injected" and len(model.prelude) == 0:
        trivial[:, corrupted_position + 1 :] = True  # the injected input is the embedding: same in both runs
    if point == "injected" and not model.reinjects:
        trivial[1:] = True  # the vanilla baseline injects before loop 1 only: nothing to patch later
    return trivial


def random_null_model(model: RecurrentDepthTransformer, seed: int) -> RecurrentDepthTransformer:
    """A copy of ``model`` with every weight drawn afresh (seeded, drawn on the CPU so a seed gives the
    same null on any device), in eval mode on the model's device and dtype. Not the model's own init: its
    zero-initialised core outputs make a loop the identity plus injection, which mixes nothing across
    positions and leaves a zero gap. Linears and norms take PyTorch's defaults; embeddings the model's scale."""
    device = next(model.parameters()).device
    null = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in null.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=1.0 / math.sqrt(module.embedding_dim))
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
            elif list(module.parameters(recurse=False)):  # a weight left as trained: a half-trained null
                raise TypeError(f"random_null_model cannot re-initialise {type(module).__name__}")
    return null.to(device).eval()


def patching_metrics(
    point: Point, hops: int, grid: PatchingGrid, trivial: torch.Tensor, prefix: str = "patching"
) -> dict[str, float]:
    """``{prefix}/{point}/hops_<k>/loop_<tt>/pos_<p>`` for every non-trivial cell, and ``.../gap``."""
    where = {"model": prefix, "point": point, "hops": hops}
    metrics = {PATCHING_GAP.name(**where): grid.gap}
    for loop, position in (~trivial).nonzero().tolist():
        metrics[PATCHING.name(**where, loop=loop + 1, pos=position)] = grid.recovery[loop, position].item()
    return metrics
