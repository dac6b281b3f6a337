"""Metric names: every reported name is of exactly one kind and rebuilds from its fields; the run's
MLflow metrics stay few; tables hold the rest with their fields as columns."""

from __future__ import annotations

import pytest

from rdt_core import metrics as names
from rdt_core.config import ExperimentConfig
from rdt_core.train import reported_metric_names

CONFIGS = {
    "default": {},
    "depth": {"data": {"train_max_hops": 2, "test_max_hops": 4}, "model": {"max_loops": 8}},
    "no_ood": {"data": {"ood_fraction": 0.0}},
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def reported(request) -> set[str]:
    return reported_metric_names(ExperimentConfig.from_dict(CONFIGS[request.param]))


def test_every_reported_name_is_of_one_kind_and_round_trips(reported):
    for name in reported:
        kinds = [kind for kind in names.KINDS if kind.match(name) is not None]
        assert len(kinds) == 1, (name, [kind.template for kind in kinds])
        kind, values = names.parse(name)
        assert kind.name(**values) == name


def test_builders_check_their_fields():
    assert names.ACC_HOPS_LOOP.name(split="id", hops=2, loop=3) == "acc/id/hops_2/loop_03"
    assert names.parse("acc/id_val/hops_6/chosen") == (names.ACC_HOPS_CHOSEN, {"split": "id_val", "hops": 6})
    assert names.parse("halting/id/kl_0.01_h_0.1/gain") == (
        names.HALTING_RULE, {"split": "id", "rule": "kl_0.01_h_0.1", "stat": "gain"})
    with pytest.raises(ValueError):
        names.ACC.name(split="id", hops=2)  # a field the kind does not have
    with pytest.raises(ValueError):
        names.HALTING.name(split="id", stat="median")  # not one of its stats
    assert names.parse("training_iteration") is None


def test_a_run_holds_few_metrics_and_tables_hold_the_rest(reported):
    headline = {name for name in reported if names.is_headline(name)}
    assert 15 <= len(headline) <= 40, sorted(headline)
    assert {"acc/id", "acc/id/chosen", "loss/train", "lr", "trial/finished", "halting/id/acc"} <= headline
    assert not {name for name in headline if "/loop_" in name or "/hops_" in name}
    tabled = {name for name in reported if names.parse(name)[0].table is not None}
    assert reported - headline <= tabled | {"step"}, sorted(reported - headline - tabled)


def test_tables_are_long_one_row_per_value_with_its_fields_and_measure():
    metrics = {
        "acc/id/hops_2/loop_01": 0.1, "acc/id/hops_2/loop_02": 0.2, "acc/id/loop_01": 0.15,
        "halting/id/acc": 0.5, "halting/id/mean_loops": 3.0, "halting/id/kl_only/acc": 0.4,
        "halting/id/hops_2/gain": 0.01, "null/id/hops_2/structural": 0.2, "null/id/hops_2/last_relation": 0.1,
        "lr": 0.001,
    }
    tables = names.tables(metrics)
    assert set(tables) == {"accuracy_by_loop", "halting", "nulls"}
    assert {"split": "id", "hops": 2, "loop": 2, "measure": "accuracy", "value": 0.2} in tables["accuracy_by_loop"]
    assert {"split": "id", "hops": "all", "loop": 1, "measure": "accuracy", "value": 0.15} in tables["accuracy_by_loop"]
    configured = [row for row in tables["halting"] if row["rule"] == "configured" and row["hops"] == "all"]
    assert configured == [{"split": "id", "hops": "all", "rule": "configured", "measure": "acc", "value": 0.5},
                          {"split": "id", "hops": "all", "rule": "configured", "measure": "mean_loops", "value": 3.0}]
    assert {"split": "id", "hops": 2, "measure": "structural", "value": 0.2} in tables["nulls"]
    every_row = [row for rows in tables.values() for row in rows]
    assert len(every_row) == len(metrics) - 1  # one row per tabled value: lr has no table
    assert all(None not in row.values() for row in every_row)
    assert names.by_loop_curves(metrics) == {"acc_by_loop/id": {1: 0.15}}


def test_pivoted_tables_of_runs_logged_before_the_long_form_still_read_back():
    pivoted_rows = {"halting": [{"split": "id", "hops": "all", "rule": "configured", "acc": 0.5, "mean_loops": 3.0}],
                    "nulls": [{"split": "id", "hops": 2, "structural": 0.2, "last_relation": None}]}
    assert names.from_tables(pivoted_rows) == {
        "halting/id/acc": 0.5, "halting/id/mean_loops": 3.0, "null/id/hops_2/structural": 0.2}


def test_tables_read_back_give_every_tabled_metric(reported):
    """Every name that goes to a table comes back from it, through JSON as MLflow writes it (pandas'
    ``split`` orient: integral floats, nulls)."""
    import json

    import pandas

    metrics = {name: float(index) / 7 for index, name in enumerate(sorted(reported))}
    written = names.tables(metrics)
    through_json = {}
    for table, rows in written.items():
        dumped = json.loads(pandas.DataFrame(rows).to_json(orient="split"))
        through_json[table] = [dict(zip(dumped["columns"], row)) for row in dumped["data"]]
    tabled = {name: value for name, value in metrics.items() if names.parse(name)[0].table is not None}
    assert names.from_tables(through_json) == pytest.approx(tabled)


def test_rule_thresholds_read_what_halting_rules_are_named():
    from rdt_core.halting import HaltingRule

    assert names.rule_thresholds(HaltingRule(0.01, None).name) == ("0.01", "off")
    assert names.rule_thresholds(HaltingRule(1e-4, 0.5, "nats").name) == ("0.0001", "0.5nats")
