"""``train.replicas: K``: what a replica is, and how the K replicas' reports become the trial's.

Replica i is the run ``train_worker`` would make with ``train.seed + i`` and one replica (its own initial
weights, batch stream and training-accuracy sample, on the same graph), and its metrics match that run's
to float tolerance. The loop trains the K replicas together as one stacked model
(``rdt_core.model.stacked``) and evaluates each on a plain model holding its weights, which costs what K
separate runs' evaluations would. The trial reports the mean over replicas under the usual names, each
replica's headline values (``replica/<i>/...``) and their spread (``replica_std/...``).

Not supported: a loop count sampled per step (each replica would draw its own, and one pass unrolls one
depth; the config refuses it) and data-parallel workers (refused at the start). Measured on a 2-core CPU,
default model, 8 replicas against 8 sequential runs: 1.2x per step on one thread (batched matmuls cost
what single ones do there; only per-op overhead is shared), 1.9x on two (a single small model cannot use
the second core, the stacked one can).
"""

from __future__ import annotations

import statistics

from rdt_core import metrics as names
from rdt_core.config import ExperimentConfig


def replica_config(config: ExperimentConfig, replica: int) -> ExperimentConfig:
    """The config of the single run replica ``replica`` reproduces: its own seed, one replica."""
    return ExperimentConfig.from_dict(
        config.model_dump(), {"train.seed": config.train.seed + replica, "train.replicas": 1}
    )


def combine(reports: list[dict[str, float]], seeds: list[int]) -> dict[str, float]:
    """The trial's report from its replicas': the mean of each name over the replicas that report it (a
    phase step only where the phase was reached), each replica's seed and headline values, and the
    sample standard deviation of those over replicas (where two or more report them). A single run's
    report is its own, with no replica names."""
    if len(reports) == 1:
        return reports[0]
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
