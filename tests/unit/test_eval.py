"""The evaluation metrics from hand-made per-loop results: loop budgets chosen on validation, the oracle
named as such, accuracy on the trained hop counts, halting beside a fixed budget of equal cost."""

import pytest
import torch

from rdt_core.config import ExperimentConfig
from rdt_core.eval import SplitResult, chosen_budgets, halting_rules, split_metrics, validation_metrics

CONFIG = ExperimentConfig.from_dict(
    {"data": {"train_max_hops": 2, "test_max_hops": 3}, "model": {"max_loops": 4}, "train": {"train_loops": 2}}
)


def result(
    correct_rows: list[list[int]], hops: list[int], prefix_trained: list[bool] | None = None, with_grid: bool = False
) -> SplitResult:
    """correct_rows[t][q]: query q right after loop t + 1; every query halts at loop 2 under every rule."""
    correct = torch.tensor(correct_rows, dtype=torch.bool)  # (T, Q)
    n_rules = len(halting_rules(CONFIG.eval, with_grid))
    return SplitResult(
        correct=correct,
        hops=torch.tensor(hops),
        halt_loops=torch.full((n_rules, correct.shape[1]), 2),
        prefix_trained=torch.tensor(prefix_trained or [False] * len(hops)),
        state_norms=torch.ones(correct.shape),
    )


# Test split: two 2-hop queries (right from loop 2 on / only at loop 4) and two 3-hop queries, one with a
# trained prefix (right at loop 3 only) and one without (right at loop 4 only).
TEST = result([[0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]], [2, 2, 3, 3], [False, False, True, False])
# Validation: 2-hop queries best at loop 2 (tied with 3 and 4: the fewest loops wins), 3-hop best at loop 3.
VALIDATION = result([[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 1]], [2, 2, 3, 3])


def test_the_loop_budget_is_chosen_on_validation_per_hop_count_and_the_fewest_loops_win_a_tie():
    assert chosen_budgets(VALIDATION) == {2: 2, 3: 3}


def test_chosen_accuracy_reads_the_test_split_at_the_validation_budget():
    metrics = split_metrics("id", TEST, CONFIG, halting_rules(CONFIG.eval, False), VALIDATION)
    assert metrics["loops_chosen/id/hops_3"] == 3.0
    assert metrics["acc/id/hops_2/chosen"] == 0.5  # loop 2: query 0 right, query 1 not
    assert metrics["acc/id/hops_3/chosen"] == 0.5  # loop 3: the prefix-trained query right
    assert metrics["acc/id/chosen"] == 0.5  # trained hop counts only: the 2-hop queries
    assert metrics["acc/id/hops_3/prefix_trained/chosen"] == 1.0
    assert metrics["acc/id/hops_3/prefix_novel/chosen"] == 0.0
    assert "acc/id/hops_2/prefix_trained/chosen" not in metrics  # the trained depth has no such split


def test_the_best_loop_on_the_test_split_is_an_oracle_and_untrained_hops_stay_out_of_acc():
    metrics = split_metrics("id", TEST, CONFIG, halting_rules(CONFIG.eval, False), VALIDATION)
    assert metrics["acc/id"] == 0.5  # at the trained 2 loops, 2-hop queries only (3-hop: 0.0 there)
    assert metrics["acc/id/loop_02"] == 0.25  # the per-loop curve covers every hop count
    assert metrics["acc/id/oracle"] == 1.0 and metrics["oracle_loop/id"] == 4.0
    assert not any(name.startswith(("acc/id/best", "best_loop")) for name in metrics)


def test_without_a_validation_split_nothing_is_chosen():
    metrics = split_metrics("train", TEST, CONFIG, halting_rules(CONFIG.eval, False))
    assert not any("chosen" in name for name in metrics)


def test_halting_is_reported_beside_the_fixed_budget_of_equal_cost_per_hop_count_and_kl_alone():
    metrics = split_metrics("id", TEST, CONFIG, halting_rules(CONFIG.eval, False), VALIDATION)
    # Every query halts at loop 2: the rule's accuracy is the fixed 2-loop budget's, so no gain.
    assert metrics["halting/id/acc"] == metrics["halting/id/fixed_acc"] == 0.25
    assert metrics["halting/id/gain"] == 0.0 and metrics["halting/id/mean_loops"] == 2.0
    for prefix in ("halting/id/hops_3", "halting/id/hops_3/kl_only", "halting/id/kl_only"):
        assert f"{prefix}/gain" in metrics
    assert metrics["halting/id/hops_2/acc"] == 0.5


def test_the_default_halting_rule_is_kl_and_relative_entropy():
    default, kl_alone = halting_rules(ExperimentConfig().eval, with_grid=False)
    assert default.kl is not None and default.entropy is not None and default.entropy_scale == "relative"
    assert kl_alone.kl == default.kl and kl_alone.entropy is None


@pytest.mark.parametrize("split", ["id", "ood"])
def test_every_split_metric_is_a_number(split):
    with_grid = result(TEST.correct.int().tolist(), TEST.hops.tolist(), TEST.prefix_trained.tolist(), with_grid=True)
    metrics = split_metrics(split, with_grid, CONFIG, halting_rules(CONFIG.eval, True), VALIDATION)
    assert "halting/id/kl_0.01_h_0.1/gain" in metrics or split == "ood"
    assert all(value == value for value in metrics.values())  # no NaN


def test_the_validation_split_reports_what_sweeps_select_on_and_nothing_from_the_test_split():
    metrics = validation_metrics("id_val", VALIDATION, CONFIG, halting_rules(CONFIG.eval, False))
    assert metrics["acc/id_val"] == 1.0  # trained hop counts (2) at the trained 2 loops
    assert metrics["acc/id_val/chosen"] == 1.0 and metrics["acc/id_val/hops_3/chosen"] == 1.0
    assert metrics["halting/id_val/mean_loops"] == 2.0
    assert all(name.split("/")[1] == "id_val" for name in metrics)
