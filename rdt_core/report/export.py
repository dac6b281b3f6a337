"""A sweep as one file, so that its diagrams can be drawn again without the MLflow store it came from.

``python -m rdt_core.report EXPERIMENT --export FILE`` writes the sweep the report reads (the parent run's
criterion, every child run's params, final metrics (headline and tables) and the history of each metric
MLflow holds) as gzipped JSON; ``--from-export FILE`` draws from it. A results page keeps these files
beside its figures: a store holds absolute artifact paths and checkpoints and weighs hundreds of times
more, and the diagrams need none of that.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from rdt_core.report.runs import ReportError, Sweep, Trial

FORMAT = "rdt-sweep-export/1"


def export_sweep(sweep: Sweep, path: Path) -> Path:
    """Write ``sweep`` (read from MLflow) to ``path`` as gzipped JSON; returns the path."""
    trials = [
        {
            "run_id": trial.run_id,
            "name": trial.name,
            "params": trial.params,
            "metrics": dict(sorted(trial.metrics.items())),
            "history": {key: sorted(sweep.history(trial, key).items()) for key in sorted(trial.logged)},
        }
        for trial in sweep.trials
    ]
    document = {
        "format": FORMAT,
        "experiment": sweep.experiment,
        "parent_run_id": sweep.parent_run_id,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "trials": trials,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Full precision (the diagrams from an export are those from the store, to the byte); Python's JSON
    # writes NaN as NaN and reads it back. No name or time in the header: the same sweep, the same bytes.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as file:
        file.write(json.dumps(document, separators=(",", ":")).encode())
    return path


def load_export(path: Path, experiment: str) -> Sweep:
    """The sweep of an export, for ``experiment`` (checked: an export of another sweep is an error)."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as file:
            document = json.load(file)
    except FileNotFoundError:
        raise ReportError(f"{path}: no such export") from None
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"{path}: not a sweep export ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ReportError(f"{path}: not a sweep export (format is not {FORMAT!r})")
    if document["experiment"] != experiment:
        raise ReportError(f"{path}: holds experiment {document['experiment']!r}, not {experiment!r}")
    trials, histories = [], {}
    for entry in document["trials"]:
        history = {key: {int(step): value for step, value in pairs} for key, pairs in entry["history"].items()}
        trials.append(Trial(entry["run_id"], entry["name"], entry["params"], entry["metrics"], frozenset(history)))
        histories[entry["run_id"]] = history
    return Sweep(None, experiment, document["parent_run_id"], trials, document["metric"], document["mode"], histories)

