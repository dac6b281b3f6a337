"""Line figures of a sweep, beside the report's heatmaps: where a heatmap shows means, a line figure shows
the spread over seeds (mean line, band of ± one sample std) and the nulls the means must clear.

- ``curves``: accuracy over training, one panel per split;
- ``loops``: final accuracy over inference loops, one panel per (split, hop count);
- ``hops``: final accuracy over hop counts, the trained depth marked.

Each is a function of the sweep, the PNG to write and its options, named in ``LINE_FIGURES``; ``by``
names the params (one, or a list) whose values are the lines. A figure's title is the sweep's name and
what all its trials share (``setup``), read from the trials' params, so that it cannot drift from the data
as a title copied by hand from the sweep's spec would.
Drawn on a bare matplotlib figure with the Agg canvas (as ``render``): no global state, the same bytes
from the same export.
"""

from __future__ import annotations

import math
import textwrap
from fractions import Fraction
from pathlib import Path
from typing import Callable

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from rdt_core.metrics import ACC, ACC_CHOSEN, ACC_HOPS_CHOSEN, ACC_HOPS_LOOP, LOOPS_CHOSEN, NULL, NULL_CHANCE
from rdt_core.report.runs import By, Setting, Spread, Sweep, numbered_keys, param_names

PANEL_HEIGHT = 3.4  # inches
TITLE_SIZE = 10  # points, of a figure's title over several panels; a lone panel's title keeps its own (12)
TITLE_CHARACTERS_PER_INCH_AT_10 = 14  # of a title at 10 points, fewer at larger sizes (DejaVu Sans: about 16)
DPI = 120


def accuracy_over_training(sweep: Sweep, path: Path, by: By) -> Path:
    """Accuracy over training at the budget chosen on validation (train: at the trained loops), one
    panel per split, one line per setting, the split's structural null (where the split holds one hop
    count) dashed in the line's colour and chance dotted."""
    splits = [split for split in ("train", "id", "ood") if ACC.name(split=split) in sweep.trials[0].metrics]
    figure, panels = new_figure(len(splits), 4.2)
    chance = sweep.trials[0].metrics.get(NULL_CHANCE.name())
    for axes, split in zip(panels, splits):
        key = ACC.name(split=split) if split == "train" else ACC_CHOSEN.name(split=split)
        for values, setting in sweep.settings_by(by):
            history = sweep.setting_history(setting, key)
            steps = sorted(history)
            line = band(axes, steps, [history[step] for step in steps], 0.2, label=line_label(by, values, setting))
            nulls = numbered_keys(setting.spread, NULL, "hops", split=split, stat="structural")
            if len(nulls) == 1:
                axes.axhline(setting.spread[nulls.popitem()[1]].mean, color=line.get_color(), linestyle="--", linewidth=0.8)
        if chance:
            axes.axhline(chance, color="grey", linestyle=":", linewidth=0.8)
        reading = "at the trained loops" if split == "train" else "at the budget chosen on validation"
        axes.set(title=f"{split}: {reading}", xlabel="optimizer step", ylim=(0, 1.02))
    panels[0].set_ylabel("test accuracy (mean ± std over seeds)")
    panels[-1].legend(fontsize=7, title="dashed: structural null; dotted: chance", title_fontsize=7)
    return save(figure, sweep, path)


def accuracy_over_loops(sweep: Sweep, path: Path, by: By, panels: list[tuple[str, int]]) -> Path:
    """Final test accuracy over inference loops, one panel per (split, hop count) of ``panels``, one line
    per setting, each line's structural null dashed and its loop budget chosen on validation dotted
    (means over seeds)."""
    figure, grid = new_figure(len(panels), 4.6)
    for axes, (split, hops) in zip(grid, panels):
        for values, setting in sweep.settings_by(by):
            loops = sorted(numbered_keys(setting.spread, ACC_HOPS_LOOP, "loop", split=split, hops=hops))
            cells = [setting.spread[ACC_HOPS_LOOP.name(split=split, hops=hops, loop=loop)] for loop in loops]
            line = band(axes, loops, cells, 0.2, marker=".", label=line_label(by, values, setting))
            chosen = setting.spread.get(LOOPS_CHOSEN.name(split=split, hops=hops))
            if chosen and chosen.n:
                axes.axvline(chosen.mean, color=line.get_color(), linestyle=":", linewidth=0.8)
            null = setting.spread.get(NULL.name(split=split, hops=hops, stat="structural"))
            if null and null.n:
                axes.axhline(null.mean, color=line.get_color(), linestyle="--", linewidth=0.8)
        axes.set(title=f"{split}, {hops} hops: final test accuracy", xlabel="inference loops", ylim=(0, 1.02))
    grid[0].set_ylabel("accuracy (mean ± std over seeds)")
    grid[-1].legend(fontsize=7, title="dashed: structural null; dotted: loops chosen", title_fontsize=7)
    return save(figure, sweep, path)


def accuracy_over_hops(sweep: Sweep, path: Path, by: By) -> Path:
    """Test accuracy (id split) at the budget chosen on validation against the hop count, one line per
    setting, the structural null dashed and the deepest trained hop count (``data.train_max_hops``)
    marked: does accuracy hold beyond it?"""
    figure, (axes,) = new_figure(1, 6.4, height=3.6)
    for values, setting in sweep.settings_by(by):
        hops = sorted(numbered_keys(setting.spread, ACC_HOPS_CHOSEN, "hops", split="id"))
        cells = [setting.spread[ACC_HOPS_CHOSEN.name(split="id", hops=h)] for h in hops]
        band(axes, hops, cells, 0.15, marker="o", label=line_label(by, values, setting))
    nulls = numbered_keys(sweep.settings[0].spread, NULL, "hops", split="id", stat="structural")
    hops = sorted(nulls)
    axes.plot(hops, [sweep.settings[0].spread[nulls[h]].mean for h in hops], color="grey", linestyle="--",
              linewidth=0.8, label="structural null")
    trained = int(sweep.trials[0].params["data.train_max_hops"])
    axes.axvline(trained + 0.5, color="grey", linestyle=":", linewidth=0.8)
    axes.annotate(f"trained up to {trained} hops", (trained + 0.55, 0.95), fontsize=7, color="grey")
    axes.set(xlabel="hops", ylabel="test accuracy, loops chosen on validation", ylim=(0, 1.02))
    axes.legend(fontsize=7, loc="center right")  # clear of the trained depth's note, whatever the title's lines
    return save(figure, sweep, path, title_on=axes)


LINE_FIGURES: dict[str, Callable[..., Path]] = {
    "curves": accuracy_over_training,
    "loops": accuracy_over_loops,
    "hops": accuracy_over_hops,
}


def setup(sweep: Sweep) -> str:
    """What every trial of the sweep shares, in words: ``32 entities, 4 relations, trained on 1-2 hops,
    tested to 3, R = 4, 3,000 steps``. A param whose value differs between trials is left out: the lines
    of the figure tell those apart."""
    first = sweep.trials[0].params
    shared = {key: value for key, value in first.items() if all(t.params.get(key) == value for t in sweep.trials)}
    number = {key: f"{float(value):g}" for key, value in shared.items() if is_number(value)}
    words = []
    if "data.n_entities" in number:
        words.append(f"{number['data.n_entities']} entities")
    if "data.n_relations" in number:
        words.append(f"{number['data.n_relations']} relations")
    if float(number.get("data.ood_fraction", 0)):
        held_out = Fraction(number["data.ood_fraction"]).limit_denominator(100)
        words.append(f"{held_out} of the atomic facts held out")
    if "data.inferred_ratio" in number:
        words.append(f"φ = {number['data.inferred_ratio']}")
    if "data.train_max_hops" in number:
        words.append(f"trained on 1-{number['data.train_max_hops']} hops")
        if float(number.get("data.test_max_hops", 0)) > float(number["data.train_max_hops"]):
            words.append(f"tested to {number['data.test_max_hops']}")
    if "train.train_loops" in number:
        sampled = any(trial.params.get("train.loops_sampling", "fixed") != "fixed" for trial in sweep.trials)
        words.append(f"R = {number['train.train_loops']}" + (" (its mean where sampled)" if sampled else ""))
    if "train.steps" in number:
        words.append(f"{int(float(number['train.steps'])):,} steps")
    return ", ".join(words)


def is_number(text: str) -> bool:
    """Whether a param's value (a string, as MLflow keeps it) is a finite number: ``None`` and ``add`` are not."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def line_label(by: By, values: tuple[str, ...], setting: Setting) -> str:
    """The values that tell this line's setting apart: ``architecture = looped (n=3)``, or with several
    params, kept short, ``architecture=looped, curriculum=True (n=2)``."""
    equals = " = " if len(values) == 1 else "="
    named = ", ".join(f"{param.rsplit('.', 1)[-1]}{equals}{value}" for param, value in zip(param_names(by), values))
    return f"{named} (n={setting.n})"


def band(axes: Axes, x: list, cells: list[Spread], alpha: float, **style) -> Line2D:
    """A line of the cells' means with a band of ± one sample std (none for one seed); returns the line."""
    mean = [cell.mean for cell in cells]
    std = [cell.std if cell.n > 1 else 0.0 for cell in cells]
    line, = axes.plot(x, mean, **style)
    axes.fill_between(x, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)],
                      color=line.get_color(), alpha=alpha, linewidth=0)
    return line


def new_figure(n_panels: int, panel_width: float, height: float = PANEL_HEIGHT) -> tuple[Figure, list[Axes]]:
    """A figure of ``n_panels`` side by side sharing their accuracy axis."""
    figure = FigureCanvasAgg(Figure(figsize=(panel_width * n_panels, height))).figure
    return figure, list(figure.subplots(1, n_panels, sharey=True, squeeze=False)[0])


def save(figure: Figure, sweep: Sweep, path: Path, title_on: Axes | None = None) -> Path:
    """Title the figure with the sweep's name and setup, on lines that fit its width, and write it.
    ``title_on``: a figure's one panel, which takes the title as its own; a figure of several panels is
    titled above them, each panel keeping the title that names its split."""
    title = f"{sweep.experiment}: {setup(sweep)}"
    size = title_on.title.get_fontsize() if title_on else TITLE_SIZE
    lines = "\n".join(textwrap.wrap(title, int(figure.get_figwidth() * TITLE_CHARACTERS_PER_INCH_AT_10 * 10 / size)))
    if title_on:
        title_on.set_title(lines)
    else:
        figure.suptitle(lines, fontsize=TITLE_SIZE)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return path
