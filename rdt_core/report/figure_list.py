"""A figure list: what a results page shows, as data, drawn from sweep exports alone by
``python -m rdt_core.report --figures LIST.yaml``.

Per sweep the list names the report's diagrams (``diagrams.DIAGRAMS``), the line figures with their
options (``figures.LINE_FIGURES``) and the tables of the sweep's section of the numbers page
(``numbers.TABLES``; ``search.TABLES`` for a searched sweep); paths are relative to the list.
docs/figures.yaml, for docs/results.md:

    title: Numbers of docs/results.md   # the numbers page's heading
    exports: sweeps                     # each sweep's export is exports/NAME.json.gz (--export)
    figures: figures                    # its figures go to figures/NAME/: DIAGRAM.png, KIND.png
    numbers: numbers.md                 # the numbers page: a section per sweep, in the list's order
    sweeps:
      depth:                            # the sweep's name (its MLflow experiment)
        diagrams: [depth]
        lines:
          hops: {by: [model.architecture, train.curriculum]}
        numbers:                        # `by` as a mapping: the params and their columns' headings
          - depth: {by: {model.architecture: architecture, train.curriculum: curriculum}}
          - untrained_hop_tests: {split: id}
      regime:                           # a searched sweep: its study and the knobs that mattered
        numbers:
          - study: {spec: ../sweeps/regime.yaml}   # a spec, relative to the list
          - importances: {spec: ../sweeps/regime.yaml}

It replaces a script that kept its own figures, tables and titles copied by hand from the sweep specs:
what to draw is data here, how to draw it is the report's, and every title is read from the exports.
The whole list is checked before anything is drawn: an unknown key, kind or option, or a missing export,
is a ``ReportError`` naming the file and the key. What fails later leaves the page as it was, and the same
exports give the same bytes.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rdt_core.config import ConfigError, read_yaml_mapping
from rdt_core.metrics import NULL_CHANCE
from rdt_core.report.diagrams import DIAGRAMS, draw_sweep
from rdt_core.report.export import load_export
from rdt_core.report.figures import LINE_FIGURES
from rdt_core.report import numbers, search
from rdt_core.report.numbers import OPTION_CHECKS
from rdt_core.report.runs import ReportError

TABLES = {**numbers.TABLES, **search.TABLES}
LIST_KEYS = ("title", "exports", "figures", "numbers", "sweeps")
SWEEP_KEYS = ("diagrams", "lines", "numbers")
KEPT_SUFFIXES = (".png", ".md")  # a page shows PNGs and tables; HTML diagrams: python -m rdt_core.report NAME


@dataclass(frozen=True)
class SweepFigures:
    """What the list draws of one sweep: its diagrams, its line figures (kind -> options) and the tables
    of its numbers section (kind, options), in order."""

    name: str
    export: Path
    diagrams: list[str]
    lines: dict[str, dict[str, Any]]
    numbers: list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class FigureList:
    """A loaded list: where it is, the numbers page's heading, the folders it reads and writes, the sweeps."""

    path: Path
    title: str
    exports: Path
    figures: Path
    numbers: Path
    sweeps: list[SweepFigures]


def load_figure_list(path: Path) -> FigureList:
    """The list at ``path``, checked whole: every key known, every export present, every kind known and
    given the options its function takes."""
    path = Path(path)
    try:
        raw = read_yaml_mapping(path, "figure list") or {}
    except ConfigError as error:
        raise ReportError(f"{path}: {error}") from None
    check_keys(path, raw, LIST_KEYS, "")
    folder = path.parent
    exports = folder / str(raw.get("exports", "."))
    sweeps = [
        sweep_figures(path, str(name), entry, exports / f"{name}.json.gz")
        for name, entry in shaped(path, "sweeps", raw.get("sweeps"), dict).items()
    ]
    return FigureList(
        path, str(raw.get("title", "Numbers")), exports, folder / str(raw.get("figures", "figures")),
        folder / str(raw.get("numbers", "numbers.md")), sweeps,
    )


def sweep_figures(path: Path, name: str, entry: Any, export: Path) -> SweepFigures:
    """One sweep's entry of the list at ``path``, checked."""
    where = f"sweeps.{name}"
    entry = shaped(path, where, entry, dict)
    check_keys(path, entry, SWEEP_KEYS, f"{where}.")
    if not export.is_file():
        raise ReportError(f"{path}: {where}: no export {export}")
    diagrams = shaped(path, f"{where}.diagrams", entry.get("diagrams"), list)
    for diagram in diagrams:
        if diagram not in DIAGRAMS:
            raise ReportError(f"{path}: {where}.diagrams: unknown diagram {diagram!r} (known: {', '.join(DIAGRAMS)})")
    lines = {}
    for kind, options in shaped(path, f"{where}.lines", entry.get("lines"), dict).items():
        lines[kind] = checked_options(path, f"{where}.lines.{kind}", kind, options, LINE_FIGURES, 2)  # sweep, path
    numbers = []
    for index, table in enumerate(shaped(path, f"{where}.numbers", entry.get("numbers"), list)):
        if not (isinstance(table, dict) and len(table) == 1):
            raise ReportError(f"{path}: {where}.numbers[{index}]: expected one `kind: {{options}}`")
        (kind, options), = table.items()
        options = checked_options(path, f"{where}.numbers[{index}].{kind}", kind, options, TABLES, 1,
                                  OPTION_CHECKS.get(kind))
        if "spec" in options:  # a sweep spec (the search tables' ranges), relative to the list like the rest
            options["spec"] = str(path.parent / options["spec"])
        numbers.append((kind, options))
    return SweepFigures(name, export, diagrams, lines, numbers)


def shaped(path: Path, where: str, value: Any, shape: type[dict] | type[list]) -> Any:
    """``value`` if it is a mapping (``dict``) or a list as ``shape`` says, an empty one if absent."""
    if value is None:
        return shape()
    if not isinstance(value, shape):
        raise ReportError(f"{path}: {where}: expected a {'mapping' if shape is dict else 'list'}, got {value!r}")
    return value


def check_keys(path: Path, mapping: dict, known: tuple[str, ...], prefix: str) -> None:
    if unknown := [key for key in mapping if key not in known]:
        raise ReportError(f"{path}: {prefix}{unknown[0]}: unknown key (known: {', '.join(known)})")


def checked_options(
    path: Path, where: str, kind: str, options: Any, known: dict[str, Callable], positional: int,
    check: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The options of ``kind``, checked to be what its function in ``known`` takes after its ``positional``
    arguments (the sweep, the path of a figure), then by ``check`` (what they hold inside, a TypeError): a
    misspelt or missing option fails here, not half-way through drawing."""
    if kind not in known:
        raise ReportError(f"{path}: {where}: unknown kind (known: {', '.join(known)})")
    options = shaped(path, where, options, dict)
    try:
        inspect.signature(known[kind]).bind(*[None] * positional, **options)
        if check is not None:
            check(options)
    except TypeError as error:
        raise ReportError(f"{path}: {where}: {error}") from None
    return options


def draw_figure_list(figure_list: FigureList) -> tuple[list[Path], list[str]]:
    """Every figure of the list, each sweep's in ``figures/NAME/``, and the numbers page; returns the
    files written and notes on what the data could not support. All is drawn in a folder beside the list
    first and moved into place at the end: a list that fails half-way (a ``by`` that does not tell the
    settings apart) leaves the page and its figures as they were."""
    with tempfile.TemporaryDirectory(prefix=".figures-", dir=figure_list.path.parent) as staging:
        staged, notes = draw_pages(figure_list, Path(staging))
        files = []
        for file, final in staged:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, final)
            files.append(final)
    return files, notes


def draw_pages(figure_list: FigureList, staging: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """``draw_figure_list``'s drawing, into ``staging``: (each file drawn, where it belongs) and the notes."""
    staged, notes = [], []
    # links relative to the page, as Markdown reads them: the same page whichever folder the command ran in
    the_list, exports = (os.path.relpath(p, figure_list.numbers.parent) for p in (figure_list.path, figure_list.exports))
    page = [
        f"# {figure_list.title}", "",
        f"Written by `python -m rdt_core.report --figures` from [{the_list}]({the_list}) and the sweep exports in "
        f"[{exports}/]({exports}/); do not edit.",
        "Each cell: mean ± sample std (n = seeds). Accuracies on test splits; loop budgets chosen on validation.", "",
    ]
    for entry in figure_list.sweeps:
        sweep = load_export(entry.export, entry.name)
        out, final = staging / "figures" / entry.name, figure_list.figures / entry.name
        report = draw_sweep(sweep, entry.diagrams, out)
        files = [file for file in report.files if file.suffix in KEPT_SUFFIXES]
        files += [LINE_FIGURES[kind](sweep, out / f"{kind}.png", **options) for kind, options in entry.lines.items()]
        staged += [(file, final / file.name) for file in files]
        notes += [f"{entry.name}: {note}" for note in report.notes]
        page += [f"## {entry.name}", ""]
        for kind, options in entry.numbers:
            page += TABLES[kind](sweep, **options)
        chance = sweep.trials[0].metrics.get(NULL_CHANCE.name())
        page += [f"chance: {chance:.3f}" if chance else "", ""]
    numbers = staging / "numbers.md"
    numbers.write_text("\n".join(page).rstrip() + "\n")
    return [*staged, (numbers, figure_list.numbers)], notes
