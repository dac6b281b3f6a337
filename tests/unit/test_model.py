import pytest
import torch

from rdt_core.config import ExperimentConfig, ModelConfig
from rdt_core.data.tokens import Vocabulary
from rdt_core.model import ActivationCache, PositionPatch, RecurrentDepthTransformer, UnknownHookPoint, build_model

VOCAB = Vocabulary(n_entities=16, n_relations=3)


def randomise_core(model: RecurrentDepthTransformer) -> RecurrentDepthTransformer:
    """Fill the zero-initialised output projections, so that every loop changes the state."""
    for group in model.core:
        for block in group:
            torch.nn.init.normal_(block.attn_out.weight, std=0.3)
            torch.nn.init.normal_(block.mlp_out.weight, std=0.3)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> RecurrentDepthTransformer:
    torch.manual_seed(0)
    config = ModelConfig(d_model=16, n_heads=2, n_prelude_layers=1, n_core_layers=1, n_coda_layers=1, max_loops=5)
    return randomise_core(RecurrentDepthTransformer(config, VOCAB))


def queries(length: int = 4) -> torch.Tensor:
    heads = torch.tensor([0, 5, 9])
    relations = torch.tensor([[0, 1], [2, 2], [1, 0]])
    return VOCAB.encode(heads, relations, length=length)


def test_per_loop_logits_have_one_entry_per_loop_and_depend_on_it(model):
    logits = model(queries(), n_loops=5)
    assert logits.shape == (5, 3, VOCAB.n_entities)
    assert not torch.allclose(logits[0], logits[1])
    assert not torch.allclose(logits[3], logits[4])


def test_prefix_of_a_longer_unroll_equals_a_shorter_unroll(model):
    assert torch.allclose(model(queries(), 5)[:3], model(queries(), 3), atol=1e-5)


def test_last_loop_only_readout_matches_every_loop_readout(model):
    assert torch.allclose(model(queries(), 4, every_loop=False)[0], model(queries(), 4)[-1], atol=1e-5)


def test_core_output_projections_start_at_zero():
    fresh = RecurrentDepthTransformer(ModelConfig(d_model=16, n_heads=2), VOCAB)
    for block in fresh.core[0]:
        assert block.attn_out.weight.abs().sum() == 0 and block.mlp_out.weight.abs().sum() == 0


def test_padding_does_not_change_the_answer(model):
    assert torch.allclose(model(queries(3), 3), model(queries(7), 3), atol=1e-5)


def test_positions_do_not_cap_query_length(model):
    heads, relations = torch.tensor([1]), torch.randint(0, 3, (1, 40))
    assert model(VOCAB.encode(heads, relations, 41), 2).shape == (2, 1, 16)


def test_hook_points_carry_the_loop_index_and_a_cached_state_patched_back_changes_nothing(model):
    cache = ActivationCache()
    clean = model(queries(), 3, hook=cache)
    assert {f"loop.{t}.resid_post" for t in (1, 2, 3)} <= set(cache.activations)
    assert not torch.allclose(cache["loop.1.resid_post"], cache["loop.2.resid_post"])
    patched = model(queries(), 3, hook=PositionPatch("loop.2.resid_post", 2, cache["loop.2.resid_post"]))
    assert torch.equal(clean, patched)


@pytest.mark.parametrize("architecture", ["looped", "vanilla", "unshared"])
@pytest.mark.parametrize("every_loop", [True, False])
def test_the_model_lists_the_hook_points_its_forward_passes_in_order(architecture, every_loop):
    model = baseline(architecture, n_prelude_layers=1, n_coda_layers=2)
    passed: list[str] = []
    model(queries(), 5, every_loop=every_loop, hook=lambda name, x: passed.append(name))
    assert model.hook_names(5, every_loop) == passed
    assert "loop.5.resid_post" in passed and ("coda.1.1" in passed) == every_loop


def test_a_hook_naming_an_unknown_point_is_refused_with_the_known_ones(model):
    source = torch.zeros(len(queries()), 5, 16)
    for hook in (PositionPatch("loop.2.resid_pots", 2, source), ActivationCache(points=["loop.4.resid_post"])):
        with pytest.raises(UnknownHookPoint, match=r"unknown hook point 'loop\.(2\.resid_pots|4\.resid_post)'.*loop\.3\.resid_post"):
            model(queries(), 3, hook=hook)
    named = ActivationCache(points=["loop.3.resid_post"])
    model(queries(), 3, hook=named)
    assert list(named.activations) == ["loop.3.resid_post"]


def test_hook_can_replace_an_activation(model):
    zeroed = model(queries(), 3, hook=lambda name, x: torch.zeros_like(x) if name == "loop.3.resid_post" else None)
    assert not torch.allclose(zeroed[-1], model(queries(), 3)[-1])


def test_truncated_backprop_reaches_only_the_last_loops():
    torch.manual_seed(0)
    model = randomise_core(RecurrentDepthTransformer(ModelConfig(d_model=16, n_heads=2, n_prelude_layers=1), VOCAB)).train()
    model(queries(), 4, every_loop=False, backprop_loops=2).sum().backward()
    # The prelude feeds the injection of every loop, so it still gets gradient; the detach cuts the state path.
    assert model.prelude[0].qkv.weight.grad is not None
    full = RecurrentDepthTransformer(ModelConfig(d_model=16, n_heads=2, n_prelude_layers=1), VOCAB)
    full.load_state_dict(model.state_dict())
    full.train()
    full(queries(), 4, every_loop=False).sum().backward()
    assert not torch.allclose(model.core[0][0].qkv.weight.grad, full.core[0][0].qkv.weight.grad)


def test_vanilla_baseline_has_distinct_cores_and_stops_at_its_depth():
    config = ExperimentConfig.from_dict(
        {"model": {"d_model": 16, "n_heads": 2, "architecture": "vanilla", "max_loops": 6}, "train": {"train_loops": 3}}
    )
    torch.manual_seed(0)
    vanilla = randomise_core(build_model(config, VOCAB))
    looped = build_model(config.model_copy(update={"model": config.model.model_copy(update={"architecture": "looped"})}), VOCAB)
    assert len(vanilla.core) == 3 and len(looped.core) == 1
    per_core = sum(p.numel() for p in looped.core.parameters())
    assert sum(p.numel() for p in vanilla.core.parameters()) == 3 * per_core
    logits = vanilla(queries(), 6)
    assert not torch.allclose(logits[1], logits[2])
    assert torch.allclose(logits[2], logits[5])  # no computation past its depth


def baseline(architecture: str, **model_keys) -> RecurrentDepthTransformer:
    config = ExperimentConfig.from_dict(
        {"model": {"d_model": 16, "n_heads": 2, "max_loops": 6, "architecture": architecture, **model_keys},
         "train": {"train_loops": 3}}
    )
    torch.manual_seed(0)
    return randomise_core(build_model(config, VOCAB))


def test_vanilla_injects_the_input_once_and_unshared_before_every_core():
    for architecture, injected_loops in (("vanilla", ["loop.1.injected"]), ("unshared", [f"loop.{t}.injected" for t in (1, 2, 3)])):
        cache = ActivationCache(keep=lambda name: name.endswith("injected"))
        baseline(architecture)(queries(), 3, hook=cache)
        assert sorted(cache.activations) == injected_loops
    same_weights = baseline("vanilla")
    same_weights.load_state_dict(baseline("unshared").state_dict())
    assert not torch.allclose(same_weights(queries(), 3)[-1], baseline("unshared")(queries(), 3)[-1])


def test_normalised_injection_bounds_the_state_entering_every_loop():
    cache = ActivationCache(keep=lambda name: name.startswith("loop."))
    model = baseline("looped", injection="norm")
    model(queries(), 6, hook=cache)
    for loop in range(1, 7):
        carried = cache[f"loop.{loop}.resid_pre"] - cache[f"loop.{loop}.injected"]  # RMS-normalised state
        if loop > 1:
            assert torch.allclose(carried.pow(2).mean(-1).sqrt(), torch.ones(()), atol=1e-3)


def test_the_concat_adapter_starts_as_additive_injection():
    added, concatenated = baseline("looped", injection="add"), baseline("looped", injection="concat")
    concatenated.load_state_dict({**added.state_dict(), "adapter.weight": concatenated.adapter.weight}, strict=True)
    assert torch.allclose(added(queries(), 6), concatenated(queries(), 6), atol=1e-5)
