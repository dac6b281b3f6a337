"""With ``seeds > 1`` the best and the leaderboard go by a setting's mean over its replicates (each replicate
still listed under its setting); with one seed, by single trials as before. Plain data, no Ray."""

import math

import pytest

from rdt_core.sweep.summary import best_setting, rank_settings, ranked_rows

METRIC = "acc/id_val"


def replicated(lr: float, replicate: int) -> dict:
    return {"train.lr": lr, "replicate": replicate}


# Setting lr=0.01 has the best single replicate (0.9) but the worse mean (0.6); lr=0.003 is steadier (0.7).
CONFIGS = [replicated(0.01, 0), replicated(0.003, 0), replicated(0.01, 1), replicated(0.003, 1),
           replicated(0.01, 2), replicated(0.003, 2)]
VALUES = [0.9, 0.72, 0.5, 0.68, 0.4, 0.7]


def test_settings_rank_by_their_mean_over_replicates_not_by_their_best_replicate():
    ranked = rank_settings(CONFIGS, VALUES, "max")
    assert [setting.config for setting in ranked] == [{"train.lr": 0.003}, {"train.lr": 0.01}]
    steady, spiky = ranked
    assert steady.mean == pytest.approx(0.7) and steady.n == 3 and steady.members == [1, 3, 5]
    assert spiky.mean == pytest.approx(0.6) and spiky.std == pytest.approx(0.2645751, abs=1e-6)
    assert rank_settings(CONFIGS, VALUES, "min")[0].config == {"train.lr": 0.01}


def test_a_replicate_that_reported_nothing_is_left_out_of_its_settings_mean_and_count():
    values = [0.9, 0.72, None, 0.68, math.nan, 0.7]
    spiky = next(s for s in rank_settings(CONFIGS, values, "max") if s.config == {"train.lr": 0.01})
    assert spiky.mean == 0.9 and spiky.n == 1 and math.isnan(spiky.std) and spiky.members == [0, 2, 4]
    # a setting with no value at all ranks last
    last = rank_settings(CONFIGS, [None, 0.1, None, 0.1, None, 0.1], "max")[-1]
    assert last.config == {"train.lr": 0.01} and last.n == 0 and math.isnan(last.mean)


def test_without_replicates_each_trial_is_its_own_setting():
    ranked = rank_settings([{"train.lr": 0.1}, {"train.lr": 0.2}], [0.3, 0.5], "max")
    assert [(s.config, s.mean, s.n) for s in ranked] == [({"train.lr": 0.2}, 0.5, 1), ({"train.lr": 0.1}, 0.3, 1)]


def test_the_best_setting_carries_every_metrics_mean_the_objectives_spread_and_its_trials_best_first():
    reported = [{METRIC: value, "acc/id": value / 2, "trial_id": f"t{i}"} for i, value in enumerate(VALUES)]
    best = best_setting(CONFIGS, reported, [METRIC], "max")
    assert best.config == {"train.lr": 0.003} and best.replicates == 3
    assert best.metrics[METRIC] == pytest.approx(0.7) and best.metrics["acc/id"] == pytest.approx(0.35)
    assert best.spread[METRIC] == pytest.approx(0.02)
    assert best.trial_ids == ["t1", "t5", "t3"]  # 0.72, 0.70, 0.68
    assert best_setting(CONFIGS, [{"trial_id": "x"}] * 6, [METRIC], "max") is None  # nothing reported


def rows_for(configs, values):
    return [{"run": f"s-{i:03d}", METRIC: value, "train/lr": config["train.lr"],
             **({"replicate": config["replicate"]} if "replicate" in config else {}),
             "state": "COMPLETE", "trial": i, "run_id": f"r{i}"} for i, (config, value) in enumerate(zip(configs, values))]


def test_the_leaderboard_groups_replicates_under_their_setting_ranked_by_the_settings_mean():
    board = ranked_rows(rows_for(CONFIGS, VALUES), CONFIGS, METRIC, "max", replicated=True)
    assert [row["run"] for row in board] == ["s-001", "s-003", "s-005", "s-000", "s-002", "s-004"]  # all listed
    assert [row["setting"] for row in board] == [1, 1, 1, 2, 2, 2]
    assert [row["replicate"] for row in board] == [0, 1, 2, 0, 1, 2]
    assert board[0][f"{METRIC} mean"] == pytest.approx(0.7) and board[0]["replicates"] == 3
    assert board[3][f"{METRIC} std"] == pytest.approx(0.2645751, abs=1e-6)
    assert board[3][METRIC] == 0.9  # each replicate keeps its own value
    assert list(board[0])[:5] == ["run", "setting", f"{METRIC} mean", f"{METRIC} std", "replicates"]


def test_a_setting_of_one_reported_replicate_shows_no_spread():
    board = ranked_rows(rows_for(CONFIGS[:2], [0.5, 0.4]), CONFIGS[:2], METRIC, "max", replicated=True)
    assert board[0][f"{METRIC} std"] is None and board[0]["replicates"] == 1


def test_without_seeds_the_leaderboard_ranks_single_trials_as_before():
    configs = [{"train.lr": 0.1}, {"train.lr": 0.2}, {"train.lr": 0.3}, {"train.lr": 0.4}]
    board = ranked_rows(rows_for(configs, [0.5, None, 0.7, 0.5]), configs, METRIC, "max", replicated=False)
    assert [row["trial"] for row in board] == [2, 0, 3, 1]  # ties by trial number, no value last
    assert "setting" not in board[0] and f"{METRIC} mean" not in board[0]
