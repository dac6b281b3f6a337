"""``python -m rdt_core.data export``: files, manifest, determinism, and one-line errors; the paper's two layouts
read back by ``read_paper_data`` as the facts and queries the export was made from."""

import contextlib
import io
import json
import subprocess
import sys

import pytest

from rdt_core.config import DataConfig
from rdt_core.data import QuerySet, build_splits, read_paper_data
from rdt_core.data.export import data_config
from rdt_core.data.export import main as export_main
from tests.helpers import REPO_ROOT

OPTIONS = ["--entities", "30", "--relations", "4", "--seed", "3", "--ood-fraction", "0.25",
           "--inferred-ratio", "1", "--train-max-hops", "2", "--test-max-hops", "3", "--test-queries", "10"]


def export(*args: str) -> subprocess.CompletedProcess:
    """The real command, in its own process: hashes must not depend on the process that computed them."""
    return subprocess.run(
        [sys.executable, "-m", "rdt_core.data", "export", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )


def export_in_process(*args: str) -> subprocess.CompletedProcess:
    """``main`` itself, for the many error cases (a process each would cost seconds of imports)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            returncode = export_main(["export", *args])
        except SystemExit as exit_:  # argparse's own errors
            returncode = exit_.code
    return subprocess.CompletedProcess(args, returncode, stdout.getvalue(), stderr.getvalue())


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_writes_facts_query_splits_and_a_manifest(tmp_path):
    completed = export(*OPTIONS, "--out", str(tmp_path / "kg"))
    assert completed.returncode == 0, completed.stderr
    out = tmp_path / "kg"
    atomic = read_lines(out / "atomic.jsonl")
    assert len(atomic) == 30 * 4
    assert set(atomic[0]) == {"head", "relation", "tail", "split"}
    assert sum(fact["split"] == "ood" for fact in atomic) == 30  # a quarter of 120
    ood_facts = {(fact["head"], fact["relation"]) for fact in atomic if fact["split"] == "ood"}
    for name in ("train", "id", "ood"):
        queries = read_lines(out / f"queries_{name}.jsonl")
        assert queries and set(queries[0]) == {"head", "relations", "answer", "bridges", "hops"}
        for query in queries:
            assert len(query["relations"]) == query["hops"] and len(query["bridges"]) == query["hops"] - 1
    for query in read_lines(out / "queries_ood.jsonl"):
        entities = [query["head"], *query["bridges"]]
        assert all((entity, relation) in ood_facts for entity, relation in zip(entities, query["relations"]))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["n_entities"] == 30
    assert manifest["counts"]["queries_id"] == 2 * 10  # 2- and 3-hop
    assert len(manifest["content_hash"]) == 64


def test_identical_inputs_give_identical_hashes_and_other_seeds_do_not(tmp_path):
    hashes = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        options = list(OPTIONS)
        options[options.index("--seed") + 1] = seed
        assert export(*options, "--out", str(tmp_path / name)).returncode == 0
        hashes.append(json.loads((tmp_path / name / "manifest.json").read_text())["content_hash"])
    assert hashes[0] == hashes[1] != hashes[2]


@pytest.mark.parametrize(
    "change, option",
    [
        (["--entities", "1"], "--entities"),
        (["--entities", "many"], "--entities"),
        (["--ood-fraction", "1.5"], "--ood-fraction"),
        (["--test-max-hops", "1"], "--test-max-hops"),
        (["--inferred-ratio", "500"], "--inferred-ratio"),
        (["--colour", "red"], "--colour"),
    ],
)
def test_invalid_options_exit_2_naming_the_option_and_write_nothing(tmp_path, change, option):
    options = list(OPTIONS)
    if change[0] in options:
        options[options.index(change[0]) + 1] = change[1]
    else:
        options += change
    completed = export_in_process(*options, "--out", str(tmp_path / "kg"))
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], completed.stderr
    assert not (tmp_path / "kg").exists()
    assert not any(tmp_path.iterdir())


# The paper's layouts: small graphs (40 entities x 6 relations), read back by the paper reader.
COMPOSITION = ["--format", "paper-composition", "--entities", "40", "--relations", "6", "--out-degree", "4",
               "--ood-fraction", "0.25", "--inferred-ratio", "1", "--test-queries", "5", "--val-queries", "3"]
DEPTH = ["--format", "paper-depth", "--entities", "40", "--relations", "6", "--train-max-hops", "3",
         "--test-max-hops", "4", "--train-per-hop", "50", "--test-queries", "5", "--val-queries", "3"]


def as_strings(queries, tokens) -> list[tuple[str, ...]]:
    """Each query as (head, r1..rk, answer) token strings, sorted: ``tokens`` maps ids to strings."""
    return sorted(
        tuple(tokens[token] for token in row[: hops + 1]) + (tokens[answer],)
        for row, hops, answer in zip(queries.tokens.tolist(), queries.hops.tolist(), queries.answers.tolist())
    )


def project_strings(queries, n_entities) -> list[tuple[str, ...]]:
    """This project's queries as the paper's token strings (entity i <e_i>, relation j <r_j>), sorted."""
    return sorted(
        (f"<e_{head}>", *(f"<r_{relation}>" for relation in relations[:hops]), f"<e_{answer}>")
        for head, relations, answer, hops in zip(
            queries.heads.tolist(), queries.relations.tolist(), queries.answers.tolist(), queries.hops.tolist()
        )
    )


def exported(tmp_path, options):
    """Export in the paper's layout, then what read_paper_data reads and what build_splits made."""
    completed = export_in_process(*options, "--out", str(tmp_path / "paper"))
    assert completed.returncode == 0, completed.stderr
    manifest = json.loads((tmp_path / "paper" / "manifest.json").read_text())
    config = DataConfig.model_validate(manifest["config"])
    return read_paper_data(tmp_path / "paper"), build_splits(config), config, manifest


def check_vocabulary(data, config):
    written = json.loads((data.directory / "vocab.json").read_text())
    assert "<pad>" not in written
    entities = [f"<e_{entity}>" for entity in range(config.n_entities)]
    relations = [f"<r_{relation}>" for relation in range(config.n_relations)]
    assert data.vocab.tokens == ("<pad>", *entities, *relations, "<mask>", "<sep>", "<a>", "</a>", "<q>", "</q>")
    assert data.vocab.pad_token == 0 and data.vocab.tokens.index("<e_0>") == 1  # the paper loader's ids


def test_paper_composition_reads_back_facts_trained_queries_and_held_out_items(tmp_path):
    data, splits, config, manifest = exported(tmp_path, COMPOSITION)
    assert data.layout == "composition" and config.construction == "composition" and config.out_degree == 4
    check_vocabulary(data, config)
    tokens = data.vocab.tokens
    train = as_strings(data.train, tokens)
    facts = sorted(
        (f"<e_{head}>", f"<r_{relation}>", f"<e_{tail}>")
        for relation, row in enumerate(splits.graph.tails.tolist()) for head, tail in enumerate(row) if tail >= 0
    )
    assert len(facts) == 40 * 4 and [query for query in train if len(query) == 3] == facts  # every present fact
    trained = splits.train.subset(splits.train.hops > 1)
    assert [query for query in train if len(query) > 3] == project_strings(trained, config.n_entities)
    assert list(data.tests) == ["id_atomic", "ood_atomic", "train_inferred", "test_inferred_iid", "test_inferred_ood"]
    ood_facts = {(f"<e_{head}>", f"<r_{relation}>") for relation, head in splits.fact_is_ood.nonzero().tolist()}
    assert as_strings(data.tests["id_atomic"], tokens) == [fact for fact in facts if fact[:2] not in ood_facts]
    assert as_strings(data.tests["ood_atomic"], tokens) == [fact for fact in facts if fact[:2] in ood_facts]
    assert as_strings(data.tests["train_inferred"], tokens) == project_strings(trained, config.n_entities)  # < 3,000
    for paper_type, split in (("test_inferred_iid", "id"), ("test_inferred_ood", "ood")):
        held = QuerySet.concat([splits.tests[split], splits.validation[f"{split}_val"]])
        assert as_strings(data.tests[paper_type], tokens) == project_strings(held, config.n_entities)
        assert len(held) == 5 + 3 and data.split_of(paper_type) == split
    valid = json.loads((data.directory / "valid.json").read_text())  # the paper's: its OOD test items, untyped
    test = json.loads((data.directory / "test.json").read_text())
    assert valid == [{key: item[key] for key in ("input_text", "target_text")} for item in test
                     if item["type"] == "test_inferred_ood"]
    assert manifest["format"] == "paper-composition" and manifest["test_types"]["test_inferred_ood"] == 8


def test_paper_depth_reads_back_facts_trained_queries_and_held_out_items_per_hop(tmp_path):
    data, splits, config, manifest = exported(tmp_path, DEPTH)
    assert data.layout == "depth" and config.construction == "permutation" and config.n_train_per_hop == 50
    check_vocabulary(data, config)
    tokens = data.vocab.tokens
    train = json.loads((data.directory / "train.json").read_text())
    assert {item["type"] for item in train} == {"atomic", "2hop_train", "3hop_train"}
    assert as_strings(data.train, tokens) == project_strings(splits.train, config.n_entities)  # facts and trained
    assert len([item for item in train if item["type"] == "atomic"]) == 40 * 6
    assert list(data.tests) == ["2hop_test", "3hop_test", "4hop_test", "atomic_facts", "2hop_train", "3hop_train"]
    held = QuerySet.concat([splits.tests["id"], splits.validation["id_val"]])
    for hops in (2, 3, 4):
        assert as_strings(data.tests[f"{hops}hop_test"], tokens) == project_strings(held.with_hops(hops), 40)
        assert len(data.tests[f"{hops}hop_test"]) == 5 + 3 and data.split_of(f"{hops}hop_test") == "id"
    for paper_type, hops in (("atomic_facts", 1), ("2hop_train", 2), ("3hop_train", 3)):  # all: under 2,000
        assert as_strings(data.tests[paper_type], tokens) == project_strings(splits.train.with_hops(hops), 40)
    assert (data.directory / "valid.json").read_bytes() == (data.directory / "test.json").read_bytes()
    assert manifest["counts"]["train"] == 40 * 6 + 2 * 50


def test_the_paper_formats_default_to_the_papers_construction_and_sizes():
    composition = data_config("paper-composition", {})
    assert (composition.n_entities, composition.n_relations, composition.construction, composition.out_degree) == (
        2000, 200, "composition", 20)
    assert (composition.ood_fraction, composition.inferred_ratio, composition.test_max_hops) == (0.05, 7.2, 2)
    depth = data_config("paper-depth", {"n_entities": 50})  # a flag that is given wins
    assert (depth.n_entities, depth.n_relations, depth.construction) == (50, 10, "permutation")
    assert (depth.train_max_hops, depth.test_max_hops, depth.n_train_per_hop, depth.n_test_queries) == (40, 40, 15000, 750)
    assert data_config("paper-depth", {"inferred_ratio": 2.0}).n_train_per_hop is None  # phi sets the count
    assert data_config("jsonl", {"n_entities": 30, "n_relations": 4}) == DataConfig(n_entities=30, n_relations=4)


def test_format_jsonl_is_the_default_output_byte_for_byte(tmp_path):
    for name, options in (("default", OPTIONS), ("jsonl", ["--format", "jsonl", *OPTIONS])):
        assert export_in_process(*options, "--out", str(tmp_path / name)).returncode == 0
    for name in ("atomic.jsonl", "queries_train.jsonl", "queries_id.jsonl", "queries_ood.jsonl", "manifest.json"):
        assert (tmp_path / "default" / name).read_bytes() == (tmp_path / "jsonl" / name).read_bytes()


def test_a_paper_depth_export_on_the_command_line_writes_its_files(tmp_path):
    completed = export(*DEPTH, "--out", str(tmp_path / "depth"))
    assert completed.returncode == 0, completed.stderr
    assert sorted(path.name for path in (tmp_path / "depth").iterdir()) == [
        "manifest.json", "test.json", "train.json", "valid.json", "vocab.json"]
    refused = export(*DEPTH, "--test-queries", "0", "--out", str(tmp_path / "bad"))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.startswith("error: --test-queries:") and not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "options, option",
    [
        ([*DEPTH, "--ood-fraction", "0.1"], "--ood-fraction"),  # the depth layout holds no held-out facts
        ([*COMPOSITION, "--test-max-hops", "3"], "--test-max-hops"),  # the composition layout is 2-hop
        ([*COMPOSITION, "--val-queries", "40"], "--test-queries"),  # more OOD compositions than the graph has
        (["--format", "paper-composition", "--relations", "6"], "--out-degree"),  # 20 of 6
        ([*DEPTH, "--construction", "cube"], "--construction"),
        ([*DEPTH, "--train-per-hop", "0"], "--train-per-hop"),
        (["--format", "paper-xml"], "--format"),
        (["--format", "jsonl", "--relations", "4"], "--entities"),
    ],
)
def test_bad_paper_format_options_exit_2_in_one_line_and_write_nothing(tmp_path, options, option):
    completed = export_in_process(*options, "--out", str(tmp_path / "paper"))
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], completed.stderr
    assert not any(tmp_path.iterdir())
