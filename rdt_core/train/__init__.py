"""Training: ``train_worker(config, reporter)`` (in ``worker``), and ``python -m rdt_core.train`` for one
run without Ray (in ``__main__``)."""

from rdt_core.train.worker import (
    CHECKPOINT_FILE,
    FINAL_REPORT_KEY,
    Reporter,
    evaluate_checkpoint,
    is_resumable,
    load_checkpoint,
    read_checkpoint_config,
    reported_metric_names,
    split_hop_counts,
    train_worker,
)

__all__ = [
    "CHECKPOINT_FILE",
    "FINAL_REPORT_KEY",
    "Reporter",
    "evaluate_checkpoint",
    "is_resumable",
    "load_checkpoint",
    "read_checkpoint_config",
    "reported_metric_names",
    "split_hop_counts",
    "train_worker",
]
