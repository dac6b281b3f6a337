"""``train.compile``: the training forward through ``torch.compile``, and eager where it cannot compile.

``torch.compile`` compiles lazily, at the first call (and again at a call with a new loop count), so a
machine that cannot compile (no C++ compiler for Inductor's CPU code, an unsupported GPU or operator) shows
it at a training step, not when the model is wrapped. A trial should not fail over an optimisation: the
first failure is logged in one line and that step, like every later one, runs eagerly. Retrying a step
eagerly is safe because a failed call leaves nothing behind (no optimizer step has run), and a genuine
error in the model raises again from the eager call.

The compiled module shares its parameters with the eager one, so the optimizer, the checkpoints and the
evaluation (which runs the eager model, with its hooks) see no difference.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


class CompiledOrEager:
    """Calls ``torch.compile(module)`` until it fails once, then ``module`` itself for good."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.failure: str | None = None
        self.compiled: Callable[..., Any] | None = None
        try:
            self.compiled = torch.compile(module)
        except Exception as error:  # torch.compile itself refuses (an unsupported Python, say)
            self._fall_back(error)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:
                self._fall_back(error)
        return self.module(*args, **kwargs)

    def _fall_back(self, error: Exception) -> None:
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        self.failure = f"{type(error).__name__}: {first_line}"
        self.compiled = None
        print(f"train.compile: torch.compile failed ({self.failure}); training continues uncompiled", flush=True)
