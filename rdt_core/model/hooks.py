"""Named hook points: read (cache) or replace (patch) the residual stream at a named place in a forward.

A hook is ``fn(name, tensor) -> tensor | None``: returning a tensor replaces the activation, returning
None leaves it. Names carry the loop index, so later loops never overwrite earlier ones; the model lists
the points of a forward (``RecurrentDepthTransformer.hook_names``):

    embed                  the token embeddings, (B, T, D)
    prelude.{i}            after prelude layer i
    loop.{t}.injected      the injected input (the encoded query) as loop t receives it, (B, T, D); the
                           vanilla baseline injects before loop 1 only
    loop.{t}.resid_pre     the state entering loop t (t = 1..n_loops), after input injection
    loop.{t}.resid_post    the state after loop t; the readout after loop t reads this
    coda.{t}.{i}           after coda layer i, in the readout of loop t

Every hook point holds the whole sequence; a hook patches a position by indexing it. A hook that names
the points it acts on (its ``points``: :class:`ActivationCache` given ``points``, :func:`patch_position`)
is checked against the forward's points before it runs: a misspelt name fails loudly, listing the known
ones, instead of silently caching or patching nothing.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

Hook = Callable[[str, torch.Tensor], "torch.Tensor | None"]


class UnknownHookPoint(ValueError):
    """A hook named a point the forward does not have."""


def run_hook(hook: Hook | None, name: str, tensor: torch.Tensor) -> torch.Tensor:
    if hook is None:
        return tensor
    replaced = hook(name, tensor)
    return tensor if replaced is None else replaced


def check_hook_points(hook: Hook | None, known: list[str]) -> None:
    """Refuse a hook whose declared ``points`` are not all among ``known`` (the forward's hook names)."""
    wanted = getattr(hook, "points", None)
    if wanted is None:
        return
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise UnknownHookPoint(f"unknown hook point {unknown[0]!r}; this forward has: {', '.join(known)}")


class ActivationCache:
    """A hook that keeps a detached copy of activations: those named in ``points`` (checked against the
    forward's), or else every one whose name passes ``keep``."""

    def __init__(self, keep: Callable[[str], bool] = lambda name: True, points: Iterable[str] | None = None):
        self.points = None if points is None else frozenset(points)
        self.keep = keep if self.points is None else self.points.__contains__
        self.activations: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        if self.keep(name):
            self.activations[name] = tensor.detach().clone()
        return None

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.activations[name]


class PositionPatch:
    """A hook that overwrites position ``position`` of hook point ``name`` with ``source``'s.

    source: (B, T, D), the activation cached from another run at the same hook point.
    """

    def __init__(self, name: str, position: int, source: torch.Tensor):
        self.name = name
        self.points = frozenset({name})
        self.position = position
        self.source = source

    def __call__(self, point: str, tensor: torch.Tensor) -> torch.Tensor | None:
        if point != self.name:
            return None
        patched = tensor.clone()
        patched[:, self.position] = self.source[:, self.position]
        return patched

