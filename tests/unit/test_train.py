import pytest
import torch

from rdt_core.config import ExperimentConfig
from rdt_core.train import reported_metric_names, train_worker

TINY = {
    "data": {"n_entities": 12, "n_relations": 2, "inferred_ratio": 1.0, "n_test_queries": 16},
    "model": {"d_model": 32, "n_heads": 2, "max_loops": 3},
    "train": {"steps": 60, "eval_every": 20, "train_loops": 2, "batch_size": 32, "warmup_steps": 5},
}


def run(config: ExperimentConfig) -> list[dict[str, float]]:
    reports: list[dict[str, float]] = []
    train_worker(config, reports.append)
    return reports


@pytest.fixture(scope="module")
def reports() -> list[dict[str, float]]:
    torch.set_num_threads(1)
    return run(ExperimentConfig.from_dict(TINY))


def test_reports_every_eval_step_with_accuracy_at_every_loop(reports):
    assert [report["step"] for report in reports] == [20, 40, 60]
    for report in reports:
        for loop in (1, 2, 3):
            assert 0.0 <= report[f"acc/test/loop_{loop:02d}"] <= 1.0
        assert report["acc/test"] == report["acc/test/loop_02"]  # the trained loop count


def test_only_the_last_report_carries_the_summary(reports):
    assert all("final/acc/test" not in report for report in reports[:-1])
    assert reports[-1]["final/acc/test"] == reports[-1]["acc/test"]


def test_every_reported_name_is_declared(reports):
    declared = reported_metric_names(ExperimentConfig.from_dict(TINY))
    assert set(reports[-1]) <= declared


def test_same_seed_same_metrics_on_cpu(reports):
    again = run(ExperimentConfig.from_dict(TINY))
    for first, second in zip(reports, again):
        assert {k: v for k, v in first.items() if not k.startswith("time/")} == {
            k: v for k, v in second.items() if not k.startswith("time/")
        }


def test_overfits_one_small_graph():
    """Memorisation, the first grokking stage: all trained facts learnt."""
    torch.set_num_threads(1)
    config = ExperimentConfig.from_dict(
        TINY, {"train.steps": 400, "train.eval_every": 400, "train.lr": 0.01, "train.weight_decay": 0.0}
    )
    final = run(config)[-1]
    assert final["acc/train"] > 0.95
    assert final["loss/train"] < 0.5
