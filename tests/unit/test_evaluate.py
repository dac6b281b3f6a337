"""``python -m rdt_core.evaluate`` on a checkpoint written in the paper's layout: its per-loop accuracies
equal those of a loop of transformers' own GPT2Block holding the same weights (the paper's forward), with
and without padding; a checkpoint of this project evaluates with its own forward; a validation part of each
type chooses the loop budget; bad input exits 2 with one line and writes nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rdt_core.config import ExperimentConfig
from rdt_core.data.tokens import Vocabulary
from rdt_core.data.paper import read_paper_data, types_in_layout
from rdt_core.evaluate import in_project_layout, load_any_checkpoint, main
from rdt_core.model.transformer import RecurrentDepthTransformer, build_model
from tests.unit.test_gpt2_reference import gpt2_blocks

N_ENTITIES, N_RELATIONS, MAX_LOOPS, HEADS = 12, 3, 4, 4
# The paper's vocab.json has no <pad>: its loader puts one first, so the file's token i has id i + 1.
TOKENS = ["<pad>", *(f"<e_{index}>" for index in range(N_ENTITIES)), *(f"<r_{index}>" for index in range(N_RELATIONS))]
TYPES = {"id_atomic": 1, "test_inferred_iid": 2, "test_inferred_ood": 2}  # type -> relations per item


def paper_block_model(positions: str, injection: str) -> RecurrentDepthTransformer:
    """Our model in the paper's configuration with weights far from GPT-2's small init (std 0.3)."""
    torch.manual_seed(0)
    config = ExperimentConfig.from_dict({
        "model": {"block": "gpt2", "readout": "vocabulary", "zero_init_output": False, "d_model": 32, "n_heads": HEADS,
                  "n_core_layers": 2, "positions": positions, "n_positions": 8, "injection": injection},
        "data": {"n_entities": N_ENTITIES, "n_relations": N_RELATIONS},
    })
    model = build_model(config, Vocabulary(N_ENTITIES, N_RELATIONS)).eval()
    assert model.vocab.size == len(TOKENS)
    with torch.no_grad():  # norm gains around 1, so that answers vary by item and loop (not one token for all)
        for name, parameter in model.named_parameters():
            parameter.normal_(mean=1.0 if "norm.weight" in name else 0.0, std=0.3)
    return model


def paper_state_dict(model: RecurrentDepthTransformer, compiled: bool) -> dict[str, torch.Tensor]:
    """The model's weights under the paper's RecurrentGPT2Block names (Conv1D weights transposed), with
    the causal-mask buffer older transformers versions saved, and torch.compile's prefix if asked."""
    state = {"token_embedding.weight": model.embed.weight, "lm_head.weight": model.embed.weight,
             "ln_f.weight": model.final_norm.weight, "ln_f.bias": model.final_norm.bias}
    if model.position_embed is not None:
        state["position_embedding.weight"] = model.position_embed.weight
    elif model.config.positions == "sinusoidal":
        state["pe"] = model.position_table  # the paper registers its table as a (saved) buffer
    for index, layer in enumerate(model.core[0]):
        for theirs, mine, transposed in (("ln_1", layer.attn_norm, False), ("attn.c_attn", layer.qkv, True),
                                         ("attn.c_proj", layer.attn_out, True), ("ln_2", layer.mlp_norm, False),
                                         ("mlp.c_fc", layer.mlp_in, True), ("mlp.c_proj", layer.mlp_out, True)):
            state[f"blocks.{index}.{theirs}.weight"] = mine.weight.T if transposed else mine.weight
            state[f"blocks.{index}.{theirs}.bias"] = mine.bias
        state[f"blocks.{index}.attn.bias"] = torch.ones(8, 8).tril()[None, None]
    prefix = "_orig_mod." if compiled else ""
    return {prefix + key: value.detach().clone().contiguous() for key, value in state.items()}


@torch.no_grad()
def reference_logits(model: RecurrentDepthTransformer, tokens: torch.Tensor, n_loops: int) -> torch.Tensor:
    """The paper's forward with transformers' GPT2Block: embeddings (+ positions), the blocks looped
    (the input added again before every loop after the first where injection is on), the causal mask plus
    -10000 on padding keys (id 0), ln_f and the tied head at the last position: -> (n_loops, B, V)."""
    blocks = gpt2_blocks(model)
    length = tokens.shape[1]
    embedded = model.embed(tokens)  # (B, T, D)
    if model.position_embed is not None:
        embedded = embedded + model.position_embed.weight[:length]
    elif model.config.positions == "sinusoidal":
        embedded = embedded + model.position_table[:length]
    causal = torch.full((length, length), torch.finfo(torch.float32).min).triu(1)[None, None]  # (1, 1, T, T)
    mask = causal + (tokens == 0).float()[:, None, None, :] * -10000.0  # (B, 1, T, T)
    hidden, logits = embedded, []
    for loop in range(n_loops):
        if loop > 0 and model.config.injection == "add":
            hidden = hidden + embedded
        for block in blocks:
            out = block(hidden, attention_mask=mask)
            hidden = out[0] if isinstance(out, tuple) else out
        logits.append(model.final_norm(hidden[:, -1]) @ model.embed.weight.T)
    return torch.stack(logits)


def write_paper_directory(directory: Path, model: RecurrentDepthTransformer, pad_to: int | None = None) -> dict[str, list[float]]:
    """A composition directory whose answers the reference gets right at varied loops; returns the
    reference's accuracy per type after each loop."""
    directory.mkdir()
    generator = torch.Generator().manual_seed(1)
    items, expected = [], {}
    for paper_type, n_relations in TYPES.items():
        heads = torch.randint(1, 1 + N_ENTITIES, (10, 1), generator=generator)
        relations = torch.randint(1 + N_ENTITIES, len(TOKENS), (10, n_relations), generator=generator)
        tokens = torch.cat([heads, relations], dim=1)  # (10, 1 + k): one length per type
        padded = tokens if pad_to is None else torch.nn.functional.pad(tokens, (0, pad_to - tokens.shape[1]))
        predicted = reference_logits(model, padded, MAX_LOOPS).argmax(-1)  # (N, 10)
        answers = predicted[torch.arange(10) % MAX_LOOPS, torch.arange(10)]  # right at loop (i mod N) + 1 ...
        answers = (answers + torch.arange(10) % 2) % len(TOKENS)  # ... or, for odd i, a token beside it
        answers = 1 + (answers - 1) % N_ENTITIES  # an entity (ids 1..12), as every answer of the paper's data is
        expected[paper_type] = (predicted == answers).double().mean(1).tolist()
        for row, answer in zip(tokens.tolist(), answers.tolist()):
            text = "".join(TOKENS[token] for token in row)
            items.append({"input_text": text, "target_text": text + TOKENS[answer] + "</a>", "type": paper_type})
    (directory / "vocab.json").write_text(json.dumps(TOKENS[1:]))
    (directory / "train.json").write_text(json.dumps(items[:3]))
    (directory / "test.json").write_text(json.dumps(items))
    return expected


def run(argv: list[str], capsys) -> tuple[int, str]:
    status = main([str(part) for part in argv])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "positions, injection, compiled", [("learned", "none", False), ("none", "add", True), ("sinusoidal", "add", False)]
)
def test_a_paper_checkpoint_evaluates_to_the_accuracies_of_a_gpt2block_loop(tmp_path, capsys, positions, injection, compiled):
    model = paper_block_model(positions, injection)
    expected = write_paper_directory(tmp_path / "data", model)
    assert any(0 < value < 1 for values in expected.values() for value in values)  # a test that can fail
    torch.save({"model_state_dict": paper_state_dict(model, compiled), "epoch": 3}, tmp_path / "paper.pt")
    out = tmp_path / "result.json"
    status, err = run([tmp_path / "paper.pt", "--data", tmp_path / "data", "--max-loops", MAX_LOOPS,
                       "--set", f"model.n_heads={HEADS}", "--set", f"model.injection={injection}", "--out", out,
                       "--batch-size", 7], capsys)
    assert status == 0, err
    result = json.loads(out.read_text())
    assert list(result["accuracy_by_loop"]) == list(TYPES)
    for paper_type, accuracies in expected.items():
        assert result["accuracy_by_loop"][paper_type] == pytest.approx(accuracies, abs=1e-9)
    assert result["split_of_type"]["test_inferred_ood"] == "ood" and result["n_items"]["id_atomic"] == 10


def test_padding_to_a_fixed_length_reads_at_a_padding_position_as_the_paper_does(tmp_path, capsys):
    model = paper_block_model("learned", "none")
    expected = write_paper_directory(tmp_path / "data", model, pad_to=6)
    torch.save({"model_state_dict": paper_state_dict(model, False)}, tmp_path / "paper.pt")
    out = tmp_path / "result.json"
    status, err = run([tmp_path / "paper.pt", "--data", tmp_path / "data", "--max-loops", MAX_LOOPS, "--set", f"model.n_heads={HEADS}",
                       "--pad-to", 6, "--out", out], capsys)
    assert status == 0, err
    result = json.loads(out.read_text())["accuracy_by_loop"]
    for paper_type, accuracies in expected.items():
        assert result[paper_type] == pytest.approx(accuracies, abs=1e-9)


def test_a_validation_part_of_each_type_chooses_the_loop_budget_the_rest_is_read_at(tmp_path, capsys):
    model = paper_block_model("none", "add")
    whole = write_paper_directory(tmp_path / "data", model)
    torch.save({"model_state_dict": paper_state_dict(model, False)}, tmp_path / "paper.pt")
    out = tmp_path / "result.json"
    status, err = run([tmp_path / "paper.pt", "--data", tmp_path / "data", "--max-loops", MAX_LOOPS, "--set", f"model.n_heads={HEADS}",
                       "--set", "model.injection=add", "--n-validation", 4, "--seed", 3, "--out", out], capsys)
    assert status == 0, err
    result = json.loads(out.read_text())
    for paper_type in TYPES:
        test, validation = result["accuracy_by_loop"][paper_type], result["validation_accuracy_by_loop"][paper_type]
        assert result["n_items"][paper_type] == 6
        assert [(6 * t + 4 * v) / 10 for t, v in zip(test, validation)] == pytest.approx(whole[paper_type])  # a partition
        chosen = result["loops_chosen"][paper_type]
        assert validation[chosen - 1] == max(validation) and max(validation[: chosen - 1], default=-1) < max(validation)
        assert result["accuracy_at_chosen"][paper_type] == test[chosen - 1]


def test_the_command_runs_as_a_module(tmp_path):
    model = paper_block_model("learned", "none")
    expected = write_paper_directory(tmp_path / "data", model)
    torch.save({"model_state_dict": paper_state_dict(model, False)}, tmp_path / "paper.pt")
    out = tmp_path / "result.json"
    completed = subprocess.run(
        [sys.executable, "-m", "rdt_core.evaluate", str(tmp_path / "paper.pt"), "--data", str(tmp_path / "data"),
         "--max-loops", str(MAX_LOOPS), "--set", f"model.n_heads={HEADS}", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(out.read_text())["accuracy_by_loop"]["id_atomic"] == pytest.approx(expected["id_atomic"], abs=1e-9)
    assert "batch" in completed.stderr  # the progress bar


def bad_checkpoint(tmp_path: Path, case: str) -> tuple[Path, list[str], str]:
    """A checkpoint (and extra arguments) that must be refused, and what its error line says."""
    model = paper_block_model("learned", "none")
    path, heads = tmp_path / f"{case}.pt", ["--set", f"model.n_heads={HEADS}"]
    if case == "not_a_checkpoint":
        path.write_text("hello")
        return path, heads, "not a checkpoint"
    if case == "unknown_layout":
        torch.save({"weights": paper_state_dict(model, False)}, path)
        return path, heads, "unknown layout: expected model_state_dict"
    torch.save({"model_state_dict": paper_state_dict(model, False)}, path)
    if case == "sine_table":
        model = paper_block_model("sinusoidal", "none")
        torch.save({"model_state_dict": {**paper_state_dict(model, False), "pe": torch.zeros(8, 32)}}, path)
        return path, heads, "key pe is not the sine/cosine table"
    if case == "no_heads":
        return path, [], "give --set model.n_heads=H"
    if case == "vocabulary":  # a vocab.json with one token more than the weights hold
        vocab = tmp_path / "data" / "vocab.json"
        vocab.write_text(json.dumps(json.loads(vocab.read_text()) + ["<extra>"]))
        return path, heads, "token_embedding.weight holds 16 tokens, vocab.json gives 17"
    if case == "analysis_loops":  # the analysis' settings against --max-loops 2, checked before any accuracy
        return path, heads + ["--set", "train.train_loops=3"], "train.train_loops (3) exceeds model.max_loops (2)"
    return path, heads + ["--set", "model.n_heads=5"], "model"  # 32 is no multiple of 5 even heads


@pytest.mark.parametrize("case", ["not_a_checkpoint", "unknown_layout", "no_heads", "vocabulary", "bad_heads", "sine_table",
                                  "analysis_loops"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, case):
    write_paper_directory(tmp_path / "data", paper_block_model("learned", "none"))
    path, extra, message = bad_checkpoint(tmp_path, case)
    out = tmp_path / "result.json"
    status, err = run([path, "--data", tmp_path / "data", "--max-loops", 2, "--out", out, *extra], capsys)
    assert status == 2
    assert err.startswith(f"error: {path}: ") and len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_a_checkpoint_of_this_project_evaluates_in_its_own_layout(tmp_path, capsys):
    """A model trained here reads this project's ids (entities, then relations, padding last; inputs
    left-padded to the deepest item), whatever ids the directory's vocab.json gives."""
    from rdt_core.train.checkpoints import save_checkpoint

    model = paper_block_model("learned", "none")
    write_paper_directory(tmp_path / "data", model)
    save_checkpoint(model, ExperimentConfig.from_dict({"model": model.config.model_dump(),
                                                       "data": {"n_entities": N_ENTITIES, "n_relations": N_RELATIONS}}),
                    tmp_path / "ours")
    out = tmp_path / "result.json"
    status, err = run([tmp_path / "ours" / "model.pt", "--data", tmp_path / "data", "--max-loops", MAX_LOOPS, "--out", out], capsys)
    assert status == 0, err
    result = json.loads(out.read_text())
    assert result["ids"] == "this project's"
    assert "not_applicable" in result["analysis"]  # random answers: no graph to analyse on
    items = json.loads((tmp_path / "data" / "test.json").read_text())
    ours = {token: index for index, token in enumerate(TOKENS[1:])}  # <e_i> -> i, <r_j> -> 12 + j
    for paper_type in TYPES:
        rows = [re.findall(r"<[^>]+>", item["target_text"]) for item in items if item["type"] == paper_type]
        tokens = torch.tensor([[len(TOKENS) - 1] * (3 - len(row[:-2])) + [ours[token] for token in row[:-2]] for row in rows])
        answers = torch.tensor([ours[row[-2]] for row in rows])
        with torch.no_grad():
            expected = (model(tokens, MAX_LOOPS).argmax(-1) == answers).double().mean(1).tolist()
        assert result["accuracy_by_loop"][paper_type] == pytest.approx(expected, abs=1e-9)


def test_a_paper_model_reordered_into_this_projects_layout_computes_the_same_logits(tmp_path):
    """The analysis reads a paper checkpoint in this project's ids: the reordered model's logits equal the
    paper model's on the same queries, row for row (no position table: the layouts pad differently)."""
    model = paper_block_model("none", "add")
    directory = tmp_path / "data"
    write_paper_directory(directory, model)
    torch.save({"model_state_dict": paper_state_dict(model, False)}, tmp_path / "paper.pt")
    data = read_paper_data(directory)
    paper, _ = load_any_checkpoint(tmp_path / "paper.pt", data.vocab, {"model.n_heads": HEADS})
    ours = in_project_layout(paper, data.vocab)
    theirs = data.tests["test_inferred_iid"]
    mine = types_in_layout({"iid": theirs}, data.vocab, 2)["iid"]
    kept = [index for prefix in ("<e_", "<r_") for index, token in enumerate(data.vocab.tokens) if token.startswith(prefix)]
    with torch.no_grad():
        expected = paper(theirs.tokens, MAX_LOOPS)[..., kept + [0]]  # (N, B, n_e + n_r + 1)
        assert torch.allclose(ours(mine.tokens, MAX_LOOPS), expected, atol=1e-5)


def test_a_paper_checkpoint_on_a_directory_of_consistent_facts_gets_the_whole_end_of_run_analysis(tmp_path, capsys):
    """Items that follow the directory's atomic facts let the graph be rebuilt: halting beside equal cost,
    the nulls, the lens and patching with its null come as the run's tables."""
    from tests.unit.test_paper_data import consistent_composition

    torch.manual_seed(0)
    config = ExperimentConfig.from_dict({
        "model": {"block": "gpt2", "readout": "vocabulary", "zero_init_output": False, "d_model": 16, "n_heads": 2,
                  "positions": "learned", "n_positions": 8, "injection": "none"},
        "data": {"n_entities": 8, "n_relations": 2},
    })
    model = build_model(config, Vocabulary(8, 2))  # 11 rows: the directory's 10 tokens and the loader's <pad>
    torch.save({"model_state_dict": paper_state_dict(model, False)}, tmp_path / "paper.pt")
    out = tmp_path / "result.json"
    status, err = run([tmp_path / "paper.pt", "--data", consistent_composition(tmp_path), "--max-loops", 3,
                       "--set", "model.n_heads=2", "--set", "train.train_loops=2", "--out", out], capsys)
    assert status == 0, err
    tables = json.loads(out.read_text())["analysis"]["tables"]
    assert {"halting", "lens", "patching", "nulls", "accuracy_by_loop"} <= set(tables)
    assert {row["split"] for row in tables["accuracy_by_loop"]} >= {"id", "train"}
    assert all(row["trained_loops"] is not None for row in tables["accuracy"] if "trained_loops" in row)
