"""Activation patching on tiny seeded models: grids, trivial cells, the random null and the metric names."""

import pytest
import torch

from rdt_core.config import DataConfig, ModelConfig
from rdt_core.data import build_splits
from rdt_core.model import RecurrentDepthTransformer
from rdt_core.model.hooks import ActivationCache
from rdt_core.patching import (
    PatchingGrid,
    corrupt_first_relation,
    patching_grid,
    patching_metrics,
    random_null_model,
    trivial_cells,
)

DATA = DataConfig(n_entities=24, n_relations=4, train_max_hops=2, test_max_hops=3, n_test_queries=40, n_val_queries=16)
SPLITS = build_splits(DATA)
N_LOOPS = 4


def tiny_model(n_coda_layers: int, seed: int) -> RecurrentDepthTransformer:
    """A float64 model whose core outputs are random, not zero: a zero core mixes nothing across positions."""
    torch.manual_seed(seed)
    model = RecurrentDepthTransformer(ModelConfig(d_model=16, n_heads=2, n_coda_layers=n_coda_layers), SPLITS.vocab)
    for block in model.core[0]:
        torch.nn.init.normal_(block.attn_out.weight, std=0.2)
        torch.nn.init.normal_(block.mlp_out.weight, std=0.2)
    return model.double().eval()


@pytest.fixture(scope="module")
def coda_model() -> RecurrentDepthTransformer:
    return tiny_model(n_coda_layers=1, seed=1)


@pytest.fixture(scope="module")
def no_coda_model() -> RecurrentDepthTransformer:
    return tiny_model(n_coda_layers=0, seed=2)


def changed_pairs(hops: int):
    """Clean queries of one hop count whose answer the corruption changes, their corrupted tokens, and the
    corrupted position."""
    queries = SPLITS.tests["id"].with_hops(hops)
    tokens, changed, position = corrupt_first_relation(
        queries, SPLITS.vocab, SPLITS.graph.tails, torch.Generator().manual_seed(0)
    )
    keep = changed.nonzero().squeeze(1)
    return queries.subset(keep), tokens[keep], position


def test_corruption_changes_the_first_relation_and_tracks_the_new_answer():
    queries = SPLITS.tests["id"].with_hops(3)
    tokens, changed, position = corrupt_first_relation(
        queries, SPLITS.vocab, SPLITS.graph.tails, torch.Generator().manual_seed(0)
    )
    assert position == queries.tokens.shape[1] - 3
    differs = tokens != queries.tokens  # (Q, T)
    assert bool(differs[:, position].all()) and int(differs.sum()) == len(queries)
    for row in range(len(queries)):  # walk the graph by hand along the corrupted relations
        answer = int(queries.heads[row])
        for token in tokens[row, position:].tolist():
            answer = int(SPLITS.graph.tails[token - SPLITS.vocab.n_entities, answer])
        assert bool(changed[row]) == (answer != int(queries.answers[row]))
    assert changed.float().mean() > 0.5


def test_corruption_needs_one_hop_count():
    with pytest.raises(ValueError, match="one hop count"):
        corrupt_first_relation(SPLITS.tests["id"], SPLITS.vocab, SPLITS.graph.tails, torch.Generator())


@pytest.mark.parametrize("point", ["state", "injected"])
def test_patching_grid_shape_and_no_recovery_left_of_the_corrupted_token(coda_model, point):
    clean, corrupted, position = changed_pairs(hops=2)
    grid = patching_grid(coda_model, clean, corrupted, N_LOOPS, point)
    assert grid.recovery.shape == (N_LOOPS, clean.tokens.shape[1])
    assert abs(grid.gap) > 1e-3
    # Causal attention: left of the corrupted relation both runs are identical, so patching there is a no-op.
    assert grid.recovery[:, :position].abs().max().item() < 1e-9
    assert grid.recovery[:, position:].abs().max().item() > 1e-3


def test_patching_the_read_out_state_recovers_everything_and_is_marked_trivial(no_coda_model):
    """Without a coda, the answer is read from the last position's state after the last loop alone."""
    clean, corrupted, position = changed_pairs(hops=2)
    grid = patching_grid(no_coda_model, clean, corrupted, N_LOOPS, "state")
    assert grid.recovery[-1, -1].item() == pytest.approx(1.0, abs=1e-9)
    assert grid.recovery[-1, :-1].abs().max().item() < 1e-9  # the readout never sees those positions
    trivial = trivial_cells(no_coda_model, position, clean.tokens.shape[1], N_LOOPS, "state")
    expected = torch.zeros_like(trivial)
    expected[:, :position] = True
    expected[-1] = True
    assert torch.equal(trivial, expected)


@pytest.mark.parametrize("point", ["state", "injected"])
def test_with_a_prelude_and_a_coda_only_the_positions_left_of_the_corruption_are_trivial(point):
    config = ModelConfig(d_model=16, n_heads=2, n_prelude_layers=1, n_coda_layers=1)
    model = RecurrentDepthTransformer(config, SPLITS.vocab)
    trivial = trivial_cells(model, corrupted_position=2, length=5, n_loops=N_LOOPS, point=point)
    expected = torch.zeros(N_LOOPS, 5, dtype=torch.bool)
    expected[:, :2] = True
    assert torch.equal(trivial, expected)


def test_without_a_prelude_the_injected_input_differs_at_the_corrupted_position_alone(no_coda_model):
    """The injected input is then the token embedding: patching it anywhere else is a no-op."""
    clean, corrupted, position = changed_pairs(hops=2)
    length = clean.tokens.shape[1]
    grid = patching_grid(no_coda_model, clean, corrupted, N_LOOPS, "injected")
    elsewhere = torch.cat([grid.recovery[:, :position], grid.recovery[:, position + 1 :]], dim=1)
    assert elsewhere.abs().max().item() < 1e-9
    assert grid.recovery[:, position].abs().min().item() > 1e-3
    trivial = trivial_cells(no_coda_model, position, length, N_LOOPS, "injected")
    assert torch.equal(~trivial, (torch.arange(length) == position).expand(N_LOOPS, -1))


def test_a_coda_reads_other_positions_so_the_last_cell_is_evidence(coda_model):
    clean, corrupted, _ = changed_pairs(hops=2)
    grid = patching_grid(coda_model, clean, corrupted, N_LOOPS, "state")
    assert abs(grid.recovery[-1, -1].item() - 1.0) > 1e-3


def test_patching_the_injected_input_at_the_corrupted_position_in_every_loop_recovers_the_clean_run(no_coda_model):
    """Without a prelude the corrupted token reaches the core only through the injected input, re-added
    every loop: patching it in every loop gives back the clean run, patching one loop does not."""
    clean, corrupted, position = changed_pairs(hops=2)
    cache = ActivationCache(keep=lambda name: name.endswith(".injected"))
    clean_logits = no_coda_model(clean.tokens, N_LOOPS, hook=cache)  # (N_LOOPS, Q, E)

    def patch_every_loop(name: str, tensor: torch.Tensor) -> torch.Tensor | None:
        if not name.endswith(".injected"):
            return None
        patched = tensor.clone()
        patched[:, position] = cache[name][:, position]
        return patched

    assert torch.allclose(no_coda_model(corrupted, N_LOOPS, hook=patch_every_loop), clean_logits, atol=1e-9)
    grid = patching_grid(no_coda_model, clean, corrupted, N_LOOPS, "injected")
    assert grid.recovery[:, position].max().item() < 1 - 1e-3


def test_the_random_null_is_a_fresh_model_of_the_same_shape(coda_model):
    before = {name: weight.clone() for name, weight in coda_model.state_dict().items()}
    null = random_null_model(coda_model, seed=0)
    assert not null.training
    for name, weight in null.named_parameters():
        trained = dict(coda_model.named_parameters())[name]
        assert weight.shape == trained.shape and weight.dtype == trained.dtype and weight.device == trained.device
        if weight.dim() > 1:  # norm gains are reset to ones, which a trained model may not have left
            assert not torch.equal(weight, trained), name
    assert all(torch.equal(before[name], weight) for name, weight in coda_model.state_dict().items())
    again, other = random_null_model(coda_model, seed=0), random_null_model(coda_model, seed=1)
    assert torch.equal(again.embed.weight, null.embed.weight)
    assert not torch.equal(other.embed.weight, null.embed.weight)


def test_the_null_has_a_gap_where_a_zero_initialised_core_has_none():
    """The model's own init (zero core outputs) mixes nothing across positions: the corruption never reaches
    the last position, so no gap and no null. The random null's core outputs are not zero."""
    torch.manual_seed(3)
    fresh = RecurrentDepthTransformer(ModelConfig(d_model=16, n_heads=2), SPLITS.vocab).double().eval()
    clean, corrupted, _ = changed_pairs(hops=2)
    assert patching_grid(fresh, clean, corrupted, N_LOOPS, "state").gap == 0.0
    null = random_null_model(fresh, seed=0)
    for block in null.core[0]:
        assert block.attn_out.weight.abs().min() > 0 and block.mlp_out.weight.abs().min() > 0
    assert abs(patching_grid(null, clean, corrupted, N_LOOPS, "state").gap) > 1e-3


def test_patching_metrics_name_every_non_trivial_cell_and_the_gap():
    recovery = torch.arange(12, dtype=torch.float).view(3, 4)
    trivial = torch.zeros(3, 4, dtype=torch.bool)
    trivial[:, :1] = True
    trivial[-1] = True
    metrics = patching_metrics("state", 2, PatchingGrid(recovery, gap=0.5), trivial, prefix="patching_null")
    assert metrics.pop("patching_null/state/hops_2/gap") == 0.5
    assert metrics == {
        f"patching_null/state/hops_2/loop_{loop:02d}/pos_{position}": float(recovery[loop - 1, position])
        for loop in (1, 2)
        for position in (1, 2, 3)
    }


def test_an_unknown_point_fails_loudly(coda_model):
    clean, corrupted, position = changed_pairs(hops=2)
    with pytest.raises(ValueError, match="unknown patching point"):
        patching_grid(coda_model, clean, corrupted, N_LOOPS, "resid_pre")
    with pytest.raises(ValueError, match="unknown patching point"):
        trivial_cells(coda_model, position, clean.tokens.shape[1], N_LOOPS, "resid_pre")


def test_the_vanilla_baseline_has_injected_cells_in_the_first_loop_only():
    """The vanilla baseline injects the input before loop 1 only: later injected cells do not exist."""
    torch.manual_seed(4)
    config = ModelConfig(d_model=16, n_heads=2, architecture="vanilla")
    vanilla = RecurrentDepthTransformer(config, SPLITS.vocab, n_core_groups=N_LOOPS).double().eval()
    clean, corrupted, position = changed_pairs(hops=2)
    grid = patching_grid(vanilla, clean, corrupted, N_LOOPS, "injected")
    assert bool((grid.recovery[1:] == 0).all())
    trivial = trivial_cells(vanilla, position, clean.tokens.shape[1], N_LOOPS, "injected")
    assert bool(trivial[1:].all()) and not bool(trivial[0, position])
