"""The instrument registry: an instrument declared in one place and registered once shows in the reported
names, the end-of-run analysis, each evaluation, the run's tables and what the report reads back from
them; and every registered instrument reports exactly the names it declares, on a small real model."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from rdt_core import metrics as names
from rdt_core.config import ExperimentConfig
from rdt_core.data import build_splits
from rdt_core.eval import evaluate, halting_rules, run_split
from rdt_core.instruments import INSTRUMENTS, Context, Instrument, register, unregister
from rdt_core.instruments.patching import MODELS, PATCHING_POINTS, patching_hops, patching_loops
from rdt_core.instruments.registry import hop_counts_of_test_splits
from rdt_core.model.transformer import build_model
from rdt_core.patching import corrupt_first_relation, random_null_model, trivial_cells
from rdt_core.train.analysis import device_eval_sets, final_analysis, reported_metric_names
from tests.helpers import TINY_CONFIG as TINY


# The toy instrument: the whole of what a new instrument needs, one declaration and its registration.
TOY_LOGIT = names.Kind("toy/{split}/answer_logit", "toy", "answer_logit")
TOY_QUERIES = names.Kind("toy/{split}/queries", "toy", "queries")


def toy_at_end(context: Context) -> dict[str, float]:
    """Mean logit of the right answer after the last loop, per test split."""
    metrics = {}
    for split, queries in context.test_splits().items():
        logits = context.model(queries.tokens, context.config.model.max_loops)[-1]  # (Q, E)
        right = logits.gather(1, queries.answers[:, None])  # (Q, 1)
        metrics[TOY_LOGIT.name(split=split)] = right.mean().item()
    return metrics


def toy_at_evaluation(results, config: ExperimentConfig) -> dict[str, float]:
    """How many queries each test split's evaluation saw."""
    return {TOY_QUERIES.name(split=split): float(len(result.hops)) for split, result in results.items()
            if split != "train" and not names.is_validation(split)}


def toy_names(config: ExperimentConfig) -> set[str]:
    return {kind.name(split=split) for split in hop_counts_of_test_splits(config) for kind in (TOY_LOGIT, TOY_QUERIES)}


TOY = Instrument("toy", (TOY_LOGIT, TOY_QUERIES), toy_names, toy_at_end, toy_at_evaluation, figures=("loops",))


@pytest.fixture
def toy():
    register(TOY)
    yield TOY
    unregister(TOY)


@pytest.fixture(scope="module")
def run() -> Context:
    """A small model with random weights (so patching has a gap to recover) and its data."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = ExperimentConfig.from_dict(TINY)
    splits = build_splits(config.data)
    model = random_null_model(build_model(config, splits.vocab), seed=5)
    device = torch.device("cpu")
    return Context(model, splits, device_eval_sets(splits, config, device), config, device)


def test_a_registered_toy_shows_in_names_analysis_evaluation_tables_and_the_report(toy, run):
    expected = toy_names(run.config)
    assert expected == {"toy/id/answer_logit", "toy/ood/answer_logit", "toy/id/queries", "toy/ood/queries"}
    assert expected <= reported_metric_names(run.config)

    final = final_analysis(run.model, run.splits, run.eval_sets, run.config, run.device)
    evaluation = evaluate(run.model, run.eval_sets, run.config)
    assert {name for name in final if name.startswith("toy/")} == {"toy/id/answer_logit", "toy/ood/answer_logit"}
    assert evaluation["toy/id/queries"] == float(len(run.eval_sets["id"]))

    assert toy.tables == {"toy": [TOY_LOGIT, TOY_QUERIES]}
    tables = names.tables({**evaluation, **final})  # what a run's last report logs as tables/*.json
    assert tables["toy"] == [  # long form: a row per value, in metric-name order
        {"split": "id", "measure": "answer_logit", "value": final["toy/id/answer_logit"]},
        {"split": "id", "measure": "queries", "value": evaluation["toy/id/queries"]},
        {"split": "ood", "measure": "answer_logit", "value": final["toy/ood/answer_logit"]},
        {"split": "ood", "measure": "queries", "value": evaluation["toy/ood/queries"]},
    ]
    read_back = names.from_tables(tables)  # what the report reads from a run's tables (report.runs.run_tables)
    last_report = {**evaluation, **final}
    assert {name: read_back[name] for name in expected} == {name: last_report[name] for name in expected}


def test_unregistering_an_instrument_leaves_no_trace(run):
    before = reported_metric_names(run.config)
    register(TOY)
    with pytest.raises(ValueError, match="registered already"):
        register(TOY)
    unregister(TOY)
    assert TOY not in INSTRUMENTS and TOY_LOGIT not in names.KINDS and TOY_QUERIES not in names.KINDS
    assert reported_metric_names(run.config) == before
    assert names.parse("toy/id/answer_logit") is None


def test_every_instrument_reports_exactly_the_names_it_declares(run):
    """At the end of a run and at an evaluation, on a small real model. Patching declares every cell a run
    may report, and reports all but the cells that are trivial by construction for this model."""
    rules = halting_rules(run.config.eval, with_grid=False)
    results = {split: run_split(run.model, queries, run.config.model.max_loops, rules)
               for split, queries in run.eval_sets.items()}
    seen: set[str] = set()
    for instrument in INSTRUMENTS:
        declared = instrument.names(run.config)
        reported = set(instrument.at_end(run) if instrument.at_end else {})
        reported |= set(instrument.at_evaluation(results, run.config) if instrument.at_evaluation else {})
        if instrument.name == "patching":
            declared -= trivial_patching_names(run)
        assert reported == declared, (instrument.name, sorted(reported ^ declared)[:5])
        assert all(names.parse(name)[0] in instrument.kinds for name in declared), instrument.name
        assert not seen & declared, instrument.name  # no name has two instruments
        seen |= declared


def trivial_patching_names(run: Context) -> set[str]:
    """The patching cells that ``trivial_cells`` leaves out for this model and its corrupted position."""
    hops, n_loops = patching_hops(run.config), patching_loops(run.config)
    clean = run.eval_sets["id"].with_hops(hops)
    tokens, _, position = corrupt_first_relation(clean, run.splits.vocab, run.splits.graph.tails, torch.Generator())
    return {
        names.PATCHING.name(model=model, point=point, hops=hops, loop=loop + 1, pos=pos)
        for model in MODELS
        for point in PATCHING_POINTS
        for loop, pos in trivial_cells(run.model, position, tokens.shape[1], n_loops, point).nonzero().tolist()
    }


def test_every_instrument_names_what_the_report_shows_it_by():
    from rdt_core.report.diagrams import DIAGRAMS
    from rdt_core.report.figures import LINE_FIGURES
    from rdt_core.report.numbers import TABLES

    shown_by = set(DIAGRAMS) | set(LINE_FIGURES) | set(TABLES)
    for instrument in INSTRUMENTS:
        assert set(instrument.figures) <= shown_by, (instrument.name, instrument.figures)


def test_the_instruments_import_no_mlflow_ray_or_optuna():
    check = (
        "import sys, rdt_core.instruments; "
        "found = sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'ray', 'optuna')); "
        "print(found); sys.exit(1 if found else 0)"
    )
    completed = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
