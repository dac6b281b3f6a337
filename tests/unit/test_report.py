"""Phase diagrams from a real MLflow SQLite store holding synthetic sweeps laid out as the tracker logs
them (parent run, one child run per trial, every metric at every evaluation step)."""

from __future__ import annotations

import csv
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from rdt_core.report import DIAGRAMS, ReportError, draw_report, pareto_front
from rdt_core.report.__main__ import main
from rdt_core.report.diagrams import (
    depth, draw_export, grokking, halting, overthinking, param_label, threshold_panel, trained_loops_panel,
)
from rdt_core.report.export import export_sweep, load_export
from rdt_core.report.render import PLOTLY_JS
from rdt_core.report.runs import REPLICATE_PARAM, Spread, Sweep, Trial, group_replicates, load_sweep

MAX_LOOPS, STEPS, PHASE_LEVEL = 6, [0, 100, 200, 300, 400, 500], 0.5
KL_GRID, ENTROPY_GRID = ["off", "0.0001", "0.01", "1"], ["off", "0.5", "2"]


def hop_accuracy(hops: int, loop: int, quality: float) -> float:
    """A k-hop query peaks at loop k + 1 and falls after it (overthinking)."""
    return quality * math.exp(-((loop - hops - 1) ** 2) / 4)


def onset(split: str, n_entities: int, ratio: float) -> float:
    """Later for the harder split and the bigger graph, earlier for a higher inferred ratio."""
    return {"train": 50, "id": 200, "ood": 350}[split] + n_entities - 40 * ratio


def trial_metrics(step: int, trial: dict, splits: dict[str, list[int]], last: bool) -> dict[str, float]:
    """What one evaluation reports, following ``rdt_core.eval``'s names."""
    metrics, loops = {}, range(1, MAX_LOOPS + 1)
    for split, hop_counts in splits.items():
        progress = 1 / (1 + math.exp(-(step - onset(split, trial["n_entities"], trial["ratio"])) / 40))
        quality = trial["quality"] * progress
        for k in hop_counts:
            for t in loops:
                metrics[f"acc/{split}/hops_{k}/loop_{t:02d}"] = hop_accuracy(k, t, quality)
            metrics[f"acc/{split}/hops_{k}"] = hop_accuracy(k, trial["loops"], quality)
        for t in loops:
            by_hops = [hop_accuracy(k, t, quality) for k in hop_counts]
            metrics[f"acc/{split}/loop_{t:02d}"] = sum(by_hops) / len(by_hops)
        metrics[f"acc/{split}"] = metrics[f"acc/{split}/loop_{trial['loops']:02d}"]
        metrics[f"halting/{split}/acc"], metrics[f"halting/{split}/mean_loops"] = 0.8 * quality, 3.0
        if last and trial["grid"]:
            for i, kl in enumerate(KL_GRID):
                for j, entropy in enumerate(ENTROPY_GRID):
                    if (kl, entropy) != ("off", "off"):
                        rule = f"halting/{split}/kl_{kl}_h_{entropy}"
                        metrics[f"{rule}/acc"] = quality * (0.5 + 0.1 * (i + j))
                        metrics[f"{rule}/mean_loops"] = 1.0 + i + j
    return metrics


def log_sweep(client: MlflowClient, root: Path, name: str, trials: list[dict], ood: bool, test_max_hops: int) -> str:
    """A parent run and one child run per trial; returns the parent's id."""
    experiment_id = client.create_experiment(name, artifact_location=(root / name).as_uri())
    parent = client.create_run(experiment_id, run_name=name, tags={"sweep.metric": "acc/id", "sweep.mode": "max"})
    splits = {"train": [1, 2], "id": list(range(2, test_max_hops + 1))} | ({"ood": [2]} if ood else {})
    for index, trial in enumerate(trials):
        run = client.create_run(
            experiment_id, run_name=f"{name}-{index:03d}", tags={MLFLOW_PARENT_RUN_ID: parent.info.run_id}
        )
        params = {
            "train.train_loops": trial["loops"],
            "data.n_entities": trial["n_entities"],
            "data.inferred_ratio": trial["ratio"],
            "data.train_max_hops": 2,
            "data.test_max_hops": test_max_hops,
            "model.max_loops": MAX_LOOPS,
            "eval.phase_level": PHASE_LEVEL,
            "eval.halt_kl": 0.01,
            "eval.halt_entropy": None,
        }
        if "replicate" in trial:  # as a replicated sweep logs it: the index and the seeds it set
            params |= {REPLICATE_PARAM: trial["replicate"], "train.seed": trial["replicate"],
                       "data.seed": 3 + trial["replicate"]}
        metrics, reached = [], {}
        for step in STEPS:
            values = trial_metrics(step, trial, splits, last=step == STEPS[-1])
            for split in splits:
                if split not in reached and values[f"acc/{split}"] >= PHASE_LEVEL:
                    reached[split] = step
                if split in reached:
                    values[f"phase/{split}/step"] = float(reached[split])
            metrics += [Metric(key, value, 0, step) for key, value in values.items()]
        for start in range(0, len(metrics), 1000):
            client.log_batch(
                run.info.run_id,
                metrics=metrics[start : start + 1000],
                params=[Param(k, str(v)) for k, v in params.items()] if start == 0 else [],
            )
    return parent.info.run_id


GROKKING_TRIALS = [  # the second is best by acc/id (highest quality)
    {"n_entities": 32, "ratio": 2.0, "loops": 2, "quality": 0.8, "grid": True},
    {"n_entities": 32, "ratio": 3.6, "loops": 4, "quality": 1.0, "grid": True},
    {"n_entities": 64, "ratio": 2.0, "loops": 4, "quality": 0.7, "grid": True},
    {"n_entities": 64, "ratio": 3.6, "loops": 2, "quality": 0.9, "grid": False},
]


# Two settings (the second and third above: same trained loops), three seeds each, in the grid sampler's
# mixed order. Setting 1 has the best trial, setting 0 the best mean.
REPLICATED_SETTINGS = {0: GROKKING_TRIALS[1], 1: GROKKING_TRIALS[2]}
REPLICATED_QUALITY = {0: [0.8, 0.6, 0.7], 1: [0.9, 0.5, 0.4]}
REPLICATED_TRIALS = [
    {**REPLICATED_SETTINGS[setting], "quality": REPLICATED_QUALITY[setting][replicate], "replicate": replicate}
    for replicate, setting in [(0, 0), (0, 1), (1, 1), (1, 0), (2, 0), (2, 1)]
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """One store for the module: ``full`` (ood split, deeper test queries, halting grids) and
    ``no-ood`` (no held-out facts, test depth = trained depth)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    full = log_sweep(client, root, "full", GROKKING_TRIALS, ood=True, test_max_hops=4)
    no_ood = log_sweep(client, root, "no-ood", GROKKING_TRIALS[:2], ood=False, test_max_hops=2)
    replicated = log_sweep(client, root, "replicated", REPLICATED_TRIALS, ood=True, test_max_hops=4)
    return {"uri": uri, "root": root, "client": client, "full": full, "no-ood": no_ood, "replicated": replicated}


def test_draws_every_diagram_as_png_and_html_and_logs_them_to_the_parent_run(store, tmp_path):
    report = draw_report(store["uri"], "full", out_dir=tmp_path)

    expected = {f"{name}.{ext}" for name in DIAGRAMS for ext in ("png", "html")} | {PLOTLY_JS}
    assert report.parent_run_id == store["full"]
    assert report.notes == []
    assert {path.name for path in report.files} == expected
    logged = store["client"].list_artifacts(store["full"], "diagrams")
    assert {info.path for info in logged} == {f"diagrams/{name}" for name in expected}
    for path in report.files:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        elif path.suffix == ".html":  # small: it loads the one plotly.js logged beside it
            assert path.stat().st_size < 100_000 and "Plotly.newPlot" in path.read_text()


def test_overthinking_marks_each_rows_peak_and_averages_trials_of_one_trained_loop_count(store):
    sweep = load_sweep(store["client"], "full")
    best_trial, by_trained = overthinking(sweep).panels

    assert "full-001" in best_trial.title  # best by the parent's sweep.metric, acc/id
    assert best_trial.y == ["2", "3", "4"] and best_trial.x == [str(t) for t in range(1, MAX_LOOPS + 1)]
    assert best_trial.marks[0].points == [("3", "2"), ("4", "3"), ("5", "4")]  # hop k peaks at loop k + 1
    assert by_trained.y == ["2", "4"]
    loop_3 = by_trained.x.index("3")
    trained_4 = [trial for trial in sweep.trials if trial.params["train.train_loops"] == "4"]
    mean = sum(trial.metrics["acc/id/loop_03"] for trial in trained_4) / len(trained_4)
    assert by_trained.values[1][loop_3] == pytest.approx(mean)


def test_grokking_has_a_row_per_graph_and_marks_the_phase_onsets(store):
    sweep = load_sweep(store["client"], "full")
    panels = grokking(sweep).panels

    assert [panel.title.split()[0] for panel in panels] == ["train", "id", "ood"]
    train = panels[0]
    assert train.y == ["N=32, φ=2.0", "N=32, φ=3.6", "N=64, φ=2.0", "N=64, φ=3.6"]
    assert train.x == [str(step) for step in STEPS]
    onsets = dict((y, x) for x, y in train.marks[0].points)
    trial = next(t for t in sweep.trials if t.name == "full-000")
    assert onsets["N=32, φ=2.0"] == str(int(trial.metrics["phase/train/step"]))


def test_halting_front_and_threshold_grid(store):
    sweep = load_sweep(store["client"], "full")
    scatter, grid = halting(sweep).panels

    points = [(x, y) for series in scatter.series for x, y in zip(series.x, series.y)]
    assert len(points) == 3 * 11 + 1  # three trials' grids (11 rules each), one trial's configured rule
    assert scatter.front == [points[i] for i in pareto_front(points)]
    assert grid.x == KL_GRID and grid.y == ENTROPY_GRID
    assert math.isnan(grid.values[0][0])  # both thresholds off is not a rule
    assert grid.marks[0].points == [("0.01", "off")]  # the configured rule (eval.halt_kl = 0.01)


def test_pareto_front_keeps_the_points_no_other_beats():
    points = [(2.0, 0.8), (2.0, 0.9), (3.0, 0.9), (1.0, 0.5), (4.0, 0.95), (5.0, 0.7), (4.0, 0.95), (1.5, math.nan)]
    # (2, 0.8) loses to (2, 0.9); (3, 0.9) needs more loops for the same accuracy; (5, 0.7) loses to all
    # but (1, 0.5); the second (4, 0.95) repeats the first; NaN is left out.
    assert pareto_front(points) == [3, 1, 4]
    assert pareto_front([]) == []


def test_depth_draws_a_line_between_trained_and_untrained_hop_counts(store):
    (panel,) = depth(load_sweep(store["client"], "full")).panels

    assert panel.y == ["2", "3", "4"]
    assert [(line.axis, line.position) for line in panel.lines] == [("x", 3), ("y", 0.5)]  # R = 4; above hops 2


def test_a_sweep_without_ood_split_skips_what_needs_it(store, tmp_path):
    report = draw_report(store["uri"], "no-ood", diagrams=["grokking", "depth"], out_dir=tmp_path)

    assert {path.name for path in report.files} == {"grokking.png", "grokking.html", PLOTLY_JS}
    assert len(report.notes) == 2
    assert report.notes[0].startswith("grokking: no ood split")
    assert report.notes[1].startswith("depth: skipped")
    panels = grokking(load_sweep(store["client"], "no-ood")).panels
    assert [panel.title.split()[0] for panel in panels] == ["train", "id"]


def test_unknown_store_diagram_or_run_is_an_error_naming_it(store, tmp_path):
    with pytest.raises(ReportError, match="'phases'"):
        draw_report(store["uri"], "full", diagrams=["phases"])
    with pytest.raises(ReportError, match="no MLflow store"):  # and none is created
        draw_report(f"sqlite:///{tmp_path / 'none.db'}", "full")
    assert not (tmp_path / "none.db").exists()
    with pytest.raises(ReportError, match="no run 'f00'"):
        draw_report(store["uri"], "full", parent_run_id="f00")
    child = load_sweep(store["client"], "full").trials[0].run_id
    with pytest.raises(ReportError, match="child run"):
        draw_report(store["uri"], "full", parent_run_id=child)


def test_cli_exits_2_with_one_line_for_an_unknown_experiment(store):
    command = [sys.executable, "-m", "rdt_core.report", "nope", "--tracking-uri", store["uri"]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: no experiment 'nope' in {store['uri']}"]


def test_cli_exits_2_for_an_unknown_diagram_and_prints_the_artifacts_it_writes(store, tmp_path, capsys):
    assert main(["full", "--tracking-uri", store["uri"], "--diagrams", "depth,bogus"]) == 2
    known = ", ".join(DIAGRAMS)
    assert capsys.readouterr().err.strip().splitlines() == [f"error: unknown diagram 'bogus' (known: {known})"]

    assert main(["full", "--tracking-uri", store["uri"], "--diagrams", "depth", "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == [
        f"runs:/{store['full']}/diagrams/depth.png",
        f"runs:/{store['full']}/diagrams/depth.html",
        f"runs:/{store['full']}/diagrams/{PLOTLY_JS}",
    ]


def hand_made(name: str, replicate: int | None, lr: str, **metrics: float) -> Trial:
    params = {"train.lr": lr, "train.train_loops": "4"}
    if replicate is not None:
        params |= {REPLICATE_PARAM: str(replicate), "train.seed": str(replicate), "data.seed": str(10 + replicate)}
    return Trial(f"run-{name}", name, params, {key.replace("_", "/"): value for key, value in metrics.items()})


def test_replicates_are_one_setting_with_the_mean_and_sample_std_of_each_metric():
    trials = [
        hand_made("s-000", 0, "0.01", acc_id=0.4, acc_ood=0.1),
        hand_made("s-001", 0, "0.02", acc_id=0.9),
        hand_made("s-002", 1, "0.01", acc_id=0.5, acc_ood=0.3),
        hand_made("s-003", 2, "0.01", acc_id=0.6),  # never reported acc/ood
    ]
    first, second = group_replicates(trials)

    assert [t.name for t in first.replicates] == ["s-000", "s-002", "s-003"] and first.n == 3
    assert first.name == "s-000 ×3" and first.params == {"train.lr": "0.01", "train.train_loops": "4"}
    assert first.metrics["acc/id"] == pytest.approx(0.5)
    assert first.spread["acc/id"].std == pytest.approx(0.1)  # sample std: sqrt(((-0.1)² + 0² + 0.1²) / 2)
    assert first.spread["acc/ood"] == Spread(pytest.approx(0.2), pytest.approx(math.sqrt(0.02)), 2)
    assert first.spread["acc/id"].text() == "0.500 ± 0.100 (n=3)"
    assert first.spread["acc/ood"].text(2, of=3) == "0.20 ± 0.14 (n=2 of 3)"
    assert (second.name, second.n, second.metrics) == ("s-001", 1, {"acc/id": 0.9})


def test_trials_that_differ_only_in_their_seeds_are_one_setting_without_a_replicate_param():
    trials = [Trial(f"r{i}", f"t-{i}", {"train.lr": "0.01", "train.seed": str(i), "data.seed": str(i)}, {"acc/id": v})
              for i, v in enumerate([0.2, 0.4])]
    (setting,) = group_replicates(trials)
    assert setting.n == 2 and setting.metrics["acc/id"] == pytest.approx(0.3)


def test_one_trial_per_setting_is_left_as_it_was():
    trials = [hand_made("s-000", None, "0.01", acc_id=0.4), hand_made("s-001", None, "0.02", acc_id=0.9)]
    settings = group_replicates(trials)
    assert [(s.name, s.params, s.metrics, s.n) for s in settings] == [(t.name, t.params, t.metrics, 1) for t in trials]
    assert settings[0].spread["acc/id"].text() == "0.400 (n=1)" and math.isnan(settings[0].spread["acc/id"].std)


def test_the_best_setting_is_chosen_by_its_mean_not_by_its_best_replicate():
    trials = [hand_made("a-0", 0, "0.01", acc_id=0.9), hand_made("a-1", 1, "0.01", acc_id=0.1),
              hand_made("a-2", 2, "0.01", acc_id=0.2), hand_made("b-0", 0, "0.02", acc_id=0.6),
              hand_made("b-1", 1, "0.02", acc_id=0.6), hand_made("b-2", 2, "0.02", acc_id=math.nan)]
    best = Sweep(None, "hand-made", "parent", trials, "acc/id", "max").best_setting()
    assert best.name == "b-0 ×3" and best.spread["acc/id"] == Spread(0.6, 0.0, 2)  # NaN left out
    assert Sweep(None, "hand-made", "parent", trials, "acc/id", "min").best_setting().name == "a-0 ×3"


def test_a_replicated_sweep_draws_one_setting_per_cell_with_its_spread_and_a_summary_table(store, tmp_path):
    report = draw_report(store["uri"], "replicated", out_dir=tmp_path)
    sweep = load_sweep(store["client"], "replicated")
    by_setting = {s: [t for t in sweep.trials if t.params["data.n_entities"] == str(REPLICATED_SETTINGS[s]["n_entities"])]
                  for s in (0, 1)}
    acc = {s: [t.metrics["acc/id"] for t in trials] for s, trials in by_setting.items()}

    assert report.notes == [] and {"summary.csv", "summary.md"} <= {path.name for path in report.files}
    best_panel, _ = overthinking(sweep).panels
    assert best_panel.title.startswith("best setting replicated-000 ×3")  # setting 0: best mean, not best trial
    hop, loop = best_panel.y.index("2"), best_panel.x.index("3")
    cell = [t.metrics["acc/id/hops_2/loop_03"] for t in by_setting[0]]
    assert best_panel.values[hop][loop] == pytest.approx(statistics.fmean(cell))
    assert best_panel.spread_text[hop][loop] == f"{statistics.fmean(cell):.3f} ± {statistics.stdev(cell):.3f} (n=3)"
    assert "(n=3)" in (tmp_path / "overthinking.html").read_text()

    train, in_distribution, _ = grokking(sweep).panels
    assert train.y == ["N=32, φ=3.6", "N=64, φ=2.0"]  # one row per setting, not per trial
    onsets = [t.metrics["phase/id/step"] for t in by_setting[0]]
    mean, std = statistics.fmean(onsets), statistics.stdev(onsets)
    assert in_distribution.marks[0].text[0] == f"N=32, φ=3.6: onset at step {mean:.0f} ± {std:.0f} (n=3)"
    nearest = min(in_distribution.x, key=lambda step: abs(float(step) - mean))
    assert in_distribution.marks[0].points[0] == (nearest, "N=32, φ=3.6")
    reached = [t.metrics["phase/id/step"] for t in by_setting[1] if "phase/id/step" in t.metrics]
    assert in_distribution.marks[0].text[1].endswith(f"(n={len(reached)} of 3)") and len(reached) < 3
    scatter, grid = halting(sweep).panels
    assert [series.name for series in scatter.series] == ["replicated-000 ×3 (φ=3.6, N=32)", "replicated-001 ×3 (φ=2.0, N=64)"]
    assert grid.spread_text is not None and "(n=3)" in grid.spread_text[1][1]

    with (tmp_path / "summary.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["setting"] for row in rows] == ["replicated-000 ×3", "replicated-001 ×3"]
    for row, setting in zip(rows, (0, 1)):
        assert row["replicates"] == "3" and row["acc/id n"] == "3"
        assert float(row["acc/id mean"]) == pytest.approx(sum(acc[setting]) / 3)
        assert float(row["acc/id std"]) == pytest.approx(statistics.stdev(acc[setting]))
        onsets = [t.metrics["phase/id/step"] for t in by_setting[setting] if "phase/id/step" in t.metrics]
        assert float(row["phase/id/step mean"]) == pytest.approx(statistics.fmean(onsets))
        assert row["phase/id/step n"] == str(len(onsets))
    assert "best setting by its mean acc/id (max): replicated-000 ×3" in (tmp_path / "summary.md").read_text()


def test_a_sweep_of_one_seed_draws_as_before(store):
    sweep = load_sweep(store["client"], "full")
    assert not sweep.replicated and [s.name for s in sweep.settings] == [t.name for t in sweep.trials]
    panels = [panel for diagram in (overthinking, grokking, halting, depth) for panel in diagram(sweep).panels]
    assert all(getattr(panel, "spread_text", None) is None for panel in panels)
    assert all(mark.text is None for panel in panels for mark in getattr(panel, "marks", []))
    assert overthinking(sweep).panels[0].title == f"best trial full-001 (acc/id = {sweep.trials[1].metrics['acc/id']:.3f}): id split"


def test_an_export_draws_the_same_diagrams_and_summary_as_the_store_it_came_from(store, tmp_path):
    export = tmp_path / "replicated.json.gz"
    from_store = draw_report(store["uri"], "replicated", out_dir=tmp_path / "store", export_to=export)
    from_export = draw_export(export, "replicated", out_dir=tmp_path / "export")

    assert [p.name for p in from_export.files] == [p.name for p in from_store.files]
    assert (tmp_path / "export" / "summary.csv").read_text() == (tmp_path / "store" / "summary.csv").read_text()
    for name in ("grokking.html", "overthinking.html", "halting.html", "depth.html"):  # the same figure data
        assert (tmp_path / "export" / name).read_text() == (tmp_path / "store" / name).read_text()
    stored, exported = load_sweep(store["client"], "replicated"), load_export(export, "replicated")
    for kept, read in zip(stored.trials, exported.trials):
        assert read.params == kept.params and read.logged == kept.logged
        assert read.metrics == pytest.approx(kept.metrics, rel=0, abs=0, nan_ok=True)
        assert exported.history(read, "acc/id") == stored.history(kept, "acc/id")
    assert export.read_bytes() == export_sweep(stored, tmp_path / "again.json.gz").read_bytes()  # same bytes


def test_an_export_of_another_sweep_or_not_an_export_exits_2_naming_the_file(store, tmp_path, capsys):
    export = tmp_path / "full.json.gz"
    export_sweep(load_sweep(store["client"], "full"), export)
    (tmp_path / "plain.json").write_text("{}")

    assert main(["replicated", "--from-export", str(export)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {export}: holds experiment 'full', not 'replicated'"
    assert main(["full", "--from-export", str(tmp_path / "plain.json")]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {tmp_path / 'plain.json'}: not a sweep export")
    assert main(["full", "--from-export", str(export), "--out-dir", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "depth.png").is_file()


def test_the_trained_loops_panel_never_averages_a_plain_transformer_with_a_looped_model():
    curves = {"looped": [0.1, 0.5, 0.9], "vanilla": [0.0, 0.1, 0.1]}
    trials = [
        Trial(f"{architecture}-{seed}", f"{architecture}-{seed}",
              {"model.architecture": architecture, "train.train_loops": "2", "train.seed": str(seed)},
              {f"acc/id/loop_{loop:02d}": value for loop, value in enumerate(curve, start=1)})
        for architecture, curve in curves.items() for seed in (0, 1)
    ]
    panel = trained_loops_panel(trials)

    assert panel.y == ["looped R=2", "vanilla R=2"]
    assert panel.values == [curves["looped"], curves["vanilla"]]
    assert panel.marks[1].points == [("2", "looped R=2"), ("2", "vanilla R=2")]  # the trained R of each row
    assert trained_loops_panel(trials[:2]).y == ["2"]  # one architecture: rows are R alone, as before


def test_a_sampled_value_in_a_legend_is_shown_to_three_significant_digits():
    assert param_label("train.lr", "0.003574716038555324") == "lr=0.00357"
    assert param_label("train.weight_decay", "0.12345") == "weight_decay=0.123"
    assert [param_label("train.train_loops", "4"), param_label("data.inferred_ratio", "2.5")] == ["train_loops=4", "φ=2.5"]
    assert param_label("train.loops_sampling", "poisson") == "loops_sampling=poisson"
    assert param_label("train.weight_decay", "0.1") == "weight_decay=0.1"


def test_a_threshold_grid_in_nats_draws_and_marks_its_configured_rule():
    """The paper's thresholds are absolute (entropy below 3.0 nats): rules named ``kl_0.01_h_3nats``."""
    metrics = {f"halting/id/{rule}/{stat}": value for rule, acc in
               [("kl_0.01_h_off", 0.5), ("kl_0.01_h_0.35nats", 0.4), ("kl_0.01_h_3nats", 0.45), ("kl_off_h_3nats", 0.2)]
               for stat, value in (("acc", acc), ("mean_loops", 6.0))}
    params = {"eval.halt_kl": "0.01", "eval.halt_entropy": "3.0", "eval.halt_entropy_scale": "nats"}
    (setting,) = group_replicates([Trial("r", "t", params, metrics)])
    panel = threshold_panel(setting, "grid")
    assert panel.x == ["off", "0.01"] and panel.y == ["off", "0.35nats", "3nats"]
    assert panel.values[2] == [0.2, 0.45]
    assert panel.marks[0].points == [("0.01", "3nats")]
