"""Logit lens: a hand-built model whose loops are known pins down what each reading sees; a tiny real
model checks the readings against its own forward pass."""

from dataclasses import replace

import pytest
import torch

from rdt_core.config import DataConfig, ModelConfig
from rdt_core.data import KnowledgeGraph, QuerySet, Vocabulary, build_splits
from rdt_core.data.queries import make_query_set
from rdt_core.lens import answer_position_ranks, lens_metrics, prefix_lens_metrics, prefix_ranks
from rdt_core.model import RecurrentDepthTransformer
from rdt_core.model.hooks import run_hook

SPLITS = build_splits(
    DataConfig(n_entities=24, n_relations=4, inferred_ratio=2.0, train_max_hops=2, test_max_hops=3, n_test_queries=40)
)
# Hand-built queries over one relation that steps entity e to e + 1: every entity on a path is distinct,
# so a one-hot state names exactly one target.
STUB_VOCAB = Vocabulary(n_entities=12, n_relations=1)
STUB_GRAPH = KnowledgeGraph(tails=((torch.arange(12) + 1) % 12)[None])  # (1, 12)
STUB_QUERIES = QuerySet.concat(
    [
        make_query_set(STUB_GRAPH, STUB_VOCAB, torch.tensor([head]), torch.zeros(1, hops, dtype=torch.long), 4)
        for head, hops in ((0, 3), (4, 4), (9, 2))  # bridges 1, 2 -> 3; bridges 5, 6, 7 -> 8; bridge 10 -> 11
    ]
)


class OneHopPerLoop(torch.nn.Module):
    """A stand-in for the model whose state is a one-hot entity per position, read out as is.

    After loop t the last position holds bridge t (the answer from loop ``hops`` on): one hop per loop
    where the answer is read. Relation j's position holds bridge j from loop 1 on, as if every prefix
    query were answered at once. Rows are the rows of ``queries``.
    """

    def __init__(self, queries: QuerySet, n_entities: int):
        super().__init__()
        self.targets = torch.cat([queries.bridges, queries.answers[:, None]], dim=1)  # (Q, K)
        self.hops = queries.hops  # (Q,)
        self.n_entities = n_entities

    def forward(self, tokens, n_loops, every_loop=True, hook=None):
        n_queries, length = tokens.shape
        rows = torch.arange(n_queries)
        state = torch.zeros(n_queries, length, self.n_entities)  # (Q, T, E)
        for j in range(1, self.targets.shape[1]):
            has = self.hops > j  # queries with a bridge j
            state[rows[has], (length - self.hops + j - 1)[has], self.targets[has, j - 1]] = 1.0
        logits_by_loop = []
        for loop in range(1, n_loops + 1):
            column = torch.where(self.hops > loop, loop - 1, self.targets.shape[1] - 1)  # (Q,)
            state = state.clone()
            state[:, -1] = 0.0
            state[rows, -1, self.targets[rows, column]] = 1.0
            state = run_hook(hook, f"loop.{loop}.resid_post", state)
            if every_loop or loop == n_loops:
                logits_by_loop.append(self.readout(state, self.attention_mask(tokens)))
        return torch.stack(logits_by_loop)

    def attention_mask(self, tokens):
        return torch.ones(tokens.shape[0], 1, tokens.shape[1], tokens.shape[1], dtype=torch.bool)

    def readout(self, state, attn_mask, all_positions=False):
        return state if all_positions else state[:, -1]


@pytest.fixture(scope="module")
def model() -> RecurrentDepthTransformer:
    torch.manual_seed(1)
    model = RecurrentDepthTransformer(ModelConfig(d_model=16, n_heads=2, n_coda_layers=1), SPLITS.vocab)
    for block in model.core[0]:
        torch.nn.init.normal_(block.attn_out.weight, std=0.2)
        torch.nn.init.normal_(block.mlp_out.weight, std=0.2)
    return model.double().eval()  # float64: ranks must not flip on rounding


def test_answer_position_lens_resolves_bridge_j_at_loop_j_where_the_prefix_lens_sees_loop_1():
    stub = OneHopPerLoop(STUB_QUERIES, STUB_VOCAB.n_entities)
    ranks = answer_position_ranks(stub, STUB_QUERIES, 5)  # (5, Q, K)
    loops = torch.arange(1, 6)
    for query, hops in enumerate(STUB_QUERIES.hops.tolist()):
        for j in range(1, hops):
            assert torch.equal(ranks[:, query, j - 1] == 0, loops == j)
        assert torch.equal(ranks[:, query, -1] == 0, loops >= hops)
        assert bool((ranks[:, query, hops - 1 : -1] == -1).all())  # no bridge j >= hops

    prefix = prefix_ranks(stub, STUB_QUERIES, 5)
    for query, hops in enumerate(STUB_QUERIES.hops.tolist()):
        assert bool((prefix[:, query, : hops - 1] == 0).all())  # every prefix answered after loop 1
    assert torch.equal(prefix[..., -1], ranks[..., -1])  # the answer is read at the last position in both

    four_hop = STUB_QUERIES.hops == 4
    metrics = lens_metrics("id", 4, ranks[:, four_hop])
    prefix_metrics = prefix_lens_metrics("id", 4, prefix[:, four_hop])
    for j in (1, 2, 3):
        assert metrics[f"lens/id/hops_4/bridge_{j}/resolved_loop"] == j
        assert prefix_metrics[f"lens_prefix/id/hops_4/prefix_{j}/resolved_loop"] == 1
    assert metrics["lens/id/hops_4/answer/resolved_loop"] == 4
    assert metrics["lens/id/hops_4/bridge_2/top1/loop_03"] == 0.0


def test_answer_lens_at_the_last_loop_is_the_models_output(model):
    queries = SPLITS.tests["id"]
    ranks = answer_position_ranks(model, queries, 5)  # (5, Q, K)
    output = model(queries.tokens, 5)[-1]  # (Q, E)
    assert torch.equal(ranks[-1, :, -1] == 0, output.argmax(-1) == queries.answers)
    two_hop = queries.hops == 2
    assert bool((ranks[:, two_hop, 1] == -1).all())  # 2-hop queries have one bridge: column 1 unused
    assert bool((ranks[:, ~two_hop, 1] >= 0).all())


def test_answer_position_lens_reads_every_bridge_at_the_last_position(model):
    queries = SPLITS.tests["id"].with_hops(3)
    ranks = answer_position_ranks(model, queries, 3)
    cache = {}
    model(queries.tokens, 3, hook=lambda name, x: cache.__setitem__(name, x) if name == "loop.2.resid_post" else None)
    last = model.readout(cache["loop.2.resid_post"], model.attention_mask(queries.tokens))  # (Q, E)
    for column in (0, 1):
        target = queries.bridges[:, column]
        expected = (last > last.gather(1, target[:, None])).sum(1)
        assert torch.equal(ranks[1, :, column], expected)


def test_prefix_lens_reads_each_bridge_at_its_relations_position(model):
    queries = SPLITS.tests["id"].with_hops(3)
    ranks = prefix_ranks(model, queries, 3)
    cache = {}
    model(queries.tokens, 3, hook=lambda name, x: cache.__setitem__(name, x) if name == "loop.2.resid_post" else None)
    logits = model.readout(cache["loop.2.resid_post"], model.attention_mask(queries.tokens), all_positions=True)
    length = queries.tokens.shape[1]
    for column, position in ((0, length - 3), (1, length - 2)):  # bridge 1 at r1, bridge 2 at r2
        at_position = logits[torch.arange(len(queries)), position]  # (Q, E)
        target = queries.bridges[:, column]
        expected = (at_position > at_position.gather(1, target[:, None])).sum(1)
        assert torch.equal(ranks[1, :, column], expected)


def test_the_prefix_lens_is_the_answer_of_the_prefix_query(model):
    """Causality: what relation j's position holds is the model's answer to (head, r1..rj)."""
    queries = SPLITS.tests["id"].with_hops(3)
    prefix = prefix_ranks(model, queries, 4)
    truncated = replace(  # (head, r1): the 1-hop prefix, whose answer is bridge 1
        queries,
        bridges=torch.full_like(queries.bridges, -1),
        answers=queries.bridges[:, 0],
        hops=torch.ones_like(queries.hops),
        tokens=queries.tokens[:, :-2],
    )
    assert torch.equal(prefix[:, :, 0], answer_position_ranks(model, truncated, 4)[:, :, -1])


def test_lens_metrics_name_every_bridge_and_the_answer():
    ranks = torch.zeros(4, 3, 3, dtype=torch.long)
    metrics = lens_metrics("id", 3, ranks)
    expected = {
        f"lens/id/hops_3/{target}/{metric}"
        for target in ("bridge_1", "bridge_2", "answer")
        for metric in ("resolved_loop", *(f"top1/loop_{loop:02d}" for loop in range(1, 5)))
    }
    assert set(metrics) == expected
    assert metrics["lens/id/hops_3/bridge_1/resolved_loop"] == 1.0
    assert metrics["lens/id/hops_3/answer/top1/loop_04"] == 1.0
    assert set(prefix_lens_metrics("id", 3, ranks)) == {
        "lens_prefix/id/hops_3/prefix_1/resolved_loop",
        "lens_prefix/id/hops_3/prefix_2/resolved_loop",
    }


def test_a_target_never_ranked_first_by_half_is_never_resolved():
    ranks = torch.ones(4, 2, 2, dtype=torch.long)
    ranks[3, 0] = 0  # one query of two at the last loop: exactly half
    assert lens_metrics("ood", 2, ranks)["lens/ood/hops_2/bridge_1/resolved_loop"] == 4.0
    ranks[3, 0] = 1
    assert lens_metrics("ood", 2, ranks)["lens/ood/hops_2/bridge_1/resolved_loop"] == 0.0
