"""The figure list of docs/results.md (``python -m rdt_core.report --figures``): it loads, a bad list is
refused whole with one line naming the file and the key, the same export draws the same bytes, and a
figure's title is read from the export's params, not copied by hand."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rdt_core.report.__main__ import main
from rdt_core.report.export import export_sweep, load_export
from rdt_core.report.figure_list import draw_figure_list, load_figure_list
from rdt_core.report.figures import setup

ROOT = Path(__file__).resolve().parents[2]
DOCS_LIST = ROOT / "docs" / "figures.yaml"
SMALL = "overthinking-long"  # the smallest export of docs/sweeps: 4 trials
SMALL_LIST = f"""\
title: Small
exports: sweeps
sweeps:
  {SMALL}:
    lines:
      loops: {{by: train.train_loops, panels: [[id, 2]]}}
    numbers:
      - overthinking: {{by: {{train.train_loops: R}}}}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder holding the small export in sweeps/, and a list of what to draw from it (small.yaml)."""
    (tmp_path / "sweeps").mkdir()
    shutil.copy(ROOT / "docs" / "sweeps" / f"{SMALL}.json.gz", tmp_path / "sweeps")
    (tmp_path / "small.yaml").write_text(SMALL_LIST)
    return tmp_path


def drawn(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``'s figures/ and its numbers page, by path relative to the folder."""
    found = [*folder.glob("figures/**/*"), folder / "numbers.md"]
    return {str(file.relative_to(folder)): file.read_bytes() for file in found if file.is_file()}


def test_the_list_of_the_results_page_loads() -> None:
    figure_list = load_figure_list(DOCS_LIST)
    assert [entry.name for entry in figure_list.sweeps] == [
        "grokking", "phi", "overthinking", "overthinking-long", "injection", "depth", "halting", "regime",
        "depth-curriculum", "long",
    ]
    assert all(entry.export.is_file() for entry in figure_list.sweeps)
    assert figure_list.numbers == ROOT / "docs" / "numbers.md"


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("title: Small", "titel: Small", "titel"),
        ("    lines:", "    line:", f"sweeps.{SMALL}.line"),
        ("      loops:", "      loopz:", f"sweeps.{SMALL}.lines.loopz"),
        ("      - overthinking:", "      - overthink:", f"sweeps.{SMALL}.numbers[0].overthink"),
        ("{by: train.train_loops, panels", "{by: train.train_loops, panes", f"sweeps.{SMALL}.lines.loops"),
        ("      - overthinking: {by: {train.train_loops: R}}", "      - overthinking: {}",
         f"sweeps.{SMALL}.numbers[0].overthinking"),
        ("    lines:", "    diagrams: [bogus]\n    lines:", f"sweeps.{SMALL}.diagrams"),
        (f"  {SMALL}:", "  missing-sweep:", "sweeps.missing-sweep"),
        ("      loops: {by", "      - loops: {by", f"sweeps.{SMALL}.lines"),
    ],
    ids=["list key", "sweep key", "line kind", "table kind", "option", "missing option", "diagram", "export",
         "shape"],
)
def test_a_bad_list_is_refused_whole_naming_file_and_key(
    folder: Path, capsys: pytest.CaptureFixture, old: str, new: str, key: str
) -> None:
    bad = folder / "bad.yaml"
    bad.write_text(SMALL_LIST.replace(old, new, 1))
    assert SMALL_LIST.replace(old, new, 1) != SMALL_LIST
    assert main(["--figures", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {bad}: {key}"), err
    assert drawn(folder) == {}  # nothing half-written


def test_the_command_exits_2_on_a_bad_list(folder: Path) -> None:
    bad = folder / "bad.yaml"
    bad.write_text(SMALL_LIST.replace("exports: sweeps", "exports: sweeps\ncolour: red"))
    done = subprocess.run([sys.executable, "-m", "rdt_core.report", "--figures", str(bad)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr == f"error: {bad}: colour: unknown key (known: title, exports, figures, numbers, sweeps)\n"


def test_a_list_that_fails_while_drawing_leaves_the_page_as_it_was(folder: Path) -> None:
    """A ``by`` that does not tell the settings apart is found only when drawn: nothing moves into place."""
    (folder / "small.yaml").write_text(SMALL_LIST.replace("{by: {train.train_loops: R}}", "{by: model.injection}"))
    assert main(["--figures", str(folder / "small.yaml")]) == 2
    assert drawn(folder) == {}
    assert sorted(path.name for path in folder.iterdir()) == ["small.yaml", "sweeps"]  # no staging left


def test_the_same_exports_draw_the_same_bytes(folder: Path) -> None:
    figure_list = load_figure_list(folder / "small.yaml")
    files, _ = draw_figure_list(figure_list)
    assert sorted(str(f.relative_to(folder)) for f in files) == [
        "figures/overthinking-long/loops.png", "figures/overthinking-long/summary.md", "numbers.md"
    ]
    first = drawn(folder)
    draw_figure_list(figure_list)
    assert drawn(folder) == first
    page = first["numbers.md"].decode()
    assert "## overthinking-long" in page and "| R | hops |" in page


def test_a_title_is_read_from_the_export(folder: Path) -> None:
    """Give every trial of the export 48 entities: the title says so, and the figure changes."""
    export = folder / "sweeps" / f"{SMALL}.json.gz"
    sweep = load_export(export, SMALL)
    assert setup(sweep).startswith("32 entities, 4 relations,") and "6,000 steps" in setup(sweep)
    draw_figure_list(load_figure_list(folder / "small.yaml"))
    before = drawn(folder)["figures/overthinking-long/loops.png"]

    for trial in sweep.trials:
        trial.params["data.n_entities"] = "48"
    export_sweep(sweep, export)
    assert json.loads(gzip.decompress(export.read_bytes()))["trials"][0]["params"]["data.n_entities"] == "48"
    assert setup(load_export(export, SMALL)).startswith("48 entities, 4 relations,")
    draw_figure_list(load_figure_list(folder / "small.yaml"))
    assert drawn(folder)["figures/overthinking-long/loops.png"] != before
