"""The paper's data directories (composition, depth with test.json or per-hop files) read back to the
paper loader's token ids, types and answers; bad directories refused in one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rdt_core.config import ConfigError, DataConfig
from rdt_core.data import PaperData, PaperFormatError, QuerySet, load_splits, read_paper_data

ENTITIES = [f"<e_{index}>" for index in range(6)]
RELATIONS = ["<r_0>", "<r_1>"]


def item(tokens: list[str], answer: str, paper_type: str | None = None) -> dict:
    """An item as the paper writes it: the answer after the input, closed by </a>."""
    written = {"input_text": "".join(tokens), "target_text": "".join(tokens) + answer + "</a>"}
    return written if paper_type is None else {**written, "type": paper_type}


def write(directory: Path, files: dict[str, object]) -> Path:
    directory.mkdir(exist_ok=True)
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content))
    return directory


def composition_files(vocab: list[str]) -> dict[str, object]:
    test = [
        item(["<e_0>", "<r_1>"], "<e_3>", "id_atomic"),
        item(["<e_5>", "<r_0>"], "<e_1>", "ood_atomic"),
        item(["<e_2>", "<r_0>", "<r_1>"], "<e_4>", "test_inferred_iid"),
        item(["<e_1>", "<r_1>", "<r_1>"], "<e_0>", "test_inferred_ood"),
        item(["<e_3>", "<r_1>", "<r_0>"], "<e_2>", "test_inferred_iid"),
    ]
    train = [item(["<e_0>", "<r_1>"], "<e_3>"), item(["<e_4>", "<r_0>", "<r_0>"], "<e_5>")]
    return {"vocab.json": vocab, "train.json": train, "test.json": test}


def test_a_composition_directory_reads_back_with_pad_first_ids(tmp_path):
    vocab = ENTITIES + RELATIONS + ["<mask>", "</a>"]  # the paper's vocab.json: no <pad>
    data = read_paper_data(write(tmp_path / "c", composition_files(vocab)))
    assert data.layout == "composition"
    assert data.vocab.tokens[0] == "<pad>" and data.vocab.pad_token == 0 and data.vocab.size == len(vocab) + 1
    ids = {token: index for index, token in enumerate(data.vocab.tokens)}
    assert list(data.tests) == ["id_atomic", "ood_atomic", "test_inferred_iid", "test_inferred_ood"]
    iid = data.tests["test_inferred_iid"]
    assert iid.tokens.tolist() == [[ids["<e_2>"], ids["<r_0>"], ids["<r_1>"]], [ids["<e_3>"], ids["<r_1>"], ids["<r_0>"]]]
    assert iid.answers.tolist() == [ids["<e_4>"], ids["<e_2>"]] and iid.hops.tolist() == [2, 2]
    assert data.tests["id_atomic"].tokens.tolist() == [[ids["<e_0>"], ids["<r_1>"]]]
    assert data.tests["id_atomic"].hops.tolist() == [1]
    # train.json mixes 2- and 3-token items: right-padded with the pad id, as the paper pads them
    assert data.train.tokens.tolist() == [[ids["<e_0>"], ids["<r_1>"], 0], [ids["<e_4>"], ids["<r_0>"], ids["<r_0>"]]]
    assert data.train.relations[0].tolist() == [ids["<r_1>"], -1]
    assert [PaperData.split_of(name) for name in data.tests] == ["id_atomic", "ood_atomic", "id", "ood"]
    assert data.validation == {}


def test_the_tests_alone_are_read_without_the_training_file(tmp_path):
    files = composition_files(ENTITIES + RELATIONS)
    whole = read_paper_data(write(tmp_path / "whole", files))
    del files["train.json"]  # an evaluation reads none of it: the paper's largest file
    tests_only = read_paper_data(write(tmp_path / "tests", files), with_train=False)
    assert tests_only.train is None
    assert {name: queries.tokens.tolist() for name, queries in tests_only.tests.items()} == {
        name: queries.tokens.tolist() for name, queries in whole.tests.items()
    }


def test_a_vocabulary_with_its_own_pad_keeps_its_order(tmp_path):
    vocab = ENTITIES[:3] + ["<pad>"] + ENTITIES[3:] + RELATIONS
    data = read_paper_data(write(tmp_path / "c", composition_files(vocab)))
    assert data.vocab.tokens == tuple(vocab) and data.vocab.pad_token == 3
    assert data.tests["id_atomic"].tokens.tolist() == [[0, vocab.index("<r_1>")]]
    assert data.tests["id_atomic"].answers.tolist() == [vocab.index("<e_3>")]


def depth_items(hops: int, paper_type: str | None) -> list[dict]:
    return [item([ENTITIES[head], *(RELATIONS[(head + step) % 2] for step in range(hops))], ENTITIES[-1 - head], paper_type)
            for head in range(3)]


def test_a_depth_directory_with_test_json_types_hop_counts(tmp_path):
    test = depth_items(2, "2hop_test") + depth_items(3, "3hop_test") + [item(["<e_0>", "<r_0>"], "<e_1>", "atomic_facts")]
    directory = write(tmp_path / "d", {"vocab.json": ENTITIES + RELATIONS, "train.json": depth_items(2, None), "test.json": test})
    data = read_paper_data(directory)
    assert data.layout == "depth"
    assert list(data.tests) == ["2hop_test", "3hop_test", "atomic_facts"]
    assert data.tests["3hop_test"].hops.tolist() == [3, 3, 3]
    assert data.tests["3hop_test"].tokens.shape == (3, 4)
    assert data.tests["2hop_test"].answers.tolist() == [1 + 5, 1 + 4, 1 + 3]  # <e_5>, <e_4>, <e_3> after <pad>
    assert [PaperData.split_of(name) for name in data.tests] == ["id", "id", "atomic_facts"]


def test_a_per_hop_depth_directory_is_typed_by_its_file_names(tmp_path):
    directory = write(tmp_path / "h", {
        "vocab.json": ENTITIES + RELATIONS, "atomic_facts.json": [item(["<e_0>", "<r_0>"], "<e_1>")],
        "2hop_train.json": depth_items(2, None), "2hop_test.json": depth_items(2, None),
        "10hop_test.json": depth_items(10, None),
    })
    data = read_paper_data(directory)
    assert data.layout == "depth" and list(data.tests) == ["2hop_test", "10hop_test"]
    assert data.tests["10hop_test"].hops.tolist() == [10, 10, 10]
    assert len(data.train) == 1 + 3 and data.train.hops.tolist() == [1, 2, 2, 2]


def test_validation_is_a_seeded_part_of_each_type_disjoint_from_its_test(tmp_path):
    test = depth_items(2, "2hop_test") * 1 + [item([f"<e_{head}>", "<r_0>", "<r_0>", "<r_1>"], "<e_0>", "3hop_test") for head in range(6)]
    directory = write(tmp_path / "d", {"vocab.json": ENTITIES + RELATIONS, "train.json": [], "test.json": test})
    whole = read_paper_data(directory).tests["3hop_test"]
    data = read_paper_data(directory, n_validation=2, seed=7)
    validation, tested = data.validation["3hop_test"], data.tests["3hop_test"]
    assert len(validation) == 2 and len(tested) == 4
    assert set(validation.heads.tolist()).isdisjoint(tested.heads.tolist())
    assert sorted(validation.heads.tolist() + tested.heads.tolist()) == sorted(whole.heads.tolist())
    assert len(data.validation["2hop_test"]) == 1  # at most half of a type is drawn
    again = read_paper_data(directory, n_validation=2, seed=7)
    assert torch.equal(again.validation["3hop_test"].tokens, validation.tokens)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"vocab.json": None}, r"vocab\.json: missing"),
        ({"train.json": None}, r"train\.json: missing"),
        ({"test.json": [item(["<e_0>", "<r_9>"], "<e_1>", "id_atomic")]}, r"test\.json: item 0: key input_text: token <r_9> is not in vocab\.json"),
        ({"test.json": [item(["<e_0>", "<r_0>"], "<e_1>", "mystery")]}, r"test\.json: key type: unknown layout"),
        ({"test.json": [{"input_text": "<e_0>"}]}, r"test\.json: item 0: key target_text"),
        ({"test.json": "not a list"}, r"test\.json: expected a JSON list"),
    ],
)
def test_bad_directories_are_refused_in_one_line_naming_the_file(tmp_path, change, message):
    files = {**composition_files(ENTITIES + RELATIONS), **change}
    directory = write(tmp_path / "bad", {name: content for name, content in files.items() if content is not None})
    with pytest.raises(PaperFormatError, match=message) as caught:
        read_paper_data(directory)
    assert len(str(caught.value).splitlines()) == 1


def test_an_unknown_layout_and_malformed_json_are_refused(tmp_path):
    directory = write(tmp_path / "empty", {"vocab.json": ENTITIES})
    with pytest.raises(PaperFormatError, match="unknown layout: expected test.json or <k>hop_test.json"):
        read_paper_data(directory)
    (directory / "test.json").write_text("[{")
    with pytest.raises(PaperFormatError, match=r"test\.json: not JSON: .* line 1"):
        read_paper_data(directory)


def consistent_composition(tmp_path: Path) -> Path:
    """A composition directory whose items follow its atomic facts: tail(h, r) = (h * (r + 2) + 1) mod 6."""
    tails = {(head, relation): (head * (relation + 2) + 1) % 6 for head in range(6) for relation in range(2)}

    def query(head: int, relations: list[int], paper_type: str | None = None) -> dict:
        answer = head
        for relation in relations:
            answer = tails[(answer, relation)]
        return item([f"<e_{head}>", *(f"<r_{relation}>" for relation in relations)], f"<e_{answer}>", paper_type)

    two_hop = [(head, [first, second]) for head in range(6) for first in range(2) for second in range(2)]
    train = [query(head, [relation]) for head, relation in tails] + [query(*q) for q in two_hop[:12]]
    test = [query(*q, "test_inferred_iid") for q in two_hop[12:]] + [query(0, [0], "id_atomic")]
    vocab = ["<mask>", *ENTITIES, *RELATIONS, "</a>"]  # ids are not this project's: entities do not come first
    return write(tmp_path / "consistent", {"vocab.json": vocab, "train.json": train, "test.json": test})


def test_a_paper_directory_trains_in_this_projects_layout_with_its_graph_rebuilt(tmp_path):
    config = DataConfig(paper_dir=str(consistent_composition(tmp_path)), n_entities=6, n_relations=2, n_val_queries=3)
    splits = load_splits(config)
    expected = torch.tensor([[(head * (relation + 2) + 1) % 6 for head in range(6)] for relation in range(2)])
    assert torch.equal(splits.graph.tails, expected)
    assert int((splits.train.hops == 1).sum()) == 12 and int((splits.train.hops == 2).sum()) == 12
    assert set(splits.tests) == {"id"} and set(splits.validation) == {"id_val"}  # id_atomic dropped
    test, validation = splits.tests["id"], splits.validation["id_val"]
    assert (len(test), len(validation)) == (9, 3)
    held = {tuple(row) for queries in (test, validation) for row in queries.tokens.tolist()}
    assert len(held) == 12 and not held & {tuple(row) for row in splits.train.tokens.tolist()}
    path = splits.graph.follow(test.heads, test.relations)  # (Q, 3): this project's ids throughout
    assert torch.equal(path[:, 1], test.bridges[:, 0]) and torch.equal(path[:, 2], test.answers)
    assert test.tokens[:, 1:].min() >= 6  # relation tokens after the entities: this project's layout
    assert torch.equal(load_splits(config).tests["id"].tokens, test.tokens)  # the same draw every time


@pytest.mark.parametrize("change, message", [
    ({"n_entities": 7}, r"^data\.n_entities: 7, but .* holds 6: set data\.n_entities=6$"),
    ({"train_max_hops": 1}, r"^data\.train_max_hops: 1, but .* holds 2"),
])
def test_a_config_that_does_not_state_the_directorys_sizes_is_refused(tmp_path, change, message):
    config = DataConfig(**{"paper_dir": str(consistent_composition(tmp_path)), "n_entities": 6, "n_relations": 2, **change})
    with pytest.raises(ConfigError, match=message):
        load_splits(config)


def test_an_item_that_does_not_follow_the_atomic_facts_is_refused_naming_it(tmp_path):
    directory = consistent_composition(tmp_path)
    test = json.loads((directory / "test.json").read_text())
    wrong = "<e_4>" if test[0]["target_text"].endswith("<e_5></a>") else "<e_5>"
    test[0]["target_text"] = test[0]["input_text"] + wrong + "</a>"
    (directory / "test.json").write_text(json.dumps(test))
    with pytest.raises(ConfigError, match=r"test\.json: the 2-hop item <e_\d><r_\d><r_\d> does not follow the atomic facts"):
        load_splits(DataConfig(paper_dir=str(directory), n_entities=6, n_relations=2))


@pytest.mark.parametrize("export_format, generated", [
    ("paper-composition", DataConfig(n_entities=40, n_relations=6, construction="composition", out_degree=4,
                                     ood_fraction=0.3, inferred_ratio=2.0, n_test_queries=8, n_val_queries=4, seed=3)),
    ("paper-depth", DataConfig(n_entities=30, n_relations=4, n_train_per_hop=40, train_max_hops=3, test_max_hops=5,
                               n_test_queries=10, n_val_queries=5, seed=1)),
])
def test_an_exported_paper_directory_trains_on_the_graph_and_queries_it_was_made_from(tmp_path, export_format, generated):
    """export --format paper-* then data.paper_dir: the same facts, trained queries and held-out queries
    (each split's test and validation together: the layouts keep them as one test type)."""
    from rdt_core.data.export import export

    export(generated, tmp_path / "paper", export_format)
    made = load_splits(generated)
    read = load_splits(generated.model_copy(update={"paper_dir": str(tmp_path / "paper")}))
    assert torch.equal(read.graph.tails, made.graph.tails) and torch.equal(read.fact_is_ood, made.fact_is_ood)

    def rows(queries):
        return sorted(map(tuple, torch.cat([queries.tokens, queries.answers[:, None], queries.bridges], 1).tolist()))

    assert rows(read.train) == rows(made.train)
    for split in made.tests:
        assert rows(QuerySet.concat([read.tests[split], read.validation[f"{split}_val"]])) == \
            rows(QuerySet.concat([made.tests[split], made.validation[f"{split}_val"]]))
        assert len(read.validation[f"{split}_val"]) == len(made.validation[f"{split}_val"])
