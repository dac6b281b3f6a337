"""``train.compile``: a compiled run trains to the metrics of an eager one, and a run that cannot compile
logs one line and carries on eagerly to exactly the eager metrics."""

import pytest
import torch

from rdt_core.config import ExperimentConfig
from rdt_core.train import train_worker
from rdt_core.train.compiling import CompiledOrEager

TINY = {
    "data": {"n_entities": 16, "n_relations": 2, "inferred_ratio": 1.0, "n_test_queries": 8},
    "model": {"d_model": 16, "n_heads": 2, "max_loops": 3},
    "train": {"steps": 12, "eval_every": 6, "train_loops": 2, "batch_size": 16, "warmup_steps": 2},
    "eval": {"n_train_eval_per_hop": 16, "n_lens_queries": 4, "n_patching_queries": 4},
}


def final_report(compile: bool) -> dict[str, float]:
    torch.set_num_threads(1)
    reports: list[dict[str, float]] = []
    config = ExperimentConfig.from_dict(TINY, {"train.compile": compile})
    train_worker(config, lambda metrics, checkpoint: reports.append(metrics))
    return {key: value for key, value in reports[-1].items() if not key.startswith("time/")}


@pytest.fixture(scope="module")
def eager() -> dict[str, float]:
    return final_report(compile=False)


def raise_when_called(*args, **kwargs):
    raise RuntimeError("no compiler here\nsecond line of a long traceback")


@pytest.mark.parametrize(
    "broken_compile",
    [
        pytest.param(lambda module, **kwargs: raise_when_called, id="fails-at-the-first-step"),
        pytest.param(raise_when_called, id="fails-when-wrapping"),
    ],
)
def test_a_run_that_cannot_compile_logs_one_line_and_trains_eagerly(monkeypatch, capsys, eager, broken_compile):
    monkeypatch.setattr(torch, "compile", broken_compile)
    assert final_report(compile=True) == eager
    logged = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train.compile:")]
    assert logged == [
        "train.compile: torch.compile failed (RuntimeError: no compiler here); training continues uncompiled"
    ]


def test_after_a_failure_the_compiled_function_is_never_called_again(monkeypatch):
    calls = []

    def compiled(*args):
        calls.append(args)
        raise RuntimeError("backend failed")

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: compiled)
    forward = CompiledOrEager(torch.nn.Identity())
    assert [forward(value) for value in (1, 2, 3)] == [1, 2, 3]
    assert len(calls) == 1 and forward.failure == "RuntimeError: backend failed"


# ~30 s with Inductor's on-disk cache cold (a few seconds warm) on a 2-core CPU: under the minute that
# would make it a slow test.
def test_a_compiled_run_trains_to_the_eager_metrics_within_float_tolerance(eager):
    compiled = final_report(compile=True)
    assert compiled.keys() == eager.keys()
    assert compiled == pytest.approx(eager, rel=1e-5, abs=1e-5)
