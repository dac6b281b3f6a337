"""``train.replicas``: K models trained in one vectorised pass, each as its own run with seed + i would be."""

from __future__ import annotations

import shutil

import pytest
import torch

from rdt_core import metrics as names
from rdt_core.config import ConfigError, ExperimentConfig
from rdt_core.data import build_splits
from rdt_core.model.transformer import build_model
from rdt_core.train import CHECKPOINT_FILE, is_resumable, load_checkpoint, train_worker
from rdt_core.model.stacked import StackedTransformer, clip_per_replica
from tests.helpers import TINY_CONFIG

TINY = {section: dict(values) for section, values in TINY_CONFIG.items()}
TINY["model"]["d_model"] = 16
TINY["train"].update(steps=20, eval_every=10)
# Every layer kind the model has: prelude and coda blocks, the concat adapter, per-loop cores, and the
# progressive loss over every loop with truncated backprop.
VARIANTS = {
    "looped": {},
    "every-layer": {"model.n_prelude_layers": 1, "model.n_coda_layers": 1, "model.injection": "concat",
                    "model.architecture": "unshared", "train.progressive_loss_weight": 0.5,
                    "train.backprop_loops": 1},
}
# Float tolerance: a batched matmul rounds differently from K single ones; activation patching's
# recovery ratios amplify that the most (seen: 2e-6).
TOLERANCE = {"rel": 1e-4, "abs": 1e-5}


def run(config: ExperimentConfig, **kwargs) -> list[dict[str, float]]:
    reports: list[dict[str, float]] = []
    train_worker(config, lambda metrics, checkpoint: reports.append(metrics), **kwargs)
    return reports


def without_timings(report: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in report.items() if not key.startswith("time/")}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_replica_is_its_own_run_with_its_seed(variant):
    config = ExperimentConfig.from_dict(TINY, {**VARIANTS[variant], "train.seed": 3, "train.replicas": 2})
    together = run(config)
    alone = [run(ExperimentConfig.from_dict(TINY, {**VARIANTS[variant], "train.seed": seed})) for seed in (3, 4)]
    assert [report["step"] for report in together] == [10, 20]
    for step, report in enumerate(together):
        for replica, seed in enumerate((3, 4)):
            assert report[names.REPLICA.name(replica=replica, stat="seed")] == seed
            own = {name: value for name, value in alone[replica][step].items() if name in names.REPLICA_HEADLINE}
            assert names.REPLICA.name(replica=replica, stat="acc/id") in report
            for name, value in own.items():
                assert report[names.REPLICA.name(replica=replica, stat=name)] == pytest.approx(value, **TOLERANCE), name
        expected = without_timings(alone[0][step]) | without_timings(alone[1][step])
        for name in expected:  # the mean, over the replicas that report the name
            values = [runs[step][name] for runs in alone if name in runs[step]]
            assert report[name] == pytest.approx(sum(values) / len(values), **TOLERANCE), name
        losses = [runs[step]["loss/train"] for runs in alone]
        assert report["replica_std/loss/train"] == pytest.approx(abs(losses[0] - losses[1]) / 2**0.5, **TOLERANCE)
    assert together[-1]["trial/finished"] == 1.0 and "lens/id/hops_2/answer/resolved_loop" in together[-1]


def test_the_replicas_table_holds_each_replica_and_the_spread_its_own():
    report = {"replica/0/seed": 3.0, "replica/0/acc/id": 0.4, "replica/1/seed": 4.0,
              "replica/1/acc/id": 0.6, "replica_std/acc/id": 0.14}
    tables = names.tables(report)
    assert set(tables) == {"replicas", "replica_spread"}
    assert tables["replicas"] == [{"replica": 0, "measure": "acc/id", "value": 0.4},
                                  {"replica": 0, "measure": "seed", "value": 3.0},
                                  {"replica": 1, "measure": "acc/id", "value": 0.6},
                                  {"replica": 1, "measure": "seed", "value": 4.0}]
    assert tables["replica_spread"] == [{"measure": "acc/id", "value": 0.14}]
    assert not names.is_headline("replica/0/acc/id")
    assert names.from_tables(tables) == report


def test_a_run_of_replicas_resumed_mid_run_ends_as_if_never_stopped(tmp_path):
    config = ExperimentConfig.from_dict(
        TINY, {"train.replicas": 3, "train.steps": 30, "data.train_max_hops": 3, "train.curriculum": True,
               "train.curriculum_level": 0.05}
    )
    uninterrupted = run(config)
    kept = tmp_path / "kept"

    class Interrupted(Exception):
        pass

    def report_then_die(metrics: dict[str, float], checkpoint) -> None:
        if metrics["step"] == 20:
            shutil.copytree(checkpoint, kept)
            raise Interrupted

    with pytest.raises(Interrupted):
        train_worker(config, report_then_die, tmp_path / "scratch")
    assert is_resumable(kept)
    resumed = run(config, checkpoint_dir=tmp_path / "final", resume_from=kept)
    assert [report["step"] for report in resumed] == [30] and resumed[-1]["resume/from_step"] == 20.0
    same = lambda report: {k: v for k, v in without_timings(report).items() if k != "resume/from_step"}  # noqa: E731
    assert same(resumed[-1]) == same(uninterrupted[-1])

    # The final checkpoint holds every replica: each loads as the single run it reproduces.
    replica_config, model = load_checkpoint(tmp_path / "final" / CHECKPOINT_FILE, replica=2)
    assert (replica_config.train.seed, replica_config.train.replicas) == (2, 1)
    stacked = torch.load(tmp_path / "final" / CHECKPOINT_FILE, weights_only=True)["model"]
    assert torch.equal(model.state_dict()["embed.weight"], stacked["embed.weight"][2])


def test_the_stacked_forward_and_clipping_are_each_replicas_own():
    config = ExperimentConfig.from_dict(TINY, {**VARIANTS["every-layer"]})
    splits = build_splits(config.data)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model(config, splits.vocab))
    stacked = StackedTransformer(models)
    with torch.no_grad():  # outputs start at zero: give every weight something to do
        for parameter in stacked.parameters():
            parameter.normal_(std=0.3)
    for replica, model in enumerate(models):
        model.load_state_dict(stacked.replica_state(replica))
    tokens = splits.train.tokens[:30].view(3, 10, -1)  # (K, B, T)
    logits = stacked(tokens.flatten(0, 1), 3).view(3, 3, 10, -1)  # (loops, K, B, E)
    for replica, model in enumerate(models):
        assert torch.allclose(logits[:, replica], model(tokens[replica], 3), atol=1e-5)

    logits.square().mean((0, 2, 3)).sum().backward()
    for replica, model in enumerate(models):
        model(tokens[replica], 3).square().mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
    clip_per_replica(list(stacked.parameters()), 0.01)
    for name, parameter in stacked.named_parameters():
        for replica, model in enumerate(models):
            assert torch.allclose(parameter.grad[replica], model.get_parameter(name).grad, atol=1e-6), name


def test_replicas_refuse_a_depth_drawn_per_replica():
    with pytest.raises(ConfigError, match="train: replicas > 1 needs loops_sampling: fixed"):
        ExperimentConfig.from_dict(TINY, {"train.replicas": 2, "train.loops_sampling": "poisson"})
    with pytest.raises(ConfigError, match="train.replicas"):
        ExperimentConfig.from_dict(TINY, {"train.replicas": 0})
