"""``train_worker(config, reporter)``: the training loop every trial runs, with or without Ray.

The loop knows a reporter (any callable taking a metrics dict), not Ray or MLflow: a Tune trial passes
``ray.tune.report``, a Ray Train worker ``ray.train.report``, a test a list's ``append``. When
``torch.distributed`` is initialised (Ray Train's TorchTrainer does so), the model is wrapped in
DistributedDataParallel and the global batch is split across the workers.

Reported every ``eval_every`` steps: ``loss/train``, ``lr``, the loop count of the step, the evaluation
metrics of ``rdt_core.eval`` and the grokking phases reached so far. The last report adds the summary:
``final/...`` accuracies, the whole halting grid, the logit lens, activation patching, time and size.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from rdt_core.config import ExperimentConfig
from rdt_core.data.queries import QuerySet, Splits, build_splits, n_held_out_facts
from rdt_core.data.tokens import Vocabulary
from rdt_core.eval import SplitResult, evaluate, halting_rules, split_metrics
from rdt_core.halting import halting_inference
from rdt_core.lens import lens_metrics, target_ranks
from rdt_core.model.transformer import RecurrentDepthTransformer, build_model
from rdt_core.patching import corrupt_first_relation, patching_grid, patching_metrics

# A reporter takes a report's metrics and the checkpoint directory that goes with it (or None).
Reporter = Callable[[dict[str, float], "Path | None"], None]
FINAL_REPORT_KEY = "time/train_s"  # only the last report, sent once training has finished, carries it
CHECKPOINT_FILE = "model.pt"  # the config and the weights: what inference and the final report need
TRAINING_STATE_FILE = "training_state.pt"  # optimizer, random streams and progress: what resuming adds
FINAL_REPORT = "final_report"  # in the final checkpoint's CHECKPOINT_FILE: the report a finished run sent


def split_hop_counts(config: ExperimentConfig) -> dict[str, list[int]]:
    """The evaluation splits of ``config`` and the hop counts each holds."""
    data = config.data
    tested = list(range(2, data.test_max_hops + 1))
    splits = {"train": list(range(1, data.train_max_hops + 1)), "id": tested}
    if n_held_out_facts(data):
        splits["ood"] = tested
    return splits


def reported_metric_names(config: ExperimentConfig) -> set[str]:
    """Every metric name ``train_worker`` reports for ``config``: what a sweep may optimise.

    Derived by running the pure metric functions on placeholder results of the right shapes, so the
    list cannot drift from what training really reports.
    """
    max_loops = config.model.max_loops
    rules = halting_rules(config.eval, with_grid=True)
    names = {"step", "lr", "loss/train", "loops/train", "curriculum/max_hops", "time/elapsed_s", "resume/from_step"}
    names |= {"time/train_s", "model/n_params", "dist/world_size"}
    for split, hop_counts in split_hop_counts(config).items():
        hops = torch.tensor(hop_counts)
        placeholder = SplitResult(
            correct=torch.zeros(max_loops, len(hop_counts), dtype=torch.bool),
            hops=hops,
            halt_loops=torch.ones(len(rules), len(hop_counts), dtype=torch.long),
        )
        split_names = split_metrics(split, placeholder, 1, rules).keys()
        names |= set(split_names) | {f"final/{name}" for name in split_names}
        names |= {f"phase/{split}/step", f"phase/{split}/reached", f"halting/{split}/loops_saved"}
        if split != "train":
            for k in hop_counts:
                names |= set(lens_metrics(split, k, torch.zeros(max_loops, 1, max(hop_counts))).keys())
    names |= set(patching_metrics(patching_hops(config), torch.zeros(max_loops, config.data.test_max_hops + 1)))
    return names


def patching_hops(config: ExperimentConfig) -> int:
    """Patching runs on in-distribution test queries of the deepest trained hop count (at least 2)."""
    return max(2, config.data.train_max_hops)


def device_eval_sets(splits: Splits, config: ExperimentConfig, device: torch.device) -> dict[str, QuerySet]:
    """The query sets every evaluation measures (a training sample and the test splits), on ``device``."""
    sample = splits.eval_sets(config.eval.n_train_eval_per_hop, config.train.seed)
    return {name: queries.to(device) for name, queries in sample.items()}


def rank_and_world_size() -> tuple[int, int]:
    """This worker's rank and the number of data-parallel workers (0 and 1 outside Ray Train)."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


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


class LoopSampler:
    """R for each step: fixed, or Poisson(train_loops) clipped to 1..max_loops. One CPU stream seeded
    alike on every worker, so data-parallel workers unroll the same depth at every step."""

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.generator = torch.Generator().manual_seed(config.train.seed + 7)

    def __call__(self) -> int:
        train = self.config.train
        if train.loops_sampling == "fixed":
            return train.train_loops
        rate = torch.tensor(float(train.train_loops))
        drawn = int(torch.poisson(rate, generator=self.generator).item())
        return min(max(drawn, 1), self.config.model.max_loops)


class Curriculum:
    """Which hop counts are trained now: all of them, or (with ``train.curriculum``) atomic facts and
    2 hops first, adding hop k + 1 once the training accuracy at hop k reaches ``curriculum_level``."""

    def __init__(self, config: ExperimentConfig, train_set: QuerySet):
        self.config = config
        self.train_set = train_set
        self.max_hops = min(2, config.data.train_max_hops) if config.train.curriculum else config.data.train_max_hops
        self.eligible = self._eligible()

    def _eligible(self) -> torch.Tensor:
        return (self.train_set.hops <= self.max_hops).nonzero().squeeze(1)  # (n_eligible,)

    def set_max_hops(self, max_hops: int) -> None:
        """Where a resumed run's curriculum stood."""
        self.max_hops = max_hops
        self.eligible = self._eligible()

    def update(self, metrics: dict[str, float]) -> None:
        level_reached = metrics.get(f"acc/train/hops_{self.max_hops}", 0.0) >= self.config.train.curriculum_level
        if self.config.train.curriculum and level_reached and self.max_hops < self.config.data.train_max_hops:
            self.set_max_hops(self.max_hops + 1)


@dataclass
class Progress:
    """What the loop carries from step to step besides the weights, the optimizer and the random streams."""

    step: int = 0  # the last optimizer step taken
    elapsed_s: float = 0.0  # training time before this process started (a resumed run)
    phase_steps: dict[str, int] = field(default_factory=dict)  # split -> step its accuracy reached phase_level
    curriculum_max_hops: int | None = None


def train_worker(
    config: ExperimentConfig,
    reporter: Reporter,
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
) -> dict[str, float]:
    """Train one model, reporting metrics every ``eval_every`` steps and a summary at the end.

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
    device = pick_device()
    torch.manual_seed(config.train.seed)  # identical initial weights on every worker

    splits = build_splits(config.data)
    train_set = splits.train.to(device)
    eval_sets = device_eval_sets(splits, config, device)
    model = build_model(config, splits.vocab).to(device)
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
    sample_loops = LoopSampler(config)
    curriculum = Curriculum(config, train_set)
    progressive = config.train.progressive_loss_weight > 0
    progress = Progress(curriculum_max_hops=curriculum.max_hops)
    if resume_from is not None:
        progress = restore_training_state(Path(resume_from), model, optimizer, batch_generator, sample_loops)
        curriculum.set_max_hops(progress.curriculum_max_hops)
    resumed_from_step = progress.step

    loss_sum, loops_sum, step_count = torch.zeros((), device=device), 0, 0
    metrics: dict[str, float] = {}
    for step in range(progress.step + 1, config.train.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step - 1, config)
        pick = torch.randint(len(curriculum.eligible), (worker_batch,), device=device, generator=batch_generator)
        batch = train_set.subset(curriculum.eligible[pick])
        n_loops = sample_loops()
        with autocast:
            logits = network(
                batch.tokens, n_loops, every_loop=progressive, backprop_loops=config.train.backprop_loops
            )  # (n_loops or 1, B, E)
            loss = F.cross_entropy(logits[-1].float(), batch.answers)  # final-loop loss
            if progressive:
                per_loop = F.cross_entropy(logits.flatten(0, 1).float(), batch.answers.repeat(len(logits)))
                loss = loss + config.train.progressive_loss_weight * per_loop
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        loss_sum += loss.detach()
        loops_sum += n_loops
        step_count += 1

        last_step = step == config.train.steps
        if step % config.train.eval_every == 0 or last_step:
            with autocast:
                metrics = evaluate(
                    model, eval_sets, config.model.max_loops, config.train.train_loops, config.eval, with_grid=last_step
                )
            progress.step = step
            metrics.update(
                {
                    "step": float(step),
                    "lr": optimizer.param_groups[0]["lr"],
                    "loss/train": (loss_sum / step_count).item(),
                    "loops/train": loops_sum / step_count,
                    "curriculum/max_hops": float(curriculum.max_hops),
                    "time/elapsed_s": progress.elapsed_s + time.perf_counter() - started,
                    "resume/from_step": float(resumed_from_step),
                }
            )
            for split in eval_sets:
                if split not in progress.phase_steps and metrics[f"acc/{split}"] >= config.eval.phase_level:
                    progress.phase_steps[split] = step
                if split in progress.phase_steps:
                    metrics[f"phase/{split}/step"] = float(progress.phase_steps[split])
            curriculum.update(metrics)
            progress.curriculum_max_hops = curriculum.max_hops
            loss_sum.zero_()
            loops_sum, step_count = 0, 0
            if last_step:
                break  # the final report, with the summary, follows the loop
            checkpoint = None
            interval = config.train.checkpoint_interval
            if checkpoint_dir is not None and interval and step % interval == 0:
                checkpoint = save_training_state(
                    Path(checkpoint_dir) / f"step_{step:07d}", model, config, optimizer, batch_generator,
                    sample_loops, replace(progress, elapsed_s=metrics["time/elapsed_s"]),
                )
            reporter(metrics, checkpoint)
            if checkpoint is not None:
                shutil.rmtree(checkpoint)  # the reporter has persisted it

    with autocast:
        summary = final_analysis(model, splits, eval_sets, config, device)
    for split in eval_sets:
        summary[f"phase/{split}/reached"] = float(split in progress.phase_steps)
        summary.update({f"final/{name}": value for name, value in metrics.items() if name.startswith(f"acc/{split}")})
    summary["time/train_s"] = progress.elapsed_s + time.perf_counter() - started
    summary["model/n_params"] = float(sum(p.numel() for p in model.parameters()))
    summary["dist/world_size"] = float(world_size)
    final_report = {**metrics, **summary}
    final_checkpoint = None
    if checkpoint_dir is not None and rank == 0:
        final_checkpoint = Path(checkpoint_dir)
        save_checkpoint(model, config, final_checkpoint, final_report)
    reporter(final_report, final_checkpoint)
    return summary


def report_again(final: dict[str, float], resume_from: Path, reporter: Reporter, checkpoint_dir: Path | None) -> dict[str, float]:
    """A finished run's final report, sent again with (a copy of) its final checkpoint on rank 0."""
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = Path(checkpoint_dir)
        checkpoint.mkdir(parents=True, exist_ok=True)
        shutil.copy2(resume_from / CHECKPOINT_FILE, checkpoint / CHECKPOINT_FILE)
    reporter(final, checkpoint)
    return final


def save_atomically(state: dict, path: Path) -> None:
    """``torch.save`` to a scratch file beside ``path``, then renamed over it: a process killed mid-write
    leaves the old file or none, never a half-written one."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as scratch:
        torch.save(state, scratch)
    os.replace(scratch.name, path)


def save_checkpoint(
    model: RecurrentDepthTransformer, config: ExperimentConfig, directory: Path, final_report: dict[str, float] | None = None
) -> Path:
    """The weights and the full config: enough to rebuild the data, the model and every measurement.
    The final checkpoint also holds the final report, which a run resumed from it sends again."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    state = {"config": config.model_dump(), "model": model.state_dict()}
    if final_report is not None:
        state[FINAL_REPORT] = final_report
    save_atomically(state, path)
    return path


def save_training_state(
    directory: Path,
    model: RecurrentDepthTransformer,
    config: ExperimentConfig,
    optimizer: torch.optim.Optimizer,
    batch_generator: torch.Generator,
    sample_loops: LoopSampler,
    progress: Progress,
) -> Path | None:
    """A resumable checkpoint in ``directory``, written by rank 0 (its path), or None on other ranks.

    Every worker's batch stream is gathered first, so that each resumes its own.
    """
    rank, world_size = rank_and_world_size()
    batch_streams = [batch_generator.get_state()]
    if world_size > 1:
        batch_streams = [None] * world_size
        dist.all_gather_object(batch_streams, batch_generator.get_state())
    if rank != 0:
        return None
    save_checkpoint(model, config, directory)
    state = {
        "optimizer": optimizer.state_dict(),
        "batch_streams": batch_streams,
        "loop_stream": sample_loops.generator.get_state(),
        "progress": asdict(progress),
    }
    save_atomically(state, directory / TRAINING_STATE_FILE)
    return directory


def read_final_report(directory: Path) -> dict[str, float] | None:
    """The final report kept in a checkpoint directory, or None for a checkpoint taken mid-training."""
    state = torch.load(directory / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    return state.get(FINAL_REPORT)


def is_resumable(directory: Path) -> bool:
    """Whether ``directory`` holds a whole checkpoint to resume from: a final one (its final report
    inside), or one taken mid-training (with its training state). A checkpoint that lost a file, or
    whose files do not load, is not."""
    try:
        if read_final_report(directory) is not None:
            return True
        torch.load(directory / TRAINING_STATE_FILE, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a missing, truncated or foreign file: all mean "not resumable"
        return False
    return True


def restore_training_state(
    directory: Path,
    model: RecurrentDepthTransformer,
    optimizer: torch.optim.Optimizer,
    batch_generator: torch.Generator,
    sample_loops: LoopSampler,
) -> Progress:
    """Load a checkpoint of ``save_training_state`` into the live objects; returns where training stood."""
    rank, world_size = rank_and_world_size()
    device = next(model.parameters()).device
    model.load_state_dict(torch.load(directory / CHECKPOINT_FILE, map_location=device, weights_only=True)["model"])
    state = torch.load(directory / TRAINING_STATE_FILE, map_location="cpu", weights_only=True)
    if len(state["batch_streams"]) != world_size:
        raise ValueError(
            f"{directory}: saved by {len(state['batch_streams'])} workers, resumed by {world_size}; "
            "resume with the same workers_per_trial"
        )
    optimizer.load_state_dict(state["optimizer"])
    batch_generator.set_state(state["batch_streams"][rank])
    sample_loops.generator.set_state(state["loop_stream"])
    return Progress(**state["progress"])


def read_checkpoint_config(source: Path | BinaryIO) -> ExperimentConfig:
    """The config saved in a checkpoint: a file's path, or its bytes as a file object."""
    return ExperimentConfig.from_dict(torch.load(source, map_location="cpu", weights_only=True)["config"])


def load_checkpoint(path: Path, device: torch.device | None = None) -> tuple[ExperimentConfig, RecurrentDepthTransformer]:
    state = torch.load(path, map_location=device or "cpu", weights_only=True)
    config = ExperimentConfig.from_dict(state["config"])
    model = build_model(config, Vocabulary(config.data.n_entities, config.data.n_relations))
    model.load_state_dict(state["model"])
    return config, model.to(device or "cpu").eval()


def evaluate_checkpoint(
    path: Path, eval_overrides: dict[str, object], reporter: Reporter
) -> dict[str, float]:
    """Every measurement of a trained model under other inference-only settings (``eval.*``), with no
    training: one report, shaped like a trial's final one, so sweeps treat it the same way."""
    started = time.perf_counter()
    device = pick_device()
    trained_config, model = load_checkpoint(path, device)
    config = ExperimentConfig.from_dict(trained_config.model_dump(), eval_overrides)
    splits = build_splits(config.data)
    eval_sets = device_eval_sets(splits, config, device)
    metrics = evaluate(model, eval_sets, config.model.max_loops, config.train.train_loops, config.eval, with_grid=True)
    metrics.update(final_analysis(model, splits, eval_sets, config, device))
    metrics.update({f"final/{name}": value for name, value in list(metrics.items()) if name.startswith("acc/")})
    metrics.update(
        {
            "step": float(config.train.steps),
            FINAL_REPORT_KEY: time.perf_counter() - started,
            "model/n_params": float(sum(p.numel() for p in model.parameters())),
        }
    )
    reporter(metrics, None)
    return metrics


@torch.no_grad()
def final_analysis(
    model: RecurrentDepthTransformer,
    splits: Splits,
    eval_sets: dict[str, QuerySet],
    config: ExperimentConfig,
    device: torch.device,
) -> dict[str, float]:
    """Logit lens on every test split and hop count, the activation-patching grid, and the share of
    loops that the stopping halting path saves (``halting/<split>/loops_saved``)."""
    model.eval()
    max_loops = config.model.max_loops
    rule = halting_rules(config.eval, with_grid=False)[0]
    metrics: dict[str, float] = {}
    for split, queries in eval_sets.items():
        halted = halting_inference(model, queries.tokens, max_loops, rule)
        metrics[f"halting/{split}/loops_saved"] = halted.loops_saved / (len(queries) * max_loops)
        if split == "train":
            continue
        for hops in queries.hop_counts():
            sample = queries.with_hops(hops).first(config.eval.n_lens_queries)
            metrics.update(lens_metrics(split, hops, target_ranks(model, sample, max_loops)))

    hops = patching_hops(config)
    clean = eval_sets["id"].with_hops(hops)
    generator = torch.Generator().manual_seed(config.train.seed + 11)
    corrupted, changed = corrupt_first_relation(clean, splits.vocab, splits.graph.tails.to(device), generator)
    keep = changed.nonzero().squeeze(1)[: config.eval.n_patching_queries]
    if keep.numel():
        recovery = patching_grid(model, clean.subset(keep), corrupted[keep], max_loops)
        metrics.update(patching_metrics(hops, recovery))
    return metrics
