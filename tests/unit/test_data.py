import torch

from rdt_core.config import DataConfig
from rdt_core.data import KnowledgeGraph, build_splits
from rdt_core.data.queries import sample_distinct


def test_every_relation_is_a_bijection():
    graph = KnowledgeGraph.generate(n_entities=50, n_relations=7, seed=3)
    for tails in graph.tails:
        assert torch.equal(tails.sort().values, torch.arange(50))


def test_relations_differ_from_each_other():
    graph = KnowledgeGraph.generate(n_entities=50, n_relations=7, seed=3)
    assert len({tuple(row.tolist()) for row in graph.tails}) == 7


def test_same_seed_same_graph_and_splits_other_seed_differs():
    config = DataConfig(n_entities=40, n_relations=5, inferred_ratio=2.0, n_test_queries=100, seed=11)
    first, second = build_splits(config), build_splits(config)
    assert torch.equal(first.graph.tails, second.graph.tails)
    for name in ("train", "test"):
        assert torch.equal(first.named()[name].tokens, second.named()[name].tokens)
        assert torch.equal(first.named()[name].answers, second.named()[name].answers)
    other = build_splits(config.model_copy(update={"seed": 12}))
    assert not torch.equal(first.graph.tails, other.graph.tails)


def test_train_holds_all_atomic_facts_and_phi_two_hop_queries():
    config = DataConfig(n_entities=40, n_relations=5, inferred_ratio=2.0, n_test_queries=100)
    splits = build_splits(config)
    n_atomic = 40 * 5
    assert (splits.train.hops == 1).sum().item() == n_atomic
    assert (splits.train.hops == 2).sum().item() == 2 * n_atomic
    assert len(splits.test) == 100 and bool((splits.test.hops == 2).all())


def test_train_and_test_queries_are_disjoint():
    splits = build_splits(DataConfig(n_entities=20, n_relations=4, inferred_ratio=3.0, n_test_queries=50))
    train_rows = {tuple(row.tolist()) for row in splits.train.tokens}
    test_rows = {tuple(row.tolist()) for row in splits.test.tokens}
    assert len(test_rows) == len(splits.test)  # no duplicate test query
    assert train_rows.isdisjoint(test_rows)


def test_answers_follow_the_graph():
    splits = build_splits(DataConfig(n_entities=20, n_relations=4, n_test_queries=30))
    vocab, tails = splits.vocab, splits.graph.tails
    heads = splits.test.tokens[:, 0]
    r1 = splits.test.tokens[:, 1] - vocab.n_entities
    r2 = splits.test.tokens[:, 2] - vocab.n_entities
    assert torch.equal(splits.test.answers, tails[r2, tails[r1, heads]])


def test_atomic_facts_are_left_padded():
    splits = build_splits(DataConfig(n_entities=20, n_relations=4, n_test_queries=30))
    atomic = splits.train.tokens[splits.train.hops == 1]
    assert bool((atomic[:, 0] == splits.vocab.pad_token).all())


def test_sample_distinct_gives_distinct_ids_in_range():
    generator = torch.Generator().manual_seed(0)
    for space, count in [(10, 10), (1000, 900), (10**9, 5000)]:
        ids = sample_distinct(space, count, generator)
        assert ids.numel() == count == ids.unique().numel()
        assert 0 <= ids.min() and ids.max() < space


def test_large_graph_is_generated_quickly_enough_to_be_practical():
    graph = KnowledgeGraph.generate(n_entities=100_000, n_relations=20, seed=0)
    assert graph.tails.shape == (20, 100_000)
