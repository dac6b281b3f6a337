"""The tables of a searched sweep (TPE, ASHA): its study, trial by trial, and which knobs mattered.

A search draws each trial's setting, so a sweep of one seed per setting has no spread to show; what a
reader wants instead is every trial with its drawn values, how far it trained before the scheduler
stopped it, its validation score and its test scores beside the null; and the parameter importances of
Optuna's fANOVA (seeded: a random forest fitted to (setting -> score)), computed from the export and the
spec's search space alone, so the page redraws to the byte without the study's database.

A trial stopped early counts with the score it had when stopped, as the scheduler saw it: importances
then say which knobs separate early losers from the rest as much as which shape the winners.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import optuna
from pydantic import TypeAdapter, ValidationError

from rdt_core.config import ConfigError, read_yaml_mapping
from rdt_core.metrics import ACC_CHOSEN, NULL
from rdt_core.report.numbers import table
from rdt_core.report.runs import ReportError, Spread, Sweep, Trial
from rdt_core.sweep.spec import Choice, Distribution, FloatRange, IntRange

DISTRIBUTION = TypeAdapter(Distribution)
IMPORTANCE_SEED = 0  # fANOVA's forest: the same export gives the same importances


def searched_space(spec_path: str) -> dict[str, optuna.distributions.BaseDistribution]:
    """The search space of the spec at ``spec_path`` as Optuna distributions, by dotted config key. Only
    the search space is read and checked: the report redraws from what the sweep ran, not from whether
    today's checks of its base config would still pass."""
    path = Path(spec_path)
    try:
        raw = read_yaml_mapping(path, "sweep spec") or {}
        space = raw.get("search_space")
        if not isinstance(space, dict) or not space:
            raise ReportError(f"{path}: search_space: a searched sweep's spec has one")
        return {key: distribution_of(DISTRIBUTION.validate_python(found)) for key, found in space.items()}
    except ConfigError as error:
        raise ReportError(f"{path}: {error}") from None
    except ValidationError as error:
        raise ReportError(f"{path}: search_space: {error.errors()[0]['msg']}") from None


def distribution_of(found: IntRange | FloatRange | Choice) -> optuna.distributions.BaseDistribution:
    if isinstance(found, IntRange):
        return optuna.distributions.IntDistribution(found.low, found.high)
    if isinstance(found, FloatRange):
        return optuna.distributions.FloatDistribution(found.low, found.high, log=found.type == "loguniform")
    return optuna.distributions.CategoricalDistribution(found.values)


def param_value(trial: Trial, key: str, distribution: optuna.distributions.BaseDistribution) -> Any:
    """A trial's param (a string in the export) as the distribution's own type."""
    text = trial.params[key]
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return next(choice for choice in distribution.choices if str(choice) == text)
    return int(float(text)) if isinstance(distribution, optuna.distributions.IntDistribution) else float(text)


def scored_trials(
    sweep: Sweep, space: dict[str, optuna.distributions.BaseDistribution]
) -> tuple[list[dict[str, Any]], list[float]]:
    """The drawn values and the final score of each trial that has a score, in the same order."""
    scored = [trial for trial in sweep.trials if is_score(trial.metrics.get(sweep.metric))]
    drawn = [{key: param_value(trial, key, distribution) for key, distribution in space.items()} for trial in scored]
    return drawn, [trial.metrics[sweep.metric] for trial in scored]


def finished_study(
    drawn: list[dict[str, Any]], scores: list[float], space: dict[str, optuna.distributions.BaseDistribution],
    mode: str,
) -> optuna.Study:
    """An in-memory Optuna study of finished trials: each trial's drawn values and its score."""
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for params, score in zip(drawn, scores):
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=score))
    return study


def is_score(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def fanova(study: optuna.Study) -> dict[str, float]:
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)
    return optuna.importance.get_param_importances(study, evaluator=evaluator)


def importances(sweep: Sweep, spec: str, shuffles: int = 50) -> list[str]:
    """Optuna's fANOVA importance of each searched key for the sweep's metric (they sum to 1), over the
    trials of the export; ``spec``: the sweep's spec, for the ranges the forest spans. Beside each, its
    null: the importances the same trials get with their scores shuffled among them (``shuffles`` seeded
    draws), and the share of draws that give the key at least its importance (a permutation p): with a
    dozen trials, a forest finds some structure in noise too, and 1/k each is no null."""
    space = searched_space(spec)
    drawn, scores = scored_trials(sweep, space)
    if len(scores) < 3:
        return [f"Too few finished trials ({len(scores)}) for parameter importances.", ""]
    found = fanova(finished_study(drawn, scores, space, sweep.mode))
    null: dict[str, list[float]] = {key: [] for key in found}
    for draw in range(shuffles):
        shuffled = random.Random(draw).sample(scores, len(scores))
        for key, value in fanova(finished_study(drawn, shuffled, space, sweep.mode)).items():
            null[key].append(value)
    rows = [[key, f"{value:.3f}", Spread.of(null[key]).text(), f"{sum(v >= value for v in null[key]) / shuffles:.2f}"]
            for key, value in found.items()]
    intro = (f"Parameter importances for {sweep.metric} (Optuna's fANOVA, seed {IMPORTANCE_SEED}, "
             f"{len(scores)} trials; each trial's score where it stopped), beside the importances of the "
             f"same trials with their scores shuffled ({shuffles} draws):")
    return [intro, "", *table(["param", "importance", "with scores shuffled", "p (shuffled at least as large)"], rows)]


def study(sweep: Sweep, spec: str, split: str = "ood") -> list[str]:
    """Every trial of a searched sweep, best first: its drawn values (3 significant digits), the steps it
    trained before it finished or was stopped, its score, and its test accuracy on ``split`` and on the
    in-distribution split at the validation-chosen budget, beside ``split``'s structural null."""
    space = searched_space(spec)
    reached = {trial.run_id: max(sweep.history(trial, sweep.metric), default=None) for trial in sweep.trials}
    last_step = max((steps for steps in reached.values() if steps is not None), default=0)
    ranked = sorted(sweep.trials, key=lambda trial: score_order(sweep, trial))
    rows = []
    for trial in ranked:
        steps = reached[trial.run_id]  # the step of the metric's last evaluation
        stopped = "" if steps is None or steps >= last_step else " (stopped)"
        rows.append([
            trial.name,
            *(short(trial.params.get(key, "")) for key in space),
            f"{steps:,.0f}{stopped}" if steps is not None else "—",
            number(trial.metrics.get(sweep.metric)),
            number(trial.metrics.get(ACC_CHOSEN.name(split=split))),
            number(trial.metrics.get(ACC_CHOSEN.name(split="id"))),
            number(trial.metrics.get(NULL.name(split=split, hops=2, stat="structural"))),
        ])
    header = ["trial", *(key.split(".")[-1] for key in space), "steps", sweep.metric,
              f"{split} (chosen, test)", "id (chosen, test)", f"{split} structural null"]
    return [f"The study, best first ({len(sweep.trials)} trials; \"stopped\": the scheduler ended it early):", "",
            *table(header, rows)]


def score_order(sweep: Sweep, trial: Trial) -> tuple[int, float]:
    """Best first by the sweep's metric and mode; trials without a score last."""
    score = trial.metrics.get(sweep.metric)
    if not is_score(score):
        return 1, 0.0
    return 0, -score if sweep.mode == "max" else score


def short(text: str) -> str:
    """A drawn value at 3 significant digits; integers and words as they are."""
    try:
        value = float(text)
    except ValueError:
        return text
    return text if value.is_integer() else f"{value:.3g}"


def number(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.3f}"


TABLES = {"study": study, "importances": importances}
