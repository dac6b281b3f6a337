"""``python -m rdt_core.data export``: files, manifest, determinism, and one-line errors."""

import contextlib
import io
import json
import subprocess
import sys

import pytest

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
