import itertools

import pytest
import torch

from rdt_core.config import ConfigError, DataConfig
from rdt_core.data import KnowledgeGraph, build_splits
from rdt_core.data.nulls import candidate_masks, null_metrics
from rdt_core.data.queries import QuerySet, _random_walks, n_distinct_walks, sample_distinct_walks

SYSTEMATIC = DataConfig(
    n_entities=40, n_relations=6, ood_fraction=0.25, inferred_ratio=2.0,
    train_max_hops=3, test_max_hops=4, n_test_queries=40, n_val_queries=24, seed=5,
)


def facts_used(queries: QuerySet) -> list[list[tuple[int, int]]]:
    """The (head entity, relation) facts each query composes, from its head, relations and bridges."""
    used = []
    for head, relations, bridges, hops in zip(
        queries.heads.tolist(), queries.relations.tolist(), queries.bridges.tolist(), queries.hops.tolist()
    ):
        entities = [head, *bridges[: hops - 1]]
        used.append(list(zip(entities, relations[:hops])))
    return used


def test_every_relation_is_a_bijection():
    graph = KnowledgeGraph.generate(n_entities=50, n_relations=7, seed=3)
    for tails in graph.tails:
        assert torch.equal(tails.sort().values, torch.arange(50))
    assert len({tuple(row.tolist()) for row in graph.tails}) == 7


def test_large_graph_is_generated_vectorised():
    graph = KnowledgeGraph.generate(n_entities=100_000, n_relations=100, seed=0)
    assert graph.tails.shape == (100, 100_000)


def test_same_seed_same_graph_and_splits_other_seed_differs():
    first, second = build_splits(SYSTEMATIC), build_splits(SYSTEMATIC)
    assert torch.equal(first.graph.tails, second.graph.tails)
    assert torch.equal(first.fact_is_ood, second.fact_is_ood)
    for a, b in [(first.train, second.train), *zip(first.tests.values(), second.tests.values())]:
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.answers, b.answers)
    other = build_splits(SYSTEMATIC.model_copy(update={"seed": 6}))
    assert not torch.equal(first.graph.tails, other.graph.tails)


def test_train_holds_every_atomic_fact_and_phi_multi_hop_queries_per_id_fact():
    splits = build_splits(SYSTEMATIC)
    n_atomic = 40 * 6
    n_id_facts = n_atomic - int(splits.fact_is_ood.sum())
    assert int(splits.fact_is_ood.sum()) == round(0.25 * n_atomic)
    assert (splits.train.hops == 1).sum().item() == n_atomic
    multi_hop = (splits.train.hops > 1).sum().item()
    assert abs(multi_hop - 2.0 * n_id_facts) <= 2  # shared evenly between 2 and 3 hops, rounded
    assert splits.train.hop_counts() == [1, 2, 3]


def test_no_trained_multi_hop_query_composes_a_held_out_fact():
    splits = build_splits(SYSTEMATIC)
    ood = splits.fact_is_ood
    multi = splits.train.subset((splits.train.hops > 1).nonzero().squeeze(1))
    for facts in facts_used(multi):
        assert not any(ood[relation, entity] for entity, relation in facts)


def test_id_queries_compose_only_id_facts_and_ood_only_held_out_facts():
    splits = build_splits(SYSTEMATIC)
    ood = splits.fact_is_ood
    for facts in facts_used(splits.tests["id"]):
        assert not any(ood[relation, entity] for entity, relation in facts)
    for facts in facts_used(splits.tests["ood"]):
        assert all(ood[relation, entity] for entity, relation in facts)


def test_test_queries_never_appear_in_training_and_are_distinct():
    splits = build_splits(SYSTEMATIC)
    train_rows = {tuple(row.tolist()) for row in splits.train.tokens}
    for queries in [*splits.tests.values(), *splits.validation.values()]:
        rows = [tuple(row.tolist()) for row in queries.tokens]
        assert len(set(rows)) == len(rows)
        assert train_rows.isdisjoint(rows)


def test_validation_and_test_queries_never_overlap_and_come_from_the_same_pool():
    splits = build_splits(SYSTEMATIC)
    assert set(splits.validation) == {"id_val", "ood_val"}
    for split in ("id", "ood"):
        test, validation = splits.tests[split], splits.validation[f"{split}_val"]
        assert validation.hop_counts() == test.hop_counts() == [2, 3, 4]
        assert all(len(validation.with_hops(k)) == 24 for k in (2, 3, 4))
        test_rows = {tuple(row.tolist()) for row in test.tokens}
        assert test_rows.isdisjoint(tuple(row.tolist()) for row in validation.tokens)
    ood = splits.fact_is_ood
    for facts in facts_used(splits.validation["ood_val"]):
        assert all(ood[relation, entity] for entity, relation in facts)


def test_a_deeper_query_is_marked_where_a_multi_hop_prefix_of_it_was_trained():
    splits = build_splits(SYSTEMATIC)
    trained = {tuple(row) for row in torch.cat([splits.train.heads[:, None], splits.train.relations], 1).tolist()}
    queries = splits.tests["id"]
    for head, relations, hops, marked in zip(
        queries.heads.tolist(), queries.relations.tolist(), queries.hops.tolist(), queries.prefix_trained.tolist()
    ):
        prefixes = [(head, *relations[:j], *[-1] * (len(relations) - j)) for j in range(2, min(hops, 4))]
        assert marked == any(prefix in trained for prefix in prefixes)
    deeper = queries.hops == 4
    assert 0 < int(queries.prefix_trained[deeper].sum()) < int(deeper.sum())  # both kinds exist here
    assert not bool(queries.prefix_trained[queries.hops == 2].any())


def test_structural_nulls_count_the_candidates_each_shortcut_leaves():
    splits = build_splits(SYSTEMATIC)
    queries = splits.tests["ood"].with_hops(2)
    masks = candidate_masks(splits, queries, "ood")
    tails, ood = splits.graph.tails, splits.fact_is_ood
    trained = splits.train.subset((splits.train.hops == 2).nonzero().squeeze(1))
    for index in range(len(queries)):
        relations = queries.relations[index, :2].tolist()
        same = (trained.relations[:, :2] == queries.relations[index, :2]).all(1)
        taken = set(trained.answers[same].tolist())
        assert set(masks["answer_elimination"][index].nonzero().squeeze(1).tolist()) == set(range(40)) - taken
        last = relations[1]
        reachable = {int(tails[last, head]) for head in range(40) if ood[last, head]}
        assert set(masks["last_relation"][index].nonzero().squeeze(1).tolist()) == reachable
        assert bool(masks["structural"][index, queries.answers[index]])  # the answer is never eliminated
    metrics = null_metrics(splits, splits.tests["ood"], "ood")
    expected = (1 / masks["last_relation"].sum(1).float()).mean().item()
    assert metrics["null/ood/hops_2/last_relation"] == expected > metrics["null/chance"] == 1 / 40


def test_test_splits_go_deeper_than_training():
    splits = build_splits(SYSTEMATIC)
    assert max(splits.train.hop_counts()) == 3
    for queries in splits.tests.values():
        assert queries.hop_counts() == [2, 3, 4]
        assert all(len(queries.with_hops(k)) == 40 for k in (2, 3, 4))


def test_answers_and_bridges_follow_the_graph():
    splits = build_splits(SYSTEMATIC)
    tails = splits.graph.tails
    for queries in [splits.train, *splits.tests.values()]:
        for head, relations, bridges, answer, hops in zip(
            queries.heads.tolist(), queries.relations.tolist(), queries.bridges.tolist(),
            queries.answers.tolist(), queries.hops.tolist(),
        ):
            entity, path = head, []
            for relation in relations[:hops]:
                entity = int(tails[relation, entity])
                path.append(entity)
            assert path[:-1] == bridges[: hops - 1] and path[-1] == answer


def test_queries_are_left_padded_to_the_deepest_test_query():
    splits = build_splits(SYSTEMATIC)
    assert splits.train.tokens.shape[1] == 5
    atomic = splits.train.tokens[splits.train.hops == 1]
    assert bool((atomic[:, :3] == splits.vocab.pad_token).all())
    assert bool((atomic[:, 3] < splits.vocab.n_entities).all())


def test_no_ood_split_without_held_out_facts():
    splits = build_splits(DataConfig())
    assert set(splits.tests) == {"id"}


def test_walks_respect_the_allowed_facts_and_are_distinct():
    graph = KnowledgeGraph.generate(30, 4, seed=1)
    allowed = torch.rand(4, 30, generator=torch.Generator().manual_seed(0)) < 0.5
    heads, relations = sample_distinct_walks(graph, allowed, 3, 200, torch.Generator().manual_seed(2))
    assert heads.numel() == 200
    rows = torch.cat([heads[:, None], relations], 1)
    assert torch.unique(rows, dim=0).shape[0] == 200
    path = graph.follow(heads, relations)
    for hop in range(3):
        assert bool(allowed[relations[:, hop], path[:, hop]].all())


def test_eval_sets_sample_training_queries_per_hop_count():
    splits = build_splits(SYSTEMATIC)
    sets = splits.eval_sets(n_per_hop=30, seed=0)
    assert set(sets) == {"train", "id", "ood", "id_val", "ood_val"}
    assert [len(sets["train"].with_hops(k)) for k in (1, 2, 3)] == [30, 30, 30]


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_the_count_of_distinct_walks_is_what_enumerating_every_walk_finds(hops):
    graph = KnowledgeGraph.generate(9, 3, seed=4)
    allowed = torch.rand(3, 9, generator=torch.Generator().manual_seed(hops)) < 0.6  # (M, E)
    walks = set()
    for head in range(9):
        for relations in itertools.product(range(3), repeat=hops):
            entity, ok = head, True
            for relation in relations:
                ok &= bool(allowed[relation, entity])
                entity = int(graph.tails[relation, entity])
            if ok:
                walks.add((head, relations))
    assert n_distinct_walks(graph, allowed, hops) == len(walks)


COMPOSITION = DataConfig(
    n_entities=60, n_relations=10, construction="composition", out_degree=4, ood_fraction=0.3,
    inferred_ratio=2.0, n_test_queries=20, n_val_queries=10, seed=2,
)


def test_the_composition_construction_gives_each_head_out_degree_relations_with_random_tails():
    graph = KnowledgeGraph.generate(60, 10, seed=2, construction="composition", out_degree=4)
    assert torch.equal(graph.present.sum(0), torch.full((60,), 4))
    assert torch.equal(graph.tails >= 0, graph.present)
    assert not graph.bijective
    present_tails = graph.tails[graph.present]
    assert present_tails.unique().numel() < present_tails.numel()  # tails repeat: not permutations


def test_a_permutation_graph_with_a_smaller_out_degree_keeps_each_tail_once_per_relation():
    graph = KnowledgeGraph.generate(50, 6, seed=1, out_degree=3)
    assert torch.equal(graph.present.sum(0), torch.full((50,), 3))
    for tails, present in zip(graph.tails, graph.present):
        assert tails[present].unique().numel() == int(present.sum())
    assert not graph.bijective and KnowledgeGraph.generate(50, 6, seed=1).bijective


def test_composition_splits_use_present_facts_only_and_keep_ood_facts_out_of_training():
    splits = build_splits(COMPOSITION)
    present = splits.graph.present
    assert int(splits.fact_is_ood.sum()) == round(0.3 * 60 * 4) and bool((splits.fact_is_ood <= present).all())
    assert int((splits.train.hops == 1).sum()) == 60 * 4  # every present fact, no absent one
    for queries, allowed in ((splits.train, present & ~splits.fact_is_ood), (splits.tests["ood"], splits.fact_is_ood)):
        multi_hop = queries.subset((queries.hops > 1).nonzero().squeeze(1))
        for facts in facts_used(multi_hop):
            assert all(allowed[relation, entity] for entity, relation in facts)
    answers = splits.graph.follow(splits.tests["id"].heads, splits.tests["id"].relations[:, :2])[:, -1]
    assert torch.equal(answers, splits.tests["id"].answers)


def test_answer_elimination_is_no_null_where_tails_repeat():
    splits = build_splits(COMPOSITION)
    masks = candidate_masks(splits, splits.tests["id"], "id")
    assert bool(masks["answer_elimination"].all())  # two heads may share an answer: nothing eliminated
    assert bool(masks["last_relation"][torch.arange(20), splits.tests["id"].answers].all())  # the answer stays


def test_n_train_per_hop_sets_the_trained_queries_of_every_trained_hop_count():
    config = DataConfig(n_entities=30, n_relations=4, n_train_per_hop=90, train_max_hops=3, test_max_hops=4, n_test_queries=10)
    train = build_splits(config).train
    assert [int((train.hops == hops).sum()) for hops in (2, 3, 4)] == [90, 90, 0]
    with pytest.raises(ConfigError, match=r"^data\.n_train_per_hop: .* n_train_per_hop at most \d+"):
        build_splits(config.model_copy(update={"n_train_per_hop": 10_000}))


def test_walks_choose_each_allowed_relation_uniformly():
    graph = KnowledgeGraph.generate(2, 5, seed=0)
    allowed = torch.zeros(5, 2, dtype=torch.bool)
    allowed[[0, 2, 3], 0] = True  # entity 0 has relations 0, 2, 3; entity 1 none
    walks = _random_walks(graph, allowed, 1, 30_000, torch.Generator().manual_seed(0))
    assert bool((walks[:, 0] == 0).all())  # walks from entity 1 die at once
    counts = torch.bincount(walks[:, 1], minlength=5)
    assert counts[[1, 4]].tolist() == [0, 0]
    assert (counts[[0, 2, 3]].float() / walks.shape[0] - 1 / 3).abs().max() < 0.02
