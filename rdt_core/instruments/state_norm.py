"""The state norm over loops: does the state at the answer position drift as loops go on (a suspect for
overthinking)? Read at every evaluation from the norms that the evaluation pass keeps
(``rdt_core.eval.SplitResult.state_norms``), on the ``id`` split."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from rdt_core.config import ExperimentConfig
from rdt_core.instruments.registry import Instrument
from rdt_core.metrics import STATE_NORM


def state_norm_metrics(state_norms: torch.Tensor) -> dict[str, float]:
    """``state_norm/loop_<t>``: the mean over queries of state norms (T, Q) after each loop."""
    means = state_norms.mean(dim=1)  # (T,)
    return {STATE_NORM.name(loop=loop): value for loop, value in enumerate(means.tolist(), start=1)}


def state_norm(results: Mapping[str, Any], config: ExperimentConfig) -> dict[str, float]:
    """From one evaluation's results by split (``SplitResult``), those of ``id`` where it was evaluated."""
    return state_norm_metrics(results["id"].state_norms) if "id" in results else {}


def names(config: ExperimentConfig) -> set[str]:
    return set(state_norm_metrics(torch.zeros(config.model.max_loops, 1)))


INSTRUMENT = Instrument("state_norm", (STATE_NORM,), names, at_evaluation=state_norm, figures=("state_norms",))
