"""``python -m rdt_core.data export ...``: write a graph and its query splits as JSON lines.

    DIR/atomic.jsonl           {"head", "relation", "tail", "split"}   split: "id" or "ood"
    DIR/queries_<split>.jsonl  {"head", "relations", "answer", "bridges", "hops"}   train, id, ood
    DIR/manifest.json          the config, counts per split, and a content hash of the files above

The hash is a SHA-256 over the data files in name order: identical inputs give identical hashes. The
export is written to a temporary folder beside DIR and moved into place whole.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

from pydantic import ValidationError

from rdt_core.config import ConfigError, DataConfig, config_error_from, refuse
from rdt_core.data.queries import QuerySet, Splits, build_splits

OPTION_FOR_KEY = {
    "n_entities": "--entities",
    "n_relations": "--relations",
    "seed": "--seed",
    "ood_fraction": "--ood-fraction",
    "inferred_ratio": "--inferred-ratio",
    "train_max_hops": "--train-max-hops",
    "test_max_hops": "--test-max-hops",
    "n_test_queries": "--test-queries",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an invalid option is one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SystemExit(refuse(message))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m rdt_core.data", description="Export a knowledge graph and its splits.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    export = commands.add_parser("export", help="write atomic facts, query splits and a manifest")
    defaults = DataConfig()
    export.add_argument("--entities", type=int, required=True)
    export.add_argument("--relations", type=int, required=True)
    export.add_argument("--seed", type=int, default=defaults.seed)
    export.add_argument("--ood-fraction", type=float, default=defaults.ood_fraction)
    export.add_argument("--inferred-ratio", type=float, default=defaults.inferred_ratio)
    export.add_argument("--train-max-hops", type=int, default=defaults.train_max_hops)
    export.add_argument("--test-max-hops", type=int, default=defaults.test_max_hops)
    export.add_argument("--test-queries", type=int, default=defaults.n_test_queries)
    export.add_argument("--out", type=Path, required=True)
    return parser


def query_lines(queries: QuerySet) -> list[str]:
    lines = []
    for head, relations, bridges, answer, hops in zip(
        queries.heads.tolist(), queries.relations.tolist(), queries.bridges.tolist(),
        queries.answers.tolist(), queries.hops.tolist(),
    ):
        record = {"head": head, "relations": relations[:hops], "answer": answer, "bridges": bridges[: hops - 1], "hops": hops}
        lines.append(json.dumps(record))
    return lines


def atomic_lines(splits: Splits) -> list[str]:
    tails, held_out = splits.graph.tails.tolist(), splits.fact_is_ood.tolist()
    return [
        json.dumps({"head": head, "relation": relation, "tail": tail, "split": "ood" if held_out[relation][head] else "id"})
        for relation, row in enumerate(tails)
        for head, tail in enumerate(row)
    ]


def export(config: DataConfig, out: Path) -> dict:
    """Write the export of ``config`` to ``out``; returns the manifest."""
    splits = build_splits(config)
    files = {"atomic.jsonl": atomic_lines(splits)}
    files["queries_train.jsonl"] = query_lines(splits.train)
    for name, queries in splits.tests.items():
        files[f"queries_{name}.jsonl"] = query_lines(queries)
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + "\n".join(files[name]).encode() + b"\0")
    manifest = {
        "config": config.model_dump(),
        "counts": {name.removesuffix(".jsonl"): len(lines) for name, lines in files.items()},
        "content_hash": digest.hexdigest(),
    }
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    staging.mkdir(parents=True)
    try:
        for name, lines in files.items():
            (staging / name).write_text("\n".join(lines) + "\n")
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()) and not (args.out / "manifest.json").exists():
        return refuse(f"--out: {args.out} exists and is not an export; refusing to replace it")
    values = {key: getattr(args, option.removeprefix("--").replace("-", "_")) for key, option in OPTION_FOR_KEY.items()}
    try:
        config = DataConfig.model_validate(values)
    except ValidationError as error:
        problem = config_error_from(error)
        return refuse(f"{OPTION_FOR_KEY.get(problem.key, problem.key)}: {problem.message}")
    try:
        manifest = export(config, args.out)
    except ConfigError as error:
        key = error.key.removeprefix("data.")
        return refuse(f"{OPTION_FOR_KEY.get(key, key)}: {error.message}")
    print(f"wrote {args.out}: " + ", ".join(f"{name} {count}" for name, count in manifest["counts"].items()))
    print(f"content hash {manifest['content_hash']}")
    return 0
