"""The sweep's parent run, its Optuna study and its outbox, opened before any trial.

The parent run is the sweep's summary page in MLflow: the spec's description as its note (to which the
summary adds the best run, the leaderboard and the study, as links), the base config as ``base.*``
params except the keys the search sets, which are ``search.*`` params holding their distributions, and
the study's name. The study is named ``<sweep>-<n>`` (the n-th sweep of that name in the Optuna
storage), names its objectives as the dashboard shows them, and holds the parent run's id.
Whatever of these a killed sweep left unwritten is written when it resumes. The resume steps that must
happen while the tracking opens (the start mark, the parent run found again, the clean-up after the
outbox has sent the killed driver's writes) are ``resume.Resumption``'s, called here at their moment.
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
from rdt_core.sweep.resume import Resumption
from rdt_core.sweep.spec import REPLICATE_KEY, SweepSpec
from rdt_core.tracking import Outbox, SweepTracker, check_reachable, outbox_path, store_must_answer
from rdt_core.train import CHECKPOINT_FILE, read_checkpoint_config

STUDY_TAG = "optuna.study_name"
PARENT_RUN_ATTR = "mlflow.parent_run_id"  # the study's user attribute naming the sweep's parent run


class OutboxError(ValueError):
    """A new sweep would mix its MLflow writes with an earlier one's that were never sent."""


@dataclass
class SweepTracking:
    """What the sweep writes to: its tracker and outbox, its parent run and study, and what the trials
    start from (the base config, a trained checkpoint for an inference-only sweep)."""

    tracker: SweepTracker
    outbox: Outbox
    parent_run_id: str
    study_name: str
    base: dict[str, Any]
    checkpoint_bytes: bytes | None

    @classmethod
    def open(cls, plan: SweepPlan, resumption: Resumption) -> "SweepTracking":
        """Check that the sweep can start (no unsent writes of another, a store that answers), then open
        its parent run and study."""
        spec = plan.spec
        kept = outbox_path(spec.name)
        if kept.exists() and not resumption.resuming:  # a resumed sweep sends its own unsent writes below
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
            resumption.mark_started()  # before the parent run, so that --resume finds any run it makes
            parent_run_id, study_name = open_parent_run(tracker, plan, base, resumption.reopened_parent_run(tracker))
            outbox = Outbox(tracker, spec.name, kept)
            outbox.flush()  # what a resumed sweep's killed driver could not send
            resumption.clean_up(tracker)  # after the flush, which may make child runs of trials Tune never saved
        open_study(plan, study_name, parent_run_id)
        return cls(tracker, outbox, parent_run_id, study_name, base, checkpoint_bytes)


def open_parent_run(tracker: SweepTracker, plan: SweepPlan, base: dict[str, Any],
                    parent_run_id: str | None) -> tuple[str, str]:
    """The sweep's parent run (``parent_run_id``, an interrupted sweep's reopened, else a new one), with
    what a killed sweep may not have written yet written now; returns its id and the Optuna study's name."""
    spec = plan.spec
    metrics, modes = spec.objectives()
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
                MLFLOW_RUN_NOTE: description(plan),
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


def description(plan: SweepPlan) -> str:
    """The parent run's description until the sweep ends (``summary.parent_note`` adds its result and links)."""
    return plan.spec.description or f"Sweep {plan.spec.name} ({plan.spec_path})"


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
