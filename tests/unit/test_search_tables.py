"""The tables of a searched sweep, from an export-like sweep built by hand: the study best first with
the trials the scheduler stopped marked, and fANOVA importances that find the knob the score follows."""

import random

import pytest
import yaml

from rdt_core.report.runs import ReportError, Sweep, Trial
from rdt_core.report.search import importances, study

SPACE = {
    "train.lr": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2},
    "train.lr_schedule": {"type": "choice", "values": ["cosine", "constant"]},
    "train.train_loops": {"type": "int", "low": 2, "high": 6},
}


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({
        "name": "search", "base": {"data": {"ood_fraction": 0.2}, "train": {"steps": 400, "eval_every": 100}},
        "search_space": SPACE,
        "metric": "acc/ood_val/chosen", "mode": "max", "num_samples": 24, "max_concurrent_trials": 2,
        "sampler": {"type": "tpe"}, "scheduler": {"type": "asha", "grace_period": 2},
    }))
    return str(path)


def searched(n: int = 24) -> Sweep:
    """Trials whose score follows the number of loops alone; every third was stopped at step 200."""
    draw, trials, histories = random.Random(0), [], {}
    for index in range(n):
        loops, lr = draw.randint(2, 6), 10 ** draw.uniform(-4, -2)
        stopped = index % 3 == 0
        score = loops / 10 + draw.uniform(0, 0.01)
        trials.append(Trial(f"run{index}", f"search-{index:03d}", {
            "train.lr": str(lr), "train.lr_schedule": draw.choice(["cosine", "constant"]),
            "train.train_loops": str(loops), "train.seed": "0",
        }, {"acc/ood_val/chosen": score, "acc/ood/chosen": score / 2, "acc/id/chosen": 0.9,
            "null/ood/hops_2/structural": 0.1}, frozenset({"acc/ood_val/chosen"})))
        histories[f"run{index}"] = {"acc/ood_val/chosen": {step: score for step in range(100, 201 if stopped else 401, 100)}}
    return Sweep(None, "search", "parent", trials, "acc/ood_val/chosen", "max", histories)


def test_the_study_lists_every_trial_best_first_with_the_stopped_ones_marked(spec):
    lines = study(searched(), spec)
    rows = [line for line in lines if line.startswith("| search-")]
    assert len(rows) == 24
    scores = [float(row.split("|")[6]) for row in rows]  # trial, lr, lr_schedule, train_loops, steps, score
    assert scores == sorted(scores, reverse=True)
    assert sum("(stopped)" in row for row in rows) == 8
    assert all(len(row.split("|")[2].strip().lstrip("0.")) <= 3 for row in rows)  # lr at 3 significant digits


def test_importances_find_the_knob_the_score_follows_and_are_the_same_every_time(spec):
    lines = importances(searched(), spec, shuffles=10)
    cells = {row.split("|")[1].strip(): row.split("|")[2:5] for row in lines if row.startswith("| train.")}
    found = {key: float(cell[0]) for key, cell in cells.items()}
    assert set(found) == set(SPACE) and sum(found.values()) == pytest.approx(1, abs=0.01)
    assert max(found, key=found.get) == "train.train_loops" and found["train.train_loops"] > 0.8
    assert float(cells["train.train_loops"][2]) == 0.0  # no shuffle of the scores gives loops that much
    assert float(cells["train.lr"][2]) > 0.1  # noise is what shuffles give too
    assert importances(searched(), spec, shuffles=10) == lines


def test_a_missing_spec_is_a_report_error_naming_it(tmp_path):
    with pytest.raises(ReportError, match="nowhere.yaml"):
        importances(searched(), str(tmp_path / "nowhere.yaml"))
