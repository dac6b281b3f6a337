"""What ``--resume`` needs of a sweep that was killed at any moment: a mark that it started (written before
its parent run), the trials Tune saved, and the child runs of trials Tune never saved, to delete."""

from __future__ import annotations

import pyarrow.fs
from ray import tune
from ray.tune import ExperimentAnalysis

from rdt_core.sweep.storage import tune_filesystem
from rdt_core.sweep.tracking import SweepTracker


STARTED_MARK = "rdt-sweep-started"  # in the Tune experiment directory: written before the parent run


def experiment_file(experiment_path: str, name: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """A file in the Tune experiment directory, a local path or a URI (``s3://...``), and its filesystem."""
    if "://" in experiment_path:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(experiment_path)
        return filesystem, f"{path}/{name}"
    return pyarrow.fs.LocalFileSystem(), f"{experiment_path}/{name}"


def mark_started(experiment_path: str) -> None:
    filesystem, path = experiment_file(experiment_path, STARTED_MARK)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(b"a sweep started here; python sweeps/run.py SPEC --resume continues it\n")


def was_started(experiment_path: str) -> bool:
    """Whether a sweep started at ``experiment_path``: marked, or (a sweep of an earlier version) Tune
    saved its state there."""
    filesystem, path = experiment_file(experiment_path, STARTED_MARK)
    marked = filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound
    return marked or tune.Tuner.can_restore(experiment_path, tune_filesystem(experiment_path))


def saved_tune_trials(experiment_path: str) -> dict[str, str] | None:
    """The trials in the experiment state Tune saved at ``experiment_path`` (Tune trial id -> status),
    or None when it saved none (a sweep killed before its first trial): that sweep starts afresh."""
    filesystem = tune_filesystem(experiment_path)
    if not tune.Tuner.can_restore(experiment_path, filesystem):
        return None
    try:
        trials = ExperimentAnalysis(experiment_path, storage_filesystem=filesystem).trials
    except ValueError:  # no experiment state yet
        return None
    return {trial.trial_id: trial.status for trial in trials}


def delete_runs_of_unknown_trials(tracker: SweepTracker, tune_trials: dict[str, str]) -> None:
    """Before a killed sweep resumes: a trial that started after Tune last saved its state is unknown to
    the restored Tune, which runs a trial in its place. Its child run is deleted, so that each trial of
    the sweep has one child run."""
    unknown = [run for run in tracker.children() if run.data.tags.get("ray.trial_id") not in tune_trials]
    for run in unknown:
        tracker.client.delete_run(run.info.run_id)
    if unknown:
        print(f"--resume: deleted {len(unknown)} child run(s) of trials that started after Tune last saved "
              "its state; Tune runs trials in their place", flush=True)
