"""Statistics over seeds: Student's t and Holm's adjustment against textbook values, and the ``over_seeds``
table of the numbers page on a small sweep built in memory (each seed's value, the test over seeds, the
family's Holm p and the verdict), with a bad row of a figure list refused naming the file and the key."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from rdt_core.metrics import (
    ACC_CHOSEN,
    ACC_HOPS_CHOSEN,
    ACC_HOPS_LOOP,
    HALTING_HOPS,
    LENS_TOP1,
    NULL,
    PATCHING,
    PATCHING_GAP,
)
from rdt_core.report.figure_list import load_figure_list
from rdt_core.report.numbers import over_seeds
from rdt_core.report.runs import ReportError, Sweep, Trial
from rdt_core.report.stats import holm, one_sample_t, student_t_upper_p, welch_t

ROOT = Path(__file__).resolve().parents[2]
N_ENTITIES, MAX_LOOPS, TRAIN_LOOPS = 20, 16, 4


# --- the t distribution and Holm ----------------------------------------------------------------------------


@pytest.mark.parametrize("t, df, expected", [
    (2.920, 2, 0.050),  # the 5% critical values of a t table
    (1.833, 9, 0.050),
    (12.706, 1, 0.025),
    (0.0, 5, 0.5),
    (1.0, 1, 0.25),  # df = 1 is the Cauchy: 1/2 - arctan(1)/pi
    (1.645, 1e6, 0.050),  # a large df is the normal
])
def test_the_upper_tail_of_student_t_matches_the_tables(t, df, expected):
    assert student_t_upper_p(t, df) == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize("t, df", [(0.7, 1), (2.5, 3), (1.2, 30)])
def test_the_t_distribution_is_symmetric(t, df):
    assert student_t_upper_p(-t, df) == pytest.approx(1 - student_t_upper_p(t, df), abs=1e-12)


def test_an_infinite_t_is_certain_either_way():
    assert student_t_upper_p(math.inf, 3) == 0.0 and student_t_upper_p(-math.inf, 3) == 1.0


def test_one_sample_t_of_a_known_case_and_of_seeds_without_spread():
    t, df, p = one_sample_t([0.1, 0.2, 0.3])  # mean 0.2, se 0.1 / sqrt(3)
    assert (t, df) == (pytest.approx(2 * math.sqrt(3)), 2) and p == pytest.approx(0.0371, abs=1e-4)
    assert one_sample_t([0.2, 0.2])[1:] == (1, 0.25) and one_sample_t([0.2, 0.2])[0] == math.inf  # 2^-2
    assert one_sample_t([0.2] * 5)[2] == 1 / 32
    assert welch_t([0.5, 0.5, 0.5], [0.0, 0.0, 0.0])[2] == pytest.approx(0.05)  # exact permutation, 1 in 20
    assert one_sample_t([-0.2, -0.2])[2] == 1.0 and one_sample_t([0.0, 0.0])[2] == 1.0
    assert math.isnan(one_sample_t([0.4])[2])


def test_welch_t_keeps_each_samples_variance():
    t, df, p = welch_t([1.0, 2.0, 3.0], [0.0, 0.5, 1.0])  # variances 1 and 0.25
    assert t == pytest.approx(1.5 / math.sqrt(1 / 3 + 0.25 / 3))
    assert df == pytest.approx((1.25 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (0.25 / 3) ** 2 / 2))
    assert p == pytest.approx(student_t_upper_p(t, df)) and math.isnan(welch_t([1.0], [0.0, 1.0])[2])


def test_holm_steps_down_in_the_input_order_and_passes_nan_through():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.02, math.nan, 0.04, 0.9])  # m = 3: the NaN is no test
    assert adjusted[0] == pytest.approx(0.06) and math.isnan(adjusted[1])
    assert adjusted[2:] == pytest.approx([0.08, 0.9])
    assert holm([0.5, 0.6]) == [1.0, 1.0]


# --- the over_seeds table -----------------------------------------------------------------------------------


def seed(architecture: str, replicate: int, **metrics: float) -> Trial:
    params = {"model.architecture": architecture, "replicate": str(replicate), "train.seed": str(replicate),
              "data.seed": str(replicate), "train.train_loops": str(TRAIN_LOOPS), "model.max_loops": str(MAX_LOOPS),
              "data.n_entities": str(N_ENTITIES)}
    return Trial(f"run-{architecture}-{replicate}", f"{architecture}-{replicate}", params, metrics)


def looped_metrics(accuracy: float, null: float, fall_to_max: float) -> dict[str, float]:
    """One looped seed: its ood accuracy and null, and id 2-hop accuracy that falls by ``fall_to_max``
    from the chosen budget to the largest, and by half of it to 3R."""
    chosen = 0.9
    return {
        ACC_CHOSEN.name(split="ood"): accuracy,
        NULL.name(split="ood", hops=2, stat="structural"): null,
        ACC_HOPS_CHOSEN.name(split="id", hops=2): chosen,
        ACC_HOPS_LOOP.name(split="id", hops=2, loop=MAX_LOOPS): chosen - fall_to_max,
        ACC_HOPS_LOOP.name(split="id", hops=2, loop=3 * TRAIN_LOOPS): chosen - fall_to_max / 2,
    }


@pytest.fixture
def sweep() -> Sweep:
    """A looped setting and a vanilla one, three seeds each, listed out of replicate order. Per looped
    seed (replicates 0, 1, 2): ood accuracy above its null by 0.1, 0.2, 0.3; id 2-hop accuracy falling to
    the largest budget by 0.1, 0.1, 0.4; the halting rule's gain -0.04, -0.05, -0.06; the lens and
    patching readings; replicate 2 alone has a 3-hop accuracy."""
    looped = {
        0: looped_metrics(0.35, 0.25, 0.1) | halting(-0.04) | inside(0.10, 0.8, 0.2),
        1: looped_metrics(0.40, 0.20, 0.1) | halting(-0.05) | inside(0.15, 0.9, 0.1),
        2: looped_metrics(0.50, 0.20, 0.4) | halting(-0.06) | inside(0.20, 0.7, 0.3)
        | {ACC_HOPS_CHOSEN.name(split="id", hops=3): 0.5, NULL.name(split="id", hops=3, stat="structural"): 0.1},
    }
    vanilla = {0: 0.10, 1: 0.12, 2: 0.05}
    trials = [seed("looped", r, **looped[r]) for r in (2, 0, 1)]
    trials += [seed("vanilla", r, **{ACC_CHOSEN.name(split="ood"): vanilla[r]}) for r in (1, 2, 0)]
    return Sweep(None, "hand-made", "parent", trials, "acc/id", "max")


def halting(gain: float) -> dict[str, float]:
    return {HALTING_HOPS.name(split="id", hops=2, stat="gain"): gain,
            HALTING_HOPS.name(split="id", hops=2, stat="mean_loops"): 6.0}


def inside(lens: float, recovered: float, recovered_by_null: float) -> dict[str, float]:
    """The lens's bridge top-1 share after loop 1, and the share of the gap patching recovers at pos 1
    after loop 2 in the trained model and in the random one (whose gap is 0.2)."""
    patched = {model: PATCHING.name(model=model, point="state", hops=2, loop=2, pos=1)
               for model in ("patching", "patching_null")}
    return {
        LENS_TOP1.name(split="id", hops=2, target="bridge_1", loop=1): lens,
        patched["patching"]: recovered,
        patched["patching_null"]: recovered_by_null,
        PATCHING_GAP.name(model="patching_null", point="state", hops=2): 0.2,
    }


LOOPED = {"model.architecture": "looped"}


def rows_of(lines: list[str]) -> list[list[str]]:
    """The cells of each row of the table that ``over_seeds`` wrote."""
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:] if line.startswith("|")]


def test_each_seeds_value_in_replicate_order_the_test_and_the_holm_p_of_the_family(sweep):
    lines = over_seeds(sweep, [
        {"test": "above_null", "where": LOOPED, "split": "ood", "hops": 2},
        {"test": "overthinking_fall", "where": LOOPED, "hops": 2, "at": "max"},
        {"test": "above_null", "where": LOOPED, "split": "id", "hops": 3, "per_hop": True},
    ])
    above, fall, few = rows_of(lines)
    assert lines[0].split(" | ")[6] == "Holm p (m = 2)"  # the seed-short test is not in the family
    assert above[1:4] == ["model.architecture=looped", "0.100, 0.200, 0.300", "0.200 ± 0.100 (n=3)"]
    assert above[4] == "one-sample t = 3.46, df = 2" and above[5] == "0.037"
    assert fall[1:3] == ["model.architecture=looped", "0.100, 0.100, 0.400"] and fall[5] == "0.092"  # t = 2
    # Holm: 0.037 is the smaller of two, times 2 = 0.074; 0.092 is the last, and stays above 0.074
    assert [above[6], fall[6]] == ["0.074", "0.092"] and [above[7], fall[7]] == ["not shown", "not shown"]
    assert few[2:4] == ["—, —, 0.400", "0.400 (n=1)"] and few[5:] == ["—", "—", "too few seeds"]
    assert lines[-2] == ("Seed is the unit: each replicate (its own graph and initialisation) gives one value; "
                         "2 tests, Holm-corrected.")


def test_a_claim_holds_where_its_holm_p_is_below_5_percent(sweep):
    (row,) = rows_of(over_seeds(sweep, [{"test": "overthinking_fall", "where": LOOPED, "hops": 2, "at": "3R"}]))
    assert row[0] == "id 2-hop accuracy falls from the chosen budget to 12 loops (3R)"
    assert row[2] == "0.050, 0.050, 0.200" and row[5] == row[6] == "0.092" and row[7] == "not shown"
    (row,) = rows_of(over_seeds(sweep, [{"test": "above_null", "where": LOOPED, "split": "ood", "hops": 2}]))
    assert row[6] == "0.037" and row[7] == "holds"


def test_a_halting_rule_is_tested_both_ways_and_both_count_in_the_family(sweep):
    lines = over_seeds(sweep, [{"test": "halting_gain", "where": LOOPED, "rule": "configured", "against": "fixed",
                                "hops": 2}])
    (row,) = rows_of(lines)
    below = one_sample_t([0.04, 0.05, 0.06])[2]
    assert "(m = 2)" in lines[0] and row[2] == "-0.040, -0.050, -0.060"
    assert row[5] == f"{1 - below:.3f} (> 0); {below:.3f} (< 0)"
    # Holm over the two: the smaller p doubled, the larger kept (it is the last of the family)
    assert row[6] == f"{1 - below:.3f} (> 0); {2 * below:.3f} (< 0)" and row[7] == "loses"


def test_one_setting_above_another_by_welch_t_with_the_exact_permutation_p(sweep):
    (row,) = rows_of(over_seeds(sweep, [{"test": "greater", "where": LOOPED, "than": {"model.architecture": "vanilla"},
                                         "split": "ood"}]))
    assert row[1] == "model.architecture=looped vs model.architecture=vanilla"
    assert row[2] == "0.350, 0.400, 0.500 vs 0.100, 0.120, 0.050"
    t, df, p = welch_t([0.35, 0.40, 0.50], [0.10, 0.12, 0.05])
    assert row[4] == f"Welch t = {t:.2f}, df = {df:.1f}; exact perm. p = 0.050" and row[5] == f"{p:.3f}"


def test_the_lens_against_chance_and_patching_against_a_random_model(sweep):
    lens, patching = rows_of(over_seeds(sweep, [
        {"test": "lens_above_chance", "where": LOOPED, "split": "id", "hops": 2, "target": "bridge_1", "loop": 1},
        {"test": "patching_above_null", "where": LOOPED, "hops": 2, "pos": 1, "loop": 2},
    ]))
    assert lens[2] == "0.050, 0.100, 0.150"  # less chance, 1/20
    assert patching[2] == "0.600, 0.800, 0.400" and "random model's mean logit gap: 0.20" in patching[0]


def test_a_setting_that_is_not_there_is_an_error(sweep):
    with pytest.raises(ReportError, match="no setting of 'hand-made' has model.architecture=recurrent"):
        over_seeds(sweep, [{"test": "above_null", "where": {"model.architecture": "recurrent"}, "split": "ood",
                            "hops": 2}])


SMALL = "overthinking-long"


@pytest.mark.parametrize("row, named", [
    ("{test: overthinking_fall, where: {train.train_loops: 4}, hops: 2, at: max, splt: id}",
     "rows[0] (overthinking_fall): got an unexpected keyword argument 'splt'"),
    ("{test: overthinking_fall, where: {train.train_loops: 4}, at: max}",
     "rows[0] (overthinking_fall): missing a required argument: 'hops'"),
    ("{test: falls, where: {train.train_loops: 4}}", "rows[0].test: expected one of above_null, greater"),
])
def test_a_bad_row_of_a_figure_list_is_refused_naming_the_file_and_the_key(tmp_path, row, named):
    (tmp_path / "sweeps").mkdir()
    shutil.copy(ROOT / "docs" / "sweeps" / f"{SMALL}.json.gz", tmp_path / "sweeps")
    listed = tmp_path / "list.yaml"
    listed.write_text(f"exports: sweeps\nsweeps:\n  {SMALL}:\n    numbers:\n      - over_seeds:\n"
                      f"          rows:\n            - {row}\n")
    with pytest.raises(ReportError) as refused:
        load_figure_list(listed)
    assert str(refused.value).startswith(f"{listed}: sweeps.{SMALL}.numbers[0].over_seeds: {named}")
