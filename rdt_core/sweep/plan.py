"""A sweep resolved before anything starts: the spec, where its results, runs and study go, and whether
one trial fits the machine of an embedded Ray. Printed whole by ``--dry-run``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rdt_core.sweep.spec import SweepSpec
from rdt_core.tracking import resolve_tracking_uri


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep will do, resolved from the spec and the environment, before anything starts."""

    spec: SweepSpec
    spec_path: str
    tracking_uri: str
    storage_path: str
    optuna_storage: str

    @classmethod
    def resolve(cls, spec: SweepSpec, spec_path: Path) -> "SweepPlan":
        tracking_uri = resolve_tracking_uri(spec.tracking_uri)
        return cls(
            spec=spec,
            spec_path=str(spec_path),
            tracking_uri=tracking_uri,
            storage_path=resolve_storage_path(spec.storage_path),
            optuna_storage=spec.optuna_storage or default_optuna_storage(tracking_uri),
        )

    @property
    def experiment_path(self) -> str:
        """Where Ray Tune keeps this sweep's state, results and checkpoints."""
        return f"{self.storage_path}/{self.spec.name}"

    def as_dict(self) -> dict[str, Any]:
        spec = self.spec
        metrics, modes = spec.objectives()
        return {
            "name": spec.name,
            "spec": self.spec_path,
            "objectives": [{"metric": metric, "mode": mode} for metric, mode in zip(metrics, modes)],
            "trials": spec.trial_count(),
            "seeds": spec.seeds,
            "max_concurrent_trials": spec.max_concurrent_trials,
            "sampler": spec.sampler.model_dump(),
            "scheduler": spec.scheduler.model_dump(),
            "search_space": {key: dist.model_dump() for key, dist in spec.search_space.items()},
            "resources_per_trial": {
                **spec.resources.model_dump(),
                "runs_in": "Ray Train TorchTrainer" if spec.resources.workers_per_trial > 1 else "the Tune trial",
            },
            "tracking_uri": self.tracking_uri,
            "storage_path": self.experiment_path,
            "optuna_storage": self.optuna_storage,
            "optuna_study": f"{spec.name}-<n> (n: the sweeps of this name so far, plus one)",
            "phase_diagrams": list(spec.phase_diagrams),
            "base_config": spec.base_config().to_flat_dict(),
        }


STORAGE_PATH_ENV = "RDT_STORAGE_PATH"


def resolve_storage_path(storage_path: str | None) -> str:
    """Where Ray Tune keeps results and checkpoints: the spec's ``storage_path``, else ``RDT_STORAGE_PATH``
    (a cluster's shared default, set where Ray starts, so that a plain ``ray job submit`` finds it), else
    ``./ray_results``. A URI (``s3://...``, shared by every node) stays as it is; a path is made absolute."""
    chosen = storage_path or os.environ.get(STORAGE_PATH_ENV) or "ray_results"
    if "://" in chosen:
        return chosen
    return str(Path(chosen).resolve())


def default_optuna_storage(tracking_uri: str) -> str:
    """``optuna.db`` beside a SQLite MLflow store, else in the working directory."""
    if tracking_uri.startswith("sqlite:///"):
        store = Path(tracking_uri.removeprefix("sqlite:///"))
        return f"sqlite:///{store.resolve().parent / 'optuna.db'}"
    return f"sqlite:///{Path('optuna.db').resolve()}"


class LocalResourcesError(ValueError):
    """A trial asks for more than the machine of an embedded Ray has; Tune would wait for it forever."""


def check_local_resources(spec: SweepSpec) -> None:
    """For an embedded Ray (no ``RAY_ADDRESS``), one trial must fit on this machine. A cluster may add
    nodes on demand, so a sweep that joins one is not checked here."""
    if os.environ.get("RAY_ADDRESS"):
        return
    resources = spec.resources
    gpus, cpus = torch.cuda.device_count(), os.cpu_count() or 1
    if resources.gpus_per_worker * resources.workers_per_trial > gpus:
        raise LocalResourcesError(
            f"resources.gpus_per_worker: a trial needs {resources.gpus_per_worker * resources.workers_per_trial:g} "
            f"GPUs and this machine has {gpus} (use --set resources.gpus_per_worker=0, or RAY_ADDRESS for a cluster)"
        )
    if resources.cpus_per_worker * resources.workers_per_trial > cpus:
        raise LocalResourcesError(
            f"resources.cpus_per_worker: a trial needs {resources.cpus_per_worker * resources.workers_per_trial:g} "
            f"CPUs and this machine has {cpus}"
        )
