"""Named hook points: read (cache) or replace (patch) the residual stream at a named place in a forward.

A hook is ``fn(name, tensor) -> tensor | None``: returning a tensor replaces the activation, returning
None leaves it. Names carry the loop index, so later loops never overwrite earlier ones:

    embed                  the token embeddings, (B, T, D)
    prelude.{i}            after prelude layer i
    loop.{t}.injected      the injected input (the encoded query) as loop t receives it, (B, T, D); the
                           vanilla baseline injects before loop 1 only
    loop.{t}.resid_pre     the state entering loop t (t = 1..n_loops), after input injection
    loop.{t}.resid_post    the state after loop t; the readout after loop t reads this
    coda.{t}.{i}           after coda layer i, in the readout of loop t

Every hook point holds the whole sequence; a hook patches a position by indexing it.
"""

from __future__ import annotations

from typing import Callable

import torch

Hook = Callable[[str, torch.Tensor], "torch.Tensor | None"]


def run_hook(hook: Hook | None, name: str, tensor: torch.Tensor) -> torch.Tensor:
    if hook is None:
        return tensor
    replaced = hook(name, tensor)
    return tensor if replaced is None else replaced


class ActivationCache:
    """A hook that keeps a detached copy of every activation whose name passes ``keep``."""

    def __init__(self, keep: Callable[[str], bool] = lambda name: True):
        self.keep = keep
        self.activations: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        if self.keep(name):
            self.activations[name] = tensor.detach().clone()
        return None

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.activations[name]


def patch_position(name: str, position: int, source: torch.Tensor) -> Hook:
    """A hook that overwrites position ``position`` of hook point ``name`` with ``source``'s.

    source: (B, T, D), the activation cached from another run at the same hook point.
    """

    def hook(point: str, tensor: torch.Tensor) -> torch.Tensor | None:
        if point != name:
            return None
        patched = tensor.clone()
        patched[:, position] = source[:, position]
        return patched

    return hook
