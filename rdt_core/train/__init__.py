"""Training: ``train_worker(config, reporter)`` (the loop, in ``worker``), checkpoints (``checkpoints``),
the end-of-run analysis and the list of reported metrics (``analysis``), and ``python -m rdt_core.train``
for one run without Ray (in ``__main__``)."""

from rdt_core.train.analysis import evaluate_checkpoint, reported_metric_names, split_hop_counts
from rdt_core.train.checkpoints import (
    CHECKPOINT_FILE,
    Reporter,
    is_resumable,
    load_checkpoint,
    read_checkpoint_config,
)
from rdt_core.train.worker import train_worker

__all__ = [
    "CHECKPOINT_FILE",
    "Reporter",
    "evaluate_checkpoint",
    "is_resumable",
    "load_checkpoint",
    "read_checkpoint_config",
    "reported_metric_names",
    "split_hop_counts",
    "train_worker",
]
