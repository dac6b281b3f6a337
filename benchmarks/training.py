"""Training: the real loop against the bare step, torch.compile against eager, replicas against sequential runs.

The bare step is what any training loop must pay: the forward, backward and AdamW step of the same model
on a batch of the same size, with nothing else (no batch sampling, learning-rate schedule, clipping or
bookkeeping). The loop's own per-step time is read from two real ``train_worker`` runs that differ only
in their step count: their difference is steps and nothing else, since each run pays the same set-up,
one evaluation and the same final analysis.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import Entry, entry, interleaved, seconds_of
from rdt_core.config import ExperimentConfig, TrainConfig
from rdt_core.data import build_splits
from rdt_core.model.transformer import build_model
from rdt_core.train import train_worker
from rdt_core.train.compiling import CompiledOrEager
from rdt_core.train.worker import make_optimizer

# The default experiment with a light final analysis: the analysis is the same in both runs of a
# difference, and a lighter one leaves less noise to subtract.
LIGHT_EVAL = {"n_train_eval_per_hop": 32, "n_lens_queries": 8, "n_patching_queries": 8}


def bench_config(**dotted: Any) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"eval": LIGHT_EVAL}, {"train.checkpoint_every": 0, **dotted})


def overridden(config: ExperimentConfig, **dotted: Any) -> ExperimentConfig:
    """``config`` with dotted overrides (``train.steps=...``), validated again."""
    return ExperimentConfig.from_dict(config.model_dump(), dotted)


def run_seconds(config: ExperimentConfig, steps: int) -> float:
    """Wall time of a whole ``train_worker`` run of ``steps`` steps, evaluated once, at its end."""
    run = overridden(config, **{"train.steps": steps, "train.eval_every": steps})
    return seconds_of(lambda: train_worker(run, lambda metrics, checkpoint: None))


def loop_seconds_per_step(config: ExperimentConfig, short: int, long: int) -> float:
    """The real loop's time per step: two runs differing only in their step count."""
    return (run_seconds(config, long) - run_seconds(config, short)) / (long - short)


class BareStep:
    """The forward, backward and AdamW step of ``config``'s model on one fixed batch of its batch size;
    ``forward`` may be swapped for a compiled one sharing the same parameters."""

    def __init__(self, config: ExperimentConfig):
        torch.manual_seed(config.train.seed)
        splits = build_splits(config.data)
        self.model = build_model(config, splits.vocab)
        self.forward = self.model
        self.optimizer = make_optimizer(self.model.parameters(), config, torch.device("cpu"))
        pick = torch.randint(len(splits.train), (config.train.batch_size,))
        self.batch = splits.train.subset(pick)
        self.n_loops = config.train.train_loops

    def __call__(self) -> None:
        logits = self.forward(self.batch.tokens, self.n_loops, every_loop=False)  # (1, B, E)
        loss = F.cross_entropy(logits[-1], self.batch.answers)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def seconds_per_step(self, steps: int) -> float:
        return seconds_of(lambda: [self() for _ in range(steps)]) / steps


def train_step(quick: bool) -> list[Entry]:
    """Per-step time of the real loop against the bare step, at the default size and at d_model 128
    with 2 core layers (where the step is heavier and fixed per-step costs weigh less)."""
    short, long, repeats = (10, 50, 3) if quick else (20, 100, 5)
    entries = []
    for label, dotted in (("d64", {}), ("d128x2", {"model.d_model": 128, "model.n_core_layers": 2})):
        config = bench_config(**dotted)
        bare = BareStep(config)
        bare.seconds_per_step(3)  # warm-up: the allocator's first requests

        loop_s, bare_s = interleaved(lambda: loop_seconds_per_step(config, short, long),
                                     lambda: bare.seconds_per_step(long - short), repeats)
        entries.append(entry(
            f"train_step/{label}", loop_s * 1e3, bare_s * 1e3, "ms/step", "<= 1.05",
            note=f"train_worker loop per step ((run of {long} steps - run of {short}) / {long - short}) "
                 f"against forward+backward+AdamW on a fixed batch of {config.train.batch_size}",
        ))
    return entries


def compile_step(quick: bool) -> list[Entry]:
    """Per-step time with the forward compiled (through ``CompiledOrEager``, as ``train.compile`` runs it)
    against eager, both after warm-up, on the same parameters; the compile time is recorded beside."""
    steps, repeats = (20, 3) if quick else (50, 7)
    bare = BareStep(bench_config())
    eager_forward = bare.model
    compiled_forward = CompiledOrEager(bare.model)
    bare.seconds_per_step(3)
    eager_step_s = bare.seconds_per_step(3)
    bare.forward = compiled_forward
    first_step_s = bare.seconds_per_step(1)  # compiles forward and backward
    bare.seconds_per_step(3)

    def timed(forward) -> float:
        bare.forward = forward
        return bare.seconds_per_step(steps)

    compiled_s, eager_s = interleaved(lambda: timed(compiled_forward), lambda: timed(eager_forward), repeats)
    note = "forward compiled by torch.compile (Inductor); on CPU it may lose; compile_s is its first step"
    if compiled_forward.failure:
        note = f"torch.compile failed, both sides ran eagerly: {compiled_forward.failure}"
    return [entry("compile/step", compiled_s * 1e3, eager_s * 1e3, "ms/step", "<= 1.0", note=note,
                  compile_s=round(first_step_s - eager_step_s, 2), fell_back=compiled_forward.failure is not None)]


def replicas_together(quick: bool) -> list[Entry]:
    """``train.replicas: 8`` against 8 sequential runs of one model: the training loop's time per step of
    the 8 together against 8 times one run's (the runs differ only in their seeds, which cost nothing),
    each read as in ``train_step``; ratio = sequential / together, the throughput gained. Evaluation is
    left out: the replicas evaluate one by one, as separate runs do. Measured only once the field exists."""
    n_replicas = 8
    short, long, repeats = (5, 25, 3) if quick else (10, 60, 5)
    name = f"replicas/{n_replicas}_vs_sequential"
    if "replicas" not in TrainConfig.model_fields:
        return [Entry(name, None, None, None, "ms/step", ">= 1.4", None, "replicas not implemented yet")]
    config = bench_config()
    together = overridden(config, **{"train.replicas": n_replicas})
    try:
        together_s, single_s = interleaved(lambda: loop_seconds_per_step(together, short, long),
                                           lambda: loop_seconds_per_step(config, short, long), repeats)
    except Exception as error:  # someone else's feature, still moving: record why, keep the rest
        return [Entry(name, None, None, None, "ms/step", ">= 1.4", None, f"failed: {error!r}"[:300])]
    sequential_s = n_replicas * single_s
    return [entry(name, together_s * 1e3, sequential_s * 1e3, "ms/step", ">= 1.4", ratio=sequential_s / together_s,
                  note=f"a step of {n_replicas} replicas together against {n_replicas} steps of one model, "
                       "default size; ratio = sequential / together")]
