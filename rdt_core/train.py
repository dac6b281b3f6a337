"""``train_worker(config, reporter)``: the training loop every trial runs, with or without Ray.

The loop knows a reporter (any callable taking a metrics dict), not Ray or MLflow: a Tune trial passes
``ray.tune.report``, a Ray Train worker ``ray.train.report``, a test a list's ``append``. When
``torch.distributed`` is initialised (Ray Train's TorchTrainer does so), the model is wrapped in
DistributedDataParallel and the global batch is split across the workers.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from rdt_core.config import ExperimentConfig
from rdt_core.data.queries import build_splits
from rdt_core.eval import evaluation_metrics, loop_metric_name
from rdt_core.model.transformer import RecurrentDepthTransformer

Reporter = Callable[[dict[str, float]], None]

SPLITS = ("train", "test")
SUMMARY_KEYS = ("final/acc/train", "final/acc/test", "final/acc/test/best", "final/best_loop/test")


def reported_metric_names(config: ExperimentConfig) -> set[str]:
    """Every metric name ``train_worker`` reports for ``config``: what a sweep may optimise."""
    names = {"step", "lr", "loss/train", "time/elapsed_s", "time/train_s", "model/n_params", "dist/world_size"}
    names.update(SUMMARY_KEYS)
    for split in SPLITS:
        names.update({f"acc/{split}", f"acc/{split}/best", f"best_loop/{split}"})
        names.update(loop_metric_name(split, loop) for loop in range(1, config.model.max_loops + 1))
    return names


def pick_device() -> torch.device:
    """The trial's GPU when Ray gave it one (CUDA is then visible), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def learning_rate_at(step: int, config: ExperimentConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak at the last step."""
    train = config.train
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    progress = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
    return train.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_worker(config: ExperimentConfig, reporter: Reporter) -> dict[str, float]:
    """Train one model, reporting metrics every ``eval_every`` steps and a summary at the end.

    Returns the summary (``final/...`` keys, training time, parameter count and worker count).
    """
    started = time.perf_counter()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    device = pick_device()
    torch.manual_seed(config.train.seed)  # identical initial weights on every worker

    splits = build_splits(config.data)
    train_set = splits.train.to(device)
    eval_sets = {name: queries.to(device) for name, queries in splits.named().items()}
    model = RecurrentDepthTransformer(config.model, splits.vocab).to(device)
    network = DistributedDataParallel(model) if world_size > 1 else model
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.train.lr,
        betas=(0.9, 0.98),
        weight_decay=config.train.weight_decay,
        fused=device.type == "cuda",
    )
    # Each worker draws its own share of the global batch from its own stream.
    batch_generator = torch.Generator(device).manual_seed(config.train.seed * 1_000_003 + rank)
    worker_batch = max(1, config.train.batch_size // world_size)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    loss_sum, loss_count = torch.zeros((), device=device), 0
    metrics: dict[str, float] = {}
    for step in range(1, config.train.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step - 1, config)
        index = torch.randint(len(train_set), (worker_batch,), device=device, generator=batch_generator)
        batch = train_set.subset(index)
        with autocast:
            final_logits = network(batch.tokens, config.train.train_loops, every_loop=False)[-1]
            loss = F.cross_entropy(final_logits.float(), batch.answers)  # final-loop loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        loss_sum += loss.detach()
        loss_count += 1

        if step % config.train.eval_every == 0 or step == config.train.steps:
            with autocast:
                metrics = evaluation_metrics(
                    model, eval_sets, config.model.max_loops, config.train.train_loops
                )
            metrics.update(
                {
                    "step": float(step),
                    "lr": optimizer.param_groups[0]["lr"],
                    "loss/train": (loss_sum / loss_count).item(),
                    "time/elapsed_s": time.perf_counter() - started,
                }
            )
            loss_sum.zero_()
            loss_count = 0
            if step < config.train.steps:
                reporter(metrics)

    summary = {key: metrics[key.removeprefix("final/")] for key in SUMMARY_KEYS}
    summary["time/train_s"] = time.perf_counter() - started
    summary["model/n_params"] = float(sum(p.numel() for p in model.parameters()))
    summary["dist/world_size"] = float(world_size)
    reporter({**metrics, **summary})
    return summary
