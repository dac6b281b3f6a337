"""``train.replicas: K``: K independent models trained together in one vectorised pass.

Why: every claim needs several seeds, and a small model leaves even a CPU core under-used. Replica i is
the run ``train_worker`` would make with ``train.seed + i`` (its own initial weights, batch stream and
training-accuracy sample, on the same graph), and its metrics match that run's to float tolerance.

How: each replica's model is built as a separate run builds it, then the K models are fused into one
:class:`StackedTransformer` whose every parameter holds the K replicas' along a leading dimension.
Its forward is the plain model's own code (``RecurrentDepthTransformer.forward``) on a batch of K * B
queries, replica-major: the layers with weights (linear, RMS norm, embedding, tied readout) split the
batch into K slices and apply each replica's weights with one batched matmul; the rest (attention,
activations, injection) does not care which replica a row belongs to. A hand-batched layer rather than
``torch.func.vmap``: vmap has no batching rule for CPU attention and falls back to a loop over replicas.

One AdamW steps every stacked tensor: AdamW (and its decoupled weight decay) is elementwise, so with the
same learning rate it is K separate optimizers. The loss is the sum of the replicas' losses, so each
replica's slice of a gradient is its own. Gradients are clipped per replica, on the norm over its slices.

Evaluation and the end-of-run analysis run per replica on plain models holding copies of its weights:
they cost what K separate runs' would. The trial reports the mean over replicas under the usual names,
each replica's headline values (``replica/<i>/...``) and their spread (``replica_std/...``).

Not supported: a loop count sampled per step (each replica would draw its own, and one pass unrolls one
depth; the config refuses it) and data-parallel workers (refused at the start). Measured on a 2-core CPU,
default model, 8 replicas against 8 sequential runs: 1.2x per step on one thread (batched matmuls cost
what single ones do there; only per-op overhead is shared), 1.9x on two (a single small model cannot use
the second core, the stacked one can).
"""

from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rdt_core import metrics as names
from rdt_core.config import ConfigError, ExperimentConfig
from rdt_core.data.queries import build_splits
from rdt_core.eval import evaluate
from rdt_core.model.transformer import RecurrentDepthTransformer, build_model
from rdt_core.train.analysis import device_eval_sets, final_analysis
from rdt_core.train.checkpoints import CHECKPOINT_FILE, TRAINING_STATE_FILE, Reporter, save_atomically, save_checkpoint
from rdt_core.train.compiling import CompiledOrEager
from rdt_core.train.devices import pick_device, rank_and_world_size
from rdt_core.train.worker import (
    Curriculum,
    Progress,
    end_of_run_metrics,
    learning_rate_at,
    make_optimizer,
    record_phases,
    training_metrics,
)


class StackedLinear(nn.Module):
    """K linear maps without bias (the model has none), replica k applied to the k-th of K equal slices
    of the batch."""

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        if any(layer.bias is not None for layer in layers):
            raise TypeError("a linear layer with a bias: StackedLinear would drop it")
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))  # (K, out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (K * B, ..., in) replica-major -> (K * B, ..., out)."""
        n_replicas, _, d_in = self.weight.shape
        flat = x.reshape(n_replicas, -1, d_in)  # (K, N, in)
        out = torch.bmm(flat, self.weight.transpose(1, 2))  # (K, N, out)
        return out.reshape(*x.shape[:-1], -1)


class StackedRMSNorm(nn.Module):
    """K RMS norms over the last dimension, each with its replica's gain."""

    def __init__(self, norms: list[nn.RMSNorm]):
        super().__init__()
        self.eps = norms[0].eps
        self.weight = nn.Parameter(torch.stack([norm.weight.detach() for norm in norms]))  # (K, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (K * B, ..., D) replica-major -> same shape."""
        n_replicas, d_model = self.weight.shape
        flat = x.reshape(n_replicas, -1, d_model)  # (K, N, D)
        return (F.rms_norm(flat, (d_model,), eps=self.eps) * self.weight[:, None]).reshape(x.shape)


class StackedEmbedding(nn.Module):
    """K embedding tables, looked up as one table of K * V rows by offsetting each replica's tokens."""

    def __init__(self, embeddings: list[nn.Embedding]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([embedding.weight.detach() for embedding in embeddings]))  # (K, V, D)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (K * B, T) replica-major -> (K * B, T, D)."""
        n_replicas, vocab_size, d_model = self.weight.shape
        offsets = torch.arange(n_replicas, device=tokens.device)[:, None] * vocab_size  # (K, 1)
        rows = tokens.reshape(n_replicas, -1) + offsets  # (K, B * T)
        return F.embedding(rows, self.weight.reshape(-1, d_model)).reshape(*tokens.shape, d_model)


STACKED_LAYERS = {nn.Linear: StackedLinear, nn.RMSNorm: StackedRMSNorm, nn.Embedding: StackedEmbedding}


class StackedTransformer(RecurrentDepthTransformer):
    """K replicas of one architecture as one model: the plain model's forward on (K * B, T) tokens.

    Its ``state_dict`` has the plain model's keys, each tensor with a leading K: ``replica_state`` takes
    one replica's out for a plain model.
    """

    def __init__(self, models: list[RecurrentDepthTransformer]):
        first = models[0]
        with torch.random.fork_rng(devices=[]):  # its own initial weights are replaced: leave the seed's stream be
            super().__init__(first.config, first.vocab, n_core_groups=len(first.core))
        self.n_replicas = len(models)
        for name, module in list(self.named_modules()):
            if type(module) in STACKED_LAYERS:
                replicas = [model.get_submodule(name) for model in models]
                self.set_submodule(name, STACKED_LAYERS[type(module)](replicas))
        unstacked = [name for name, p in self.named_parameters() if p.shape[:1] != (self.n_replicas,)]
        if unstacked:  # a layer type added to the model but not here would silently be shared
            raise TypeError(f"parameters with no stacked layer: {unstacked}")

    def unembed(self, read: torch.Tensor) -> torch.Tensor:
        """As ``RecurrentDepthTransformer.unembed``, with each replica's tied embedding:
        read (K * B, [T,] D), replica-major -> (K * B, [T,] n_entities)."""
        entity_rows = self.embed.weight[:, : self.vocab.n_entities]  # (K, E, D)
        flat = read.reshape(self.n_replicas, -1, read.shape[-1])  # (K, N, D)
        return torch.bmm(flat, entity_rows.transpose(1, 2)).reshape(*read.shape[:-1], -1)

    def replica_state(self, replica: int) -> dict[str, torch.Tensor]:
        """One replica's weights, under the plain model's keys."""
        return {name: tensor[replica] for name, tensor in self.state_dict().items()}


def replica_config(config: ExperimentConfig, replica: int) -> ExperimentConfig:
    """The config of the single run replica ``replica`` reproduces: its own seed, one replica."""
    return ExperimentConfig.from_dict(
        config.model_dump(), {"train.seed": config.train.seed + replica, "train.replicas": 1}
    )


@torch.no_grad()
def clip_per_replica(parameters: list[nn.Parameter], max_norm: float) -> None:
    """``clip_grad_norm_`` for each replica alone: the norm over its slice of every gradient."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(grad.flatten(1), dim=1) for grad in grads])  # (P, K)
    total = torch.linalg.vector_norm(norms, dim=0)  # (K,)
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)  # (K,)
    for grad in grads:
        grad.mul_(scale.view(-1, *[1] * (grad.dim() - 1)))


def combine(reports: list[dict[str, float]], seeds: list[int]) -> dict[str, float]:
    """The trial's report from its replicas': the mean of each name over the replicas that report it (a
    phase step only where the phase was reached), each replica's seed and headline values, and the
    sample standard deviation of those over replicas (where two or more report them)."""
    combined: dict[str, float] = {}
    for name in dict.fromkeys(name for report in reports for name in report):
        values = [report[name] for report in reports if name in report]
        combined[name] = statistics.fmean(values)
        if name in names.REPLICA_STD.stats and len(values) > 1:
            combined[names.REPLICA_STD.name(stat=name)] = statistics.stdev(values)
    for replica, (report, seed) in enumerate(zip(reports, seeds)):
        combined[names.REPLICA.name(replica=replica, stat="seed")] = float(seed)
        for name in names.REPLICA_HEADLINE:
            if name in report:
                combined[names.REPLICA.name(replica=replica, stat=name)] = report[name]
    return combined


def save_replicas_state(
    directory: Path,
    model: StackedTransformer,
    config: ExperimentConfig,
    optimizer: torch.optim.Optimizer,
    batch_generators: list[torch.Generator],
    progress: list[dict[str, Any]],
) -> Path:
    """A resumable checkpoint of every replica: the stacked weights, the one optimizer, each replica's
    batch stream and progress (its phases and curriculum)."""
    save_checkpoint(model, config, directory)
    state = {
        "optimizer": optimizer.state_dict(),
        "batch_streams": [generator.get_state() for generator in batch_generators],
        "progress": progress,
    }
    save_atomically(state, directory / TRAINING_STATE_FILE)
    return directory


def restore_replicas_state(
    directory: Path,
    model: StackedTransformer,
    optimizer: torch.optim.Optimizer,
    batch_generators: list[torch.Generator],
) -> list[dict[str, Any]]:
    """Load a checkpoint of ``save_replicas_state``; returns each replica's progress."""
    device = next(model.parameters()).device
    model.load_state_dict(torch.load(directory / CHECKPOINT_FILE, map_location=device, weights_only=True)["model"])
    state = torch.load(directory / TRAINING_STATE_FILE, map_location="cpu", weights_only=True)
    if len(state["batch_streams"]) != len(batch_generators):
        raise ValueError(
            f"{directory}: saved with {len(state['batch_streams'])} replicas, resumed with {len(batch_generators)}"
        )
    optimizer.load_state_dict(state["optimizer"])
    for generator, stream in zip(batch_generators, state["batch_streams"]):
        generator.set_state(stream)
    return state["progress"]


def train_replicas(
    config: ExperimentConfig,
    reporter: Reporter,
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
) -> dict[str, float]:
    """``train_worker`` for ``config.train.replicas`` > 1 (same arguments, reports and checkpoints): each
    report combines the replicas' (see :func:`combine`). Returns the combined summary."""
    started = time.perf_counter()
    if rank_and_world_size()[1] > 1:
        raise ConfigError("train.replicas", "replicas > 1 trains on one worker: set resources.workers_per_trial to 1")
    device = pick_device()
    n_replicas = config.train.replicas
    configs = [replica_config(config, replica) for replica in range(n_replicas)]
    seeds = [replica.train.seed for replica in configs]

    splits = build_splits(config.data)
    train_set = splits.train.to(device)
    eval_sets = [device_eval_sets(splits, replica, device) for replica in configs]  # each its own train sample
    models = []
    for seed, replica in zip(seeds, configs):
        torch.manual_seed(seed)  # the initial weights the replica's own run would draw
        models.append(build_model(replica, splits.vocab).to(device))
    stacked = StackedTransformer(models).to(device)
    network = CompiledOrEager(stacked) if config.train.compile else stacked
    parameters = list(stacked.parameters())
    optimizer = make_optimizer(parameters, config, device)  # elementwise: K optimizers in one
    batch_generators = [torch.Generator(device).manual_seed(seed * 1_000_003) for seed in seeds]
    batch_size = config.train.batch_size
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    n_loops = config.train.train_loops  # fixed: the config refuses sampled R with replicas
    curricula = [Curriculum(replica, train_set) for replica in configs]
    progressive = config.train.progressive_loss_weight > 0
    progress = [Progress(curriculum_max_hops=curriculum.max_hops) for curriculum in curricula]
    if resume_from is not None:
        saved = restore_replicas_state(Path(resume_from), stacked, optimizer, batch_generators)
        progress = [Progress(**state) for state in saved]
        for curriculum, state in zip(curricula, progress):
            curriculum.set_max_hops(state.curriculum_max_hops)
    resumed_from_step = progress[0].step

    loss_sum, step_count = torch.zeros(n_replicas, device=device), 0  # (K,)
    reports: list[dict[str, float]] = [{} for _ in range(n_replicas)]
    phase_splits = [split for split in eval_sets[0] if not names.is_validation(split)]
    for step in range(resumed_from_step + 1, config.train.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step - 1, config)
        picked = torch.cat([  # each replica's batch from its own stream, as its own run draws it
            curriculum.eligible[torch.randint(len(curriculum.eligible), (batch_size,), device=device, generator=stream)]
            for curriculum, stream in zip(curricula, batch_generators)
        ])  # (K * B,) replica-major
        tokens, answers = train_set.tokens[picked], train_set.answers[picked]  # (K * B, T), (K * B,)
        with autocast:
            logits = network(tokens, n_loops, every_loop=progressive, backprop_loops=config.train.backprop_loops)
            # logits: (n_loops or 1, K * B, E)
            loss = F.cross_entropy(logits[-1].float(), answers, reduction="none").view(n_replicas, -1).mean(1)  # (K,)
            if progressive:
                per_loop = F.cross_entropy(
                    logits.flatten(0, 1).float(), answers.repeat(len(logits)), reduction="none"
                ).view(len(logits), n_replicas, -1).mean((0, 2))  # (K,)
                loss = loss + config.train.progressive_loss_weight * per_loop
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # replicas share no weight: each slice of a gradient is its replica's own
        clip_per_replica(parameters, config.train.grad_clip)
        optimizer.step()
        loss_sum += loss.detach()
        step_count += 1

        last_step = step == config.train.steps
        if step % config.train.eval_every == 0 or last_step:
            elapsed_s = progress[0].elapsed_s + time.perf_counter() - started
            for replica, model in enumerate(models):
                model.load_state_dict(stacked.replica_state(replica))
                with autocast:
                    metrics = evaluate(model, eval_sets[replica], configs[replica], with_grid=last_step)
                metrics.update(training_metrics(
                    step, optimizer.param_groups[0]["lr"], (loss_sum[replica] / step_count).item(), float(n_loops),
                    curricula[replica].max_hops, elapsed_s, resumed_from_step,
                ))
                record_phases(metrics, progress[replica].phase_steps, phase_splits, step, config)
                curricula[replica].update(metrics)
                progress[replica].step = step
                progress[replica].curriculum_max_hops = curricula[replica].max_hops
                reports[replica] = metrics
            loss_sum.zero_()
            step_count = 0
            if last_step:
                break  # the final report, with the summary, follows the loop
            checkpoint = None
            interval = config.train.checkpoint_interval
            if checkpoint_dir is not None and interval and step % interval == 0:
                checkpoint = save_replicas_state(
                    Path(checkpoint_dir) / f"step_{step:07d}", stacked, config, optimizer, batch_generators,
                    [asdict(replace(state, elapsed_s=elapsed_s)) for state in progress],
                )
            reporter(combine(reports, seeds), checkpoint)
            if checkpoint is not None:
                shutil.rmtree(checkpoint)  # the reporter has persisted it

    summaries = []
    for replica, model in enumerate(models):
        with autocast:
            summary = final_analysis(model, splits, eval_sets[replica], configs[replica], device)
        summary.update(end_of_run_metrics(model, phase_splits, progress[replica].phase_steps, world_size=1))
        summaries.append(summary)
    for summary in summaries:  # as a single run times it: training and the final analysis
        summary[names.TRAIN_S.name()] = progress[0].elapsed_s + time.perf_counter() - started
    final_report = combine([{**report, **summary} for report, summary in zip(reports, summaries)], seeds)
    final_checkpoint = None
    if checkpoint_dir is not None:
        final_checkpoint = Path(checkpoint_dir)
        save_checkpoint(stacked, config, final_checkpoint, final_report)
    reporter(final_report, final_checkpoint)
    return combine(summaries, seeds)
