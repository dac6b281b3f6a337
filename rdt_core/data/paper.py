"""The paper's data directories, read as query sets this project evaluates.

The paper (OSU-NLP-Group/Loop-Think-Generalize, on data made as OSU-NLP-Group/GrokkedTransformer makes it)
keeps its data as JSON lists of items ``{"input_text": "<e_12><r_3><r_7>", "target_text":
"<e_12><r_3><r_7><e_5></a>", "type": ...}`` beside a ``vocab.json`` (a list of token strings). Two layouts:

- composition (systematicity): ``train.json`` (untyped) and ``test.json`` typed ``id_atomic``,
  ``ood_atomic``, ``train_inferred``, ``test_inferred_iid``, ``test_inferred_ood``;
- depth: ``train.json`` and ``test.json`` typed ``<k>hop_test`` (its test.json may hold other types too,
  such as ``atomic_facts`` and ``<k>hop_train`` samples), or per-hop files ``<k>hop_train.json`` and
  ``<k>hop_test.json`` (with ``atomic_facts.json`` where present), typed by their file names.

Token ids are the paper loader's, so that a paper checkpoint's embedding rows line up: ``vocab.json``'s
order, with ``<pad>`` put first when the file has none; tokens are the ``<...>`` pieces of a text; the answer
is the last target token once a trailing ``</a>`` is dropped. Entity and relation ids therefore are where
the file puts them, not this project's layout (entities first, padding last).

Every test item keeps its paper type (the key its accuracy is reported under); ``split_of`` names the
project split a type corresponds to: ``test_inferred_iid`` -> ``id``, ``test_inferred_ood`` -> ``ood``,
``<k>hop_test`` -> ``id`` at hop count k; any other type (atomic facts, trained samples) is its own split.

Validation: the paper has none (its valid.json repeats test items), so loop budgets would be chosen on the
test split. ``read_paper_data(..., n_validation=n)`` draws, with a seeded generator, ``n`` items of each
test type (at most half of the type) into ``validation["<type>"]`` and removes them from the type's test
set, so what chooses a setting is never what measures it. By default nothing is drawn: the test sets are
the paper's, whole, and accuracies compare with the paper's numbers.

Inputs are right-padded with the pad id, as the paper pads them; within one type every item has the same
length in both of the paper's constructions, so a type's rows carry no padding and the last position is
each item's last input token.

Training on a paper directory (``data.paper_dir``, ``paper_splits``) takes its facts into this project's
own layout instead: entity i is the i-th ``<e_...>`` token of vocab.json and relation j the j-th
``<r_...>`` token, so the model, the readout over entities and every instrument work unchanged, and a
model trained here has this project's ids (its checkpoint is evaluated here, not by the paper's scripts).
The graph is rebuilt from the directory's atomic facts (its 1-hop items), so bridges, nulls, the lens and
patching apply; test types become splits as ``split_of`` says (the atomic and trained-sample types are
dropped: the training sample measures memorisation), and ``n_validation`` items of each split and hop
count are drawn, seeded, into its validation split.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rdt_core.config import ConfigError, DataConfig
from rdt_core.data.kg import KnowledgeGraph
from rdt_core.data.queries import QuerySet, Splits, make_query_set, mark_trained_prefixes
from rdt_core.data.tokens import Vocabulary

PAD = "<pad>"
END_OF_ANSWER = "</a>"
TOKEN = re.compile(r"<[^>]+>")
COMPOSITION_TYPES = ("id_atomic", "ood_atomic", "train_inferred", "test_inferred_iid", "test_inferred_ood")
HOP_TEST = re.compile(r"(\d+)hop_test")
HOP_FILE = re.compile(r"(\d+)hop_(train|test)\.json")
SPLIT_OF_TYPE = {"test_inferred_iid": "id", "test_inferred_ood": "ood"}


class PaperFormatError(ValueError):
    """A data directory this reader cannot take: the message names the file and the item or key."""


@dataclass(frozen=True)
class PaperVocabulary(Vocabulary):
    """The paper's token ids. The model reads ``pad_token`` and ``size`` only (readout over the whole
    vocabulary); ``n_entities`` and ``n_relations`` count the ``<e_...>`` and ``<r_...>`` tokens for
    information, wherever they sit, so this project's ``encode`` (entities first) does not apply."""

    tokens: tuple[str, ...] = (PAD,)

    @property
    def pad_token(self) -> int:
        return self.tokens.index(PAD)

    @property
    def size(self) -> int:
        return len(self.tokens)

    def encode(self, heads: torch.Tensor, relations: torch.Tensor, length: int) -> torch.Tensor:
        raise TypeError("the paper's token ids are read from its files; this project's layout does not apply")

    @staticmethod
    def from_file(path: Path) -> "PaperVocabulary":
        """``vocab.json`` as the paper's loader reads it: ``<pad>`` first when the list has none."""
        tokens = load_json(path)
        if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
            raise PaperFormatError(f"{path}: expected a JSON list of token strings")
        if len(set(tokens)) != len(tokens):
            repeated = next(token for token in tokens if tokens.count(token) > 1)
            raise PaperFormatError(f"{path}: token {repeated!r} is listed twice")
        if PAD not in tokens:
            tokens = [PAD, *tokens]
        return PaperVocabulary(
            n_entities=sum(token.startswith("<e_") for token in tokens),
            n_relations=sum(token.startswith("<r_") for token in tokens),
            tokens=tuple(tokens),
        )


@dataclass(frozen=True)
class PaperData:
    """A paper data directory: its vocabulary, training items (None where not read) and test items by the
    paper's type."""

    directory: Path
    layout: str  # "composition" or "depth"
    vocab: PaperVocabulary
    train: QuerySet | None
    tests: dict[str, QuerySet]  # by paper type, in the order the types first appear
    validation: dict[str, QuerySet]  # by paper type: drawn from its test items, disjoint from them

    @staticmethod
    def split_of(paper_type: str) -> str:
        """The project split a paper type corresponds to (its own name where none does)."""
        return "id" if HOP_TEST.fullmatch(paper_type) else SPLIT_OF_TYPE.get(paper_type, paper_type)


def read_paper_data(directory: Path, n_validation: int = 0, seed: int = 0, with_train: bool = True) -> PaperData:
    """Read a data directory in either of the paper's layouts (module docstring); ``n_validation`` items
    of each test type go to its validation set. ``with_train=False`` leaves the training files unread
    (an evaluation needs the tests only, and the paper's train.json is their largest file). A problem is
    a one-line ``PaperFormatError``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PaperFormatError(f"{directory}: not a directory")
    vocab = PaperVocabulary.from_file(directory / "vocab.json")
    per_hop = sorted(
        (int(match[1]), match[2], path)
        for path in directory.iterdir()
        if (match := HOP_FILE.fullmatch(path.name))
    )
    if (directory / "test.json").exists():
        test_items = typed_items(directory / "test.json", None)
        layout = layout_of(directory / "test.json", [paper_type for paper_type, _, _, _ in test_items])
        train_files = [(directory / "train.json", "train")]
    elif any(kind == "test" for _, kind, _ in per_hop):
        layout = "depth"
        test_items = [item for hops, kind, path in per_hop if kind == "test" for item in typed_items(path, f"{hops}hop_test")]
        atomic = directory / "atomic_facts.json"
        train_files = [(atomic, "atomic")] if atomic.exists() else []
        train_files += [(path, f"{hops}hop_train") for hops, kind, path in per_hop if kind == "train"]
    else:
        raise PaperFormatError(
            f"{directory}: unknown layout: expected test.json or <k>hop_test.json files beside vocab.json"
        )
    by_type: dict[str, list[tuple[list[str], str, str]]] = {}
    for paper_type, tokens, answer, where in test_items:
        by_type.setdefault(paper_type, []).append((tokens, answer, where))
    tests = {paper_type: to_query_set(items, vocab) for paper_type, items in by_type.items()}
    train = None
    if with_train:
        train_items = [item for path, paper_type in train_files for item in typed_items(path, paper_type)]
        train = to_query_set([(tokens, answer, where) for _, tokens, answer, where in train_items], vocab)
    validation = {}
    if n_validation:
        generator = torch.Generator().manual_seed(seed)
        for paper_type, queries in tests.items():
            order = torch.randperm(len(queries), generator=generator)
            drawn = min(n_validation, len(queries) // 2)
            validation[paper_type] = queries.subset(order[:drawn].sort().values)
            tests[paper_type] = queries.subset(order[drawn:].sort().values)
    return PaperData(directory, layout, vocab, train, tests, validation)


def load_json(path: Path) -> Any:
    """A JSON file's content; a missing or malformed file is a one-line ``PaperFormatError``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PaperFormatError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PaperFormatError(f"{path}: cannot be read: {error}") from None
    except json.JSONDecodeError as error:
        raise PaperFormatError(f"{path}: not JSON: {error.msg} at line {error.lineno}, column {error.colno}") from None


def typed_items(path: Path, default_type: str | None) -> list[tuple[str, list[str], str, str]]:
    """A file's items as (type, input tokens, answer token, where): ``where`` names the file and item for
    error messages. An item's own ``type`` wins; ``default_type`` types the items of untyped files
    (None: every item must carry one)."""
    items = load_json(path)
    if not isinstance(items, list):
        raise PaperFormatError(f"{path}: expected a JSON list of items")
    read = []
    for index, item in enumerate(items):
        where = f"{path}: item {index}"
        if not isinstance(item, dict):
            raise PaperFormatError(f"{where}: expected an object with input_text and target_text")
        for key in ("input_text", "target_text"):
            if not isinstance(item.get(key), str):
                raise PaperFormatError(f"{where}: key {key}: missing or not a string")
        paper_type = item.get("type", default_type)
        if not isinstance(paper_type, str):
            raise PaperFormatError(f"{where}: key type: missing or not a string")
        tokens = TOKEN.findall(item["input_text"])
        target = TOKEN.findall(item["target_text"])
        if target and target[-1] == END_OF_ANSWER:
            target = target[:-1]
        if not tokens or not target:
            raise PaperFormatError(f"{where}: key {'input_text' if not tokens else 'target_text'}: no <...> token")
        read.append((paper_type, tokens, target[-1], where))
    return read


def layout_of(path: Path, paper_types: list[str]) -> str:
    """composition or depth, from the test types ``path`` holds; neither or both is an unknown layout."""
    composition = any(paper_type in COMPOSITION_TYPES for paper_type in paper_types)
    depth = any(HOP_TEST.fullmatch(paper_type) for paper_type in paper_types)
    if composition == depth:
        found = sorted(set(paper_types))[:6]
        raise PaperFormatError(
            f"{path}: key type: unknown layout: expected the composition types {', '.join(COMPOSITION_TYPES)} "
            f"or depth types <k>hop_test, found {found}"
        )
    return "composition" if composition else "depth"


def to_query_set(items: list[tuple[list[str], str, str]], vocab: PaperVocabulary) -> QuerySet:
    """Items (input tokens, answer token, where) as a QuerySet in the paper's ids: ``tokens`` right-padded
    with the pad id to the longest input, ``heads`` the first input id, ``relations`` the other input
    ids (token ids, -1 beyond an item's length), ``hops`` their count; bridges are unknown (-1)."""
    index = {token: position for position, token in enumerate(vocab.tokens)}
    width = max((len(tokens) for tokens, _, _ in items), default=1)
    rows = torch.full((len(items), width), vocab.pad_token, dtype=torch.long)  # (Q, L)
    answers = torch.empty(len(items), dtype=torch.long)  # (Q,)
    lengths = torch.empty(len(items), dtype=torch.long)  # (Q,)
    for row, (tokens, answer, where) in enumerate(items):
        for key, token in [*(("input_text", token) for token in tokens), ("target_text", answer)]:
            if token not in index:
                raise PaperFormatError(f"{where}: key {key}: token {token} is not in vocab.json")
        rows[row, : len(tokens)] = torch.tensor([index[token] for token in tokens])
        answers[row] = index[answer]
        lengths[row] = len(tokens)
    relations = rows[:, 1:].masked_fill(torch.arange(1, width) >= lengths[:, None], -1)  # (Q, L - 1)
    return QuerySet(
        heads=rows[:, 0],
        relations=relations,
        bridges=torch.full((len(items), max(0, width - 2)), -1, dtype=torch.long),
        answers=answers,
        hops=lengths - 1,
        tokens=rows,
        prefix_trained=torch.zeros(len(items), dtype=torch.bool),
    )


def paper_splits(config: DataConfig) -> Splits:
    """The splits of the paper directory ``config.paper_dir`` in this project's layout (module docstring).
    The config must state the directory's entity and relation counts and hop depths: a model is built
    from them before any data is read. Every problem is a one-line ``ConfigError`` naming the file."""
    try:
        data = read_paper_data(Path(config.paper_dir))
    except PaperFormatError as error:
        raise ConfigError("data.paper_dir", str(error)) from None
    return splits_of(data, config)


def sizes_of(data: PaperData) -> dict[str, int]:
    """The data config keys a paper directory fixes: its entity and relation counts and hop depths."""
    tested = [queries for name, queries in data.tests.items() if data.split_of(name) in ("id", "ood")]
    return {
        "n_entities": data.vocab.n_entities, "n_relations": data.vocab.n_relations,
        "train_max_hops": int(data.train.hops.max()),
        "test_max_hops": max((int(queries.hops.max()) for queries in tested), default=2),
    }


def splits_of(data: PaperData, config: DataConfig) -> Splits:
    """``paper_splits`` of a directory already read (with its training files)."""
    directory, vocab = data.directory, data.vocab
    entity_of = id_table(vocab, "<e_")  # (V,) paper id -> entity index, -1 for other tokens
    relation_of = id_table(vocab, "<r_")  # (V,) paper id -> relation index
    tested = {name: queries for name, queries in data.tests.items() if data.split_of(name) in ("id", "ood")}
    for key, found in sizes_of(data).items():
        if getattr(config, key) != found:
            raise ConfigError(f"data.{key}", f"{getattr(config, key)}, but {directory} holds {found}: set data.{key}={found}")

    train = translated(data.train, entity_of, relation_of, directory / "train.json")
    atomic = train.hops == 1
    if not atomic.any():
        raise ConfigError("data.paper_dir", f"{directory}: no atomic facts (1-hop items) among the training items")
    heads, relations, tails = train.heads[atomic], train.relations[atomic, 0], train.answers[atomic]
    graph = KnowledgeGraph.from_facts(heads, relations, tails, vocab.n_entities, vocab.n_relations)
    if not torch.equal(graph.tails[relations, heads], tails):
        raise ConfigError("data.paper_dir", f"{directory}: a (head, relation) has two different tails among the atomic facts")
    our_vocab = Vocabulary(vocab.n_entities, vocab.n_relations)
    train = rebuilt(train, graph, our_vocab, config, directory / "train.json", vocab)
    in_layout = {  # each tested type, and the held-out atomic facts, once: translated, checked against the graph
        name: rebuilt(translated(queries, entity_of, relation_of, directory / "test.json"), graph, our_vocab,
                      config, directory / "test.json", vocab)
        for name, queries in data.tests.items() if name in tested or name == "ood_atomic"
    }
    fact_is_ood = torch.zeros_like(graph.present)
    for name in ("ood_atomic", "test_inferred_ood"):  # held-out facts: listed, or composed by ood queries
        if name in in_layout:
            held_out = in_layout[name]
            entities = torch.cat([held_out.heads[:, None], held_out.bridges], dim=1)  # (Q, K): each hop's head
            for hop in range(held_out.relations.shape[1]):
                used = held_out.relations[:, hop] >= 0
                fact_is_ood[held_out.relations[used, hop], entities[used, hop]] = True

    generator = torch.Generator().manual_seed(config.seed)
    tests: dict[str, list[QuerySet]] = {}
    validation: dict[str, list[QuerySet]] = {}
    for name in tested:
        split, queries = data.split_of(name), in_layout[name]
        for hops in queries.hop_counts():
            of_hops = queries.with_hops(hops)
            order = torch.randperm(len(of_hops), generator=generator)
            drawn = min(config.n_validation, len(of_hops) // 2)
            validation.setdefault(f"{split}_val", []).append(of_hops.subset(order[:drawn].sort().values))
            tests.setdefault(split, []).append(of_hops.subset(order[drawn:].sort().values))
    held = {name: mark_trained_prefixes(QuerySet.concat(parts), train, config)
            for name, parts in {**tests, **validation}.items()}
    return Splits(
        graph=graph, vocab=our_vocab, fact_is_ood=fact_is_ood, train=train,
        tests={name: held[name] for name in tests}, validation={name: held[name] for name in validation},
    )


def types_in_layout(typed: dict[str, QuerySet], vocab: PaperVocabulary, test_max_hops: int) -> dict[str, QuerySet]:
    """Query sets by paper type (a ``PaperData``'s ``tests`` or ``validation``) in this project's layout,
    for a model trained here: ids as ``paper_splits`` assigns them, inputs left-padded to ``test_max_hops``
    + 1 tokens. Answers are the directory's (no graph is needed; bridges are unknown, -1). A type whose
    items are not entity-relation queries is left out."""
    entity_of, relation_of = id_table(vocab, "<e_"), id_table(vocab, "<r_")
    our_vocab = Vocabulary(vocab.n_entities, vocab.n_relations)
    in_layout = {}
    for name, queries in typed.items():
        try:
            ours = translated(queries, entity_of, relation_of, Path("test.json"))
        except ConfigError:
            continue
        if int(ours.hops.max()) > test_max_hops:
            continue
        tokens = torch.cat([our_vocab.encode(ours.heads[ours.hops == hops],
                                             ours.relations[ours.hops == hops, :hops], test_max_hops + 1)
                            for hops in ours.hop_counts()])  # (Q, test_max_hops + 1), grouped by hop count
        order = torch.cat([(ours.hops == hops).nonzero().squeeze(1) for hops in ours.hop_counts()])
        in_layout[name] = QuerySet(
            heads=ours.heads[order], relations=ours.relations[order], bridges=ours.bridges[order],
            answers=ours.answers[order], hops=ours.hops[order], tokens=tokens,
            prefix_trained=ours.prefix_trained[order],
        )
    return in_layout


def id_table(vocab: PaperVocabulary, prefix: str) -> torch.Tensor:
    """(V,) long: each paper id's index among the tokens starting with ``prefix``, in vocab.json's order;
    -1 for the other tokens."""
    table = torch.full((vocab.size,), -1, dtype=torch.long)
    of_kind = [index for index, token in enumerate(vocab.tokens) if token.startswith(prefix)]
    table[of_kind] = torch.arange(len(of_kind))
    return table


def translated(queries: QuerySet, entity_of: torch.Tensor, relation_of: torch.Tensor, path: Path) -> QuerySet:
    """Paper-id queries with heads and answers as entity indices and relations as relation indices
    (tokens and bridges are rebuilt later); an item whose head or answer is no entity, or whose other
    input tokens are no relations, is a ``ConfigError`` naming the file."""
    heads, answers = entity_of[queries.heads], entity_of[queries.answers]
    used = queries.relations >= 0
    relations = torch.where(used, relation_of[queries.relations.clamp(min=0)], -1)  # (Q, K)
    bad = (heads < 0) | (answers < 0) | (used & (relations < 0)).any(1)
    if bad.any():
        row = int(bad.nonzero()[0])
        raise ConfigError("data.paper_dir", f"{path}: item {row} is not <e_...> followed by <r_...> tokens, answered "
                          "by an <e_...> token: this project trains on entity-relation queries only")
    return QuerySet(heads, relations, queries.bridges, answers, queries.hops, queries.tokens, queries.prefix_trained)


def rebuilt(queries: QuerySet, graph: KnowledgeGraph, vocab: Vocabulary, config: DataConfig, path: Path,
            paper_vocab: PaperVocabulary) -> QuerySet:
    """Translated queries as this project builds its own: bridges followed through the graph, tokens in
    this project's ids, left-padded to ``test_max_hops``; grouped by hop count. An item composing a fact
    the atomic facts do not hold, or whose answer is not where its facts lead, is a ``ConfigError``."""
    parts = []
    for hops in queries.hop_counts():
        of_hops = queries.with_hops(hops)
        relations = of_hops.relations[:, :hops]  # (Q, k)
        path_ok = torch.ones(len(of_hops), dtype=torch.bool)
        entity = of_hops.heads
        for hop in range(hops):
            tail = graph.tails[relations[:, hop], entity]
            path_ok &= tail >= 0
            entity = tail.clamp(min=0)
        path_ok &= entity == of_hops.answers
        if not path_ok.all():
            row = int((~path_ok).nonzero()[0])
            text = "".join(paper_vocab.tokens[token] for token in of_hops.tokens[row] if token != paper_vocab.pad_token)
            raise ConfigError("data.paper_dir", f"{path}: the {hops}-hop item {text} does not follow the atomic facts "
                              "(a missing fact, or another answer)")
        parts.append(make_query_set(graph, vocab, of_hops.heads, relations, config.test_max_hops))
    return QuerySet.concat(parts)
