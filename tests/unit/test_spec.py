"""Invalid specs stop before Ray or MLflow: exit 2, one line naming the file and the key."""

import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

from rdt_core.sweep import cli
from rdt_core.sweep.spec import REPLICATE_KEY, SpecError, load_spec, trial_config, trial_params, validate_spec
from tests.helpers import OUTSIDE_SETTINGS, REPO_ROOT, RUN_PY, isolated_env, load_smoke_spec, write_spec


def smoke_with(**changes) -> dict:
    spec = load_smoke_spec()
    for dotted, value in changes.items():
        *sections, leaf = dotted.split("__")
        node = spec
        for section in sections:
            node = node.setdefault(section, {})
        if value is ...:
            node.pop(leaf)
        else:
            node[leaf] = value
    return spec


INVALID = {
    "unknown top-level key": (smoke_with(num_trials=3), "num_trials"),
    "unknown config key": (smoke_with(base__train__learning_rate=0.1), "base.train.learning_rate"),
    "wrong type": (smoke_with(num_samples="many"), "num_samples"),
    "wrong type in config": (smoke_with(base__model__d_model="wide"), "base.model.d_model"),
    "out of range": (smoke_with(num_samples=0), "num_samples"),
    "out of range in config": (smoke_with(base__train__lr=-1.0), "base.train.lr"),
    "out of range in resources": (smoke_with(resources__workers_per_trial=0), "resources.workers_per_trial"),
    "inverted range": (
        smoke_with(search_space={"train.lr": {"type": "float", "low": 0.1, "high": 0.01}}),
        "search_space.train.lr",
    ),
    "unknown distribution": (
        smoke_with(search_space={"train.lr": {"type": "gaussian", "low": 0.1, "high": 0.2}}),
        "search_space.train.lr",
    ),
    "search key not in config": (
        smoke_with(search_space={"train.loops": {"type": "int", "low": 1, "high": 2}}),
        "search_space.train.loops",
    ),
    "search value out of range": (
        smoke_with(search_space={"train.train_loops": {"type": "int", "low": 2, "high": 9}}),
        "search_space.train.train_loops",
    ),
    "metric nobody reports": (smoke_with(metric="acc/validation"), "metric"),
    "missing name": (smoke_with(name=...), "name"),
    "unknown sampler": (smoke_with(sampler={"type": "bayes"}), "sampler.type"),
    "unknown scheduler": (smoke_with(scheduler={"type": "pbt"}), "scheduler.type"),
    "modes do not match metrics": (smoke_with(metric=["acc/id", "halting/id/mean_loops"]), "mode"),
    "scheduler with several objectives": (
        smoke_with(metric=["acc/id", "halting/id/mean_loops"], mode=["max", "min"], scheduler={"type": "asha"}),
        "scheduler.type",
    ),
    "grid values without the grid sampler": (
        smoke_with(search_space={"train.lr": {"type": "grid", "values": [0.01]}}),
        "search_space.train.lr",
    ),
    "grid sampler over a range": (smoke_with(sampler={"type": "grid"}), "search_space.train.train_loops"),
    "grid size mismatch": (
        smoke_with(sampler={"type": "grid"}, num_samples=5, search_space={"train.lr": {"type": "grid", "values": [0.01, 0.02]}}),
        "num_samples",
    ),
    "fractional GPUs above one": (smoke_with(resources__gpus_per_worker=1.5), "resources"),
    "more GPUs than any node": (smoke_with(resources__gpus_per_worker=64), "resources.gpus_per_worker"),
    "unknown phase diagram": (smoke_with(phase_diagrams=["loss"]), "phase_diagrams.0"),
    "no seeds": (smoke_with(seeds=0), "seeds"),
    "replicates of a searched setting (tpe)": (smoke_with(seeds=3), "seeds"),
    "replicates of a searched setting (nsga2)": (
        smoke_with(seeds=2, sampler={"type": "nsga2"}, metric=["acc/id", "halting/id/mean_loops"], mode=["max", "min"]),
        "seeds",
    ),
    "replicates of an inference-only sweep": (
        smoke_with(seeds=2, sampler={"type": "grid"}, trained_model={"mlflow_run": "0123"}, num_samples=...,
                   search_space={"eval.halt_kl": {"type": "grid", "values": [0.01]}}),
        "seeds",
    ),
    "grid size mismatch with seeds": (
        smoke_with(sampler={"type": "grid"}, num_samples=2, seeds=3,
                   search_space={"train.lr": {"type": "grid", "values": [0.01, 0.02]}}),
        "num_samples",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_spec_names_file_and_key(case, tmp_path):
    raw, key = INVALID[case]
    path = write_spec(tmp_path / "bad.yaml", raw)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}"), message
    assert "\n" not in message


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: smoke\nbase: {model: [1, 2\nmetric: acc/id\n")
    with pytest.raises(SpecError, match=rf"^{path}: line \d+, column \d+: invalid YAML"):
        load_spec(path)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "absent.yaml")


def test_every_spec_in_sweeps_is_valid():
    specs = sorted((REPO_ROOT / "sweeps").glob("*.yaml"))
    assert specs
    for path in specs:
        load_spec(path)


@pytest.mark.parametrize("case", ["missing file", "yaml error", "unknown key", "wrong type", "out of range"])
def test_cli_exits_2_with_one_line_and_creates_nothing(case, tmp_path):
    """Through the real command: nothing is started and no MLflow store is created."""
    path = tmp_path / "spec.yaml"
    expected_key = {
        "missing file": "no such spec file",
        "yaml error": "invalid YAML",
        "unknown key": "base.train.learning_rate",
        "wrong type": "num_samples",
        "out of range": "base.train.lr",
    }[case]
    if case == "yaml error":
        path.write_text("name: [smoke\n")
    elif case == "unknown key":
        write_spec(path, smoke_with(base__train__learning_rate=0.1))
    elif case == "wrong type":
        write_spec(path, smoke_with(num_samples="many"))
    elif case == "out of range":
        write_spec(path, smoke_with(base__train__lr=-1.0))
    env = isolated_env(tmp_path)
    completed = subprocess.run(
        [sys.executable, str(RUN_PY), str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and expected_key in lines[0], completed.stderr
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "ray_results").exists()


@pytest.fixture
def dry_run_env(tmp_path, monkeypatch) -> dict[str, str]:
    """The environment of a dry run in process, isolated as a subprocess would be (``isolated_env``)."""
    env = isolated_env(tmp_path)
    for key in OUTSIDE_SETTINGS:
        monkeypatch.delenv(key, raising=False)
    for key in ("RAY_TMPDIR", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.chdir(tmp_path)
    return env


@pytest.mark.parametrize("name", sorted(path.name for path in (REPO_ROOT / "sweeps").glob("*.yaml")))
def test_every_spec_passes_dry_run_without_starting_anything(name, dry_run_env, tmp_path, capsys):
    """In process (the command's own ``main``), so that Ray and MLflow are imported once for all specs."""
    env = dry_run_env
    assert cli.main([str(REPO_ROOT / "sweeps" / name), "--dry-run"]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert plan["trials"] >= 1 and plan["objectives"] and plan["tracking_uri"] == env["MLFLOW_TRACKING_URI"]
    assert plan["optuna_storage"] == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()
    assert not ray.is_initialized() and not any(Path(env["RAY_TMPDIR"]).iterdir())  # Ray was never started


def test_set_overrides_spec_keys_and_search_bounds(tmp_path):
    spec = load_spec(
        REPO_ROOT / "sweeps" / "smoke.yaml",
        ["num_samples=2", "base.train.steps=50", "search_space.train.lr.high=0.02",
         "search_space.train.train_loops={type: choice, values: [3]}"],
    )
    assert spec.num_samples == 2 and spec.base["train"]["steps"] == 50
    assert spec.search_space["train.lr"].high == 0.02
    assert spec.search_space["train.train_loops"].values == [3]


def test_set_adds_a_search_space_entry_by_its_dotted_config_key():
    spec = load_spec(REPO_ROOT / "sweeps" / "smoke.yaml",
                     ["search_space.train.loops_sampling={type: choice, values: [fixed, poisson]}"])
    assert spec.search_space["train.loops_sampling"].values == ["fixed", "poisson"]


@pytest.mark.parametrize(
    "item, key",
    [("num_samples=-1", "num_samples"), ("base.train.nope=1", "base.train.nope"),
     ("search_space.train.nope.high=1", "search_space.train.nope"), ("num_samples", "KEY=VALUE")],
)
def test_bad_set_names_the_key(item, key):
    with pytest.raises(SpecError) as caught:
        load_spec(REPO_ROOT / "sweeps" / "smoke.yaml", [item])
    assert key in str(caught.value)


def test_grid_sampler_trial_count_is_the_grid_size_times_the_seeds():
    spec = load_spec(REPO_ROOT / "sweeps" / "depth.yaml")  # 2 architectures x 2 curricula x 2 seeds
    assert spec.trial_count() == 8


def test_a_trial_that_cannot_fit_an_embedded_ray_exits_2_instead_of_waiting_forever(tmp_path):
    path = write_spec(tmp_path / "gpu.yaml", smoke_with(resources__gpus_per_worker=0.5))
    env = isolated_env(tmp_path)
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU, whatever the machine
    completed = subprocess.run([sys.executable, str(RUN_PY), str(path)], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "resources.gpus_per_worker" in lines[0]
    assert not (tmp_path / "mlflow.db").exists()


def grid_spec(seeds: int, **changes):
    raw = smoke_with(sampler={"type": "grid"}, num_samples=..., search_space={
        "train.train_loops": {"type": "grid", "values": [2, 3]}, "train.lr": {"type": "grid", "values": [0.01, 0.02, 0.03]}})
    return validate_spec({**raw, "seeds": seeds, **changes}, "grid.yaml")


def test_seeds_with_a_searched_sampler_fail_validation_naming_seeds_and_the_grid(tmp_path):
    path = write_spec(tmp_path / "replicated.yaml", smoke_with(seeds=3, sampler={"type": "random"}))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value).startswith(f"{path}: seeds: ") and "sampler.type: grid" in str(caught.value)
    assert load_spec(path, ["seeds=1"]).seeds == 1  # one seed is what every sampler does already


def test_seeds_multiply_the_grid_by_a_replicate_dimension():
    single, replicated = grid_spec(1), grid_spec(3)
    assert single.seeds == 1 and REPLICATE_KEY not in single.grid()  # seeds = 1: the grid as before
    assert single.grid_size() == single.trial_count() == 6
    assert replicated.grid()[REPLICATE_KEY] == [0, 1, 2]
    assert replicated.grid_size() == replicated.trial_count() == 18
    assert grid_spec(3, num_samples=18).trial_count() == 18


def test_the_grid_sampler_walks_every_setting_once_per_replicate():
    import optuna
    from ray.tune.search.sample import Categorical

    from rdt_core.sweep.search import make_sampler, tune_search_space

    spec = grid_spec(3)
    assert isinstance(tune_search_space(spec)[REPLICATE_KEY], Categorical)
    assert REPLICATE_KEY not in tune_search_space(grid_spec(1))
    study = optuna.create_study(sampler=make_sampler(spec))
    study.optimize(lambda trial: sum(trial.suggest_categorical(k, v) for k, v in spec.grid().items()),
                   n_trials=spec.trial_count())
    walked = {(t.params["train.train_loops"], t.params["train.lr"], t.params[REPLICATE_KEY]) for t in study.trials}
    assert len(walked) == 18 and {r for *_, r in walked} == {0, 1, 2}


def test_replicate_i_trains_with_both_seeds_of_its_setting_plus_i():
    base = {"train": {"seed": 5}, "data": {"seed": 7}, "model": {"max_loops": 6}}
    first = trial_config(base, {"train.lr": 0.02, REPLICATE_KEY: 0})
    third = trial_config(base, {"train.lr": 0.02, REPLICATE_KEY: 2})
    assert (first.train.seed, first.data.seed) == (5, 7)  # replicate 0 is the setting itself
    assert (third.train.seed, third.data.seed, third.train.lr) == (7, 9, 0.02)
    searched = trial_config(base, {"train.seed": 10, REPLICATE_KEY: 1})  # a setting's own seed, searched
    assert (searched.train.seed, searched.data.seed) == (11, 8)
    assert trial_config(base, {"train.lr": 0.02}) == first  # no replicate key (seeds = 1): as before


def test_a_replicates_run_logs_its_real_seeds_and_its_replicate_index():
    logged = trial_params({"train": {"seed": 5}}, {"train.lr": 0.02, REPLICATE_KEY: 2})
    assert logged[REPLICATE_KEY] == 2 and logged["train.seed"] == 7 and logged["data.seed"] == 2
    assert REPLICATE_KEY not in trial_params({}, {"train.lr": 0.02})


# Malformed specs, whatever their bytes or types, through the command's own ``main``: exit 2 and one line
# naming the file and the key (or, for text that is no YAML, its line and column).
SMOKE_TEXT = (REPO_ROOT / "sweeps" / "smoke.yaml").read_text()

MALFORMED_FILES = {
    "not UTF-8 (Latin-1)": (b"name: smoke\ndescription: caf\xe9\n", "line 2, column 17: not UTF-8 text (byte 0xe9)"),
    "binary garbage": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "line 1, column 1: not UTF-8 text (byte 0x89)"),
    "a NUL character": (b"name: smo\x00ke\n", "line 1, column 10: invalid YAML"),
    "empty": (b"", "(top level): the spec is empty"),
    "only a comment": (b"# a sweep, some day\n", "(top level): the spec is empty"),
    "nested too deeply": (
        b"name: " + b"[" * 5000 + b"]" * 5000 + b"\n", "(top level): invalid YAML: nested too deeply"),
    "yes for a number": (SMOKE_TEXT.replace("num_samples: 4", "num_samples: yes").encode(), "num_samples: "),
}


def smoke_searching(key: str, entry: dict, **changes) -> dict:
    """The smoke spec with the search-space entry of ``key`` (a dotted config key) set to ``entry``."""
    raw = smoke_with(**changes)
    raw["search_space"][key] = entry
    return raw


MALFORMED_VALUES = {
    "true trials": (smoke_with(num_samples=True), "num_samples"),
    "a boolean seed": (smoke_with(sampler={"type": "tpe", "seed": True}), "sampler.seed"),
    "a seed no sampler takes": (smoke_with(sampler={"type": "tpe", "seed": 2**40}), "sampler.seed"),
    "a boolean float bound": (
        smoke_searching("train.lr", {"type": "loguniform", "low": False, "high": 0.01}), "search_space.train.lr.low"),
    "a boolean int bound": (
        smoke_searching("train.train_loops", {"type": "int", "low": 2, "high": True}),
        "search_space.train.train_loops.high",
    ),
    "boolean CPUs": (smoke_with(resources__cpus_per_worker=True), "resources.cpus_per_worker"),
    "an infinite reduction factor": (smoke_with(scheduler={"type": "asha", "reduction_factor": float("inf")}),
                                     "scheduler.reduction_factor"),
    "an infinite range": (
        smoke_with(search_space={"train.weight_decay": {"type": "float", "low": 0.0, "high": float("inf")}}),
        "search_space.train.weight_decay.high",
    ),
}

MALFORMED_SETS = {
    "true trials": (["num_samples=true"], "num_samples"),
    "a boolean bound": (["search_space.train.lr.low=false"], "search_space.train.lr.low"),
    "a search space that is a number": (["search_space=5", "search_space.train.lr.high=0.1"], "search_space"),
    "a value nested too deeply": (["num_samples=" + "[" * 5000], "--set num_samples: the value is not valid YAML"),
    "an empty part in the key": (["base..steps=1"], "--set base..steps: an empty part in the dotted key"),
}


def main_with_stderr(capsys, argv: list) -> tuple[int, list[str]]:
    code = cli.main([str(item) for item in argv])
    return code, capsys.readouterr().err.strip().splitlines()


def assert_one_error_line(code: int, lines: list[str], path: Path, expected: str) -> None:
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}: ") and expected in lines[0], lines[0]


@pytest.mark.parametrize("case", sorted(MALFORMED_FILES))
def test_a_malformed_file_exits_2_with_one_line(case, tmp_path, capsys):
    content, expected = MALFORMED_FILES[case]
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    assert_one_error_line(*main_with_stderr(capsys, [path]), path, expected)


def test_a_directory_is_no_spec_file(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.mkdir()
    assert_one_error_line(*main_with_stderr(capsys, [path]), path, "is a directory")


@pytest.mark.parametrize("case", sorted(MALFORMED_VALUES))
def test_a_number_no_sweep_can_use_exits_2_naming_its_key(case, tmp_path, capsys):
    """A boolean (YAML reads true and yes as one, which pydantic would otherwise take for the number 1),
    an infinite number, a seed no sampler takes."""
    raw, key = MALFORMED_VALUES[case]
    path = write_spec(tmp_path / "spec.yaml", raw)
    assert_one_error_line(*main_with_stderr(capsys, [path]), path, f"{key}: ")


@pytest.mark.parametrize("case", sorted(MALFORMED_SETS))
def test_a_malformed_set_exits_2_naming_its_key(case, capsys):
    items, expected = MALFORMED_SETS[case]
    path = REPO_ROOT / "sweeps" / "smoke.yaml"
    argv = [path, *(arg for item in items for arg in ("--set", item))]
    assert_one_error_line(*main_with_stderr(capsys, argv), path, expected)


def test_a_boolean_in_the_base_config_exits_2_naming_its_key(dry_run_env, tmp_path, capsys):
    """A dry run, so that the spec, while it is still accepted, starts nothing."""
    path = tmp_path / "spec.yaml"
    path.write_text(SMOKE_TEXT.replace("steps: 1500", "steps: yes"))
    assert_one_error_line(*main_with_stderr(capsys, [path, "--dry-run"]), path, "base.train.steps: ")


def test_dry_run_warns_of_searched_values_that_the_trials_cannot_all_try(dry_run_env, tmp_path, capsys):
    raw = smoke_searching("train.lr", {"type": "choice", "values": [0.001, 0.002, 0.003]}, num_samples=2)
    path = write_spec(tmp_path / "spec.yaml", raw)
    code = cli.main([str(path), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0 and yaml.safe_load(captured.out)["trials"] == 2
    never_tried = "3 values but 2 trials (num_samples): at least 1 of them are never tried"
    assert captured.err.strip().splitlines() == [
        f"warning: {path}: search_space.train.train_loops: {never_tried}",
        f"warning: {path}: search_space.train.lr: {never_tried}",
    ]


def test_dry_run_of_a_spec_whose_trials_can_try_every_value_warns_of_nothing(dry_run_env, capsys):
    assert cli.main([str(REPO_ROOT / "sweeps" / "smoke.yaml"), "--dry-run"]) == 0  # 3 train_loops, 4 trials
    assert capsys.readouterr().err == ""


def test_only_countable_values_beyond_the_trials_are_uncovered():
    float_range = smoke_with(num_samples=1, search_space={"train.lr": {"type": "float", "low": 0.001, "high": 0.01}})
    assert validate_spec(float_range, "spec.yaml").uncovered() == []  # a continuum: nothing to count
    assert validate_spec(smoke_with(num_samples=3), "spec.yaml").uncovered() == []
    assert [key for key, _ in validate_spec(smoke_with(num_samples=2), "spec.yaml").uncovered()] == [
        "search_space.train.train_loops"]
    assert grid_spec(1).uncovered() == []  # a grid tries every value by construction


def test_a_graph_too_small_for_one_seeds_splits_stops_the_sweep_before_it_starts(tmp_path):
    """Replicate 1's graph (data.seed 1) holds 69 distinct ood 2-hop queries; 72 are asked. Found in a
    trial's worker, this cost a sweep its first round; found here, it is one line and nothing runs."""
    data = {"n_entities": 32, "n_relations": 8, "ood_fraction": 0.2, "inferred_ratio": 3.0, "n_test_queries": 48}
    grid = {"train.lr": {"type": "grid", "values": [0.003]}}
    path = write_spec(tmp_path / "small.yaml", smoke_with(base__data=data, sampler={"type": "grid"}, seeds=2,
                                                          num_samples=..., search_space=grid))
    completed = subprocess.run([sys.executable, str(RUN_PY), str(path), "--dry-run"], cwd=tmp_path,
                               env=isolated_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        f"error: {path}: base.data.n_test_queries: only 69 distinct 2-hop ood queries exist, 72 wanted "
        "(0 trained + 24 validation + 48 test): at most 69 can be held out "
        "(trial with train.lr 0.003, replicate 1, data.seed 1)"
    ]
    assert list(tmp_path.iterdir()) == [path]  # nothing written


def test_an_inferred_ratio_the_graph_cannot_hold_names_the_searched_key_and_the_largest_that_fits():
    raw = smoke_with(base__data={"n_entities": 64, "n_relations": 8, "ood_fraction": 0.2, "n_test_queries": 96},
                     sampler={"type": "random"}, search_space={"data.inferred_ratio": {"type": "float", "low": 2.0, "high": 8.0}})
    with pytest.raises(SpecError) as caught:
        validate_spec(raw, "phi.yaml")
    message = str(caught.value)
    assert message.startswith("phi.yaml: search_space.data.inferred_ratio: only 2624 distinct 2-hop id queries exist")
    assert "inferred_ratio at most 6.05 leaves room for them (trial with data.inferred_ratio 8.0, data.seed 0)" in message
