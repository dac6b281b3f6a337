import re
import shutil
from collections import Counter

import pytest
import torch

from rdt_core.config import ConfigError, ExperimentConfig
from rdt_core.data import build_splits
from rdt_core.train import CHECKPOINT_FILE, is_resumable, reported_metric_names, split_hop_counts, train_worker
from rdt_core.train import worker
from rdt_core.train.worker import Curriculum, LoopSampler, learning_rate_at, make_optimizer
from tests.helpers import TINY_CONFIG as TINY


def run(config: ExperimentConfig) -> list[dict[str, float]]:
    reports: list[dict[str, float]] = []
    train_worker(config, lambda metrics, checkpoint: reports.append(metrics))
    return reports


def without_timings(report: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in report.items() if not key.startswith("time/")}


@pytest.fixture(scope="module")
def reports() -> list[dict[str, float]]:
    torch.set_num_threads(1)
    return run(ExperimentConfig.from_dict(TINY))


def test_reports_every_eval_step_with_accuracy_per_split_hop_and_loop(reports):
    assert [report["step"] for report in reports] == [20, 40, 60]
    for report in reports:
        for split, hops in (("train", 1), ("train", 2), ("id", 2), ("id", 3), ("ood", 3)):
            for loop in range(1, 5):
                assert 0.0 <= report[f"acc/{split}/hops_{hops}/loop_{loop:02d}"] <= 1.0
        assert report["acc/id/hops_3"] == report["acc/id/hops_3/loop_02"]  # at the trained loop count
        assert 1.0 <= report["halting/id/mean_loops"] <= 4.0


def test_the_last_report_carries_the_summary_grid_lens_and_patching(reports):
    assert all("trial/finished" not in report for report in reports[:-1])
    last = reports[-1]
    assert last["trial/finished"] == 1.0
    assert "halting/id/kl_0.01_h_off/acc" in last and "halting/id/kl_0.01_h_off/acc" not in reports[0]
    assert "lens/ood/hops_3/bridge_2/top1/loop_04" in last
    for prefix in ("patching", "patching_null"):  # at the trained 2 loops; the null beside the model
        assert f"{prefix}/state/hops_2/loop_01/pos_3" in last and f"{prefix}/injected/hops_2/loop_02/pos_2" in last
        assert f"{prefix}/state/hops_2/loop_02/pos_3" not in last  # read out as it is: trivial, left out
        assert f"{prefix}/state/hops_2/loop_01/pos_1" not in last  # left of the corrupted relation
    assert not any(name.startswith("patching/") and "loop_03" in name for name in last)
    assert last["null/ood/hops_2/last_relation"] > last["null/chance"]
    assert last["phase/train/reached"] in (0.0, 1.0)
    assert 0.0 <= last["halting/id/loops_saved"] < 1.0


def test_every_reported_name_is_declared_and_a_valid_mlflow_metric_name(reports):
    declared = reported_metric_names(ExperimentConfig.from_dict(TINY))
    for report in reports:
        assert set(report) <= declared, set(report) - declared
    valid = re.compile(r"^[\w\-. :/]+$")  # what MLflow accepts in a metric name
    assert [name for name in declared if not valid.match(name)] == []


def test_split_hop_counts_follow_the_config():
    assert split_hop_counts(ExperimentConfig.from_dict(TINY)) == {"train": [1, 2], "id": [2, 3], "ood": [2, 3]}
    assert "ood" not in split_hop_counts(ExperimentConfig())


def test_same_seed_same_metrics_on_cpu(reports):
    again = run(ExperimentConfig.from_dict(TINY))
    assert [without_timings(report) for report in reports] == [without_timings(report) for report in again]


def test_overfits_one_small_graph():
    """Memorisation, the first grokking stage: all trained facts learnt, and the phase recorded."""
    torch.set_num_threads(1)
    config = ExperimentConfig.from_dict(
        TINY, {"train.steps": 400, "train.eval_every": 100, "train.lr": 0.01, "train.weight_decay": 0.0}
    )
    final = run(config)[-1]
    assert final["acc/train"] > 0.95
    assert final["loss/train"] < 0.5
    assert final["phase/train/reached"] == 1.0 and final["phase/train/step"] <= 400


@pytest.mark.parametrize(
    "overrides",
    [
        {"train.loops_sampling": "poisson", "model.max_loops": 6},
        {"train.backprop_loops": 1},
        {"train.progressive_loss_weight": 0.5},
        {"train.curriculum": True, "data.train_max_hops": 3, "train.curriculum_level": 0.01},
        {"model.architecture": "vanilla"},
        {"model.architecture": "unshared"},
        {"model.injection": "norm"},
        {"model.injection": "concat"},
        {"model.block": "gpt2", "model.positions": "learned", "model.injection": "none", "model.dropout": 0.1,
         "model.readout": "vocabulary", "model.zero_init_output": False, "train.label_smoothing": 0.1,
         "train.lr_schedule": "constant"},
        {"model.positions": "sinusoidal", "model.n_core_layers": 2, "train.lr_schedule": "linear"},
    ],
    ids=["poisson", "truncated", "progressive", "curriculum", "vanilla", "unshared", "norm", "concat", "paper",
         "sinusoidal"],
)
def test_training_variants_run_and_report(overrides):
    torch.set_num_threads(1)
    config = ExperimentConfig.from_dict(TINY, {**overrides, "train.steps": 40})
    reports = run(config)
    assert reports[-1]["loss/train"] > 0
    if overrides.get("train.loops_sampling") == "poisson":
        assert any(report["loops/train"] != 2 for report in reports)
    if overrides.get("train.curriculum"):
        assert [report["curriculum/max_hops"] for report in reports] == [2.0, 3.0]  # unlocked after step 20


def test_the_curriculum_unlocks_on_the_best_inference_loop_count_not_the_trained_one():
    config = ExperimentConfig.from_dict(
        TINY, {"train.curriculum": True, "data.train_max_hops": 3, "train.curriculum_level": 0.9}
    )
    curriculum = Curriculum(config, build_splits(config.data).train)
    below_at_trained_loops = {"acc/train/hops_2/loop_02": 0.5, "acc/train/hops_2/loop_03": 0.8}
    curriculum.update(below_at_trained_loops)
    assert curriculum.max_hops == 2
    curriculum.update({**below_at_trained_loops, "acc/train/hops_2/loop_04": 0.95})  # more loops than R
    assert curriculum.max_hops == 3
    assert set(curriculum.train_set.hops[curriculum.eligible].tolist()) == {1, 2, 3}


def test_curriculum_starts_at_two_hops():
    torch.set_num_threads(1)
    config = ExperimentConfig.from_dict(
        TINY, {"train.curriculum": True, "data.train_max_hops": 3, "train.curriculum_level": 1.0, "train.steps": 20}
    )
    assert run(config)[-1]["curriculum/max_hops"] == 2.0


class Interrupted(Exception):
    """Stands for a worker process killed after it reported a checkpoint."""


@pytest.mark.parametrize("overrides", [{}, {"train.loops_sampling": "poisson", "model.max_loops": 6,
                                            "train.curriculum": True, "data.train_max_hops": 3,
                                            "train.curriculum_level": 0.01},
                                       {"train.curriculum": True, "data.train_max_hops": 3, "train.curriculum_level": 0.01,
                                        "train.curriculum_restart": True,
                                        "train.curriculum_lr_decay": 0.5, "train.warmup_steps": 30}],
                         ids=["fixed", "sampled-curriculum", "paper-curriculum"])
def test_a_run_resumed_from_its_checkpoint_ends_as_if_never_stopped(tmp_path, overrides):
    torch.set_num_threads(1)
    config = ExperimentConfig.from_dict(TINY, {**overrides, "train.checkpoint_every": 20})
    uninterrupted = run(config)

    kept = tmp_path / "kept"
    first_part: list[dict[str, float]] = []

    def report_then_die(metrics: dict[str, float], checkpoint) -> None:
        first_part.append(metrics)
        if metrics["step"] == 40:
            shutil.copytree(checkpoint, kept)  # what Ray persists to the trial's storage
            raise Interrupted

    with pytest.raises(Interrupted):
        train_worker(config, report_then_die, tmp_path / "scratch")
    assert sorted(path.name for path in kept.iterdir()) == [CHECKPOINT_FILE, "training_state.pt"]

    resumed: list[dict[str, float]] = []
    train_worker(config, lambda metrics, checkpoint: resumed.append(metrics), tmp_path / "again", resume_from=kept)
    assert [report["step"] for report in resumed] == [60]
    assert resumed[-1]["resume/from_step"] == 40.0 and uninterrupted[-1]["resume/from_step"] == 0.0
    assert resumed[-1]["time/elapsed_s"] > first_part[-1]["time/elapsed_s"]  # counts the time before the stop
    same = lambda report: {k: v for k, v in without_timings(report).items() if k != "resume/from_step"}  # noqa: E731
    assert same(resumed[-1]) == same(uninterrupted[-1])


def test_checkpoints_come_with_every_checkpoint_every_steps_and_the_final_model_last(tmp_path):
    torch.set_num_threads(1)
    config = ExperimentConfig.from_dict(TINY, {"train.steps": 80, "train.checkpoint_every": 40})
    sent: list[tuple[float, list[str] | None]] = []

    def report(metrics: dict[str, float], checkpoint) -> None:
        sent.append((metrics["step"], sorted(p.name for p in checkpoint.iterdir()) if checkpoint else None))

    train_worker(config, report, tmp_path)
    resumable = [CHECKPOINT_FILE, "training_state.pt"]
    assert sent == [(20, None), (40, resumable), (60, None), (80, [CHECKPOINT_FILE])]
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]  # resumable ones removed once reported


def test_checkpoint_every_must_fall_on_evaluations():
    with pytest.raises(ConfigError, match="checkpoint_every"):
        ExperimentConfig.from_dict(TINY, {"train.checkpoint_every": 30})


def test_a_run_resumed_from_its_final_checkpoint_sends_its_final_report_again_at_once(tmp_path):
    """A trial whose process died after its final report: Tune restores it from its final checkpoint."""
    torch.set_num_threads(1)
    config = ExperimentConfig.from_dict(TINY, {"train.steps": 40})
    finished = tmp_path / "finished"
    reports = []
    train_worker(config, lambda metrics, checkpoint: reports.append(metrics), finished)
    assert is_resumable(finished)

    again: list[tuple[dict, list[str]]] = []
    train_worker(config, lambda metrics, checkpoint: again.append((metrics, sorted(p.name for p in checkpoint.iterdir()))),
                 tmp_path / "again", resume_from=finished)
    assert again == [(reports[-1], [CHECKPOINT_FILE])]  # no training, no evaluation: the same report


def test_a_checkpoint_missing_a_file_or_cut_short_is_not_resumable(tmp_path):
    torch.set_num_threads(1)
    config = ExperimentConfig.from_dict(TINY, {"train.steps": 40, "train.checkpoint_every": 20})
    kept = tmp_path / "kept"

    def keep_the_first(metrics: dict[str, float], checkpoint) -> None:
        if checkpoint is not None and not kept.exists():
            shutil.copytree(checkpoint, kept)

    train_worker(config, keep_the_first, tmp_path / "scratch")
    assert is_resumable(kept)
    state = kept / "training_state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a copy cut short by a kill
    assert not is_resumable(kept)
    state.unlink()
    assert not is_resumable(kept)
    assert not is_resumable(tmp_path / "nothing-here")


@pytest.mark.parametrize(
    "schedule, after_warmup, at_the_end",
    [("cosine", 1e-2, 1e-3), ("constant", 1e-2, 1e-2), ("linear", 1e-2, 0.0)],
)
def test_each_schedule_warms_up_then_decays_as_named(schedule, after_warmup, at_the_end):
    config = ExperimentConfig.from_dict(
        TINY, {"train.lr": 1e-2, "train.warmup_steps": 10, "train.steps": 110, "train.lr_schedule": schedule}
    )
    assert [learning_rate_at(step, config) for step in (0, 9)] == pytest.approx([1e-3, 1e-2])  # the warm-up
    assert learning_rate_at(10, config) == pytest.approx(after_warmup)
    assert learning_rate_at(110, config) == pytest.approx(at_the_end, abs=1e-12)
    rates = [learning_rate_at(step, config) for step in range(10, 111)]
    assert all(later <= earlier for earlier, later in zip(rates, rates[1:]))  # never rises after the warm-up


def test_poisson_loops_are_clipped_to_the_configured_range():
    config = ExperimentConfig.from_dict(TINY, {
        "model.max_loops": 8, "train.train_loops": 4, "train.loops_sampling": "poisson",
        "train.sampled_loops_min": 2, "train.sampled_loops_max": 6,
    })
    sample = LoopSampler(config)
    drawn = Counter(sample() for _ in range(2000))
    assert set(drawn) == {2, 3, 4, 5, 6}  # Poisson(4) reaches below 2 and above 6: both clipped
    unclipped = LoopSampler(ExperimentConfig.from_dict(config.model_dump(), {"train.sampled_loops_min": 1,
                                                                              "train.sampled_loops_max": None}))
    assert min(unclipped() for _ in range(2000)) < 2  # the default range is 1..max_loops, as before


@pytest.mark.parametrize(
    "overrides, key",
    [({"train.sampled_loops_max": 5}, "train.sampled_loops_max"),  # max_loops is 4
     ({"train.replicas": 2, "train.curriculum_restart": True}, "train"),
     ({"train.curriculum_lr_floor": 1.0}, "train"),
     ({"train.sampled_loops_min": 4, "train.sampled_loops_max": 3}, "train.sampled_loops_min"),
     ({"train.label_smoothing": 1.0}, "train.label_smoothing"),
     ({"train.lr_schedule": "step"}, "train.lr_schedule")],
)
def test_a_recipe_option_out_of_range_is_refused_naming_it(overrides, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        ExperimentConfig.from_dict(TINY, overrides)


def test_label_smoothing_changes_the_training_loss_and_nothing_else_of_the_recipe():
    plain, smoothed = (
        run(ExperimentConfig.from_dict(TINY, {"train.steps": 20, "train.eval_every": 20, "train.label_smoothing": ls}))
        for ls in (0.0, 0.1)
    )
    assert smoothed[0]["loss/train"] > plain[0]["loss/train"]  # smoothed targets are never fitted to zero loss
    assert smoothed[0]["lr"] == plain[0]["lr"] and smoothed[0]["step"] == plain[0]["step"]


def test_the_papers_curriculum_unlocks_exactly_at_the_level_of_held_out_accuracy():
    config = ExperimentConfig.from_dict(TINY, {
        "train.curriculum": True, "data.train_max_hops": 3, "train.curriculum_level": 0.95,
        "train.curriculum_signal": "validation",
    })
    curriculum = Curriculum(config, build_splits(config.data).train)
    training_says_yes = {"acc/train/hops_2/loop_02": 1.0}
    assert not curriculum.update({**training_says_yes, "acc/id_val/hops_2/chosen": 0.9499})
    assert curriculum.max_hops == 2 and curriculum.stage == 0
    assert curriculum.update({"acc/id_val/hops_2/chosen": 0.95})
    assert curriculum.max_hops == 3 and curriculum.stage == 1
    assert not curriculum.update({"acc/id_val/hops_3/chosen": 1.0})  # the deepest trained hop count: done


def test_a_curriculum_stage_warms_up_again_at_a_decayed_peak_not_below_the_floor():
    config = ExperimentConfig.from_dict(TINY, {
        "train.lr": 1e-2, "train.warmup_steps": 10, "train.steps": 1000, "train.lr_schedule": "constant",
        "train.curriculum": True, "train.curriculum_restart": True, "train.curriculum_lr_decay": 0.5,
        "train.curriculum_lr_floor": 3e-3,
    })
    assert learning_rate_at(500, config) == pytest.approx(1e-2)
    assert learning_rate_at(500, config, stage=1, stage_start=500) == pytest.approx(5e-3 / 10)  # warming up
    assert learning_rate_at(509, config, stage=1, stage_start=500) == pytest.approx(5e-3)
    assert learning_rate_at(900, config, stage=2, stage_start=800) == pytest.approx(3e-3)  # 2.5e-3, floored
    no_restart = ExperimentConfig.from_dict(config.model_dump(), {"train.curriculum_restart": False})
    assert learning_rate_at(500, no_restart, stage=1, stage_start=500) == pytest.approx(5e-3)


def test_with_restarts_each_stage_begins_with_a_fresh_optimizer_and_its_warm_up(monkeypatch):
    torch.set_num_threads(1)
    config = ExperimentConfig.from_dict(TINY, {
        "train.curriculum": True, "data.train_max_hops": 3, "train.curriculum_level": 0.01,
        "train.curriculum_restart": True, "train.warmup_steps": 30,
        "train.steps": 40, "train.eval_every": 20, "train.lr_schedule": "constant",
    })
    optimizers = []
    monkeypatch.setattr(worker, "make_optimizer", lambda *args: optimizers.append(make_optimizer(*args)) or optimizers[-1])
    first, second = run(config)
    assert [first["curriculum/max_hops"], second["curriculum/max_hops"]] == [2.0, 3.0]  # unlocked at step 20
    assert len(optimizers) == 2  # the run's, and the second stage's
    assert first["lr"] == pytest.approx(config.train.lr * 20 / 30)  # the run's own warm-up, 20 of 30 steps in
    assert second["lr"] == pytest.approx(config.train.lr * 20 / 30)  # the new stage's: 20 steps since step 20


def test_the_papers_optimizer_settings_reach_adamw_and_a_zero_clip_leaves_gradients_whole(monkeypatch):
    config = ExperimentConfig.from_dict({**TINY, "train": {**TINY["train"], "steps": 2, "eval_every": 2,
                                                           "adam_beta2": 0.999, "grad_clip": 0.0}})
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(2))], config, torch.device("cpu"))
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    clipped = []
    monkeypatch.setattr(worker.TrainedModels, "clip_gradients", lambda self, norm: clipped.append(norm))
    train_worker(config, reporter=lambda metrics, checkpoint: None)
    assert clipped == []
    train_worker(config.model_copy(update={"train": config.train.model_copy(update={"grad_clip": 0.5})}),
                 reporter=lambda metrics, checkpoint: None)
    assert clipped == [0.5, 0.5]
