"""Adaptive halting: example i stops at the first loop t with KL(p_t || p_{t-1}) < tau_kl and
H(p_t) < tau_h (either criterion may be off, not both), capped at ``max_loops``.

The entropy threshold is relative by default: a fraction of ln(n_classes), the entropy of the uniform
distribution, so that 0.1 asks for the same confidence on 32 entities as on 2000; in nats the same number
would be strict on a small graph and loose on a large one.

Two paths that must agree (a test checks they do):
- dense: from the per-loop logits of one full pass, the halting loop of every example for any number of
  rules at once; this is how a whole threshold grid is scored without re-running the model;
- stopping: an inference loop that really stops computing the examples that halted, and so saves loops.

Adaptive compute is only worth its complexity if it beats fixed compute of the same mean cost, so each rule
is scored against a fixed loop budget equal to its own mean loops (``equal_cost``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from rdt_core.config import EvalConfig
from rdt_core.metrics import rule_name
from rdt_core.model.transformer import RecurrentDepthTransformer

EntropyScale = Literal["relative", "nats"]


@dataclass(frozen=True)
class HaltingRule:
    kl: float | None  # KL(p_t || p_{t-1}) threshold, nats; None: off
    entropy: float | None  # H(p_t) threshold in ``entropy_scale``; None: off
    entropy_scale: EntropyScale = "relative"  # "relative": a fraction of ln(n_classes); "nats": absolute

    def __post_init__(self) -> None:
        if self.kl is None and self.entropy is None:
            raise ValueError("a halting rule needs a KL threshold, an entropy threshold or both")
        if self.entropy_scale not in get_args(EntropyScale):
            raise ValueError(f"entropy_scale must be one of {get_args(EntropyScale)}, not {self.entropy_scale!r}")

    @property
    def name(self) -> str:
        """``kl_0.01_h_0.1`` (relative) or ``kl_0.01_h_0.5nats`` (``rdt_core.metrics.rule_name``)."""
        return rule_name(self.kl, self.entropy, self.entropy_scale == "nats")

    def stops(self, kl: torch.Tensor, entropy_nats: torch.Tensor, n_classes: int) -> torch.Tensor:
        """Whether each example may stop, from its KL to the previous loop and its entropy in nats (same
        shape); ``n_classes`` turns a relative entropy threshold into nats."""
        stop = torch.ones_like(kl, dtype=torch.bool)
        if self.kl is not None:
            stop &= kl < self.kl
        if self.entropy is not None:
            scale = math.log(n_classes) if self.entropy_scale == "relative" else 1.0
            stop &= entropy_nats < self.entropy * scale
        return stop


def configured_rule(config: EvalConfig) -> HaltingRule:
    """The halting rule a run is configured with (``eval.halt_kl``, ``eval.halt_entropy``)."""
    return HaltingRule(config.halt_kl, config.halt_entropy, config.halt_entropy_scale)


def rule_grid(
    kl_grid: list[float], entropy_grid: list[float], entropy_scale: EntropyScale = "relative"
) -> list[HaltingRule]:
    """Every pair of thresholds, each criterion also switched off (but not both)."""
    return [
        HaltingRule(kl, entropy, entropy_scale)
        for kl in [None, *kl_grid]
        for entropy in [None, *entropy_grid]
        if kl is not None or entropy is not None
    ]


def kl_and_entropy(log_probs: torch.Tensor, previous: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(p_t || p_{t-1}) and H(p_t) in nats from log-probabilities (..., E) -> (...) each; KL is +inf
    without a previous loop, so that a KL criterion never stops at loop 1."""
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum(-1)
    if previous is None:
        return torch.full_like(entropy, float("inf")), entropy
    return (probs * (log_probs - previous)).sum(-1), entropy


def halting_loops(logits: torch.Tensor, rules: list[HaltingRule]) -> torch.Tensor:
    """Dense halting: logits (T, B, E) of one full pass -> loop (1..T) at which each example stops
    under each rule, (n_rules, B) long."""
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (T, B, E)
    first_kl, first_entropy = kl_and_entropy(log_probs[0], None)  # (B,) each
    later_kl, later_entropy = kl_and_entropy(log_probs[1:], log_probs[:-1])  # (T-1, B) each
    kl = torch.cat([first_kl[None], later_kl])  # (T, B)
    entropy = torch.cat([first_entropy[None], later_entropy])  # (T, B)
    loops = []
    for rule in rules:
        stop = rule.stops(kl, entropy, logits.shape[-1])  # (T, B)
        stop[-1] = True  # the cap: every example stops at the last loop
        loops.append(stop.int().argmax(dim=0) + 1)  # first loop that may stop
    return torch.stack(loops)


@dataclass(frozen=True)
class HaltedAnswers:
    predictions: torch.Tensor  # (B,) long
    loops_used: torch.Tensor  # (B,) long, 1..max_loops
    loops_saved: int  # sum over examples of max_loops - loops_used: core applications not computed


@torch.no_grad()
def halting_inference(
    model: RecurrentDepthTransformer, tokens: torch.Tensor, max_loops: int, rule: HaltingRule
) -> HaltedAnswers:
    """Run loops only for the examples that have not halted yet: tokens (B, T) -> answers."""
    injected, attn_mask = model.encode(tokens)
    batch = tokens.shape[0]
    predictions = torch.zeros(batch, dtype=torch.long, device=tokens.device)
    loops_used = torch.full((batch,), max_loops, dtype=torch.long, device=tokens.device)
    active = torch.arange(batch, device=tokens.device)  # indices of the examples still running
    state = torch.zeros_like(injected)  # (A, T, D) for the A active examples
    previous: torch.Tensor | None = None
    for loop in range(1, max_loops + 1):
        if model.is_looped or loop <= len(model.core):
            state = model.step(state, injected, attn_mask, loop)
        log_probs = F.log_softmax(model.readout(state, attn_mask, loop).float(), dim=-1)  # (A, E)
        kl, entropy = kl_and_entropy(log_probs, previous)  # (A,) each
        stop = rule.stops(kl, entropy, log_probs.shape[-1]) | (loop == max_loops)
        predictions[active[stop]] = log_probs[stop].argmax(-1)
        loops_used[active[stop]] = loop
        keep = ~stop
        active, state, previous = active[keep], state[keep], log_probs[keep]
        injected, attn_mask = injected[keep], attn_mask[keep]
        if active.numel() == 0:
            break
    return HaltedAnswers(predictions, loops_used, int((max_loops - loops_used).sum().item()))


def fixed_budget_accuracy(accuracy_by_loop: torch.Tensor, loops: float) -> float:
    """Accuracy of a fixed loop budget of mean cost ``loops``: accuracy_by_loop (T,) holds budgets 1..T;
    a fractional cost mixes the two neighbouring budgets (run a fraction of examples one loop longer), which
    is linear interpolation. A cost at or below 1 is loop 1's accuracy, at or above T loop T's."""
    cost = min(max(loops, 1.0), float(len(accuracy_by_loop)))
    lower = math.floor(cost)  # 1..T
    upper = min(lower + 1, len(accuracy_by_loop))
    weight = cost - lower
    return (1 - weight) * accuracy_by_loop[lower - 1].item() + weight * accuracy_by_loop[upper - 1].item()


@dataclass(frozen=True)
class EqualCost:
    acc: float  # accuracy under the halting rule
    mean_loops: float  # its mean cost
    fixed_acc: float  # accuracy of a fixed loop budget of the same mean cost
    gain: float  # acc - fixed_acc: what adaptivity buys at equal compute
    loops_saved_fraction: float  # 1 - mean_loops / T


def equal_cost(correct: torch.Tensor, halt_loops: torch.Tensor) -> EqualCost:
    """A halting rule against a fixed budget of equal mean cost: correct (T, Q) bool (query q right after
    loop t + 1), halt_loops (Q,) long in 1..T. Halting always saves loops against the largest budget, so
    only the comparison at equal compute says whether choosing loops per example helps."""
    n_loops, n_queries = correct.shape
    acc = correct[halt_loops - 1, torch.arange(n_queries)].float().mean().item()
    mean_loops = halt_loops.float().mean().item()
    fixed_acc = fixed_budget_accuracy(correct.float().mean(dim=1), mean_loops)
    return EqualCost(acc, mean_loops, fixed_acc, acc - fixed_acc, 1 - mean_loops / n_loops)
