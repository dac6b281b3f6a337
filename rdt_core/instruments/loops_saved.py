"""Halting's saved loops: the share of core applications that the stopping inference path
(``rdt_core.halting.halting_inference``) really skips under the configured rule, per split
(``halting/<split>/loops_saved``). The dense path scores every rule at each evaluation
(``rdt_core.eval``); this one runs the model that stops, once, at the end of a run."""

from __future__ import annotations

from rdt_core.config import ExperimentConfig
from rdt_core.halting import configured_rule, halting_inference
from rdt_core.instruments.registry import Context, Instrument, split_hop_counts
from rdt_core.metrics import LOOPS_SAVED, is_validation


def loops_saved(context: Context) -> dict[str, float]:
    """Loops saved over loops of a fixed ``max_loops`` budget, on the training sample and the test splits."""
    max_loops = context.config.model.max_loops
    rule = configured_rule(context.config.eval)
    metrics: dict[str, float] = {}
    for split, queries in context.eval_sets.items():
        if is_validation(split):
            continue
        halted = halting_inference(context.model, queries.tokens, max_loops, rule)
        metrics[LOOPS_SAVED.name(split=split)] = halted.loops_saved / (len(queries) * max_loops)
    return metrics


def names(config: ExperimentConfig) -> set[str]:
    return {LOOPS_SAVED.name(split=split) for split in split_hop_counts(config)}


INSTRUMENT = Instrument("loops_saved", (LOOPS_SAVED,), names, at_end=loops_saved)
