"""Everything measured at an evaluation step, from one forward pass per chunk of queries.

Inference-only settings never cost another pass: the per-loop readout gives the logits after every loop
1..max_loops at once, from which come the accuracy at every inference loop count (per split and hop
count), the overthinking summary, the halting loop of every example under every halting rule, and what
the registered instruments read from it (the state norm over loops, ``rdt_core.instruments``).

Which loop budget a number is read at matters, and the test split never chooses it:
- the trained loop count R (``acc/<split>``, ``acc/<split>/hops_<k>``);
- the budget chosen on the validation split beside the test split (``<split>_val``), per hop count
  (``loops_chosen/<split>/hops_<k>``, ``acc/<split>[/hops_<k>]/chosen``): how deeper or systematic
  queries are read, and what grokking phases are timed on;
- the best over loops on the test split itself: an oracle, and named so (``acc/<split>/oracle``).
``acc/<split>`` and ``acc/<split>/chosen`` cover the trained hop counts only (all of them when the split
shares none with training), so a depth run's untrained hops never hide its in-distribution phase.

Metric names are built by the kinds of ``rdt_core.metrics`` (``ACC``, ``ACC_CHOSEN``, ``HALTING``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rdt_core.config import EvalConfig, ExperimentConfig
from rdt_core.data.queries import QuerySet
from rdt_core.halting import HaltingRule, configured_rule, equal_cost, halting_loops, rule_grid
from rdt_core.instruments import INSTRUMENTS
from rdt_core.metrics import (
    ACC,
    ACC_CHOSEN,
    ACC_HOPS,
    ACC_HOPS_CHOSEN,
    ACC_HOPS_LOOP,
    ACC_LOOP,
    ACC_ORACLE,
    ACC_PREFIX,
    HALTING,
    HALTING_HOPS,
    HALTING_HOPS_KL_ONLY,
    HALTING_KL_ONLY,
    HALTING_RULE,
    LOOPS_CHOSEN,
    ORACLE_LOOP,
    OVERTHINKING,
    Kind,
    is_validation,
    validation_split,
)
from rdt_core.model.transformer import RecurrentDepthTransformer


@dataclass(frozen=True)
class SplitResult:
    """What one pass over a split yields; everything else is arithmetic on it."""

    correct: torch.Tensor  # (T, Q) bool: query q answered right after loop t + 1
    hops: torch.Tensor  # (Q,) long
    halt_loops: torch.Tensor  # (n_rules, Q) long: loop at which q halts under each rule
    prefix_trained: torch.Tensor  # (Q,) bool: a multi-hop prefix of q is a trained query
    state_norms: torch.Tensor  # (T, Q) float: norm of the state at the answer position after each loop


def halting_rules(config: EvalConfig, with_grid: bool) -> list[HaltingRule]:
    """The configured rule first, then KL alone at the same threshold (its head-to-head partner, when the
    configured rule also has an entropy threshold), then (optionally) the whole grid."""
    rules = [configured_rule(config)]
    if config.halt_kl is not None and config.halt_entropy is not None:
        rules.append(HaltingRule(config.halt_kl, None, config.halt_entropy_scale))
    if with_grid:
        rules += rule_grid(config.halt_kl_grid, config.halt_entropy_grid, config.halt_entropy_scale)
    return rules


def halting_kinds(rules: list[HaltingRule], n_configured: int, by_hops: bool) -> list[tuple[Kind, dict[str, str]]]:
    """The metric kind of each rule (and the rule's name where the kind spells it out): the configured
    one, ``kl_only`` beside it, then the grid's by name; ``by_hops`` for the per-hop-count kinds of the
    configured two."""
    configured = [HALTING_HOPS, HALTING_HOPS_KL_ONLY] if by_hops else [HALTING, HALTING_KL_ONLY]
    grid = [(HALTING_RULE, {"rule": rule.name}) for rule in rules[n_configured:]]
    return [(kind, {}) for kind in configured[:n_configured]] + grid


@torch.no_grad()
def run_split(
    model: RecurrentDepthTransformer,
    queries: QuerySet,
    max_loops: int,
    rules: list[HaltingRule],
    chunk_size: int = 2048,
) -> SplitResult:
    was_training = model.training
    model.eval()
    correct, halt_loops, norms = [], [], []
    for start in range(0, len(queries), chunk_size):
        chunk = queries.subset(torch.arange(start, min(start + chunk_size, len(queries))))
        chunk_norms: list[torch.Tensor] = []

        def keep_norm(name: str, state: torch.Tensor) -> None:
            if name.endswith("resid_post"):
                chunk_norms.append(state[:, -1].float().norm(dim=-1).cpu())  # (B,)

        logits = model(chunk.tokens, max_loops, hook=keep_norm)  # (T, B, E)
        correct.append((logits.argmax(-1) == chunk.answers).cpu())
        halt_loops.append(halting_loops(logits, rules).cpu())
        norms.append(torch.stack(chunk_norms))
    model.train(was_training)
    return SplitResult(
        correct=torch.cat(correct, dim=1),
        hops=queries.hops.cpu(),
        halt_loops=torch.cat(halt_loops, dim=1),
        prefix_trained=queries.prefix_trained.cpu(),
        state_norms=torch.cat(norms, dim=1),
    )


def chosen_budgets(validation: SplitResult) -> dict[int, int]:
    """Per hop count, the inference loop count with the best validation accuracy (the fewest loops on
    a tie): what the test split is read at."""
    budgets = {}
    for hops in sorted(set(validation.hops.tolist())):
        by_loop = validation.correct[:, validation.hops == hops].float().mean(dim=1)  # (T,)
        budgets[hops] = int(by_loop.argmax().item()) + 1  # argmax returns the first maximum
    return budgets


def trained_hops_mask(result: SplitResult, config: ExperimentConfig) -> torch.Tensor:
    """(Q,) bool: queries of the hop counts the split shares with training (all, when it shares none)."""
    hop_counts = sorted(set(result.hops.tolist()))
    trained = [hops for hops in hop_counts if hops <= config.data.train_max_hops] or hop_counts
    return torch.isin(result.hops, torch.tensor(trained))


def right_at_budgets(result: SplitResult, budgets: dict[int, int]) -> torch.Tensor:
    """(Q,) bool: each query answered right at its hop count's loop budget."""
    loops = torch.tensor([budgets[hops] for hops in result.hops.tolist()])  # (Q,)
    return result.correct[loops - 1, torch.arange(len(loops))]


def split_metrics(
    split: str,
    result: SplitResult,
    config: ExperimentConfig,
    rules: list[HaltingRule],
    validation: SplitResult | None = None,
) -> dict[str, float]:
    """The metrics of one split (names in the module docstring). Pure: no model involved."""
    metrics: dict[str, float] = {}
    inference_loops = config.train.train_loops
    hop_counts = sorted(set(result.hops.tolist()))
    in_trained = trained_hops_mask(result, config)  # (Q,)

    def by_loop_of(columns: torch.Tensor) -> torch.Tensor:
        return result.correct[:, columns].float().mean(dim=1)  # (T,)

    for loop, accuracy in enumerate(by_loop_of(torch.ones_like(in_trained)).tolist(), start=1):
        metrics[ACC_LOOP.name(split=split, loop=loop)] = accuracy
    by_loop = by_loop_of(in_trained)  # (T,) trained hop counts
    metrics[ACC.name(split=split)] = by_loop[inference_loops - 1].item()
    metrics[ACC_ORACLE.name(split=split)] = by_loop.max().item()
    metrics[ORACLE_LOOP.name(split=split)] = float(by_loop.argmax().item() + 1)
    for hops in hop_counts:
        hop_by_loop = by_loop_of(result.hops == hops)
        for loop, accuracy in enumerate(hop_by_loop.tolist(), start=1):
            metrics[ACC_HOPS_LOOP.name(split=split, hops=hops, loop=loop)] = accuracy
        metrics[ACC_HOPS.name(split=split, hops=hops)] = hop_by_loop[inference_loops - 1].item()
        metrics.update(overthinking_metrics(split, hops, hop_by_loop))

    if validation is not None:
        budgets = chosen_budgets(validation)
        right = right_at_budgets(result, budgets)  # (Q,)
        metrics[ACC_CHOSEN.name(split=split)] = right[in_trained].float().mean().item()
        for hops in hop_counts:
            metrics[LOOPS_CHOSEN.name(split=split, hops=hops)] = float(budgets[hops])
            metrics[ACC_HOPS_CHOSEN.name(split=split, hops=hops)] = right[result.hops == hops].float().mean().item()
            if hops > config.data.train_max_hops:
                for kind, marked in (("trained", result.prefix_trained), ("novel", ~result.prefix_trained)):
                    picked = right[(result.hops == hops) & marked]
                    if picked.numel():  # a kind of query the split does not hold has no accuracy
                        name = ACC_PREFIX.name(split=split, hops=hops, kind=kind)
                        metrics[name] = picked.float().mean().item()

    n_configured = len(halting_rules(config.eval, with_grid=False))
    for index, (kind, fields) in enumerate(halting_kinds(rules, n_configured, by_hops=False)):
        metrics.update(cost_metrics(kind, {"split": split, **fields}, result.correct, result.halt_loops[index]))
    if split != "train":
        for index, (kind, _) in enumerate(halting_kinds(rules[:n_configured], n_configured, by_hops=True)):
            for hops in hop_counts:
                columns = result.hops == hops
                fields = {"split": split, "hops": hops}
                metrics.update(cost_metrics(kind, fields, result.correct[:, columns], result.halt_loops[index, columns]))
    return metrics


def validation_metrics(
    split: str, result: SplitResult, config: ExperimentConfig, rules: list[HaltingRule]
) -> dict[str, float]:
    """What a sweep selects settings on, so that it never selects on the test split: accuracy on the
    trained hop counts at the trained loop count (``acc/<split>_val``) and at the budgets this split
    chooses (``acc/<split>_val/chosen``, its best per hop count), and the configured halting rule."""
    hop_counts = sorted(set(result.hops.tolist()))
    in_trained = trained_hops_mask(result, config)  # (Q,)
    right = right_at_budgets(result, chosen_budgets(result))  # (Q,)
    metrics = {
        ACC.name(split=split): result.correct[config.train.train_loops - 1, in_trained].float().mean().item(),
        ACC_CHOSEN.name(split=split): right[in_trained].float().mean().item(),
    }
    for hops in hop_counts:
        metrics[ACC_HOPS_CHOSEN.name(split=split, hops=hops)] = right[result.hops == hops].float().mean().item()
    metrics.update(cost_metrics(HALTING, {"split": split}, result.correct, result.halt_loops[0]))
    return metrics


def cost_metrics(kind: Kind, fields: dict[str, object], correct: torch.Tensor, halt_loops: torch.Tensor) -> dict[str, float]:
    """A halting rule's accuracy and mean loops beside the fixed budget of the same mean cost."""
    compared = equal_cost(correct, halt_loops)
    values = {"acc": compared.acc, "mean_loops": compared.mean_loops, "fixed_acc": compared.fixed_acc, "gain": compared.gain}
    return {kind.name(**fields, stat=stat): value for stat, value in values.items()}


def overthinking_metrics(split: str, hops: int, accuracy_by_loop: torch.Tensor) -> dict[str, float]:
    """Peak accuracy over inference loops, its loop, the accuracy at the last loop, and the drop."""
    peak = accuracy_by_loop.max().item()
    final = accuracy_by_loop[-1].item()
    values = {"peak_acc": peak, "peak_loop": float(accuracy_by_loop.argmax().item() + 1), "final_acc": final,
              "drop": peak - final}
    return {OVERTHINKING.name(split=split, hops=hops, stat=stat): value for stat, value in values.items()}


def evaluate(
    model: RecurrentDepthTransformer,
    eval_sets: dict[str, QuerySet],
    config: ExperimentConfig,
    with_grid: bool = False,
) -> dict[str, float]:
    """All split metrics at one evaluation step, and what each registered instrument reads from the same
    results (``rdt_core.instruments``: the state norm); ``with_grid`` adds every halting rule of the grid.
    A validation split only chooses loop budgets for its test split; it is not reported itself."""
    rules = halting_rules(config.eval, with_grid)
    results = {
        split: run_split(model, queries, config.model.max_loops, rules) for split, queries in eval_sets.items()
    }
    metrics: dict[str, float] = {}
    for split, result in results.items():
        if is_validation(split):
            metrics.update(validation_metrics(split, result, config, rules))
            continue
        validation = results.get(validation_split(split))
        metrics.update(split_metrics(split, result, config, rules, validation))
    for instrument in INSTRUMENTS:  # what the registered instruments read from the same pass
        if instrument.at_evaluation is not None:
            metrics.update(instrument.at_evaluation(results, config))
    return metrics
