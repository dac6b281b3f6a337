"""``python -m rdt_core.report EXPERIMENT [--tracking-uri URI] [--run-id ID] [--diagrams a,b] [--out-dir DIR]
[--export FILE | --from-export FILE]`` or ``python -m rdt_core.report --figures LIST``

Draws the phase diagrams of a sweep and logs them to its parent run; ``--export`` also writes the sweep to
one file (``rdt_core.report.export``), ``--from-export`` draws from such a file instead of MLflow and logs
nothing. ``--figures`` draws every figure and numbers table of a figure list (``rdt_core.report.figure_list``,
e.g. docs/figures.yaml) from the exports it names. Exit status 2, with one line on stderr, for an unknown
experiment, run or diagram, a file that is not an export of that experiment, or a figure list with an
unknown key (argparse's own usage errors exit 2 as well); 1 for a tracking server that does not answer or
refuses the credentials (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rdt_core.report.diagrams import DIAGRAMS, draw_export, draw_report
from rdt_core.report.figure_list import draw_figure_list, load_figure_list
from rdt_core.report.runs import ReportError
from rdt_core.tracking import DEFAULT_TRACKING_URI, TrackingUnavailable, check_reachable


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rdt_core.report", description=__doc__.splitlines()[2])
    parser.add_argument("experiment", nargs="?", help="the sweep's MLflow experiment (its name)")
    parser.add_argument(
        "--figures", type=Path, metavar="LIST", help="draw every figure and table of a figure list (YAML) from its exports"
    )
    parser.add_argument("--tracking-uri", help=f"default: MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI}")
    parser.add_argument("--run-id", help="the sweep's parent run; default: the experiment's most recent one")
    parser.add_argument(
        "--diagrams", help=f"comma-separated, among {','.join(DIAGRAMS)}; default: all that the data supports"
    )
    parser.add_argument("--out-dir", type=Path, help="where the files go besides MLflow; default: a new temp directory")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--export", type=Path, metavar="FILE", help="also write the sweep to FILE (gzipped JSON)")
    source.add_argument(
        "--from-export", type=Path, metavar="FILE", help="draw from FILE, written by --export, instead of MLflow"
    )
    args = parser.parse_args(argv)
    if args.figures is not None and any(value is not None for name, value in vars(args).items() if name != "figures"):
        parser.error("--figures draws what its list names: no EXPERIMENT and no other option")
    if args.figures is None and args.experiment is None:
        parser.error("an EXPERIMENT, or --figures LIST, is required")
    if args.from_export is not None and (args.run_id or args.tracking_uri):
        parser.error("--from-export reads one sweep from its file: --run-id and --tracking-uri read MLflow")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.figures is not None:
        return draw_figures(args.figures)
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    diagrams = [name.strip() for name in args.diagrams.split(",") if name.strip()] if args.diagrams else None
    try:
        if args.from_export is not None:
            report = draw_export(args.from_export, args.experiment, diagrams, args.out_dir)
        else:
            check_reachable(tracking_uri)  # a server that is down, or refuses the credentials: one line
            report = draw_report(tracking_uri, args.experiment, args.run_id, diagrams, args.out_dir, args.export)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrackingUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for note in report.notes:
        print(f"note: {note}")
    if args.from_export is not None:
        print("\n".join(str(path) for path in report.files))
    else:
        for path, artifact in zip(report.files, report.artifacts):
            print(f"{artifact}  ({path})")
    if args.export is not None:
        print(f"exported to {args.export}")
    return 0


def draw_figures(path: Path) -> int:
    try:
        files, notes = draw_figure_list(load_figure_list(path))
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}")
    print("\n".join(str(file) for file in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
