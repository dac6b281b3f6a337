"""Halting, logit lens and activation patching on a tiny model with randomised loops."""

import pytest
import torch

from rdt_core.config import DataConfig, ModelConfig
from rdt_core.data import build_splits
from rdt_core.halting import HaltingRule, halting_inference, halting_loops, rule_grid
from rdt_core.lens import lens_metrics, target_ranks
from rdt_core.model import RecurrentDepthTransformer
from rdt_core.patching import corrupt_first_relation, patching_grid

SPLITS = build_splits(DataConfig(n_entities=24, n_relations=4, train_max_hops=2, test_max_hops=3, n_test_queries=40))


@pytest.fixture(scope="module")
def model() -> RecurrentDepthTransformer:
    torch.manual_seed(1)
    model = RecurrentDepthTransformer(ModelConfig(d_model=16, n_heads=2, n_coda_layers=1), SPLITS.vocab)
    for block in model.core[0]:
        torch.nn.init.normal_(block.attn_out.weight, std=0.2)
        torch.nn.init.normal_(block.mlp_out.weight, std=0.2)
    return model.double().eval()  # float64: halting decisions must not flip on rounding


@pytest.mark.parametrize("rule", rule_grid([1e-3, 1e-2, 1e-1], [0.5, 2.0, 3.0]), ids=lambda rule: rule.name)
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


def test_a_rule_needs_a_criterion():
    with pytest.raises(ValueError):
        HaltingRule(kl=None, entropy=None)


def test_logit_lens_at_the_last_loop_is_the_models_output(model):
    queries = SPLITS.tests["id"]
    ranks = target_ranks(model, queries, 5)  # (5, Q, K)
    output = model(queries.tokens, 5)[-1]
    answer_is_top = output.argmax(-1) == queries.answers
    assert torch.equal(ranks[-1, :, -1] == 0, answer_is_top)
    two_hop = queries.hops == 2
    assert bool((ranks[:, two_hop, 1] == -1).all())  # 2-hop queries have one bridge: column 1 unused
    assert bool((ranks[:, ~two_hop, 1] >= 0).all())


def test_lens_metrics_name_every_bridge_and_the_answer():
    ranks = torch.zeros(4, 3, 3, dtype=torch.long)
    metrics = lens_metrics("id", 3, ranks)
    assert metrics["lens/id/hops_3/bridge_1/resolved_loop"] == 1.0
    assert metrics["lens/id/hops_3/answer/top1/loop_04"] == 1.0
    assert "lens/id/hops_3/bridge_2/resolved_loop" in metrics


def test_corruption_changes_the_first_relation_and_tracks_the_new_answer():
    queries = SPLITS.tests["id"]
    tokens, changed = corrupt_first_relation(queries, SPLITS.vocab, SPLITS.graph.tails, torch.Generator().manual_seed(0))
    differs = (tokens != queries.tokens).sum(1)
    assert bool((differs == 1).all())
    assert changed.float().mean() > 0.5


def test_patching_grid_shape_and_full_recovery_at_the_last_loop_last_position(model):
    queries = SPLITS.tests["id"].with_hops(2)
    tokens, changed = corrupt_first_relation(queries, SPLITS.vocab, SPLITS.graph.tails, torch.Generator().manual_seed(0))
    keep = changed.nonzero().squeeze(1)
    recovery = patching_grid(model, queries.subset(keep), tokens[keep], n_loops=4)
    assert recovery.shape == (4, queries.tokens.shape[1])
    # The head is not corrupted: patching its position restores nothing.
    head_position = queries.tokens.shape[1] - 3
    assert recovery[:, head_position].abs().max().item() < 1e-6


def test_patching_the_read_out_state_recovers_everything():
    """Without a coda, the answer is read from the last position's state after the last loop alone."""
    torch.manual_seed(2)
    no_coda = RecurrentDepthTransformer(ModelConfig(d_model=16, n_heads=2), SPLITS.vocab)
    for block in no_coda.core[0]:
        torch.nn.init.normal_(block.attn_out.weight, std=0.2)
    no_coda = no_coda.double().eval()
    queries = SPLITS.tests["id"].with_hops(2)
    tokens, changed = corrupt_first_relation(queries, SPLITS.vocab, SPLITS.graph.tails, torch.Generator().manual_seed(0))
    keep = changed.nonzero().squeeze(1)
    recovery = patching_grid(no_coda, queries.subset(keep), tokens[keep], n_loops=3)
    assert recovery[-1, -1].item() == pytest.approx(1.0, abs=1e-9)


def test_lens_reads_each_bridge_at_its_relations_position(model):
    queries = SPLITS.tests["id"].with_hops(3)
    ranks = target_ranks(model, queries, 3)
    cache = {}
    model(queries.tokens, 3, hook=lambda name, x: cache.__setitem__(name, x) if name == "loop.2.resid_post" else None)
    logits = model.readout(cache["loop.2.resid_post"], model.attention_mask(queries.tokens), all_positions=True)
    length = queries.tokens.shape[1]
    for column, position in ((0, length - 3), (1, length - 2)):  # bridge 1 at r1, bridge 2 at r2
        at_position = logits[torch.arange(len(queries)), position]  # (Q, E)
        target = queries.bridges[:, column]
        expected = (at_position > at_position.gather(1, target[:, None])).sum(1)
        assert torch.equal(ranks[1, :, column], expected)
