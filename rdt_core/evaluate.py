"""``python -m rdt_core.evaluate CHECKPOINT --data DIR --max-loops N [--set key=value ...] --out FILE.json``

Accuracy after every loop 1..N of a checkpoint on one of the paper's data directories (``rdt_core.data.paper``),
per paper test type, counted as the paper counts it: argmax over the whole vocabulary at the last input
position. One forward pass per batch gives every loop count at once (the model reads out after every loop).

Two checkpoint layouts are taken:
- this project's (``rdt_core.train.load_checkpoint``: its config and weights), read in this project's ids
  as a model trained on the directory (``data.paper_dir``) has them: entities, then relations, in
  vocab.json's order, inputs left-padded (``rdt_core.data.paper``); its entity and relation counts must be
  the directory's, and a type whose items are not entity-relation queries is left out (named in the file);
- the paper's released models (``{"model_state_dict": ...}``, keys possibly prefixed ``_orig_mod.`` by
  torch.compile): ``token_embedding``, ``position_embedding`` (learned) or the buffer ``pe``
  (sinusoidal), ``blocks.<i>.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}`` as
  transformers' GPT2Block names them (its Conv1D weights stored (in, out), ours (out, in)), ``ln_f``,
  ``lm_head`` tied to the embedding. Width, layers, MLP width, vocabulary size and the position table come
  from the weights; the head count does not show in them, so ``--set model.n_heads=H`` is required;
  ``--set model.injection=add`` for the paper's depth models trained with input injection (default none).

``--pad-to L`` pads every input to L tokens and reads at the last, as the paper's depth inference does
(its ``--max_len``, 50 there); then a padding position attends to the real tokens only, as the paper's
additive mask makes it, which this project's own mask (a padding position also sees itself) does not.
Without it a type's items, all of one length, carry no padding.

``--n-validation K`` holds K items of each type out of its test set (seeded, ``--seed``; at most half of
the type), and the file adds each type's validation curve, the loop count chosen on it and the test
accuracy there; the paper chose nothing on held-out data (its valid.json repeats test items).

Beside the accuracies, ``analysis`` holds the platform's end-of-run analysis as the run's tables (what a
trained run logs: accuracy per loop and hop count, the loop budget chosen on validation, halting beside a
fixed budget of equal cost, the structural nulls, the logit lens, activation patching beside its
random-weight null), computed in this project's layout on the directory's graph, rebuilt from its atomic
facts, with ``--n-validation`` items (at least 1) of each split and hop count drawn for validation. A
paper model is read there with its embedding rows reordered (its other tokens, ``<mask>``, ``</a>`` ...,
leave the readout); the loop count it was trained at is ``--set train.train_loops=R`` (default the
smaller of 4 and --max-loops), and ``--set eval.*`` sets the halting rules. Inputs are left-padded there:
exact for positions none and for splits of one length (the composition set), not for a learned position
table on mixed depths. Where the items do not follow atomic facts, ``analysis`` says why instead;
``--no-analysis`` skips it (and the read of the training files).

Invalid input (not a checkpoint, an unknown layout, a vocabulary that does not fit the weights, no head
count for a paper checkpoint) exits 2 with one line ``error: FILE: ...`` and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from rdt_core import metrics as metric_names
from rdt_core.config import ConfigError, DataConfig, ExperimentConfig, TrainConfig, parse_override, refuse
from rdt_core.data.paper import (
    PaperData, PaperFormatError, PaperVocabulary, read_paper_data, sizes_of, splits_of, types_in_layout,
)
from rdt_core.data.queries import QuerySet
from rdt_core.data.tokens import Vocabulary
from rdt_core.eval import evaluate
from rdt_core.model.transformer import RecurrentDepthTransformer, sinusoidal_table
from rdt_core.train.analysis import device_eval_sets, final_analysis
from rdt_core.train.checkpoints import load_checkpoint

COMPILED_PREFIX = "_orig_mod."
IGNORED_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older transformers versions
# Our name of each per-block weight <- transformers' GPT2Block name; Conv1D weights are transposed.
BLOCK_KEYS = {
    "attn_norm": ("ln_1", False), "qkv": ("attn.c_attn", True), "attn_out": ("attn.c_proj", True),
    "mlp_norm": ("ln_2", False), "mlp_in": ("mlp.c_fc", True), "mlp_out": ("mlp.c_proj", True),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be evaluated on the data: the message names the file and the mismatch."""


class PaperMaskedTransformer(RecurrentDepthTransformer):
    """The model with the paper's attention mask: padding keys are hidden from every query, a padding
    query included (the paper adds -10000 to their scores), so a padding position the answer is read at
    sees the real tokens only. A row with no real key before it keeps its diagonal, so none is empty."""

    def attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()  # (T, T)
        allowed = causal & (tokens != self.vocab.pad_token)[:, None, None, :]  # (B, 1, T, T)
        empty = ~allowed.any(-1, keepdim=True)  # (B, 1, T, 1)
        return allowed | (empty & torch.eye(length, dtype=torch.bool, device=tokens.device))


def load_any_checkpoint(
    path: Path, vocab: PaperVocabulary, overrides: dict
) -> tuple[RecurrentDepthTransformer, ExperimentConfig | None]:
    """The model of a checkpoint in either layout (module docstring), on the CPU, in eval mode, and the
    config it was trained with (None for a paper checkpoint)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except Exception as error:  # noqa: BLE001 - pickle, zip and torch errors all mean "not a checkpoint"
        raise CheckpointError(f"{path}: not a checkpoint ({type(error).__name__})") from None
    if isinstance(state, dict) and "model_state_dict" in state:
        return paper_model(path, state["model_state_dict"], vocab, overrides), None
    if isinstance(state, dict) and {"config", "model"} <= state.keys():
        if overrides:
            raise CheckpointError(f"{path}: --set applies to a paper checkpoint; this project's holds its config")
        trained_config, model = load_checkpoint(path)
        if (model.vocab.n_entities, model.vocab.n_relations) != (vocab.n_entities, vocab.n_relations):
            raise CheckpointError(
                f"{path}: the model knows {model.vocab.n_entities} entities and {model.vocab.n_relations} relations, "
                f"vocab.json lists {vocab.n_entities} and {vocab.n_relations}"
            )
        return model, trained_config
    found = [str(key) for key in state][:5] if isinstance(state, dict) else type(state).__name__
    raise CheckpointError(
        f"{path}: unknown layout: expected model_state_dict (the paper's) or config and model (this project's), found {found}"
    )


def paper_model(path: Path, weights: dict, vocab: PaperVocabulary, overrides: dict) -> RecurrentDepthTransformer:
    """Our gpt2-block model, with the paper's mask, holding a paper checkpoint's weights: width, layers, MLP
    width, vocabulary and position table read from them; heads and injection from ``overrides``."""
    weights = {key.removeprefix(COMPILED_PREFIX): value for key, value in weights.items()}
    weights = {key: value for key, value in weights.items() if not key.endswith(IGNORED_BUFFERS)}
    if "model.n_heads" not in overrides:
        raise CheckpointError(f"{path}: a paper checkpoint does not show its head count: give --set model.n_heads=H")
    if "token_embedding.weight" not in weights:
        raise CheckpointError(f"{path}: model_state_dict: key token_embedding.weight missing")
    n_tokens, d_model = weights["token_embedding.weight"].shape
    if n_tokens != vocab.size:
        raise CheckpointError(
            f"{path}: token_embedding.weight holds {n_tokens} tokens, vocab.json gives {vocab.size} (with {vocab.tokens[0]} first)"
        )
    n_layers = len({key.split(".")[1] for key in weights if key.startswith("blocks.")})
    if n_layers == 0 or "blocks.0.mlp.c_fc.weight" not in weights:
        raise CheckpointError(f"{path}: model_state_dict: key blocks.0.mlp.c_fc.weight missing")
    mlp_width = weights["blocks.0.mlp.c_fc.weight"].shape[1]
    positions, n_positions = "none", 64  # the table's length is unused without one
    for key, kind in (("position_embedding.weight", "learned"), ("pe", "sinusoidal")):
        if key in weights:
            positions, n_positions = kind, weights[key].shape[0]
    model_config = {
        "block": "gpt2", "readout": "vocabulary", "zero_init_output": False, "injection": "none",
        "d_model": d_model, "n_core_layers": n_layers, "mlp_ratio": max(1, mlp_width // d_model),
        "positions": positions, "n_positions": n_positions,
    }
    try:
        config = ExperimentConfig.from_dict({"model": model_config, "data": {"test_max_hops": 2}}, overrides)
    except ConfigError as error:
        raise CheckpointError(f"{path}: {error}") from None
    model = PaperMaskedTransformer(config.model, vocab)
    try:
        model.load_state_dict(renamed_weights(path, weights, n_layers, positions))
    except RuntimeError as error:  # a shape that does not fit, e.g. an MLP width that is no multiple of d_model
        raise CheckpointError(f"{path}: {str(error).splitlines()[-1].strip()}") from None
    return model.eval()


def renamed_weights(path: Path, weights: dict, n_layers: int, positions: str) -> dict[str, torch.Tensor]:
    """A paper state dict (prefix and ignored buffers gone) under our names, Conv1D weights transposed
    to (out, in). The sinusoidal table is checked, not loaded (ours is computed), and the tied head must
    equal the embedding; a key missing or left over is an error naming it."""
    weights = dict(weights)
    d_model = weights["token_embedding.weight"].shape[1]
    if positions == "sinusoidal":
        table = weights.pop("pe")
        if not torch.allclose(table, sinusoidal_table(table.shape[0], d_model), atol=1e-5):
            raise CheckpointError(f"{path}: model_state_dict: key pe is not the sine/cosine table of width {d_model}")
    ours = {"embed.weight": weights.pop("token_embedding.weight")}
    if positions == "learned":
        ours["position_embed.weight"] = weights.pop("position_embedding.weight")
    pairs = [("final_norm", "ln_f", False)] + [
        (f"core.0.{index}.{mine}", f"blocks.{index}.{theirs}", transposed)
        for index in range(n_layers)
        for mine, (theirs, transposed) in BLOCK_KEYS.items()
    ]
    for mine, theirs, transposed in pairs:
        for suffix in ("weight", "bias"):
            if f"{theirs}.{suffix}" not in weights:
                raise CheckpointError(f"{path}: model_state_dict: key {theirs}.{suffix} missing")
            value = weights.pop(f"{theirs}.{suffix}")
            ours[f"{mine}.{suffix}"] = value.T if transposed and suffix == "weight" else value
    head = weights.pop("lm_head.weight", None)
    if head is not None and not torch.equal(head, ours["embed.weight"]):
        raise CheckpointError(f"{path}: model_state_dict: key lm_head.weight is not tied to token_embedding.weight")
    if weights:
        raise CheckpointError(f"{path}: model_state_dict: unexpected key {sorted(weights)[0]}")
    return ours


@torch.no_grad()
def accuracy_by_loop(
    model: RecurrentDepthTransformer,
    tests: dict[str, QuerySet],
    max_loops: int,
    batch_size: int = 1024,
    pad_to: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Per test type, the accuracy after each loop 1..max_loops: one forward pass per batch, the
    argmax over the readout at the last position against the answer."""
    model = model.to(device).eval()
    batches = [(name, start) for name, queries in tests.items() for start in range(0, len(queries), batch_size)]
    correct = {name: torch.zeros(max_loops, dtype=torch.long) for name in tests}  # (N,) per type
    for name, start in tqdm(batches, unit="batch", desc="evaluating"):
        queries = tests[name]
        tokens = queries.tokens[start : start + batch_size]  # (B, L)
        if pad_to is not None:
            tokens = torch.nn.functional.pad(tokens, (0, pad_to - tokens.shape[1]), value=model.vocab.pad_token)
        logits = model(tokens.to(device), max_loops)  # (N, B, V)
        answers = queries.answers[start : start + batch_size].to(device)  # (B,)
        correct[name] += (logits.argmax(-1) == answers).sum(1).cpu()
    return {name: [count / max(1, len(tests[name])) for count in correct[name].tolist()] for name in tests}


def chosen_budgets(test: dict[str, list[float]], validation: dict[str, list[float]]) -> dict[str, dict]:
    """Per type, the loop count with the best validation accuracy (the fewest on a tie) and the test
    accuracy read there: the test items never choose the budget they are measured at."""
    chosen = {name: accuracies.index(max(accuracies)) + 1 for name, accuracies in validation.items()}
    return {
        "validation_accuracy_by_loop": validation,
        "loops_chosen": chosen,
        "accuracy_at_chosen": {name: test[name][loops - 1] for name, loops in chosen.items()},
    }


def check_lengths(data: PaperData, model: RecurrentDepthTransformer, pad_to: int | None, checkpoint: Path) -> None:
    """Inputs must fit ``--pad-to`` and the model's position table (learned or sinusoidal)."""
    longest = max(queries.tokens.shape[1] for queries in data.tests.values())
    if pad_to is not None and pad_to < longest:
        raise CheckpointError(f"{data.directory}: --pad-to {pad_to} is shorter than the longest input ({longest} tokens)")
    config = model.config
    if config.positions in ("learned", "sinusoidal") and (pad_to or longest) > config.n_positions:
        raise CheckpointError(
            f"{checkpoint}: the position table holds {config.n_positions} positions, inputs are {pad_to or longest} tokens long"
        )


def in_project_layout(model: RecurrentDepthTransformer, vocab: PaperVocabulary) -> RecurrentDepthTransformer:
    """A paper model with its embedding rows (and so its tied readout) reordered into this project's layout
    (entities, relations, padding: ``rdt_core.data.paper``), the paper's other tokens (``<mask>``, ``</a>``,
    ...) dropped: the same function on the queries, in the ids the analysis reads."""
    rows = [index for prefix in ("<e_", "<r_") for index, token in enumerate(vocab.tokens) if token.startswith(prefix)]
    ours = RecurrentDepthTransformer(model.config, Vocabulary(vocab.n_entities, vocab.n_relations))
    weights = model.state_dict()
    weights["embed.weight"] = weights["embed.weight"][rows + [vocab.pad_token]]  # (n_e + n_r + 1, D)
    ours.load_state_dict(weights)
    return ours.eval()


def end_of_run_analysis(
    model: RecurrentDepthTransformer, data: PaperData, trained: dict, max_loops: int, n_validation: int, seed: int,
    device: str,
) -> dict:
    """The platform's end-of-run analysis of ``model`` (this project's layout) on the directory: every
    evaluation metric (accuracy per loop and hop count, loop budgets chosen on validation, halting beside
    equal cost) and every instrument (nulls, lens, patching with its null), as the run's tables. ``trained``
    holds the train and eval keys the analysis reads (the loop count trained at, the halting rules). Where
    the directory's items are not entity-relation queries following its atomic facts, the reason instead."""
    sizes = sizes_of(data)
    try:
        data_config = DataConfig(paper_dir=str(data.directory), n_val_queries=max(1, n_validation), seed=seed, **sizes)
        splits = splits_of(data, data_config)
        config = ExperimentConfig.from_dict(
            {"model": {**model.config.model_dump(), "max_loops": max_loops}, "data": data_config.model_dump(), **trained}
        )
    except ConfigError as error:
        return {"not_applicable": error.message}
    eval_sets = device_eval_sets(splits, config, torch.device(device))
    model = model.to(device)
    found = evaluate(model, eval_sets, config, with_grid=True)
    found.update(final_analysis(model, splits, eval_sets, config, torch.device(device)))
    return {"tables": metric_names.tables(found)}


def analysis_settings(
    trained_config: ExperimentConfig | None, overrides: dict[str, Any], max_loops: int
) -> dict[str, dict[str, Any]]:
    """The train and eval keys the end-of-run analysis reads: a checkpoint of this project's own, else
    what the paper's weights do not show (``--set train.*`` / ``eval.*``, the loops trained at capped at
    ``max_loops``). Checked here, before anything is computed, as a sweep checks its configs: a bad key
    or value is a one-line refusal, not an analysis marked not applicable after the accuracies."""
    if trained_config is not None:
        return {"train": trained_config.train.model_dump(), "eval": trained_config.eval.model_dump()}
    trained: dict[str, dict[str, Any]] = {"train": {"train_loops": min(TrainConfig().train_loops, max_loops)}}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section in ("train", "eval"):
            trained.setdefault(section, {})[name] = value
    ExperimentConfig.from_dict({**trained, "model": {"max_loops": max_loops}})  # raises ConfigError
    return trained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rdt_core.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint of this project or one in the paper's layout")
    parser.add_argument("--data", type=Path, required=True, help="a data directory in one of the paper's layouts")
    parser.add_argument("--max-loops", type=int, required=True, help="evaluate after every loop 1..N")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--pad-to", type=int, help="pad every input to this many tokens (the paper's --max_len)")
    parser.add_argument("--n-validation", type=int, default=0,
                        help="hold out this many items of each type (seeded) to choose its loop budget on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation draw")
    parser.add_argument("--no-analysis", action="store_true", help="accuracy by loop only: no end-of-run analysis")
    args = parser.parse_args(argv)
    try:
        if args.max_loops < 1 or args.batch_size < 1 or args.n_validation < 0:
            raise CheckpointError(f"{args.checkpoint}: --max-loops and --batch-size must be at least 1, --n-validation at least 0")
        overrides = dict(parse_override(item) for item in args.overrides)
        data = read_paper_data(args.data, args.n_validation, args.seed, with_train=not args.no_analysis)
        model, trained_config = load_any_checkpoint(args.checkpoint, data.vocab, overrides)
        trained_here = trained_config is not None
        tests, validation = data.tests, data.validation
        if trained_here:  # this project's ids and layout (rdt_core.data.paper)
            if args.pad_to is not None:
                raise CheckpointError(f"{args.checkpoint}: --pad-to applies to a paper checkpoint (the paper's right padding)")
            depth = max(int(queries.hops.max()) for queries in tests.values())
            tests = types_in_layout(tests, data.vocab, depth)
            validation = types_in_layout(validation, data.vocab, depth)
        else:
            check_lengths(data, model, args.pad_to, args.checkpoint)
        if not args.out.parent.is_dir():
            raise CheckpointError(f"{args.out}: its directory does not exist")
        trained = None if args.no_analysis else analysis_settings(trained_config, overrides, args.max_loops)
    except ConfigError as error:
        return refuse(f"{args.checkpoint}: {error}")
    except (CheckpointError, PaperFormatError) as error:
        return refuse(error)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    accuracy = accuracy_by_loop(model, tests, args.max_loops, args.batch_size, args.pad_to, device)
    result = {
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "layout": data.layout,
        "ids": "this project's" if trained_here else "the paper's",
        "max_loops": args.max_loops,
        "accuracy_by_loop": accuracy,
        "n_items": {name: len(queries) for name, queries in tests.items()},
        "split_of_type": {name: data.split_of(name) for name in tests},
    }
    if set(data.tests) - set(tests):  # a model trained here answers entity-relation queries only
        result["types_left_out"] = sorted(set(data.tests) - set(tests))
    if validation:
        result.update(chosen_budgets(accuracy, accuracy_by_loop(model, validation, args.max_loops, args.batch_size,
                                                                args.pad_to, device)))
    if trained is not None:
        analysed = model if trained_here else in_project_layout(model, data.vocab)
        result["analysis"] = end_of_run_analysis(analysed, data, trained, args.max_loops, args.n_validation,
                                                 args.seed, device)
    scratch = args.out.with_name(f".{args.out.name}.partial")  # renamed whole: a kill leaves no half file
    scratch.write_text(json.dumps(result, indent=2) + "\n")
    scratch.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
