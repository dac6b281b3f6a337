"""The paper's model as options of ours (``model.block: gpt2`` and its companions), held to the reference
the paper's code builds on: a loop of transformers' own ``GPT2Block``, weights copied in, logit for logit.

transformers is a test-only dependency (the ``dev`` extra), never imported by rdt_core.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from rdt_core.config import ConfigError, ExperimentConfig
from rdt_core.data.tokens import Vocabulary
from rdt_core.model.transformer import RecurrentDepthTransformer, build_model

PAPER_BLOCK = {"block": "gpt2", "readout": "vocabulary", "zero_init_output": False, "d_model": 32, "n_heads": 4,
               "n_core_layers": 2, "max_loops": 4, "n_positions": 8}


def gpt2_blocks(model: RecurrentDepthTransformer) -> list[GPT2Block]:
    """transformers' GPT-2 blocks holding our looped core's weights (its Conv1D stores them transposed)."""
    ours = model.config
    config = GPT2Config(n_embd=ours.d_model, n_head=ours.n_heads, n_inner=ours.mlp_ratio * ours.d_model,
                        n_layer=ours.n_core_layers, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    config._attn_implementation = "eager"  # the plain softmax(QK^T / sqrt(d)) path, with our mask as given
    blocks = []
    for index, layer in enumerate(model.core[0]):
        block = GPT2Block(config, layer_idx=index).eval()
        with torch.no_grad():
            for theirs, mine in ((block.ln_1, layer.attn_norm), (block.ln_2, layer.mlp_norm)):
                theirs.weight.copy_(mine.weight)
                theirs.bias.copy_(mine.bias)
            for theirs, mine in ((block.attn.c_attn, layer.qkv), (block.attn.c_proj, layer.attn_out),
                                 (block.mlp.c_fc, layer.mlp_in), (block.mlp.c_proj, layer.mlp_out)):
                theirs.weight.copy_(mine.weight.T)
                theirs.bias.copy_(mine.bias)
        blocks.append(block)
    return blocks


@torch.no_grad()
def reference_logits(model: RecurrentDepthTransformer, tokens: torch.Tensor, n_loops: int) -> torch.Tensor:
    """The paper's forward: token (+ learned position) embeddings, the blocks looped ``n_loops`` times
    (the input added before each loop where injection is on), the final LayerNorm and the tied head over
    the whole vocabulary at the last position, after every loop: -> (n_loops, B, V)."""
    blocks = gpt2_blocks(model)
    length = tokens.shape[1]
    embedded = model.embed(tokens)  # (B, T, D)
    if model.position_embed is not None:
        embedded = embedded + model.position_embed.weight[:length]
    causal = torch.full((length, length), torch.finfo(torch.float32).min).triu(1)[None, None]  # (1, 1, T, T)
    hidden, logits = torch.zeros_like(embedded), []
    for loop in range(n_loops):
        hidden = hidden + embedded if (loop == 0 or model.config.injection == "add") else hidden
        for block in blocks:
            out = block(hidden, attention_mask=causal)
            hidden = out[0] if isinstance(out, tuple) else out
        logits.append(model.final_norm(hidden[:, -1]) @ model.embed.weight.T)
    return torch.stack(logits)


@pytest.mark.parametrize("positions", ["learned", "none"])
@pytest.mark.parametrize("injection", ["none", "add"])
def test_the_paper_block_gives_the_logits_of_a_loop_of_transformers_gpt2_blocks(positions, injection):
    torch.manual_seed(0)
    config = ExperimentConfig.from_dict({"model": {**PAPER_BLOCK, "positions": positions, "injection": injection},
                                         "data": {"n_entities": 24, "n_relations": 4}})
    vocab = Vocabulary(config.data.n_entities, config.data.n_relations)
    model = build_model(config, vocab).eval()
    with torch.no_grad():  # weights far from GPT-2's small init, where a wrong GELU or norm would show
        for parameter in model.parameters():
            parameter.normal_(std=0.3)
    tokens = torch.randint(vocab.size - 1, (5, 4))  # no padding: the paper's items are of one length
    ours = model(tokens, n_loops=4)  # (4, B, V)
    assert ours.shape == (4, 5, vocab.size)
    torch.testing.assert_close(ours, reference_logits(model, tokens, 4), rtol=1e-5, atol=1e-5)


def test_the_default_model_is_untouched_by_the_paper_options():
    """rdt's block has no bias and RMS norms; the GPT-2 one has biases and LayerNorms, initialised as the
    paper's model starts: plain embeddings N(0, 1), and every block weight as transformers' GPT2Block
    built on its own draws it (Conv1D N(0, 0.02), no scaled output projections)."""
    vocab = Vocabulary(24, 4)
    rdt = build_model(ExperimentConfig.from_dict({"model": {"d_model": 32}}), vocab)
    gpt2 = build_model(ExperimentConfig.from_dict({"model": {**PAPER_BLOCK, "zero_init_output": True}}), vocab)
    assert all(layer.bias is None for name, layer in rdt.named_modules() if isinstance(layer, torch.nn.Linear))
    assert isinstance(rdt.final_norm, torch.nn.RMSNorm) and isinstance(gpt2.final_norm, torch.nn.LayerNorm)
    assert gpt2.embed.weight.std().item() == pytest.approx(1.0, rel=0.2)
    assert not gpt2.core[0][0].attn_out.weight.any()  # zero-initialised output projection, as asked
    unzeroed = build_model(ExperimentConfig.from_dict({"model": {**PAPER_BLOCK, "zero_init_output": False}}), vocab)
    sizes = unzeroed.config
    reference = GPT2Block(GPT2Config(n_embd=sizes.d_model, n_head=sizes.n_heads, n_layer=sizes.n_core_layers,
                                     n_inner=sizes.mlp_ratio * sizes.d_model))  # built on its own, as the paper does
    for ours, theirs in ((unzeroed.core[0][0].qkv, reference.attn.c_attn), (unzeroed.core[0][0].mlp_out, reference.mlp.c_proj)):
        assert ours.weight.std().item() == pytest.approx(theirs.weight.std().item(), rel=0.25)
        assert not ours.bias.any() and not theirs.bias.any()


@pytest.mark.parametrize(
    "model, train, key",
    [({"positions": "learned", "n_positions": 3}, {}, "(top level)"),  # 4-token queries (test_max_hops 3)
     ({"block": "gpt2"}, {"replicas": 2}, "(top level)"),
     ({"dropout": 1.0}, {}, "model.dropout")],
)
def test_paper_options_that_cannot_hold_are_refused(model, train, key):
    with pytest.raises(ConfigError, match=key.replace("(", r"\(").replace(")", r"\)")):
        ExperimentConfig.from_dict({"model": model, "train": train, "data": {"test_max_hops": 3}})
