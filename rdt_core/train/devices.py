"""Where a worker runs: its device, and its place among data-parallel workers."""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world_size() -> tuple[int, int]:
    """This worker's rank and the number of data-parallel workers (0 and 1 outside Ray Train)."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def pick_device() -> torch.device:
    """The trial's GPU when Ray gave it one (CUDA is then visible), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
