"""The sweep's parent run and its Optuna study, opened before any trial: what a new sweep makes and what
a resumed one finds again, with everything a kill may have left unwritten written now.

The parent run is the sweep's summary page in MLflow: the spec's description as its note, the base
config as ``base.*`` params except the keys the search sets, which are ``search.*`` params holding their
distributions, and the study's name. The study is named ``<sweep>-<n>`` (the n-th sweep of that name in
the Optuna storage), names its objectives as the dashboard shows them, and holds the parent run's id.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from rdt_core.config import ExperimentConfig
from rdt_core.sweep.plan import SweepPlan
from rdt_core.sweep.resume import (
    delete_runs_of_unknown_trials,
    mark_started,
    put_back_lost_checkpoints,
    saved_tune_trials,
    was_started,
)
from rdt_core.sweep.spec import REPLICATE_KEY, SweepSpec
from rdt_core.tracking import Outbox, SweepTracker, check_reachable, outbox_path, store_must_answer
from rdt_core.train import CHECKPOINT_FILE, read_checkpoint_config

STUDY_TAG = "optuna.study_name"
PARENT_RUN_ATTR = "mlflow.parent_run_id"  # the study's user attribute naming the sweep's parent run


class ResumeError(ValueError):
    """``--resume`` found nothing to resume; the message names what is missing."""


class OutboxError(ValueError):
    """A new sweep would mix its MLflow writes with an earlier one's that were never sent."""


@dataclass
class SweepTracking:
    """What the sweep writes to: its tracker and outbox, its parent run and study, and what the trials
    start from (the base config, a trained checkpoint for an inference-only sweep, Tune's saved trials
    on ``--resume``)."""

    tracker: SweepTracker
    outbox: Outbox
    parent_run_id: str
    study_name: str
    base: dict[str, Any]
    checkpoint_bytes: bytes | None
    tune_trials: list | None

    @classmethod
    def open(cls, plan: SweepPlan, resume: bool) -> "SweepTracking":
        """Check that the sweep can start (something to resume, no unsent writes of another, a store
        that answers), then open its parent run and study."""
        spec = plan.spec
        if resume and not was_started(plan.experiment_path):  # before MLflow is touched
            raise ResumeError(f"--resume: no interrupted sweep {spec.name!r} at {plan.experiment_path}")
        kept = outbox_path(spec.name)
        if kept.exists() and not resume:
            raise OutboxError(
                f"{kept} holds MLflow writes of an earlier {spec.name!r} sweep that were never sent: "
                "send them first with --send-outbox (or delete the file)"
            )
        check_reachable(plan.tracking_uri)
        # The client's own retries would stall the sweep for minutes on a store that has gone; the outbox
        # retries instead, for as long as it takes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        with store_must_answer(plan.tracking_uri):
            tracker = SweepTracker(plan.tracking_uri, spec.name)
            checkpoint_bytes = trained_checkpoint(spec, tracker)
            base = spec.base if checkpoint_bytes is None else read_checkpoint_config(io.BytesIO(checkpoint_bytes)).model_dump()
            mark_started(plan.experiment_path)  # before the parent run: from here on, --resume finds what it needs
            parent_run_id, study_name = open_parent_run(tracker, plan, base, resume)
            outbox = Outbox(tracker, spec.name, kept)
            outbox.flush()  # what a resumed sweep's first driver could not send
            tune_trials = saved_tune_trials(plan.experiment_path) if resume else None
            if resume:
                delete_runs_of_unknown_trials(tracker, tune_trials or [])
                put_back_lost_checkpoints(tune_trials or [])
        open_study(plan, study_name, parent_run_id)
        return cls(tracker, outbox, parent_run_id, study_name, base, checkpoint_bytes, tune_trials)


def open_parent_run(tracker: SweepTracker, plan: SweepPlan, base: dict[str, Any], resume: bool) -> tuple[str, str]:
    """The sweep's parent run (the interrupted sweep's on ``resume``, else a new one), with what a killed
    sweep may not have written yet written now; returns its id and the Optuna study's name."""
    spec = plan.spec
    metrics, modes = spec.objectives()
    parent_run_id = tracker.resume_parent(plan.experiment_path) if resume else None
    if parent_run_id is None:
        parent_run_id = tracker.start_parent(
            spec.name,
            params={},
            tags={
                "sweep.spec_path": plan.spec_path,
                "sweep.metric": metrics[0],
                "sweep.mode": modes[0],
                "sweep.objectives": ", ".join(f"{m} ({mode})" for m, mode in zip(metrics, modes)),
                "sweep.tune_path": plan.experiment_path,
                "optuna.storage": plan.optuna_storage,
                MLFLOW_RUN_NOTE: spec.description or f"Sweep {spec.name} ({plan.spec_path})",
            },
        )
    parent = tracker.client.get_run(parent_run_id)
    params = parent_params(spec, base)
    tracker.log_params(parent_run_id, {key: value for key, value in params.items() if key not in parent.data.params})
    study_name = parent.data.tags.get(STUDY_TAG) or new_study_name(plan)
    tracker.client.set_tag(parent_run_id, STUDY_TAG, study_name)
    logged = {artifact.path for artifact in tracker.client.list_artifacts(parent_run_id)}
    for name, content in (("spec.yaml", spec.model_dump()), ("plan.yaml", plan.as_dict())):
        if name not in logged:
            tracker.client.log_text(parent_run_id, yaml.safe_dump(content, sort_keys=False), name)
    return parent_run_id, study_name


def parent_params(spec: SweepSpec, base: dict[str, Any]) -> dict[str, str]:
    """``base.<key>`` for every config key the search leaves alone, ``search.<key>`` (its distribution)
    for every key it sets: a value the trials never used is not shown as if they had."""
    searched = {key: distribution_text(dist.model_dump()) for key, dist in spec.search_space.items()}
    if spec.seeds > 1:
        searched[REPLICATE_KEY] = f"0..{spec.seeds - 1} (adds to train.seed and data.seed)"
    flat = ExperimentConfig.from_dict(base).to_flat_dict()
    params = {f"base.{key}": str(value) for key, value in flat.items() if key not in searched}
    return {**params, **{f"search.{key}": text for key, text in searched.items()}}


def distribution_text(dumped: dict[str, Any]) -> str:
    """``loguniform 0.001..0.01``, ``int 2..4``, ``choice [2, 4, 8]``: a search distribution, short."""
    kind = dumped.get("type", "choice")
    if "low" in dumped:
        return f"{kind} {dumped['low']:g}..{dumped['high']:g}"
    return f"{kind} {list(dumped.get('values', []))}"


def new_study_name(plan: SweepPlan) -> str:
    """``<sweep>-<n>``, n one more than the sweeps of that name the Optuna storage holds."""
    taken = {summary.study_name for summary in optuna.get_all_study_summaries(plan.optuna_storage)}
    n = 1
    while f"{plan.spec.name}-{n:03d}" in taken:
        n += 1
    return f"{plan.spec.name}-{n:03d}"


def open_study(plan: SweepPlan, study_name: str, parent_run_id: str) -> None:
    """The study, made before Tune's searcher loads it: its objectives' names (the dashboard would say
    "Objective 0") and the parent run's id."""
    metrics, modes = plan.spec.objectives()
    directions = ["maximize" if mode == "max" else "minimize" for mode in modes]
    study = optuna.create_study(study_name=study_name, storage=plan.optuna_storage, directions=directions,
                                load_if_exists=True)
    with warnings.catch_warnings():  # experimental since Optuna 3.2, and what the dashboard reads
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(metrics)
    study.set_user_attr(PARENT_RUN_ATTR, parent_run_id)


def trained_checkpoint(spec: SweepSpec, tracker: SweepTracker) -> bytes | None:
    """The trained model an inference-only sweep evaluates: a checkpoint file, or a trial's MLflow run."""
    trained = spec.trained_model
    if trained is None:
        return None
    if trained.checkpoint:
        return Path(trained.checkpoint).read_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        local = tracker.client.download_artifacts(trained.mlflow_run, f"checkpoint/{CHECKPOINT_FILE}", scratch)
        return Path(local).read_bytes()
