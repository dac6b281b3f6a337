"""``train_worker(config, reporter)``: the training loop every trial runs, with or without Ray, for
K >= 1 models (``train.replicas``).

The loop knows a reporter (any callable taking a metrics dict and a checkpoint directory), not Ray or
MLflow: a Tune trial passes ``ray.tune.report``, a Ray Train worker ``ray.train.report``, a test a
function that keeps the metrics in a list. When ``torch.distributed`` is initialised (Ray Train's
TorchTrainer does so), the model is wrapped in DistributedDataParallel and the global batch is split
across the workers.

K models are one loop, not two: the loop keeps each replica's own state (config, batch stream,
curriculum, progress, report) in lists of length K, and :class:`TrainedModels` chooses what trains: the
plain model for K = 1, exactly as a single run always trained, or one ``StackedTransformer`` holding the
K replicas for K > 1 (see ``rdt_core.train.replicas`` for what a replica is).

Reported every ``eval_every`` steps: ``loss/train``, ``lr``, the loop count of the step, the evaluation
metrics of ``rdt_core.eval`` and the grokking phases reached so far. The last report adds the summary:
the whole halting grid, the logit lens, activation patching, time and size, and the finished marker
(``rdt_core.metrics.FINISHED``). Every name comes from ``rdt_core.metrics``; K > 1 reports the
replicas' combined (``rdt_core.train.replicas.combine``).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from rdt_core.config import ConfigError, ExperimentConfig
from rdt_core.data.queries import QuerySet
from rdt_core.data.splits import load_splits
from rdt_core.data.tokens import Vocabulary
from rdt_core import metrics as names
from rdt_core.eval import evaluate
from rdt_core.model.stacked import StackedTransformer, clip_per_replica
from rdt_core.model.transformer import RecurrentDepthTransformer, build_model
from rdt_core.train.analysis import device_eval_sets, final_analysis
from rdt_core.train.checkpoints import (
    Reporter,
    read_final_report,
    report_again,
    restore_training_state,
    save_checkpoint,
    save_training_state,
)
from rdt_core.train.compiling import CompiledOrEager
from rdt_core.train.devices import pick_device, rank_and_world_size
from rdt_core.train.replicas import combine, replica_config


def learning_rate_at(step: int, config: ExperimentConfig, stage: int = 0, stage_start: int = 0) -> float:
    """Linear warm-up, then ``train.lr_schedule``: cosine decay to a tenth of the peak at the last step,
    the peak held (constant), or linear decay to zero at the last step.

    A curriculum stage (``stage`` unlocks so far, the latest at step ``stage_start``) peaks at lr x
    ``curriculum_lr_decay`` ** stage, not below ``curriculum_lr_floor``, and with ``curriculum_restart`` warms
    up again from its first step; the decay after the warm-up runs over the whole run either way.
    """
    train = config.train
    peak = train.lr if stage == 0 else max(train.lr * train.curriculum_lr_decay**stage, train.curriculum_lr_floor)
    since_warmup_began = step - (stage_start if train.curriculum_restart else 0)
    if since_warmup_began < train.warmup_steps:
        return peak * (since_warmup_began + 1) / train.warmup_steps
    progress = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
    if train.lr_schedule == "constant":
        return peak
    if train.lr_schedule == "linear":
        return peak * (1.0 - progress)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


class LoopSampler:
    """R for each step: fixed, or Poisson(train_loops) clipped to ``sampled_loops_min`` ..
    ``sampled_loops_max`` (default 1 .. model.max_loops). One CPU stream seeded alike on every worker, so
    data-parallel workers unroll the same depth at every step."""

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.generator = torch.Generator().manual_seed(config.train.seed + 7)

    def __call__(self) -> int:
        train = self.config.train
        if train.loops_sampling == "fixed":
            return train.train_loops
        rate = torch.tensor(float(train.train_loops))
        drawn = int(torch.poisson(rate, generator=self.generator).item())
        return min(max(drawn, train.sampled_loops_min), train.sampled_loops_max or self.config.model.max_loops)


def phase_metric(split: str) -> str:
    """What a grokking phase is timed on: training accuracy at the trained loop count, and a test split's
    accuracy on its trained hop counts at the loop budget chosen on its validation split."""
    return names.ACC.name(split=split) if split == "train" else names.ACC_CHOSEN.name(split=split)


def make_optimizer(
    parameters: Iterable[torch.nn.Parameter], config: ExperimentConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW as every run trains with it (fused kernels on CUDA)."""
    return torch.optim.AdamW(
        parameters, lr=config.train.lr, betas=(0.9, config.train.adam_beta2), weight_decay=config.train.weight_decay,
        fused=device.type == "cuda",
    )


def training_metrics(
    step: int, lr: float, loss: float, loops: float, curriculum_max_hops: int, elapsed_s: float, resumed_from_step: int
) -> dict[str, float]:
    """What an evaluation reports of the training itself, besides the evaluation metrics."""
    return {
        names.STEP.name(): float(step),
        names.LR.name(): lr,
        names.LOSS.name(split="train"): loss,
        names.TRAINED_LOOPS.name(split="train"): float(loops),
        names.CURRICULUM_MAX_HOPS.name(): float(curriculum_max_hops),
        names.ELAPSED_S.name(): elapsed_s,
        names.RESUMED_FROM_STEP.name(): float(resumed_from_step),
    }


def record_phases(
    metrics: dict[str, float], phase_steps: dict[str, int], splits: list[str], step: int, config: ExperimentConfig
) -> None:
    """Note in ``phase_steps`` each split whose phase metric first reached the level at ``step``, and add
    the onset step of every split reached so far to ``metrics``."""
    for split in splits:
        if split not in phase_steps and metrics[phase_metric(split)] >= config.eval.phase_level:
            phase_steps[split] = step
        if split in phase_steps:
            metrics[names.PHASE_STEP.name(split=split)] = float(phase_steps[split])


def end_of_run_metrics(
    model: torch.nn.Module, splits: list[str], phase_steps: dict[str, int], world_size: int
) -> dict[str, float]:
    """What the last report adds besides the analysis: phases reached, size, world size, the finished marker."""
    metrics = {names.PHASE_REACHED.name(split=split): float(split in phase_steps) for split in splits}
    metrics[names.N_PARAMS.name()] = float(sum(p.numel() for p in model.parameters()))
    metrics[names.WORLD_SIZE.name()] = float(world_size)
    metrics[names.FINISHED.name()] = 1.0
    return metrics


class Curriculum:
    """Which hop counts are trained now: all of them, or (with ``train.curriculum``) atomic facts and
    2 hops first, adding hop k + 1 once the accuracy at hop k reaches ``curriculum_level`` at its best
    inference loop count: the training sample's accuracy, or (``curriculum_signal: validation``, the
    paper's rule) the id validation split's. The best loop count, not the trained R: a model that answers
    k hops with more loops than R (or with sampled R) can do the hop, and would otherwise never unlock the
    next. ``stage`` counts the hops unlocked so far."""

    def __init__(self, config: ExperimentConfig, train_set: QuerySet):
        self.config = config
        self.train_set = train_set
        self.first_max_hops = min(2, config.data.train_max_hops) if config.train.curriculum else config.data.train_max_hops
        self.max_hops = self.first_max_hops
        self.eligible = self._eligible()

    @property
    def stage(self) -> int:
        return self.max_hops - self.first_max_hops

    def _eligible(self) -> torch.Tensor:
        return (self.train_set.hops <= self.max_hops).nonzero().squeeze(1)  # (n_eligible,)

    def set_max_hops(self, max_hops: int) -> None:
        """Where a resumed run's curriculum stood."""
        self.max_hops = max_hops
        self.eligible = self._eligible()

    def accuracy(self, metrics: dict[str, float]) -> float:
        """The accuracy at the current top hop count that decides whether the next one unlocks."""
        if self.config.train.curriculum_signal == "validation":  # chosen on itself: its best loop count
            return metrics.get(names.ACC_HOPS_CHOSEN.name(split="id_val", hops=self.max_hops), 0.0)
        return max(metrics.get(names.ACC_HOPS_LOOP.name(split="train", hops=self.max_hops, loop=loop), 0.0)
                   for loop in range(1, self.config.model.max_loops + 1))

    def update(self, metrics: dict[str, float]) -> bool:
        """Unlock the next hop count where the level is reached; returns whether it did."""
        unlocks = (
            self.config.train.curriculum
            and self.max_hops < self.config.data.train_max_hops
            and self.accuracy(metrics) >= self.config.train.curriculum_level
        )
        if unlocks:
            self.set_max_hops(self.max_hops + 1)
        return unlocks


@dataclass
class Progress:
    """What the loop carries from step to step besides the weights, the optimizer and the random streams."""

    step: int = 0  # the last optimizer step taken
    elapsed_s: float = 0.0  # training time before this process started (a resumed run)
    phase_steps: dict[str, int] = field(default_factory=dict)  # split -> step its accuracy reached phase_level
    curriculum_max_hops: int | None = None
    stage_started_at: int = 0  # the step at which the curriculum last unlocked a hop count


class TrainedModels:
    """The model choice of a run of K models: the one model the optimizer steps (``trained``), what a
    training step calls (``network``: it, maybe under DistributedDataParallel or torch.compile), and the
    K plain models that evaluation and the final analysis measure (``measured()``).

    K = 1: the plain model is all three, as a single run has always trained it. K > 1: the K plain models,
    each with the initial weights its own run would draw, are fused into a ``StackedTransformer``; they
    stay as the measured copies, refreshed from it when measured. Data-parallel workers train K = 1 only.
    """

    def __init__(self, configs: list[ExperimentConfig], vocab: Vocabulary, device: torch.device, world_size: int):
        self.plain: list[RecurrentDepthTransformer] = []
        for config in configs:
            torch.manual_seed(config.train.seed)  # the replica's own initial weights, identical on every worker
            self.plain.append(build_model(config, vocab).to(device))
        self.stacked = len(self.plain) > 1
        self.trained = StackedTransformer(self.plain).to(device) if self.stacked else self.plain[0]
        network = DistributedDataParallel(self.trained) if world_size > 1 else self.trained
        self.network = CompiledOrEager(network) if configs[0].train.compile else network

    def clip_gradients(self, max_norm: float) -> None:
        """Each replica's gradient clipped to ``max_norm`` on its own norm."""
        if self.stacked:
            clip_per_replica(list(self.trained.parameters()), max_norm)
        else:
            torch.nn.utils.clip_grad_norm_(self.trained.parameters(), max_norm)

    def measured(self) -> list[RecurrentDepthTransformer]:
        """The K plain models, holding the trained weights as they are now."""
        if self.stacked:
            for replica, model in enumerate(self.plain):
                model.load_state_dict(self.trained.replica_state(replica))
        return self.plain


def replica_losses(logits: torch.Tensor, answers: torch.Tensor, n_replicas: int, label_smoothing: float) -> torch.Tensor:
    """Each replica's cross-entropy (smoothed by ``label_smoothing``), averaged over the loops read out and
    its slice of the batch: logits (L, K * B, E) and answers (K * B,), replica-major -> (K,).

    One replica takes ``F.cross_entropy``'s own mean, as a single run always has: it sums in another
    order than ``Tensor.mean`` and would change the last bit of the reported loss (not the gradient).
    """
    flat_logits, flat_answers = logits.flatten(0, 1).float(), answers.repeat(len(logits))  # (L * K * B, E), (L * K * B,)
    if n_replicas == 1:
        return F.cross_entropy(flat_logits, flat_answers, label_smoothing=label_smoothing).unsqueeze(0)  # (1,)
    per_query = F.cross_entropy(flat_logits, flat_answers, reduction="none", label_smoothing=label_smoothing)  # (L * K * B,)
    return per_query.view(len(logits), n_replicas, -1).mean((0, 2))  # (K,)


def train_worker(
    config: ExperimentConfig,
    reporter: Reporter,
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
) -> dict[str, float]:
    """Train ``train.replicas`` models (one, usually), reporting metrics every ``eval_every`` steps and a
    summary at the end.

    With ``checkpoint_dir``, rank 0 writes a resumable checkpoint every ``train.checkpoint_every`` steps
    (a subdirectory holding ``CHECKPOINT_FILE`` and ``TRAINING_STATE_FILE``) and passes it with that
    step's report; the reporter must have persisted it when it returns, as Ray's ``report`` has, for it
    is deleted then. The trained model alone (``CHECKPOINT_FILE`` in ``checkpoint_dir``) goes with the
    final report. With ``resume_from`` (such a subdirectory), training continues after its step exactly
    as if it had never stopped: on CPU, to the same metrics. A run resumed from its final checkpoint (its
    process died after its final report) sends that report again at once. Returns the summary.
    """
    started = time.perf_counter()
    rank, world_size = rank_and_world_size()
    if resume_from is not None and (final := read_final_report(Path(resume_from))) is not None:
        return report_again(final, Path(resume_from), reporter, checkpoint_dir if rank == 0 else None)
    n_replicas = config.train.replicas
    if n_replicas > 1 and world_size > 1:
        raise ConfigError("train.replicas", "replicas > 1 trains on one worker: set resources.workers_per_trial to 1")
    device = pick_device()
    configs = [replica_config(config, replica) for replica in range(n_replicas)]
    seeds = [replica.train.seed for replica in configs]

    splits = load_splits(config.data)
    train_set = splits.train.to(device)
    eval_sets = [device_eval_sets(splits, replica, device) for replica in configs]  # each its own training sample
    models = TrainedModels(configs, splits.vocab, device, world_size)
    optimizer = make_optimizer(models.trained.parameters(), config, device)  # elementwise: K optimizers in one
    # Each replica on each worker draws its own share of the global batch from its own stream.
    batch_generators = [torch.Generator(device).manual_seed(seed * 1_000_003 + rank) for seed in seeds]
    worker_batch = max(1, config.train.batch_size // world_size)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    sample_loops = LoopSampler(config)  # one depth for all replicas: the config refuses sampled R with K > 1
    curricula = [Curriculum(replica, train_set) for replica in configs]
    progressive = config.train.progressive_loss_weight > 0
    smoothing = config.train.label_smoothing
    progress = [Progress(curriculum_max_hops=curriculum.max_hops) for curriculum in curricula]
    if resume_from is not None:
        saved = restore_training_state(
            Path(resume_from), models.trained, optimizer, batch_generators, sample_loops.generator
        )
        progress = [Progress(**state) for state in saved]
        for curriculum, state in zip(curricula, progress):
            curriculum.set_max_hops(state.curriculum_max_hops)
    resumed_from_step = progress[0].step

    loss_sum, loops_sum, step_count = torch.zeros(n_replicas, device=device), 0, 0  # (K,)
    reports: list[dict[str, float]] = [{} for _ in configs]
    phase_splits = [split for split in eval_sets[0] if not names.is_validation(split)]
    for step in range(resumed_from_step + 1, config.train.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step - 1, config, curricula[0].stage, progress[0].stage_started_at)
        picked = torch.cat([
            curriculum.eligible[torch.randint(len(curriculum.eligible), (worker_batch,), device=device, generator=stream)]
            for curriculum, stream in zip(curricula, batch_generators)
        ])  # (K * B,) replica-major
        tokens, answers = train_set.tokens[picked], train_set.answers[picked]  # (K * B, T), (K * B,)
        n_loops = sample_loops()
        with autocast:
            logits = models.network(
                tokens, n_loops, every_loop=progressive, backprop_loops=config.train.backprop_loops
            )  # (n_loops or 1, K * B, E)
            loss = replica_losses(logits[-1:], answers, n_replicas, smoothing)  # (K,) final-loop loss
            if progressive:
                loss = loss + config.train.progressive_loss_weight * replica_losses(logits, answers, n_replicas, smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # replicas share no weight: each slice of a gradient is its replica's own
        if config.train.grad_clip > 0:
            models.clip_gradients(config.train.grad_clip)
        optimizer.step()
        loss_sum += loss.detach()
        loops_sum += n_loops
        step_count += 1

        last_step = step == config.train.steps
        if step % config.train.eval_every == 0 or last_step:
            with autocast:
                reports = [evaluate(model, eval_set, replica, with_grid=last_step)
                           for model, eval_set, replica in zip(models.measured(), eval_sets, configs)]
            elapsed_s = progress[0].elapsed_s + time.perf_counter() - started
            mean_losses = (loss_sum / step_count).tolist()  # (K,)
            for metrics, mean_loss, curriculum, state in zip(reports, mean_losses, curricula, progress):
                metrics.update(training_metrics(
                    step, optimizer.param_groups[0]["lr"], mean_loss, loops_sum / step_count, curriculum.max_hops,
                    elapsed_s, resumed_from_step,
                ))
                record_phases(metrics, state.phase_steps, phase_splits, step, config)
                if curriculum.update(metrics):
                    state.stage_started_at = step
                    if config.train.curriculum_restart:  # one replica: the config refuses restarts with several
                        optimizer = make_optimizer(models.trained.parameters(), config, device)
                state.step, state.curriculum_max_hops = step, curriculum.max_hops
            loss_sum.zero_()
            loops_sum, step_count = 0, 0
            if last_step:
                break  # the final report, with the summary, follows the loop
            checkpoint = None
            interval = config.train.checkpoint_interval
            if checkpoint_dir is not None and interval and step % interval == 0:
                checkpoint = save_training_state(
                    Path(checkpoint_dir) / f"step_{step:07d}", models.trained, config, optimizer, batch_generators,
                    sample_loops.generator, [asdict(replace(state, elapsed_s=elapsed_s)) for state in progress],
                )
            reporter(combine(reports, seeds), checkpoint)
            if checkpoint is not None:
                shutil.rmtree(checkpoint)  # the reporter has persisted it

    summaries = []
    for model, eval_set, replica, state in zip(models.measured(), eval_sets, configs, progress):
        with autocast:
            summary = final_analysis(model, splits, eval_set, replica, device)
        summary.update(end_of_run_metrics(model, phase_splits, state.phase_steps, world_size))
        summaries.append(summary)
    for summary in summaries:  # as a single run times it: training and the final analysis
        summary[names.TRAIN_S.name()] = progress[0].elapsed_s + time.perf_counter() - started
    final_report = combine([{**report, **summary} for report, summary in zip(reports, summaries)], seeds)
    final_checkpoint = None
    if checkpoint_dir is not None and rank == 0:
        final_checkpoint = Path(checkpoint_dir)
        save_checkpoint(models.trained, config, final_checkpoint, final_report)
    reporter(final_report, final_checkpoint)
    return combine(summaries, seeds)
