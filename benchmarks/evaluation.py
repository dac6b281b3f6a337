"""Evaluation: dense evaluation against one pass per setting, and early-exit inference against max_loops.

Both need a model that answers: an untrained one never halts early (its readouts stay near uniform), so a
model of the default size is trained here first, to 12 readout loops with 4 trained, on the default graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.common import Entry, entry, interleaved, seconds_of
from rdt_core.config import ExperimentConfig
from rdt_core.data import build_splits
from rdt_core.data.queries import QuerySet, Splits
from rdt_core.eval import evaluate, halting_rules
from rdt_core.halting import HaltingRule, halting_inference
from rdt_core.model.transformer import RecurrentDepthTransformer, build_model
from rdt_core.train.analysis import device_eval_sets
from rdt_core.train.worker import learning_rate_at


def evaluation_config(steps: int) -> ExperimentConfig:
    """The default experiment (its evaluation sets too) read out to 12 loops."""
    return ExperimentConfig.from_dict({}, {"model.max_loops": 12, "train.steps": steps})


def trained_model(config: ExperimentConfig) -> tuple[RecurrentDepthTransformer, Splits]:
    """The model after ``train.steps`` plain AdamW steps on random batches (the worker's schedule)."""
    torch.manual_seed(config.train.seed)
    splits = build_splits(config.data)
    model = build_model(config, splits.vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, betas=(0.9, 0.98),
                                  weight_decay=config.train.weight_decay)
    generator = torch.Generator().manual_seed(config.train.seed)
    for step in range(config.train.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, config)
        batch = splits.train.subset(torch.randint(len(splits.train), (config.train.batch_size,), generator=generator))
        logits = model(batch.tokens, config.train.train_loops, every_loop=False)  # (1, B, E)
        loss = F.cross_entropy(logits[-1], batch.answers)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
    return model.eval(), splits


@torch.no_grad()
def pass_per_loop_count(model: RecurrentDepthTransformer, eval_sets: dict[str, QuerySet], max_loops: int) -> None:
    """Accuracy at every inference loop count the naive way: a forward pass per loop count and split."""
    for loops in range(1, max_loops + 1):
        for queries in eval_sets.values():
            logits = model(queries.tokens, loops, every_loop=False)  # (1, Q, E)
            (logits[-1].argmax(-1) == queries.answers).float().mean().item()


def pass_per_rule(model: RecurrentDepthTransformer, eval_sets: dict[str, QuerySet], max_loops: int,
                  rules: list[HaltingRule]) -> None:
    """Every halting rule the naive way: a stopping pass per rule and split."""
    for rule in rules:
        for queries in eval_sets.values():
            halting_inference(model, queries.tokens, max_loops, rule)


def dense_and_early_exit(quick: bool) -> list[Entry]:
    config = evaluation_config(steps=600 if quick else 1500)
    repeats = 3 if quick else 7
    model, splits = trained_model(config)
    eval_sets = device_eval_sets(splits, config, torch.device("cpu"))
    return dense_evaluation(model, eval_sets, config, repeats) + early_exit(model, splits, config, repeats)


def dense_evaluation(model: RecurrentDepthTransformer, eval_sets: dict[str, QuerySet], config: ExperimentConfig,
                     repeats: int) -> list[Entry]:
    """``evaluate`` with the whole halting grid (what the last evaluation of a run computes, from one pass
    per split) against a pass per loop count, and against that plus a stopping pass per halting rule."""
    max_loops = config.model.max_loops
    rules = halting_rules(config.eval, with_grid=True)
    dense_s, per_loop_s = interleaved(
        lambda: seconds_of(lambda: evaluate(model, eval_sets, config, with_grid=True)),
        lambda: seconds_of(lambda: pass_per_loop_count(model, eval_sets, max_loops)),
        repeats,
    )
    per_rule_s = min(seconds_of(lambda: pass_per_rule(model, eval_sets, max_loops, rules)) for _ in range(2))
    target = f">= {max_loops / 2:g}"
    queries = sum(len(queries) for queries in eval_sets.values())
    return [
        entry("dense_eval/vs_pass_per_loop_count", dense_s, per_loop_s, "s", target, ratio=per_loop_s / dense_s,
              note=f"evaluate(with_grid=True) on {queries} queries, {max_loops} loops, {len(rules)} halting rules, "
                   "against a final-loop pass per loop count (which computes no halting at all); "
                   "ratio = baseline / dense"),
        entry("dense_eval/vs_pass_per_setting", dense_s, per_loop_s + per_rule_s, "s", target,
              ratio=(per_loop_s + per_rule_s) / dense_s,
              note="against a pass per loop count plus a stopping pass (halting_inference) per halting rule; "
                   "ratio = baseline / dense"),
    ]


def early_exit(model: RecurrentDepthTransformer, splits: Splits, config: ExperimentConfig, repeats: int) -> list[Entry]:
    """``halting_inference`` (which stops computing the examples that halted) against a fixed ``max_loops``
    pass, on every training query (the ones a briefly trained model knows), under the configured rule and
    its KL-only partner."""
    queries, max_loops = splits.train, config.model.max_loops

    @torch.no_grad()
    def fixed() -> torch.Tensor:
        return model(queries.tokens, max_loops, every_loop=False)[-1]  # (Q, E)

    fixed_acc = (fixed().argmax(-1) == queries.answers).float().mean().item()
    entries = []
    for rule in halting_rules(config.eval, with_grid=False):
        halted = halting_inference(model, queries.tokens, max_loops, rule)
        exit_acc = (halted.predictions == queries.answers).float().mean().item()
        exit_s, fixed_s = interleaved(
            lambda: seconds_of(lambda: halting_inference(model, queries.tokens, max_loops, rule)),
            lambda: seconds_of(fixed), repeats,
        )
        result = entry(f"early_exit/{rule.name}", exit_s * 1e3, fixed_s * 1e3, "ms", "<= 0.75",
                       note=f"on {len(queries)} training queries after {config.train.steps} steps, against a fixed "
                            f"{max_loops}-loop pass; met also needs accuracy within 0.01 of the fixed pass",
                       acc_early_exit=round(exit_acc, 4), acc_fixed=round(fixed_acc, 4),
                       mean_loops=round(halted.loops_used.float().mean().item(), 2), max_loops=max_loops)
        if result.met is not None:
            result.met = result.met and exit_acc >= fixed_acc - 0.01
        entries.append(result)
    return entries
