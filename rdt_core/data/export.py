"""``python -m rdt_core.data export ...``: write a graph and its query splits, in this project's format or in
either of the paper's layouts (``--format``).

``--format jsonl`` (the default), this project's JSON lines:

    DIR/atomic.jsonl           {"head", "relation", "tail", "split"}   split: "id" or "ood"
    DIR/queries_<split>.jsonl  {"head", "relations", "answer", "bridges", "hops"}   train, id, ood

``--format paper-composition`` and ``--format paper-depth``: the paper's layouts (read back by
``rdt_core.data.paper``, whose docstring states both), so that the paper's own scripts train and evaluate
on a graph made here. Items are ``{"input_text": "<e_12><r_3><r_7>", "target_text":
"<e_12><r_3><r_7><e_5></a>"}`` (plus ``"type"`` where the layout types them): entity i is ``<e_i>``,
relation j ``<r_j>``. ``vocab.json`` lists the entities, the relations, then the paper's special tokens
``<mask> <sep> <a> </a> <q> </q>``, without ``<pad>``: the paper's loader puts ``<pad>`` first, so entity i
has id i + 1 there.

- paper-composition (systematicity; as GrokkedTransformer's composition.ipynb writes
  ``composition.2000.200.7.2``): ``train.json`` every atomic fact, then the trained 2-hop compositions,
  untyped as the paper's; ``test.json`` typed ``id_atomic`` and ``ood_atomic`` (in-distribution and
  held-out atomic facts), ``train_inferred`` (trained compositions), ``test_inferred_iid`` (the ``id``
  split), ``test_inferred_ood`` (the ``ood`` split); ``valid.json`` the ``test_inferred_ood`` items,
  untyped, as the paper's valid.json is its OOD test set. The atomic and trained types are samples of at
  most 3,000 items, the paper's cap on every test type.
- paper-depth (depth extrapolation; as Loop-Think-Generalize's getNhopfact.py and create_dataset.py write
  ``data/multi_hop``): ``train.json`` atomic facts typed ``atomic``, then the trained k-hop queries typed
  ``<k>hop_train``; ``test.json`` the ``id`` split typed ``<k>hop_test`` per hop count, then samples of at
  most 2,000 atomic facts (``atomic_facts``) and of 2,000 trained queries per hop count (``<k>hop_train``),
  as create_dataset.py samples them; ``valid.json`` a copy of test.json, as create_dataset.py makes it
  (its ``test_small.json`` is not written: no script of the paper's reads it by default).
  create_dataset.py labels the trained k-hop items of train.json ``<k-2>hop_train`` (its list of types
  counts from 0); no script reads train.json's types (training counts hops in ``input_text``), so the
  true hop count is written.

Validation: this project holds a validation split beside each test split (``id_val``, ``ood_val``); the
paper's layouts have no place for one (the paper chooses nothing on held-out data: its valid.json is a
test set). Its items join the test items of the same type, which is where a reader finds them again:
``read_paper_data(..., n_validation=n)`` draws a seeded validation part of ``n`` items from each type, so
with ``n`` this export's validation count the test part keeps its test count; the paper's scripts evaluate
on the type whole. The samples (atomic and trained types) are drawn with a generator seeded from
``seed``: identical inputs give identical files.

The composition layout holds 2-hop queries only (its test types carry no hop count) and the depth layout
no held-out facts (its test types are all ``id``): ``--test-max-hops`` above 2, and ``--ood-fraction``
above 0, are refused for them. Each paper format defaults to the paper's construction and sizes (see
``FORMAT_DEFAULTS``); a flag that is given wins.

Every format writes ``DIR/manifest.json`` (the config, counts per file, a content hash; the paper's
scripts ignore extra files). The hash is a SHA-256 over the data files in name order: identical inputs
give identical hashes. The export is written to a temporary folder beside DIR and moved into place whole.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from rdt_core.config import ConfigError, DataConfig, config_error_from, refuse
from rdt_core.data.kg import CONSTRUCTIONS
from rdt_core.data.queries import QuerySet, Splits, build_splits

OPTION_FOR_KEY = {
    "n_entities": "--entities",
    "n_relations": "--relations",
    "construction": "--construction",
    "out_degree": "--out-degree",
    "seed": "--seed",
    "ood_fraction": "--ood-fraction",
    "inferred_ratio": "--inferred-ratio",
    "n_train_per_hop": "--train-per-hop",
    "train_max_hops": "--train-max-hops",
    "test_max_hops": "--test-max-hops",
    "n_test_queries": "--test-queries",
    "n_val_queries": "--val-queries",
}
FORMAT_DEFAULTS: dict[str, dict[str, Any]] = {
    "jsonl": {},
    # composition.2000.200.7.2: random tails, 20 relations per head, 5% of the facts held out, phi 7.2. The
    # paper takes up to 3,000 items per test type, but that graph holds only about 2,000 +- 50 distinct OOD
    # 2-hop compositions (1,888 at worst over 60 seeds): 1,500 test + 300 validation fits every seed, where
    # 1,500 + 500 fails on about half of them.
    "paper-composition": {
        "n_entities": 2000, "n_relations": 200, "construction": "composition", "out_degree": 20,
        "ood_fraction": 0.05, "inferred_ratio": 7.2, "n_test_queries": 1500, "n_val_queries": 300,
    },
    # getNhopfact.py: 200 entities x 10 bijective relations, 15,000 trained and 750 test queries per hop
    # count, 2..40 hops, every hop count trained.
    "paper-depth": {
        "n_entities": 200, "n_relations": 10, "construction": "permutation", "train_max_hops": 40,
        "test_max_hops": 40, "n_train_per_hop": 15000, "n_test_queries": 750,
    },
}
FORMATS = tuple(FORMAT_DEFAULTS)
SPECIAL_TOKENS = ("<mask>", "<sep>", "<a>", "</a>", "<q>", "</q>")  # after entities and relations, as the paper's
COMPOSITION_SAMPLE = 3000  # composition.ipynb's test_size: the most items of any test.json type
DEPTH_SAMPLE = 2000  # create_dataset.py: atomic facts, and trained queries per hop count, sampled into test.json


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an invalid option is one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SystemExit(refuse(message))


def build_parser() -> argparse.ArgumentParser:
    """Every data option defaults to None (not given): the format's defaults, then DataConfig's, fill it."""
    parser = OneLineParser(prog="python -m rdt_core.data", description="Export a knowledge graph and its splits.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    export = commands.add_parser("export", help="write atomic facts, query splits and a manifest")
    export.add_argument("--format", choices=FORMATS, default="jsonl",
                        help="jsonl (this project's), or the paper's composition or depth layout")
    export.add_argument("--entities", type=int, help="required with --format jsonl")
    export.add_argument("--relations", type=int, help="required with --format jsonl")
    export.add_argument("--construction", choices=CONSTRUCTIONS)
    export.add_argument("--out-degree", type=int)
    export.add_argument("--seed", type=int)
    export.add_argument("--ood-fraction", type=float)
    export.add_argument("--inferred-ratio", type=float)
    export.add_argument("--train-per-hop", type=int)
    export.add_argument("--train-max-hops", type=int)
    export.add_argument("--test-max-hops", type=int)
    export.add_argument("--test-queries", type=int)
    export.add_argument("--val-queries", type=int)
    export.add_argument("--out", type=Path, required=True)
    return parser


def data_config(export_format: str, given: dict[str, Any]) -> DataConfig:
    """The config of an export: the values given, then the format's defaults, then DataConfig's. A given
    ``inferred_ratio`` sets the trained count, so it drops a default ``n_train_per_hop`` (which would win).
    Raises pydantic's ValidationError."""
    defaults = dict(FORMAT_DEFAULTS[export_format])
    if "inferred_ratio" in given:
        defaults.pop("n_train_per_hop", None)
    return DataConfig.model_validate({**defaults, **given})


def check_layout(config: DataConfig, export_format: str) -> None:
    """A ``ConfigError`` where the layout has no place for what ``config`` makes (module docstring)."""
    if export_format == "paper-composition" and config.test_max_hops != 2:
        raise ConfigError("data.test_max_hops", "the composition layout holds 2-hop queries only (its test types carry "
                          "no hop count); use --format paper-depth for deeper queries")
    if export_format == "paper-depth" and config.ood_fraction > 0:
        raise ConfigError("data.ood_fraction", "the depth layout holds no held-out facts (its <k>hop_test types are "
                          "in-distribution); use --format paper-composition for an ood split")


def query_records(queries: QuerySet) -> list[dict]:
    records = []
    for head, relations, bridges, answer, hops in zip(
        queries.heads.tolist(), queries.relations.tolist(), queries.bridges.tolist(),
        queries.answers.tolist(), queries.hops.tolist(),
    ):
        records.append({"head": head, "relations": relations[:hops], "answer": answer, "bridges": bridges[: hops - 1], "hops": hops})
    return records


def atomic_records(splits: Splits) -> list[dict]:
    """Every present fact (a graph with ``out_degree`` below the relation count has absent ones)."""
    tails, held_out = splits.graph.tails.tolist(), splits.fact_is_ood.tolist()
    return [
        {"head": head, "relation": relation, "tail": tail, "split": "ood" if held_out[relation][head] else "id"}
        for relation, row in enumerate(tails)
        for head, tail in enumerate(row)
        if tail >= 0
    ]


def jsonl_files(splits: Splits) -> dict[str, list[dict]]:
    files = {"atomic.jsonl": atomic_records(splits), "queries_train.jsonl": query_records(splits.train)}
    for name, queries in splits.tests.items():
        files[f"queries_{name}.jsonl"] = query_records(queries)
    return files


@dataclass(frozen=True)
class PaperTokens:
    """This project's ids as the paper's token strings: entity i is ``<e_i>``, relation j is ``<r_j>``."""

    entities: list[str]
    relations: list[str]

    @staticmethod
    def of(config: DataConfig) -> "PaperTokens":
        return PaperTokens(
            [f"<e_{entity}>" for entity in range(config.n_entities)],
            [f"<r_{relation}>" for relation in range(config.n_relations)],
        )

    @property
    def vocabulary(self) -> list[str]:
        """vocab.json: entities, relations, then the paper's special tokens; no ``<pad>``."""
        return self.entities + self.relations + list(SPECIAL_TOKENS)

    def items(self, queries: QuerySet, paper_type: str | None = None) -> list[dict[str, str]]:
        """Queries as the paper's items: the input's tokens, the target the input then the answer then
        ``</a>``; typed where ``paper_type`` is given."""
        entities, relations = self.entities, self.relations
        items = []
        for head, path, answer, hops in zip(
            queries.heads.tolist(), queries.relations.tolist(), queries.answers.tolist(), queries.hops.tolist()
        ):
            input_text = entities[head] + "".join([relations[relation] for relation in path[:hops]])
            item = {"input_text": input_text, "target_text": input_text + entities[answer] + "</a>"}
            if paper_type is not None:
                item["type"] = paper_type
            items.append(item)
        return items


def sample(queries: QuerySet, cap: int, generator: torch.Generator) -> QuerySet:
    """At most ``cap`` of ``queries`` drawn without replacement, in their order; all of them where they are
    no more (the paper's ``choose`` and ``random.sample`` take as many)."""
    if len(queries) <= cap:
        return queries
    return queries.subset(torch.randperm(len(queries), generator=generator)[:cap].sort().values)


def held_out(splits: Splits, split: str) -> QuerySet:
    """A test split with its validation split: what the paper's layouts hold under the split's test type."""
    return QuerySet.concat([splits.tests[split], splits.validation[f"{split}_val"]])


def composition_files(splits: Splits, tokens: PaperTokens, generator: torch.Generator) -> dict[str, list]:
    atomic = splits.train.with_hops(1)
    is_ood = splits.fact_is_ood[atomic.relations[:, 0], atomic.heads]
    trained = splits.train.subset(splits.train.hops > 1)
    ood = held_out(splits, "ood") if "ood" in splits.tests else None
    test = (
        tokens.items(sample(atomic.subset(~is_ood), COMPOSITION_SAMPLE, generator), "id_atomic")
        + tokens.items(sample(atomic.subset(is_ood), COMPOSITION_SAMPLE, generator), "ood_atomic")
        + tokens.items(sample(trained, COMPOSITION_SAMPLE, generator), "train_inferred")
        + tokens.items(held_out(splits, "id"), "test_inferred_iid")
        + (tokens.items(ood, "test_inferred_ood") if ood is not None else [])
    )
    return {
        "train.json": tokens.items(splits.train),
        "test.json": test,
        "valid.json": tokens.items(ood) if ood is not None else [],
        "vocab.json": tokens.vocabulary,
    }


def depth_files(splits: Splits, tokens: PaperTokens, generator: torch.Generator) -> dict[str, list]:
    by_hops = {hops: splits.train.with_hops(hops) for hops in splits.train.hop_counts()}  # 1: the atomic facts
    train = [item for hops, queries in by_hops.items() for item in tokens.items(queries, depth_train_type(hops))]
    tests = held_out(splits, "id")
    test = [item for hops in tests.hop_counts() for item in tokens.items(tests.with_hops(hops), f"{hops}hop_test")]
    test += tokens.items(sample(by_hops[1], DEPTH_SAMPLE, generator), "atomic_facts")
    for hops in [hops for hops in by_hops if hops > 1]:
        test += tokens.items(sample(by_hops[hops], DEPTH_SAMPLE, generator), f"{hops}hop_train")
    return {"train.json": train, "test.json": test, "valid.json": test, "vocab.json": tokens.vocabulary}


def depth_train_type(hops: int) -> str:
    """train.json's type of a trained query in the depth layout (module docstring on create_dataset.py's)."""
    return "atomic" if hops == 1 else f"{hops}hop_train"


def export(config: DataConfig, out: Path, export_format: str = "jsonl") -> dict:
    """Write the export of ``config`` in ``export_format`` to ``out``; returns the manifest. A config the
    format's layout cannot hold, or the graph cannot supply, is a ``ConfigError`` before anything is
    written."""
    check_layout(config, export_format)
    splits = build_splits(config)
    if export_format == "jsonl":
        manifest: dict[str, Any] = {}
        files = jsonl_files(splits)
        texts = {name: "\n".join(json.dumps(record) for record in records) for name, records in files.items()}
    else:
        manifest = {"format": export_format}
        generator = torch.Generator().manual_seed(config.seed + 2)  # build_splits draws from seed and seed + 1
        layout = composition_files if export_format == "paper-composition" else depth_files
        files = layout(splits, PaperTokens.of(config), generator)
        texts = {name: json.dumps(items) for name, items in files.items()}
    manifest["config"] = config.model_dump()
    manifest["counts"] = {name.rsplit(".", 1)[0]: len(records) for name, records in files.items()}
    if export_format != "jsonl":
        manifest["test_types"] = dict(Counter(item["type"] for item in files["test.json"]))
    digest = hashlib.sha256()
    for name in sorted(texts):
        digest.update(name.encode() + b"\0" + texts[name].encode() + b"\0")
    manifest["content_hash"] = digest.hexdigest()
    write_into_place(out, texts, manifest)
    return manifest


def write_into_place(out: Path, texts: dict[str, str], manifest: dict) -> None:
    """The files (each text and a final newline) and the manifest, written to a folder beside ``out`` and
    renamed into place: a reader never sees half an export, nor a failed one."""
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    staging.mkdir(parents=True)
    try:
        for name, text in texts.items():
            (staging / name).write_text(text + "\n")
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()) and not (args.out / "manifest.json").exists():
        return refuse(f"--out: {args.out} exists and is not an export; refusing to replace it")
    given = {
        key: value for key, option in OPTION_FOR_KEY.items()
        if (value := getattr(args, option.removeprefix("--").replace("-", "_"))) is not None
    }
    if args.format == "jsonl":
        missing = [OPTION_FOR_KEY[key] for key in ("n_entities", "n_relations") if key not in given]
        if missing:
            return refuse(f"{missing[0]}: required with --format jsonl (the paper formats default to the paper's sizes)")
    try:
        config = data_config(args.format, given)
        manifest = export(config, args.out, args.format)
    except (ValidationError, ConfigError) as error:
        problem = config_error_from(error) if isinstance(error, ValidationError) else error
        key = problem.key.removeprefix("data.")
        option = OPTION_FOR_KEY.get(key, key)
        default = FORMAT_DEFAULTS[args.format].get(key) if key not in given else None
        where = f" ({option} {default} is the {args.format} default)" if default is not None else ""
        return refuse(f"{option}: {problem.message}{where}")
    print(f"wrote {args.out}: " + ", ".join(f"{name} {count}" for name, count in manifest["counts"].items()))
    print(f"content hash {manifest['content_hash']}")
    return 0
