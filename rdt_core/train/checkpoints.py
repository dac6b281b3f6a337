"""Checkpoints: what a trial writes so that it can be resumed, evaluated again or sent again.

A checkpoint directory taken mid-training holds ``CHECKPOINT_FILE`` (the config and the weights) and
``TRAINING_STATE_FILE`` (optimizer, random streams, progress); the final one holds ``CHECKPOINT_FILE``
alone, with the final report inside it. A run of ``train.replicas`` K > 1 writes the same files: its
weights stacked (K, ...) under the plain model's keys, a batch stream and a progress per replica. Every
file is written under a scratch name and renamed, so a process killed mid-write leaves the old file or
none, never a half-written one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
import torch.distributed as dist

from rdt_core.config import ExperimentConfig
from rdt_core.data.tokens import Vocabulary
from rdt_core.model.transformer import RecurrentDepthTransformer, build_model
from rdt_core.train.devices import rank_and_world_size
from rdt_core.train.replicas import replica_config

# A reporter takes a report's metrics and the checkpoint directory that goes with it (or None).
Reporter = Callable[[dict[str, float], "Path | None"], None]
CHECKPOINT_FILE = "model.pt"  # the config and the weights: what inference and the final report need
TRAINING_STATE_FILE = "training_state.pt"  # optimizer, random streams and progress: what resuming adds
FINAL_REPORT = "final_report"  # in the final checkpoint's CHECKPOINT_FILE: the report a finished run sent


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
    batch_generators: list[torch.Generator],
    loop_generator: torch.Generator,
    progress: list[dict[str, Any]],
) -> Path | None:
    """A resumable checkpoint in ``directory``, written by rank 0 (its path), or None on other ranks.

    ``batch_generators`` and ``progress`` hold one entry per replica (one for a single run). Every
    worker's batch streams are gathered first, so that each resumes its own: they are kept worker-major,
    one list of workers x replicas. A single run keeps its progress as one dict, as it always has.
    """
    rank, world_size = rank_and_world_size()
    batch_streams = [generator.get_state() for generator in batch_generators]
    if world_size > 1:
        by_worker: list[Any] = [None] * world_size
        dist.all_gather_object(by_worker, batch_streams)
        batch_streams = [stream for streams in by_worker for stream in streams]
    if rank != 0:
        return None
    save_checkpoint(model, config, directory)
    state = {
        "optimizer": optimizer.state_dict(),
        "batch_streams": batch_streams,
        "loop_stream": loop_generator.get_state(),
        "progress": progress[0] if len(progress) == 1 else progress,
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
    batch_generators: list[torch.Generator],
    loop_generator: torch.Generator,
) -> list[dict[str, Any]]:
    """Load a checkpoint of ``save_training_state`` into the live objects; returns where each replica's
    training stood."""
    rank, world_size = rank_and_world_size()
    n_replicas = len(batch_generators)
    device = next(model.parameters()).device
    model.load_state_dict(torch.load(directory / CHECKPOINT_FILE, map_location=device, weights_only=True)["model"])
    state = torch.load(directory / TRAINING_STATE_FILE, map_location="cpu", weights_only=True)
    if len(state["batch_streams"]) != world_size * n_replicas:
        raise ValueError(
            f"{directory}: saved {len(state['batch_streams'])} batch streams, resumed by {world_size} workers "
            f"x {n_replicas} replicas; resume with the same workers_per_trial and train.replicas"
        )
    optimizer.load_state_dict(state["optimizer"])
    for replica, generator in enumerate(batch_generators):
        generator.set_state(state["batch_streams"][rank * n_replicas + replica])
    if "loop_stream" in state:  # replica checkpoints of older versions have none: their R is fixed
        loop_generator.set_state(state["loop_stream"])
    progress = state["progress"]
    return [progress] if isinstance(progress, dict) else progress


def read_checkpoint_config(source: Path | BinaryIO) -> ExperimentConfig:
    """The config saved in a checkpoint: a file's path, or its bytes as a file object."""
    return ExperimentConfig.from_dict(torch.load(source, map_location="cpu", weights_only=True)["config"])


def load_checkpoint(
    path: Path, device: torch.device | None = None, replica: int = 0
) -> tuple[ExperimentConfig, RecurrentDepthTransformer]:
    """The config and the trained model. A run of ``train.replicas`` > 1 holds every replica's weights
    stacked (K, ...): ``replica`` picks one, with the config of the single run it reproduces."""
    state = torch.load(path, map_location=device or "cpu", weights_only=True)
    config = ExperimentConfig.from_dict(state["config"])
    weights = state["model"]
    if config.train.replicas > 1:
        weights = {name: tensor[replica] for name, tensor in weights.items()}
        config = replica_config(config, replica)
    model = build_model(config, Vocabulary(config.data.n_entities, config.data.n_relations))
    model.load_state_dict(weights)
    return config, model.to(device or "cpu").eval()

