"""The end of a sweep: its parent run made into the sweep's summary (a leaderboard table, the best child
run tagged, the best trial's values, its headline metrics under the children's own names so that the
parent's row in the runs table reads beside theirs, a description linking the best run, the leaderboard
and the study, the Pareto front), the parent closed, every write sent, and the phase diagrams drawn from
the runs in MLflow. With ``seeds > 1`` the best is a setting, by its mean over its replicates
(``rank_settings``), and the leaderboard lists each replicate under its setting."""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from ray.tune import ResultGrid

from rdt_core.metrics import ours
from rdt_core.report import draw_report
from rdt_core.sweep.callbacks import RUN_ID_ATTR, child_run_name, run_page
from rdt_core.sweep.parent import SweepTracking, description
from rdt_core.sweep.plan import SweepPlan
from rdt_core.sweep.search import TUNE_TRIAL_ATTR, fail_running_trials, pareto_front
from rdt_core.sweep.spec import REPLICATE_KEY, SweepSpec
from rdt_core.tracking import PARENT, Outbox, headline, trial_key

LEADERBOARD_FILE = "leaderboard.json"
# On the best child run (on every replicate of the best setting); the parent names one in sweep.best_run.
BEST_TAG = "sweep.best"
# optuna-dashboard as the README starts it (``optuna-dashboard <storage> --port 8080``), and a study's page there.
OPTUNA_DASHBOARD = "http://127.0.0.1:8080"


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
    # With seeds > 1 the best is a setting: best_metrics are its means over its replicates, best_spread the
    # standard deviation of each objective over them, best_replicates how many reported the first objective.
    best_spread: dict[str, float] = field(default_factory=dict)
    best_replicates: int = 1


@dataclass(frozen=True)
class Setting:
    """Trials that differ only in their replicate index, and their first objective over the replicates."""

    config: dict[str, Any]  # the searched values, the replicate index left out
    members: list[int]  # the positions of its trials in the list ranked, by replicate index
    mean: float  # over the replicates that reported the objective; nan where none did
    std: float  # their standard deviation (n - 1); nan with fewer than two
    n: int  # the replicates that reported the objective


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def rank_key(value: Any, mode: str) -> tuple[bool, float]:
    """Sorts values best first by ``mode`` ("max" or "min"), anything not a finite number last."""
    if not is_number(value):
        return True, 0.0
    return False, value if mode == "min" else -value


def rank_settings(configs: Sequence[Mapping[str, Any]], values: Sequence[Any], mode: str) -> list[Setting]:
    """The settings among trials (``configs[i]`` reported ``values[i]``: a number, or None), best first by
    their mean value; settings with no value last; ties in the order the settings first appear. Without
    replicate indices each trial is a setting of its own."""
    groups: dict[tuple, list[int]] = {}
    for position, config in enumerate(configs):
        key = tuple(sorted((name, repr(value)) for name, value in config.items() if name != REPLICATE_KEY))
        groups.setdefault(key, []).append(position)
    settings = []
    for members in groups.values():
        members = sorted(members, key=lambda i: (configs[i].get(REPLICATE_KEY, 0), i))
        reported = [float(values[i]) for i in members if is_number(values[i])]
        settings.append(Setting(
            config={name: value for name, value in configs[members[0]].items() if name != REPLICATE_KEY},
            members=members,
            mean=statistics.fmean(reported) if reported else math.nan,
            std=statistics.stdev(reported) if len(reported) > 1 else math.nan,
            n=len(reported),
        ))
    return sorted(settings, key=lambda setting: rank_key(setting.mean, mode))  # stable: ties keep their order


@dataclass(frozen=True)
class Best:
    """The sweep's best: a trial, or with seeds > 1 a setting (the mean of each metric over its replicates)."""

    config: dict[str, Any]
    metrics: dict[str, float]
    spread: dict[str, float]  # seeds > 1: each objective's standard deviation over the replicates
    replicates: int
    trial_ids: list[str]  # the trial, or the setting's replicates, best first


def best_of(spec: SweepSpec, results: ResultGrid) -> Best:
    """The best trial by the first objective or, with ``seeds > 1``, the best setting by its mean (where no
    trial reported the objective, Tune's own answer, which says so)."""
    metrics, modes = spec.objectives()
    if spec.seeds > 1:
        trials = list(results)
        setting = best_setting([dict(t.config) for t in trials], [t.metrics or {} for t in trials], metrics, modes[0])
        if setting is not None:
            return setting
    best = results.get_best_result(metric=metrics[0], mode=modes[0])
    trial_id = (best.metrics or {}).get("trial_id")
    return Best(dict(best.config), ours(best.metrics or {}), {}, 1, [trial_id] if trial_id else [])


def best_setting(configs: Sequence[Mapping[str, Any]], reported: Sequence[Mapping[str, Any]],
                 metrics: Sequence[str], mode: str) -> Best | None:
    """The setting with the best mean of ``metrics[0]`` over its replicates (``reported[i]``: trial i's
    last report), its mean of every metric the replicates report, and each objective's spread; None when
    no trial reported ``metrics[0]``."""
    top = rank_settings(configs, [values.get(metrics[0]) for values in reported], mode)[0]
    if top.n == 0:
        return None
    replicates = [ours(reported[i]) for i in top.members]

    def numbers(name: str) -> list[float]:
        return [values[name] for values in replicates if is_number(values.get(name))]

    names = dict.fromkeys(name for values in replicates for name in values)
    means = {name: statistics.fmean(found) for name in names if (found := numbers(name))}
    spread = {name: statistics.stdev(found) if len(found := numbers(name)) > 1 else math.nan for name in metrics}
    ranked = sorted(top.members, key=lambda i: rank_key(reported[i].get(metrics[0]), mode))
    trial_ids = [reported[i]["trial_id"] for i in ranked if reported[i].get("trial_id")]
    return Best(top.config, means, spread, top.n, trial_ids)


def summarize(plan: SweepPlan, tracking: SweepTracking, results: ResultGrid) -> SweepOutcome:
    spec, outbox = plan.spec, tracking.outbox
    metrics, modes = spec.objectives()
    outbox.reload()  # what Tune's copy of the callback's outbox left unsent, from its file
    study = optuna.load_study(study_name=tracking.study_name, storage=plan.optuna_storage)
    fail_running_trials(study)
    best = best_of(spec, results)
    board = leaderboard(spec, study, results, outbox)
    outbox.log_table(PARENT, board, LEADERBOARD_FILE)
    log_best(plan, outbox, best, board, study._study_id, tracking.study_name)
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
        best_config=best.config,
        best_metrics=best.metrics,
        n_trials=len(results),
        n_failed=results.num_errors,
        study_name=tracking.study_name,
        pareto_front=front,
        report_notes=draw_phase_diagrams(plan, tracking.parent_run_id) if all_sent else [],
        unsent_writes=len(outbox.pending),
        outbox_path=str(outbox.path),
        best_spread=best.spread,
        best_replicates=best.replicates,
    )


def log_best(plan: SweepPlan, outbox: Outbox, best: Best, board: Sequence[Mapping[str, Any]], study_id: int,
             study_name: str) -> None:
    """The best trial (or setting) on the parent run: its config as ``best.*`` params, its objectives as
    ``best/<metric>`` (and their spread over replicates), its headline metrics under the children's own
    names (``parent_metrics``), the tag ``sweep.best`` on its child run(s), and the parent's description
    with the links (``parent_note``). ``board`` is the leaderboard as logged."""
    spec = plan.spec
    metrics, _ = spec.objectives()
    outbox.log_params(PARENT, {f"best.{key}": value for key, value in best.config.items()})
    outbox.log_metrics(PARENT, {f"best/{m}": best.metrics.get(m, math.nan) for m in metrics}, step=0)
    outbox.log_metrics(PARENT, parent_metrics(best, metrics), step=0)
    if spec.seeds > 1:  # the best setting: its mean over best.replicates replicates, and their spread
        outbox.log_params(PARENT, {"best.replicates": best.replicates})
        outbox.log_metrics(PARENT, {f"best_std/{m}": value for m, value in best.spread.items() if math.isfinite(value)},
                           step=0)
    for best_trial in best.trial_ids:  # the best trial, or every replicate of the best setting
        outbox.set_tag(trial_key(best_trial), BEST_TAG, "true")
    best_run = outbox.run_id(trial_key(best.trial_ids[0])) if best.trial_ids else None
    if best_run is not None:
        outbox.set_tag(PARENT, "sweep.best_run", best_run)  # with seeds > 1: the best setting's best replicate
    best_name = next((row.get("run") for row in board if best_run and row.get("run_id") == best_run), None)
    tracker = outbox.tracker
    outbox.set_tag(PARENT, MLFLOW_RUN_NOTE, parent_note(
        description(plan), spec, best, tracker.experiment_id, tracker.parent_run_id, best_run, best_name,
        study_name, study_id, plan.optuna_storage,
    ))


def parent_metrics(best: Best, objectives: Sequence[str]) -> dict[str, float]:
    """The best trial's headline metrics (and objectives) under the names its child run logs them, so that
    the parent's row in the MLflow runs table shows them beside the children's; with ``seeds > 1`` the best
    setting's mean of each over its replicates."""
    return {name: value for name, value in headline(best.metrics, also=objectives).items() if is_number(value)}


def parent_note(head: str, spec: SweepSpec, best: Best, experiment_id: str, parent_run_id: str,
                best_run: str | None, best_name: str | None, study_name: str, study_id: int,
                optuna_storage: str) -> str:
    """The parent run's description (markdown, shown on its page): ``head`` (the spec's description), then
    the best run, the leaderboard and the Optuna study as links. MLflow links are relative to the UI that
    shows them (``#/experiments/...``), so they hold for a SQLite store's UI and a tracking server alike."""
    metrics, _ = spec.objectives()
    value = best.metrics.get(metrics[0])
    shown = f"{value:.3g}" if is_number(value) else "not reported"
    if spec.seeds > 1:
        spread = best.spread.get(metrics[0], math.nan)
        shown += (f" ± {spread:.2g}" if math.isfinite(spread) else "") + f" (mean over {best.replicates} replicates)"
    if best_run is not None:
        label = f"best setting's best replicate, {best_name or best_run}" if spec.seeds > 1 else best_name or best_run
        best_line = f"**Best run**: [{label}]({run_page(experiment_id, best_run)}): `{metrics[0]}` {shown}"
    else:
        best_line = f"**Best**: `{metrics[0]}` {shown}"
    config = ", ".join(f"`{key}` = {number_text(value)}" for key, value in sorted(best.config.items()))
    dashboard = f"{OPTUNA_DASHBOARD}/dashboard/studies/{study_id}"
    lines = [
        head.rstrip(),
        "",
        f"{best_line}, with {config}" if config else best_line,
        "",
        f"**Leaderboard**: [{LEADERBOARD_FILE}]({run_page(experiment_id, parent_run_id, artifact=LEADERBOARD_FILE)})"
        f" (every trial, best first{'; replicates under their setting' if spec.seeds > 1 else ''})",
        "",
        f"**Optuna study**: `{study_name}` in `{optuna_storage}`: with `optuna-dashboard {optuna_storage} --port 8080`"
        f" running, [{dashboard}]({dashboard})",
    ]
    return "\n".join(lines)


def number_text(value: Any) -> str:
    """A searched value, short: floats at 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def parent_run_link(outcome: SweepOutcome, server: str) -> str:
    """The parent run's page in the MLflow UI at ``server``, in its model-training view (MLflow 3 opens an
    experiment in its GenAI view otherwise)."""
    return run_page(outcome.experiment_id, outcome.parent_run_id, server)


def leaderboard(spec: SweepSpec, study: optuna.Study, results: ResultGrid, outbox: Outbox) -> list[dict[str, Any]]:
    """One row per trial, best first by the first objective: its child run's name, its objectives (final,
    or last reported for a trial stopped early), the values the search gave it, its state in the study,
    its Optuna trial number and its child run's id. With ``seeds > 1`` the settings are ranked by their mean
    over their replicates (``ranked_rows``). Searched keys are written ``train/lr``: the MLflow UI reads a
    dot in a table's column name as a path into nested data, and shows the column blank."""
    metrics, modes = spec.objectives()
    searched = [*spec.search_space, *([REPLICATE_KEY] if spec.seeds > 1 else [])]
    by_tune_trial = {t.user_attrs.get(TUNE_TRIAL_ATTR): t for t in study.get_trials(deepcopy=False)}
    rows, configs = [], []
    for result in results:
        reported = result.metrics or {}
        trial_id = reported.get("trial_id")
        optuna_trial = by_tune_trial.get(trial_id)
        number = optuna_trial.number if optuna_trial else None
        configs.append(dict(result.config))
        rows.append({
            "run": child_run_name(spec.name, number) if number is not None else None,
            **{metric: reported.get(metric) for metric in metrics},
            **{key.replace(".", "/"): result.config.get(key) for key in searched},
            "state": optuna_trial.state.name if optuna_trial else ("FAIL" if result.error else "UNKNOWN"),
            "trial": number,
            "run_id": (optuna_trial.user_attrs.get(RUN_ID_ATTR) if optuna_trial else None)
            or (outbox.run_id(trial_key(trial_id)) if trial_id else None),
        })
    return ranked_rows(rows, configs, metrics[0], modes[0], replicated=spec.seeds > 1)


def ranked_rows(rows: list[dict[str, Any]], configs: Sequence[Mapping[str, Any]], metric: str, mode: str,
                replicated: bool) -> list[dict[str, Any]]:
    """The leaderboard's rows (``rows[i]`` for the trial of ``configs[i]``, each with ``metric`` and its Optuna
    ``trial`` number) best first. Single trials by their value (ties by trial number). Replicated settings
    (configs with a replicate index) by their mean over their replicates, each replicate listed under its
    setting in replicate order, with the setting's rank, mean, spread and number of replicates beside it."""
    if not replicated:
        def order(row: dict[str, Any]) -> tuple:
            return (*rank_key(row[metric], mode), row["trial"] if row["trial"] is not None else math.inf)

        return sorted(rows, key=order)
    ranked = []
    for rank, setting in enumerate(rank_settings(configs, [row[metric] for row in rows], mode), start=1):
        for i in setting.members:
            row = dict(rows[i])
            ranked.append({
                "run": row.pop("run"),
                "setting": rank,
                f"{metric} mean": setting.mean if math.isfinite(setting.mean) else None,
                f"{metric} std": setting.std if math.isfinite(setting.std) else None,
                "replicates": setting.n,
                **row,
            })
    return ranked


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
