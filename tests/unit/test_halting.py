"""Halting rules on hand-made logits whose halting loops are known, the dense and the stopping paths on a
tiny model, and the comparison with a fixed loop budget of equal mean cost."""

import math
import re

import pytest
import torch

from rdt_core.config import DataConfig, ModelConfig
from rdt_core.data import build_splits
from rdt_core.halting import (
    HaltingRule,
    equal_cost,
    fixed_budget_accuracy,
    halting_inference,
    halting_loops,
    rule_grid,
)
from rdt_core.model import RecurrentDepthTransformer

SPLITS = build_splits(
    DataConfig(n_entities=24, n_relations=4, train_max_hops=2, test_max_hops=3, n_test_queries=40, n_val_queries=16)
)
REPORT_RULE = re.compile(r"kl_(?P<kl>[^_/]+)_h_(?P<h>[^_/]+)")  # as rdt_core.report parses rule names


@pytest.fixture(scope="module")
def model() -> RecurrentDepthTransformer:
    torch.manual_seed(1)
    model = RecurrentDepthTransformer(ModelConfig(d_model=16, n_heads=2, n_coda_layers=1), SPLITS.vocab)
    for block in model.core[0]:
        torch.nn.init.normal_(block.attn_out.weight, std=0.2)
        torch.nn.init.normal_(block.mlp_out.weight, std=0.2)
    return model.double().eval()  # float64: halting decisions must not flip on rounding


def confident(n_classes: int, answer: int) -> torch.Tensor:
    """Near one-hot logits (E,): relative entropy ~1e-6 on any size up to thousands of classes."""
    return 20.0 * torch.nn.functional.one_hot(torch.tensor(answer), n_classes).double()


def uniform_over(n_classes: int, support: int) -> torch.Tensor:
    """Logits (E,) uniform over the first ``support`` classes, zero probability elsewhere."""
    logits = torch.full((n_classes,), -1e4, dtype=torch.float64)
    logits[:support] = 0.0
    return logits


def test_kl_alone_stops_a_stable_flat_answer_that_kl_and_entropy_keep_running():
    n_classes = 32
    flat, on_0, on_1 = torch.zeros(n_classes, dtype=torch.float64), confident(n_classes, 0), confident(n_classes, 1)
    examples = [
        [flat, flat, flat, flat],  # stable but unsure
        [flat, on_0, on_0, on_0],  # settles, confident, at loop 2
        [on_0, on_1, on_1, on_1],  # confident from loop 1, changes its mind at loop 2
        [on_0, on_0, flat, flat],  # confident and stable at loop 2, then loses it
    ]
    logits = torch.stack([torch.stack(loops) for loops in examples], dim=1)  # (T=4, B=4, E)
    rules = [HaltingRule(kl=1e-3, entropy=None), HaltingRule(kl=1e-3, entropy=0.1), HaltingRule(kl=None, entropy=0.1)]
    loops = halting_loops(logits, rules)
    assert loops.tolist() == [
        [2, 3, 3, 2],  # KL alone: first loop that agrees with the one before
        [4, 3, 3, 2],  # and confident: the flat example runs to the cap
        [4, 2, 1, 1],  # entropy alone: the first confident loop, even loop 1
    ]


@pytest.mark.parametrize("n_classes, support", [(32, 4), (1024, 16)])  # both: relative entropy 0.4
def test_relative_entropy_means_the_same_on_any_number_of_classes(n_classes, support):
    flat = torch.zeros(n_classes, dtype=torch.float64)
    logits = torch.stack([flat, uniform_over(n_classes, support), confident(n_classes, 3)])
    logits = logits[None]  # (T=1, B=3, E): uniform, uniform over E^0.4 classes, near one-hot
    loops = halting_loops(torch.cat([logits, logits]), [HaltingRule(None, h) for h in (0.99, 0.45, 0.35)])
    assert loops.tolist() == [[2, 1, 1], [2, 1, 1], [2, 2, 1]]  # T=2: loop 2 is the cap, "never stopped"
    # In nats, the same threshold (just above ln 32) stops the uniform answer on 32 classes only.
    uniform_stops = halting_loops(torch.cat([logits, logits]), [HaltingRule(None, 3.5, "nats")])[0, 0].item() == 1
    assert uniform_stops == (math.log(n_classes) < 3.5)


def test_rule_names_parse_back_and_the_grid_has_every_pair():
    assert HaltingRule(0.01, None).name == "kl_0.01_h_off"
    assert HaltingRule(None, 0.1).name == "kl_off_h_0.1"
    assert HaltingRule(1e-4, 0.5, "nats").name == "kl_0.0001_h_0.5nats"
    grid = rule_grid([1e-3, 1e-2], [0.1, 0.5, 0.9])
    assert len(grid) == 3 * 4 - 1 and len({rule.name for rule in grid}) == len(grid)
    for rule in grid + rule_grid([1e-20], [2.0], "nats"):
        match = REPORT_RULE.fullmatch(rule.name)
        assert match is not None and "+" not in rule.name
        assert match["kl"] == ("off" if rule.kl is None else f"{rule.kl:g}".replace("+", ""))


def test_a_rule_needs_a_criterion_and_a_known_scale():
    with pytest.raises(ValueError):
        HaltingRule(kl=None, entropy=None)
    with pytest.raises(ValueError):
        HaltingRule(kl=None, entropy=0.1, entropy_scale="bits")


# Entropy thresholds around the untrained model's own (relative ~0.85, ln 24 ~ 3.2 nats), so that the
# entropy criterion decides some examples and not others.
BOTH_SCALES = rule_grid([1e-3, 1e-2, 1e-1], [0.8, 0.85, 0.9]) + [
    rule for rule in rule_grid([1e-3, 1e-2, 1e-1], [2.5, 2.7, 2.9], "nats") if rule.entropy is not None
]


@pytest.mark.parametrize("rule", BOTH_SCALES, ids=lambda rule: rule.name)
def test_dense_halting_agrees_with_the_stopping_inference_path(model, rule):
    tokens, max_loops = SPLITS.tests["id"].tokens, 8
    logits = model(tokens, max_loops)
    dense_loops = halting_loops(logits, [rule])[0]
    halted = halting_inference(model, tokens, max_loops, rule)
    assert torch.equal(halted.loops_used, dense_loops)
    dense_predictions = logits.argmax(-1)[dense_loops - 1, torch.arange(len(tokens))]
    assert torch.equal(halted.predictions, dense_predictions)
    assert halted.loops_saved == int((max_loops - dense_loops).sum())


def test_halting_rules_stop_somewhere_in_between(model):
    logits = model(SPLITS.tests["id"].tokens, 8)
    loops = halting_loops(logits, [HaltingRule(kl=1e-2, entropy=None), HaltingRule(kl=1e-12, entropy=None)])
    assert bool((loops >= 2).all()) and bool((loops <= 8).all())  # KL needs a previous loop
    assert loops[0].float().mean() < loops[1].float().mean()  # a looser threshold halts earlier
    assert 0 < halting_inference(model, SPLITS.tests["id"].tokens, 8, HaltingRule(1e-2, None)).loops_saved


@pytest.mark.parametrize(
    "loops, expected", [(0.5, 0.2), (1.0, 0.2), (1.5, 0.4), (2.0, 0.6), (2.25, 0.65), (3.0, 0.8), (3.5, 0.8)]
)
def test_fixed_budget_accuracy_interpolates_between_integer_budgets(loops, expected):
    assert fixed_budget_accuracy(torch.tensor([0.2, 0.6, 0.8]), loops) == pytest.approx(expected)


def test_equal_cost_compares_a_rule_with_a_fixed_budget_of_its_mean_cost():
    correct = torch.tensor(
        [
            [False, True, False, False],  # loop 1: accuracy 0.25
            [True, True, False, False],  # loop 2: 0.5
            [True, False, True, False],  # loop 3: 0.5
        ]
    )  # (T=3, Q=4)
    result = equal_cost(correct, torch.tensor([2, 1, 3, 1]))  # right, right, right, wrong
    assert result.acc == pytest.approx(0.75)
    assert result.mean_loops == pytest.approx(1.75)
    assert result.fixed_acc == pytest.approx(0.25 + 0.75 * (0.5 - 0.25))  # 0.4375
    assert result.gain == pytest.approx(0.75 - 0.4375)
    assert result.loops_saved_fraction == pytest.approx(1 - 1.75 / 3)
