"""The four phase diagrams of a sweep, and ``draw_report``, which draws them and logs them to its parent run.

Each diagram reads final metric values (or, for grokking, histories) of the sweep's trials and returns a
``panels.Figure``; one that the data cannot support raises ``Unsupported`` with the reason, which becomes
a note of the report instead of an error, since which diagrams make sense depends on the sweep.

- overthinking: accuracy over inference loops, per hop count (best trial) and per trained loop count;
- grokking: accuracy over training steps per trial, with the phase onsets, one panel per split;
- halting: accuracy against mean loops of every halting rule of every trial, with the Pareto front,
  and the best trial's threshold grid;
- depth: accuracy over inference loops per hop count, with the trained hop counts set apart.

Trials that differ only in their seeds are one setting (``runs.Setting``): a cell, row or point of a
setting is the mean over its replicates, its hover text (HTML) the mean ± sample std (n), and the best
setting is the best by its mean. A replicated sweep also gets ``summary.csv`` and ``summary.md``.
"""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np

from rdt_core.metrics import (
    ACC,
    ACC_CHOSEN,
    ACC_HOPS_LOOP,
    ACC_LOOP,
    HALTING,
    HALTING_RULE,
    PHASE_STEP,
    names_of,
    rule_name,
    rule_thresholds,
)
from rdt_core.report.export import export_sweep, load_export
from rdt_core.report.panels import Figure, Heatmap, Line, Marks, Scatter, Series
from rdt_core.report.render import write_html, write_plotly_js, write_png
from rdt_core.report.runs import (
    ReportError,
    Setting,
    Spread,
    Sweep,
    Trial,
    load_sweep,
    numbered,
    open_store,
    splits_of,
)
from rdt_core.report.summary import varying_params, write_summary

ARTIFACT_DIR = "diagrams"
GRAPH_PARAMS = {"data.n_entities": ("N", "graph size N"), "data.inferred_ratio": ("φ", "inferred ratio φ")}


class Unsupported(Exception):
    """The sweep's data cannot support a diagram; the message says what is missing."""


def overthinking(sweep: Sweep) -> Figure:
    """Where accuracy peaks over inference loops: per hop count for the best setting, and per trained
    loop count (trials with the same ``train.train_loops`` averaged)."""
    notes, panels = [], []
    best = sweep.best_setting()
    if best is not None and hops_by_loop(best, "id"):
        panels.append(hop_loop_panel(best, f"{best_label(sweep, best)}: id split"))
    else:
        notes.append(f"no per-hop, per-loop accuracy of a best trial (by {sweep.metric}): panel skipped")
    if (by_trained := trained_loops_panel(sweep.trials)) is not None:
        panels.append(by_trained)
    if not panels:
        raise Unsupported("no trial reports acc/id/loop_<t>")
    return Figure("overthinking", f"Overthinking: accuracy over inference loops ({sweep.experiment})", panels, notes)


def trained_loops_panel(trials: list[Trial]) -> Heatmap | None:
    """Final accuracy by inference loop per training loop count R, averaging the trials that share R
    (a search over other settings leaves several) and the architecture (a plain transformer's "loops"
    are its layers: never averaged with a looped model's); None when no trial has both."""
    by_trained = defaultdict(list)
    for trial in trials:
        if (trained := trial.number("train.train_loops")) is not None and (
            curve := numbered(trial.metrics, ACC_LOOP, "loop", split="id")
        ):
            by_trained[trial.params.get("model.architecture", "looped"), trained].append(curve)
    if not by_trained:
        return None
    architectures = {architecture for architecture, _ in by_trained}
    rows = {
        label(trained) if len(architectures) == 1 else f"{architecture} R={label(trained)}": {
            loop: float(np.mean([curve[loop] for curve in curves if loop in curve])) for loop in union(curves)
        }
        for (architecture, trained), curves in sorted(by_trained.items())
    }
    trained_of = {row: label(trained) for row, (_, trained) in zip(rows, sorted(by_trained))}
    title = "final acc/id per training loops R (mean over trials)"
    panel = grid_panel(rows, title, "inference loops", "training loops R")
    trained_cells = [(trained_of[row], row) for row in panel.y if trained_of[row] in panel.x]
    return with_marks(panel, [row_peaks(panel), Marks("trained loops R", trained_cells, "square-open")])


def grokking(sweep: Sweep) -> Figure:
    """Accuracy over training steps, one row per setting (ordered by graph size and inferred ratio), one
    panel per split, with the step at which each setting's accuracy first reached the phase level."""
    splits = splits_of(sweep.trials)
    if not splits:
        raise Unsupported("no trial reports acc/<split>")
    notes = [] if "ood" in splits else ["no ood split (no held-out facts): ood panel skipped"]
    rows, y_title = trial_rows(sweep.settings)
    level = sweep.trials[0].params.get("eval.phase_level", "the phase level")
    panels = [phase_panel(sweep, split, rows, y_title, f"phase onset (acc ≥ {level})") for split in splits]
    return Figure("grokking", f"Grokking: accuracy over training ({sweep.experiment})", panels, notes)


def phase_panel(sweep: Sweep, split: str, rows: list[tuple[str, Setting]], y_title: str, onset: str) -> Heatmap:
    """Accuracy over steps of one split at the loop budget chosen on validation where the trials report
    it (the budget at which the onsets are timed: a systematic stage may show only at more loops than
    trained), else at the trained loop count (the train split)."""
    chosen = ACC_CHOSEN.name(split=split)
    key = chosen if any(chosen in t.logged for _, s in rows for t in s.replicates) else ACC.name(split=split)
    reading = "at the budget chosen on validation" if key == chosen else "at the trained loop count"
    curves = {row: sweep.setting_history(setting, key) for row, setting in rows}
    panel = grid_panel(curves, f"{split} split: {key} {reading}", "optimizer step", y_title)
    points, text = [], []
    for row, setting in rows:
        spread = setting.spread.get(PHASE_STEP.name(split=split))
        # one run's onset is an evaluation step; a mean onset goes to the nearest one
        column = onset_column(panel.x, spread.mean, nearest=setting.n > 1) if spread and spread.n else None
        if column is not None:
            points.append((column, row))
            text.append(f"{row}: onset at step {spread.text(0, of=setting.n)}")
    replicated = any(setting.n > 1 for _, setting in rows)
    return with_marks(panel, [Marks(onset, points, "diamond", text if replicated else None)])


def onset_column(columns: list[str], step: float, nearest: bool) -> str | None:
    """The column label of ``step``, or with ``nearest`` the closest column; None when there is none."""
    if label(step) in columns:
        return label(step)
    if not nearest or not columns:
        return None
    return min(columns, key=lambda column: abs(float(column) - step))


def trial_rows(trials: list[Setting]) -> tuple[list[tuple[str, Setting]], str]:
    """One labelled row per setting, by the graph parameters that vary between settings, and the other
    params that vary where those do not tell the settings apart (names where nothing does), and the axis
    title that says so."""
    varying = [key for key in GRAPH_PARAMS if len({t.params.get(key) for t in trials}) > 1]
    if len({tuple(t.params.get(key) for key in varying) for t in trials}) < len(trials):  # add what else differs
        varying += [key for key in varying_params(trials) if key not in GRAPH_PARAMS]
    ordered = sorted(trials, key=lambda t: (*(sortable(t, key) for key in varying), t.name))
    labels = [", ".join(param_label(key, t.params.get(key)) for key in varying) for t in ordered]
    if not varying or len(set(labels)) < len(labels):
        labels = [f"{text} ({t.name})" if text else t.name for text, t in zip(labels, ordered)]
    title = " and ".join(GRAPH_PARAMS[key][1] if key in GRAPH_PARAMS else short_name(key) for key in varying) or (
        "setting" if any(t.n > 1 for t in trials) else "trial"
    )
    return list(zip(labels, ordered)), title


def short_name(key: str) -> str:
    """A param's name in a row label: the graph's symbols (N, φ), else its last dotted part."""
    return GRAPH_PARAMS[key][0] if key in GRAPH_PARAMS else key.rsplit(".", 1)[-1]


def param_label(key: str, value: str | None) -> str:
    """``name=value`` in a label, a fraction to 3 significant digits (``lr=0.00357``, where the param
    holds a sampled 0.003574716038555324; ``φ=2.5``); integers and text as they are."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"{short_name(key)}={value}"
    return f"{short_name(key)}={value if number.is_integer() else f'{number:.3g}'}"


def sortable(setting: Setting, key: str) -> tuple[float, str]:
    """Rows in numeric order of a numeric param, else in its text order."""
    number = setting.number(key)
    return (number, "") if number is not None else (math.inf, setting.params.get(key, ""))


def halting(sweep: Sweep) -> Figure:
    """Accuracy against compute for every halting rule of every setting (split id, final values, means
    over replicates) with the Pareto front over all of them, and the best setting's threshold grid."""
    varying = varying_params(sweep.settings)
    series = [rule_series(setting, setting_name(setting, varying)) for setting in sweep.settings]
    series = [s for s in series if s.x]
    if not series:
        raise Unsupported("no trial reports halting/id/<rule>/{acc,mean_loops}")
    points = [(x, y) for s in series for x, y in zip(s.x, s.y)]
    front = [points[i] for i in pareto_front(points)]
    scatter = Scatter(
        "every rule of every trial (id split, all hop counts, final)", "mean loops", "accuracy", series, front,
        "Pareto front",
    )
    best, notes, panels = sweep.best_setting(), [], [scatter]
    if best is not None and grid_rules(best):
        panels.append(threshold_panel(best, f"{best_label(sweep, best)}: threshold grid (cells: mean loops)"))
    else:
        notes.append(f"the best trial (by {sweep.metric}) reports no threshold grid: grid panel skipped")
    return Figure("halting", f"Adaptive halting: accuracy against loops ({sweep.experiment})", panels, notes)


def setting_name(setting: Setting, varying: list[str]) -> str:
    """A setting's name with the values of the params that tell it apart: ``halting-001 ×3 (loops_sampling=fixed)``."""
    values = ", ".join(param_label(key, setting.params.get(key)) for key in varying)
    return f"{setting.name} ({values})" if values else setting.name


def rule_series(setting: Setting, name: str) -> Series:
    """The setting's halting rules as (mean loops, accuracy) points, named ``name``: the grid, else the
    configured rule (a trial stopped early never reported the grid, which comes at the end)."""
    def named(stat: str, rule: str | None) -> str:
        return HALTING.name(split="id", stat=stat) if rule is None else HALTING_RULE.name(split="id", rule=rule, stat=stat)

    rules: dict[str, str | None] = {name: name for name in grid_rules(setting)} or {"configured rule": None}
    points = [
        (name, rule, setting.metrics[named("mean_loops", rule)], setting.metrics[named("acc", rule)])
        for name, rule in rules.items()
        if named("mean_loops", rule) in setting.metrics and named("acc", rule) in setting.metrics
    ]

    def text(label: str, rule: str | None) -> str:
        if setting.n == 1:
            return f"{name}: {label}"
        acc, loops = setting.spread[named("acc", rule)], setting.spread[named("mean_loops", rule)]
        return f"{name}: {label}<br>accuracy {acc.text()}<br>mean loops {loops.text(2)}"

    return Series(name, [p[2] for p in points], [p[3] for p in points], [text(n, p) for n, p, _, _ in points])


def grid_rules(trial: Trial | Setting) -> dict[str, tuple[str, str]]:
    """Rule name -> (KL threshold, entropy threshold) as written in the metric names."""
    found = names_of(HALTING_RULE, trial.metrics)
    return {v["rule"]: rule_thresholds(v["rule"]) for v in found.values() if v["split"] == "id" and v["stat"] == "acc"}


def threshold_panel(trial: Setting, title: str) -> Heatmap:
    rules = grid_rules(trial)
    kl = sorted({k for k, _ in rules.values()}, key=threshold_order)
    entropy = sorted({h for _, h in rules.values()}, key=threshold_order)
    cell = {thresholds: name for name, thresholds in rules.items()}
    names = [[cell.get((k, h)) for k in kl] for h in entropy]  # None: both off, not a rule

    def value(name: str | None, what: str) -> float:
        return math.nan if name is None else trial.metrics.get(HALTING_RULE.name(split="id", rule=name, stat=what), math.nan)

    panel = Heatmap(
        title,
        "KL threshold",
        "entropy threshold",
        kl,
        entropy,
        [[value(name, "acc") for name in row] for row in names],
        cell_text=[["" if name is None else f"{value(name, 'mean_loops'):.1f}" for name in row] for row in names],
        spread_text=None if trial.n == 1 else [
            ["" if name is None else trial.spread[HALTING_RULE.name(split="id", rule=name, stat="acc")].text()
             for name in row] for row in names
        ],
    )
    configured = rule_thresholds(rule_name(threshold_param(trial, "kl"), threshold_param(trial, "entropy"),
                                           trial.params.get("eval.halt_entropy_scale") == "nats"))
    return with_marks(panel, [Marks("configured rule", [configured], "square-open")] if configured in cell else [])


def threshold_param(trial: Setting, which: str) -> float | None:
    """The trial's configured ``eval.halt_<which>`` threshold (a param's text, ``None``: off)."""
    param = trial.params.get(f"eval.halt_{which}")
    return None if param in (None, "None") else float(param)


def threshold_order(text: str) -> float:
    """A threshold as the metric names write it, as a number to sort by: ``off`` first, ``3nats`` as 3."""
    return -math.inf if text == "off" else float(text.removesuffix("nats"))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (mean loops, accuracy) points that no other point beats with no more loops and at
    least the same accuracy, ordered by mean loops; of equal points, the first. Non-finite points are
    left out."""
    finite = [i for i, (x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]
    front, best = [], -math.inf
    for i in sorted(finite, key=lambda i: (points[i][0], -points[i][1], i)):
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def depth(sweep: Sweep) -> Figure:
    """Accuracy over inference loops per hop count for the best setting, the untrained (deeper) hop
    counts above a line: does looping longer answer deeper queries than those trained?"""
    best = sweep.best_setting()
    if best is None or not hops_by_loop(best, "id"):
        raise Unsupported(f"no per-hop, per-loop accuracy of a best trial (by {sweep.metric})")
    trained = best.number("data.train_max_hops")
    hops = list(hops_by_loop(best, "id"))  # ascending
    if trained is None or hops[-1] <= trained:
        raise Unsupported("the best trial tests no hop count beyond those it was trained on")
    panel = hop_loop_panel(best, f"{best_label(sweep, best)}: id split")
    boundary = Line("y", sum(k <= trained for k in hops) - 0.5, f"trained up to {label(trained)} hops")
    panel = replace(panel, lines=[*panel.lines, boundary])
    return Figure("depth", f"Depth extrapolation: accuracy per hop count ({sweep.experiment})", [panel])


def hops_by_loop(setting: Setting, split: str) -> dict[int, dict[int, Spread]]:
    """Final accuracy (mean and spread over replicates) by hop count, then by inference loop."""
    by_hops: dict[int, dict[int, Spread]] = {}
    found = names_of(ACC_HOPS_LOOP, setting.spread)
    for key, values in sorted(found.items(), key=lambda item: (item[1]["hops"], item[1]["loop"])):
        if values["split"] == split:
            by_hops.setdefault(values["hops"], {})[values["loop"]] = setting.spread[key]
    return by_hops


def hop_loop_panel(trial: Setting, title: str) -> Heatmap:
    """Hop counts (y) x inference loops (x) of one setting (split id), the peak of each hop count marked
    and the trained loop count as a vertical line."""
    panel = grid_panel(hops_by_loop(trial, "id"), title, "inference loops", "hops")
    trained = trial.number("train.train_loops")
    if trained is not None and label(trained) in panel.x:
        panel = replace(panel, lines=[Line("x", panel.x.index(label(trained)), "trained loops R")])
    return with_marks(panel, [row_peaks(panel)])


def grid_panel(
    rows: Mapping[Hashable, Mapping[float, float | Spread]], title: str, x_title: str, y_title: str
) -> Heatmap:
    """A heatmap of rows (in the given order) over the sorted union of their columns; NaN where a row
    has no value. A cell given as a ``Spread`` shows its mean, and its spread on hover where any cell
    averages several replicates."""
    columns = union(rows.values())
    cells = [[row.get(column, math.nan) for column in columns] for row in rows.values()]
    values = [[cell.mean if isinstance(cell, Spread) else cell for cell in row] for row in cells]
    replicated = any(isinstance(cell, Spread) and cell.n > 1 for row in cells for cell in row)
    spread_text = [[cell.text() if isinstance(cell, Spread) and cell.n else "" for cell in row] for row in cells]
    return Heatmap(
        title, x_title, y_title, [label(c) for c in columns], [label(r) for r in rows], values,
        spread_text=spread_text if replicated else None,
    )


def row_peaks(panel: Heatmap) -> Marks:
    """The cell of highest accuracy in each row (the first of equal ones)."""
    values = np.array(panel.values, dtype=float)
    return Marks(
        "peak of each row",
        [(panel.x[int(np.nanargmax(row))], y) for y, row in zip(panel.y, values) if np.isfinite(row).any()],
    )


def with_marks(panel: Heatmap, marks: list[Marks]) -> Heatmap:
    return replace(panel, marks=[*panel.marks, *(m for m in marks if m.points)])


def union(rows: Iterable[Mapping[float, float]]) -> list[float]:
    return sorted({column for row in rows for column in row})


def label(value: Hashable) -> str:
    """Axis labels: whole numbers as integers (``4.0`` -> ``4``, steps beyond a million too), other
    numbers as ``:g``, anything else as it is."""
    if isinstance(value, (int, float)):
        return str(int(value)) if float(value).is_integer() else f"{value:g}"
    return str(value)


def best_label(sweep: Sweep, best: Setting) -> str:
    """``best trial NAME (metric = 0.420)``; for replicates ``best setting NAME (metric = 0.420 ± 0.050 (n=3))``."""
    if best.n == 1:
        return f"best trial {best.name} ({sweep.metric} = {best.metrics[sweep.metric]:.3f})"
    return f"best setting {best.name} ({sweep.metric} = {best.spread[sweep.metric].text()})"


DIAGRAMS: dict[str, Callable[[Sweep], Figure]] = {
    "overthinking": overthinking,
    "grokking": grokking,
    "halting": halting,
    "depth": depth,
}


@dataclass(frozen=True)
class Report:
    """What ``draw_report`` did: files written (each also logged under ``diagrams/`` of the parent run;
    for a replicated sweep ``summary.csv`` and ``summary.md`` too) and notes on what it skipped and why."""

    parent_run_id: str
    files: list[Path]
    notes: list[str]

    @property
    def artifacts(self) -> list[str]:
        return [f"runs:/{self.parent_run_id}/{ARTIFACT_DIR}/{path.name}" for path in self.files]


def draw_report(
    tracking_uri: str,
    experiment: str,
    parent_run_id: str | None = None,
    diagrams: list[str] | None = None,
    out_dir: Path | None = None,
    export_to: Path | None = None,
) -> Report:
    """Draw the chosen diagrams (default: every one the data supports) of the given parent run, else the
    most recent one of ``experiment``, as PNG and HTML files in ``out_dir`` (default: a new temporary
    directory, kept), and log them to the parent run under ``diagrams/``; with ``export_to``, write the
    sweep there too (``rdt_core.report.export``)."""
    names = checked_names(diagrams)
    sweep = load_sweep(open_store(tracking_uri), experiment, parent_run_id)
    if export_to is not None:
        export_sweep(sweep, export_to)
    report = draw_sweep(sweep, names, out_dir)
    for path in report.files:
        sweep.client.log_artifact(sweep.parent_run_id, str(path), ARTIFACT_DIR)
    return report


def draw_export(path: Path, experiment: str, diagrams: list[str] | None = None, out_dir: Path | None = None) -> Report:
    """As ``draw_report``, from an export of the sweep instead of its MLflow store; logs nothing."""
    names = checked_names(diagrams)
    return draw_sweep(load_export(path, experiment), names, out_dir)


def checked_names(diagrams: list[str] | None) -> list[str]:
    names = list(DIAGRAMS) if diagrams is None else diagrams
    if unknown := [name for name in names if name not in DIAGRAMS]:
        raise ReportError(f"unknown diagram {unknown[0]!r} (known: {', '.join(DIAGRAMS)})")
    return names


def draw_sweep(sweep: Sweep, names: list[str], out_dir: Path | None) -> Report:
    """The diagrams ``names`` of ``sweep`` (and a replicated sweep's summary) as files in ``out_dir``."""
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="rdt-report-"))
    out.mkdir(parents=True, exist_ok=True)
    files, notes = [], []
    for name in names:
        try:
            figure = DIAGRAMS[name](sweep)
        except Unsupported as reason:
            notes.append(f"{name}: skipped: {reason}")
            continue
        notes += [f"{name}: {note}" for note in figure.notes]
        files += [
            write_png(figure, out / f"{name}.png"),
            write_html(figure, out / f"{name}.html", sweep.parent_run_id, ARTIFACT_DIR),
        ]
    if any(path.suffix == ".html" for path in files):  # the one plotly.js that the HTML diagrams load
        files.append(write_plotly_js(out))
    if sweep.replicated:  # per-setting means, stds and n of the sweep's metric and the phase onsets
        files += write_summary(sweep, out)
    return Report(sweep.parent_run_id, files, notes)
