"""Adaptive halting: example i stops at the first loop t with KL(p_t || p_{t-1}) < tau_kl and
H(p_t) < tau_h (either criterion may be off), capped at ``max_loops``.

Two paths that must agree (a test checks they do):
- dense: from the per-loop logits of one full pass, the halting loop of every example for any number of
  thresholds at once; this is how a whole threshold grid is scored without re-running the model;
- stopping: an inference loop that really stops computing the examples that halted, and so saves loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rdt_core.model.transformer import RecurrentDepthTransformer


@dataclass(frozen=True)
class HaltingRule:
    kl: float | None
    entropy: float | None

    def __post_init__(self) -> None:
        if self.kl is None and self.entropy is None:
            raise ValueError("a halting rule needs a KL threshold, an entropy threshold or both")

    @property
    def name(self) -> str:
        """``kl_0.01_h_off``: a name MLflow accepts as part of a metric name (no ``+`` or ``=``)."""

        def threshold(value: float | None) -> str:
            return "off" if value is None else f"{value:g}".replace("+", "")

        return f"kl_{threshold(self.kl)}_h_{threshold(self.entropy)}"

    def stops(self, kl: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        """Whether each example may stop, from its KL to the previous loop and its entropy (same shape)."""
        stop = torch.ones_like(kl, dtype=torch.bool)
        if self.kl is not None:
            stop &= kl < self.kl
        if self.entropy is not None:
            stop &= entropy < self.entropy
        return stop


def rule_grid(kl_grid: list[float], entropy_grid: list[float]) -> list[HaltingRule]:
    """Every pair of thresholds, each criterion also switched off (but not both)."""
    return [
        HaltingRule(kl, entropy)
        for kl in [None, *kl_grid]
        for entropy in [None, *entropy_grid]
        if kl is not None or entropy is not None
    ]


def kl_and_entropy(log_probs: torch.Tensor, previous: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(p_t || p_{t-1}) and H(p_t) from log-probabilities (..., E); KL is +inf without a previous loop."""
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum(-1)
    if previous is None:
        return torch.full_like(entropy, float("inf")), entropy
    return (probs * (log_probs - previous)).sum(-1), entropy


def halting_loops(logits: torch.Tensor, rules: list[HaltingRule]) -> torch.Tensor:
    """Dense halting: logits (T, B, E) of one full pass -> loop (1..T) at which each example stops
    under each rule, (n_rules, B) long."""
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (T, B, E)
    kl_rows, entropy_rows = [], []
    for loop in range(logits.shape[0]):
        kl, entropy = kl_and_entropy(log_probs[loop], log_probs[loop - 1] if loop else None)
        kl_rows.append(kl)
        entropy_rows.append(entropy)
    kl, entropy = torch.stack(kl_rows), torch.stack(entropy_rows)  # (T, B) each
    loops = []
    for rule in rules:
        stop = rule.stops(kl, entropy)
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
        log_probs = F.log_softmax(model.readout(state, attn_mask).float(), dim=-1)  # (A, E)
        kl, entropy = kl_and_entropy(log_probs, previous)
        stop = rule.stops(kl, entropy) | (loop == max_loops)
        predictions[active[stop]] = log_probs[stop].argmax(-1)
        loops_used[active[stop]] = loop
        keep = ~stop
        active, state, previous = active[keep], state[keep], log_probs[keep]
        injected, attn_mask = injected[keep], attn_mask[keep]
        if active.numel() == 0:
            break
    return HaltedAnswers(predictions, loops_used, int((max_loops - loops_used).sum().item()))
