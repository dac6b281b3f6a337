"""The paper presets (docs/configs/paper_*.yaml) and sweeps (sweeps/paper_*.yaml) hold the paper's settings.

Each row of the paper's setting (its code, OSU-NLP-Group/Loop-Think-Generalize: train_systematicity.py and
train_extrapolation.py with their defaults) names the keys that express it and the value each must hold;
the presets are read through the project's own config reader, and the sweeps' bases must be the presets
key for key. Fast: no Ray, no training, and no paper-size graph is built (the spec loader's graph check is
stubbed for the paper-size specs; the shrunk commands in the headers build their tiny graphs for real).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import rdt_core.sweep.spec as spec_module
from rdt_core.config import ExperimentConfig, flatten, parse_override, read_yaml_mapping
from rdt_core.sweep.spec import load_spec
from rdt_core.train.__main__ import parse_config

REPO_ROOT = Path(__file__).resolve().parents[2]
PRESETS = {name: REPO_ROOT / "docs" / "configs" / f"paper_{name}.yaml" for name in ("systematicity", "depth")}
SWEEPS = {name: REPO_ROOT / "sweeps" / f"paper_{name}.yaml" for name in ("systematicity", "depth")}

# The rows the two runs of the paper's code share.
BOTH = {
    "block: GPT-2 block": {"model.block": "gpt2"},
    "block: n_layer blocks looped R times, nothing before or after": {
        "model.architecture": "looped", "model.n_prelude_layers": 0, "model.n_coda_layers": 0,
    },
    "block: argmax over the whole vocabulary": {"model.readout": "vocabulary"},
    "size: d_model 768, 12 heads, 4 layers": {"model.d_model": 768, "model.n_heads": 12, "model.n_core_layers": 4},
    "recipe: 2,000 warm-up steps, then in effect constant": {"train.warmup_steps": 2000, "train.lr_schedule": "constant"},
    "recipe: batch 128": {"train.batch_size": 128},
}

# row of the paper's setting -> {dotted key: the paper's value}. Where the paper's value cannot be
# expressed exactly, the nearest, as the preset's header says (marked "nearest" or "in effect").
PAPER = {
    "systematicity": {
        **BOTH,
        "block: learned positions, GPT2Config n_positions 5": {"model.positions": "learned", "model.n_positions": 5},
        "block: no input injection": {"model.injection": "none"},
        "block: GPT-2 initialisation, output projections not zeroed": {"model.zero_init_output": False},
        # in effect: the paper's loop leaves the model in eval mode after its first epoch's evaluation
        "block: dropout 0.1 in its first epoch only": {"model.dropout": 0.0},
        "size: R = 4 (its default)": {"train.train_loops": 4, "train.loops_sampling": "fixed"},
        "recipe: AdamW lr 1e-4, weight decay 0.1, torch's betas": {
            "train.lr": 1e-4, "train.weight_decay": 0.1, "train.adam_beta2": 0.999,
        },
        "recipe: label smoothing 0.1": {"train.label_smoothing": 0.1},
        "recipe: no gradient clipping": {"train.grad_clip": 0.0},
        "data: Grokked-Transformer composition set": {"data.construction": "composition"},
        "data: 2,000 entities, 200 relations, 20 per entity": {
            "data.n_entities": 2000, "data.n_relations": 200, "data.out_degree": 20,
        },
        "data: 5% of atomic facts ood": {"data.ood_fraction": 0.05},
        "data: phi 7.2, 2-hop queries": {"data.inferred_ratio": 7.2, "data.train_max_hops": 2, "data.test_max_hops": 2},
        # nearest: the graph holds ~1,900-2,100 distinct ood 2-hop queries (by seed), shared by test and validation
        "data: test types up to 3,000 items": {
            "data.n_test_queries": 1500, "data.n_val_queries": 300, "eval.n_train_eval_per_hop": 3000,
        },
        "length: to epoch 5,400 of 2,450 steps": {"train.steps": 5400 * 2450},
        "length: evaluated every 10 epochs, a checkpoint every 100": {
            "train.eval_every": 10 * 2450, "train.checkpoint_every": 100 * 2450,
        },
    },
    "depth": {
        **BOTH,
        "block: positions none (its default), max_len 50": {"model.positions": "none", "model.n_positions": 50},
        "block: no input injection (its default)": {"model.injection": "none"},
        "block: --c_scale 0.0, output projections zeroed": {"model.zero_init_output": True},
        # in effect: --dropout 0.0 on embeddings, and the blocks' 0.1 only in each stage's first epoch
        "block: dropout": {"model.dropout": 0.0},
        "recurrence: Poisson R of mean 4 clipped to 2..8": {
            "train.loops_sampling": "poisson", "train.train_loops": 4,
            "train.sampled_loops_min": 2, "train.sampled_loops_max": 8,
        },
        "recurrence: evaluated with up to 8 loops (its dynamic_max)": {"model.max_loops": 8},
        "recipe: AdamW lr 1e-4, weight decay 0.01, torch's betas": {
            "train.lr": 1e-4, "train.weight_decay": 0.01, "train.adam_beta2": 0.999,
        },
        "recipe: no label smoothing": {"train.label_smoothing": 0.0},
        "recipe: --max_grad_norm 0.0, no clipping": {"train.grad_clip": 0.0},
        "data: 200 entities, 10 relations, all 10 per entity, permutations": {
            "data.construction": "permutation", "data.n_entities": 200, "data.n_relations": 10, "data.out_degree": None,
        },
        "data: chains 2-40 hops": {"data.train_max_hops": 40, "data.test_max_hops": 40, "data.ood_fraction": 0.0},
        "data: 15,000 train and 750 test per hop": {"data.n_train_per_hop": 15000, "data.n_test_queries": 750},
        # nearest: the paper's curriculum reads its 750-item test split; here a validation split of that size
        "data: no validation split": {"data.n_val_queries": 750},
        "curriculum: hops <= k until k-hop accuracy > 0.95": {
            "train.curriculum": True, "train.curriculum_signal": "validation", "train.curriculum_level": 0.95,
        },
        "curriculum: fresh optimiser and warm-up per stage": {"train.curriculum_restart": True},
        "curriculum: stage lr x 0.9, at least 2e-5": {"train.curriculum_lr_decay": 0.9, "train.curriculum_lr_floor": 2e-5},
    },
}

CASES = [(name, row, key, value) for name, rows in PAPER.items() for row, keys in rows.items() for key, value in keys.items()]


def read_preset(name: str) -> tuple[dict, ExperimentConfig]:
    raw = read_yaml_mapping(PRESETS[name], "config file")
    return raw, ExperimentConfig.from_dict(raw)


@pytest.mark.parametrize("name, row, key, expected", CASES, ids=[f"{case[0]}: {case[2]}" for case in CASES])
def test_each_row_of_the_paper_holds_its_value(name, row, key, expected):
    _, config = read_preset(name)
    assert config.to_flat_dict()[key] == expected, f"{name}: {row}: {key}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_paper_values_are_written_in_the_preset_not_left_to_defaults(name):
    """A default that changes later must not change the paper's setting: each key is in the file itself
    (those that state "nothing before or after", "all relations" and "no ood facts" excepted: the
    defaults are those, and the schema's own validators keep them meaningful)."""
    raw, _ = read_preset(name)
    written = flatten(raw)
    implicit = {"model.n_prelude_layers", "model.n_coda_layers", "data.out_degree", "data.ood_fraction",
                "train.loops_sampling"}
    missing = [key for rows in PAPER[name].values() for key in rows if key not in written and key not in implicit]
    assert not missing


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_file_heads_with_question_command_and_an_estimated_cost(name):
    for path in (PRESETS[name], SWEEPS[name]):
        header = path.read_text().split("\n\n")[0]
        for part in ("Question:", "Command:", "Cost:", "estimate"):
            assert part in header, f"{path.name}: {part}"


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_the_sweep_base_is_the_preset_key_for_key(name):
    spec_raw = read_yaml_mapping(SWEEPS[name], "spec file")
    preset_raw, _ = read_preset(name)
    assert spec_raw["base"] == preset_raw


@pytest.mark.parametrize(
    "name, key, values, metric",
    [
        ("systematicity", "train.train_loops", [1, 2, 4, 6, 8], "acc/ood_val/chosen"),
        ("depth", "train.loops_sampling", ["fixed", "poisson"], "curriculum/max_hops"),
    ],
)
def test_the_sweep_spec_loads_with_its_grid_on_gpus(name, key, values, metric, monkeypatch):
    """Through ``load_spec`` (schema, consistency, every grid value's config, the metric), the paper-size
    graphs left unbuilt: ``test_spec.py`` builds them for every spec."""
    monkeypatch.setattr(spec_module, "check_graphs", lambda spec, path: None)
    spec = load_spec(SWEEPS[name])
    assert spec.grid() == {key: values} and spec.sampler.type == "grid" and spec.trial_count() == len(values)
    assert spec.metric == metric and spec.mode == "max" and spec.seeds == 1
    assert spec.resources.gpus_per_worker == 1 and spec.resources.workers_per_trial == 1
    assert spec.max_concurrent_trials == len(values)
    if name == "systematicity":  # R = 1 is the paper's vanilla model: 4 distinct layers run once
        assert spec.base_config().model.architecture == "looped"


def shrunk_overrides(path: Path) -> list[str]:
    """The ``--set`` items of the header's "CPU, shrunk" command, up to the next header field."""
    lines = path.read_text().splitlines()
    start = next(index for index, line in enumerate(lines) if "CPU, shrunk" in line)
    command = []
    for line in lines[start:]:
        if command and re.match(r"^# \w+:", line):
            break
        command.append(line)
    return re.findall(r"--set (\S+)", " ".join(command))


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_the_shrunk_sweep_command_in_the_header_is_valid_on_a_cpu(name):
    """The header's CPU command, graphs built for real (they are tiny): what it runs is the paper's sweep
    with only sizes, lengths and resources changed."""
    overrides = shrunk_overrides(SWEEPS[name])
    spec = load_spec(SWEEPS[name], overrides)
    assert spec.resources.gpus_per_worker == 0
    changed = {key.removeprefix("base.") for key, _ in map(parse_override, overrides) if key.startswith("base.")}
    assert changed <= {"data.n_entities", "data.n_relations", "data.out_degree", "data.ood_fraction",
                       "data.inferred_ratio", "data.n_train_per_hop", "data.train_max_hops", "data.test_max_hops",
                       "data.n_test_queries", "data.n_val_queries", "model.d_model", "model.n_heads",
                       "train.steps", "train.eval_every", "eval.n_train_eval_per_hop"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_shrunk_run_command_in_the_header_is_valid(name):
    """``python -m rdt_core.train PRESET --set ...`` as the header gives it: validated and its (tiny)
    splits built by the command's own reader."""
    config = parse_config(PRESETS[name], shrunk_overrides(PRESETS[name]))
    assert config.model.d_model == 32 and config.train.steps == 20
    assert config.model.block == "gpt2" and config.model.readout == "vocabulary"
