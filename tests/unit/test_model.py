import pytest
import torch

from rdt_core.config import ModelConfig
from rdt_core.data.tokens import Vocabulary
from rdt_core.model import RecurrentDepthTransformer

VOCAB = Vocabulary(n_entities=16, n_relations=3)


@pytest.fixture(scope="module")
def model() -> RecurrentDepthTransformer:
    """A tiny model whose zero-initialised projections are randomised, so that loops do something."""
    torch.manual_seed(0)
    model = RecurrentDepthTransformer(
        ModelConfig(d_model=16, n_heads=2, n_prelude_layers=1, n_core_layers=1, n_coda_layers=1, max_loops=5),
        VOCAB,
    )
    for block in model.core:
        torch.nn.init.normal_(block.attn_out.weight, std=0.3)
        torch.nn.init.normal_(block.mlp_out.weight, std=0.3)
    return model.eval()


def queries() -> torch.Tensor:
    heads = torch.tensor([0, 5, 9])
    relations = torch.tensor([[0, 1], [2, 2], [1, 0]])
    return VOCAB.encode(heads, relations, length=4)


def test_per_loop_logits_have_one_entry_per_loop(model):
    logits = model(queries(), n_loops=5)
    assert logits.shape == (5, 3, VOCAB.n_entities)


def test_per_loop_logits_depend_on_the_loop(model):
    logits = model(queries(), n_loops=5)
    assert not torch.allclose(logits[0], logits[1])
    assert not torch.allclose(logits[3], logits[4])


def test_prefix_of_a_longer_unroll_equals_a_shorter_unroll(model):
    assert torch.allclose(model(queries(), 5)[:3], model(queries(), 3), atol=1e-5)


def test_last_loop_only_readout_matches_every_loop_readout(model):
    assert torch.allclose(model(queries(), 4, every_loop=False)[0], model(queries(), 4)[-1], atol=1e-5)


def test_core_output_projections_start_at_zero():
    fresh = RecurrentDepthTransformer(ModelConfig(d_model=16, n_heads=2), VOCAB)
    for block in fresh.core:
        assert block.attn_out.weight.abs().sum() == 0 and block.mlp_out.weight.abs().sum() == 0


def test_padding_does_not_change_the_answer(model):
    heads, relations = torch.tensor([4]), torch.tensor([[1, 2]])
    short = model(VOCAB.encode(heads, relations, length=3), 3)
    padded = model(VOCAB.encode(heads, relations, length=6), 3)
    assert torch.allclose(short, padded, atol=1e-5)
