"""Trial start to first report: the direct path (``train_worker`` in the Tune trial) against the TorchTrainer
path (a Tune trial driving a one-worker TorchTrainer), both through the platform's own trial functions.

Each trial trains 2 steps of a small model with an evaluation after every step; the figure is the wall time
from ``Tuner.fit()`` to the driver receiving the trial's first result (after step 1 and its evaluation),
which both paths reach through the same work. Ray runs locally, in its own temp dir and on a free GCS port
(not the default 6379, so that it meets no other Ray on this machine), and is shut down afterwards.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from typing import Any

from benchmarks.common import Entry, entry, interleaved

TRIAL_CONFIG = {
    "data": {"n_entities": 16, "n_relations": 2, "inferred_ratio": 1.0, "n_test_queries": 8},
    "model": {"d_model": 16, "n_heads": 2, "max_loops": 2},
    "train": {"steps": 2, "eval_every": 1, "train_loops": 2, "batch_size": 16, "warmup_steps": 1},
    "eval": {"n_train_eval_per_hop": 8, "n_lens_queries": 4, "n_patching_queries": 4},
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def seconds_to_first_result(trainable: Any, storage_path: str, name: str) -> float:
    from ray import tune

    class FirstResult(tune.Callback):
        def __init__(self) -> None:
            self.at: float | None = None

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            self.at = self.at or time.time()

    first = FirstResult()
    started = time.time()
    tuner = tune.Tuner(trainable, run_config=tune.RunConfig(name=name, storage_path=storage_path, callbacks=[first],
                                                            verbose=0))
    results = tuner.fit()
    if results.errors or first.at is None:
        raise RuntimeError(f"trial {name} failed: {results.errors}")
    return first.at - started


def trial_start(repeats: int = 2) -> list[Entry]:
    temp_dir = tempfile.mkdtemp(prefix="rdt-bench-ray-", dir="/tmp")  # short: Ray's socket paths are capped
    os.environ["RAY_TMPDIR"] = temp_dir
    os.environ["RAY_GCS_SERVER_PORT"] = str(free_port())
    import ray
    from ray import tune

    from rdt_core.sweep.trainables import run_data_parallel_trial, run_single_worker_trial

    resources = {"workers_per_trial": 1, "cpus_per_worker": 1.0, "gpus_per_worker": 0.0}
    direct = tune.with_resources(tune.with_parameters(run_single_worker_trial, base=TRIAL_CONFIG), {"cpu": 1})
    storage = os.path.join(temp_dir, "results")
    torch_trainer = tune.with_resources(
        tune.with_parameters(run_data_parallel_trial, base=TRIAL_CONFIG, resources=resources,
                             storage_path=storage, max_failures=0),
        {"cpu": 0.01},
    )
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    try:
        runs = iter(range(2 * repeats))
        direct_s, trainer_s = interleaved(
            lambda: seconds_to_first_result(direct, storage, f"direct-{next(runs)}"),
            lambda: seconds_to_first_result(torch_trainer, storage, f"torch-trainer-{next(runs)}"),
            repeats,
        )
    finally:
        ray.shutdown()
    return [entry("trial_start/direct_vs_torch_trainer", direct_s, trainer_s, "s to first result", "<= 0.5",
                  note=f"Tuner.fit() to the first result of a 2-step trial on a local Ray (2 CPUs), median of "
                       f"{repeats}; the TorchTrainer path has one worker")]
