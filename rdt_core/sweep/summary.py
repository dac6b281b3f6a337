"""The end of a sweep: its parent run made into the sweep's summary (a leaderboard table, the best child
run tagged, the best trial's values, the Pareto front), the parent closed, every write sent, and the
phase diagrams drawn from the runs in MLflow."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from ray.tune import ResultGrid

from rdt_core.metrics import ours
from rdt_core.report import draw_report
from rdt_core.sweep.callbacks import RUN_ID_ATTR, child_run_name
from rdt_core.sweep.parent import SweepTracking
from rdt_core.sweep.plan import SweepPlan
from rdt_core.sweep.search import TUNE_TRIAL_ATTR, fail_running_trials, pareto_front
from rdt_core.sweep.spec import REPLICATE_KEY, SweepSpec
from rdt_core.tracking import PARENT, Outbox, trial_key

LEADERBOARD_FILE = "leaderboard.json"
BEST_TAG = "sweep.best"  # on the best child run; the parent names it in sweep.best_run


@dataclass(frozen=True)
class SweepOutcome:
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    best_config: dict[str, Any]
    best_metrics: dict[str, float]
    n_trials: int
    n_failed: int
    study_name: str
    pareto_front: list[dict[str, Any]]
    report_notes: list[str]
    unsent_writes: int  # MLflow writes kept in outbox_path because the store stopped answering
    outbox_path: str


def summarize(plan: SweepPlan, tracking: SweepTracking, results: ResultGrid) -> SweepOutcome:
    spec, outbox = plan.spec, tracking.outbox
    metrics, modes = spec.objectives()
    outbox.reload()  # what Tune's copy of the callback's outbox left unsent, from its file
    study = optuna.load_study(study_name=tracking.study_name, storage=plan.optuna_storage)
    fail_running_trials(study)
    best = results.get_best_result(metric=metrics[0], mode=modes[0])
    best_metrics = ours(best.metrics or {})
    outbox.log_table(PARENT, leaderboard(spec, study, results, outbox), LEADERBOARD_FILE)
    outbox.log_params(PARENT, {f"best.{key}": value for key, value in best.config.items()})
    outbox.log_metrics(PARENT, {f"best/{m}": best_metrics.get(m, math.nan) for m in metrics}, step=0)
    if (best_trial := (best.metrics or {}).get("trial_id")) is not None:
        outbox.set_tag(trial_key(best_trial), BEST_TAG, "true")
        if (best_run := outbox.run_id(trial_key(best_trial))) is not None:
            outbox.set_tag(PARENT, "sweep.best_run", best_run)
    front = pareto_front(study) if len(metrics) > 1 else []
    if front:
        outbox.log_text(PARENT, json.dumps({"metrics": metrics, "modes": modes, "front": front}, indent=2),
                        "pareto_front.json")
    outbox.finish(PARENT, succeeded=results.num_errors == 0)
    all_sent = wait_until_sent(outbox, OUTBOX_WAIT_S)
    return SweepOutcome(
        parent_run_id=tracking.parent_run_id,
        experiment_id=tracking.tracker.experiment_id,
        tracking_uri=plan.tracking_uri,
        best_config=dict(best.config),
        best_metrics=best_metrics,
        n_trials=len(results),
        n_failed=results.num_errors,
        study_name=tracking.study_name,
        pareto_front=front,
        report_notes=draw_phase_diagrams(plan, tracking.parent_run_id) if all_sent else [],
        unsent_writes=len(outbox.pending),
        outbox_path=str(outbox.path),
    )


def parent_run_link(outcome: SweepOutcome, server: str) -> str:
    """The parent run's page in the MLflow UI at ``server``, in its model-training view (MLflow 3 opens an
    experiment in its GenAI view otherwise)."""
    page = f"#/experiments/{outcome.experiment_id}/runs/{outcome.parent_run_id}"
    return f"{server.rstrip('/')}/{page}?workflowType=machine_learning"


def leaderboard(spec: SweepSpec, study: optuna.Study, results: ResultGrid, outbox: Outbox) -> list[dict[str, Any]]:
    """One row per trial, best first by the first objective: its child run's name, its objectives (final,
    or last reported for a trial stopped early), the values the search gave it, its state in the study,
    its Optuna trial number and its child run's id. Searched keys are written ``train/lr``: the MLflow
    UI reads a dot in a table's column name as a path into nested data, and shows the column blank."""
    metrics, modes = spec.objectives()
    searched = [*spec.search_space, *([REPLICATE_KEY] if spec.seeds > 1 else [])]
    by_tune_trial = {t.user_attrs.get(TUNE_TRIAL_ATTR): t for t in study.get_trials(deepcopy=False)}
    rows = []
    for result in results:
        reported = result.metrics or {}
        trial_id = reported.get("trial_id")
        optuna_trial = by_tune_trial.get(trial_id)
        number = optuna_trial.number if optuna_trial else None
        rows.append({
            "run": child_run_name(spec.name, number) if number is not None else None,
            **{metric: reported.get(metric) for metric in metrics},
            **{key.replace(".", "/"): result.config.get(key) for key in searched},
            "state": optuna_trial.state.name if optuna_trial else ("FAIL" if result.error else "UNKNOWN"),
            "trial": number,
            "run_id": (optuna_trial.user_attrs.get(RUN_ID_ATTR) if optuna_trial else None)
            or (outbox.run_id(trial_key(trial_id)) if trial_id else None),
        })
    sign = 1 if modes[0] == "min" else -1

    def order(row: dict[str, Any]) -> tuple:
        value = row[metrics[0]]
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        return (not finite, sign * value if finite else 0.0, row["trial"] if row["trial"] is not None else math.inf)

    return sorted(rows, key=order)


# At the end of a sweep, how long a store that has gone is waited for before its writes are left kept.
OUTBOX_WAIT_S = float(os.environ.get("RDT_OUTBOX_WAIT_S", "60"))


def wait_until_sent(outbox: Outbox, timeout_s: float) -> bool:
    """Send what the outbox holds, waiting up to ``timeout_s`` for a store that has gone to return."""
    deadline = time.monotonic() + timeout_s
    while not outbox.flush():
        if time.monotonic() > deadline:
            return False
        time.sleep(5)
    return True


def draw_phase_diagrams(plan: SweepPlan, parent_run_id: str) -> list[str]:
    """The spec's phase diagrams (all that its runs support, unless it names some), drawn from the MLflow
    runs alone and logged to the parent run."""
    diagrams = list(plan.spec.phase_diagrams) if plan.spec.phase_diagrams else None
    with tempfile.TemporaryDirectory(prefix="rdt-report-") as scratch:
        report = draw_report(plan.tracking_uri, plan.spec.name, parent_run_id, diagrams, Path(scratch))
    return [*report.notes, *(f"logged diagrams/{path.name}" for path in report.files)]
