"""What ``--resume`` needs of a sweep that was killed at any moment: a mark that it started (written before
its parent run), the trials Tune saved, the checkpoints its state names put back where a kill lost them,
and the child runs of trials Tune never saved, to delete."""

from __future__ import annotations

import pyarrow.fs
from ray import tune
from ray.tune import ExperimentAnalysis
from ray.tune.experiment import Trial

from rdt_core.sweep.storage import filesystem_and_path, tune_filesystem
from rdt_core.tracking import SweepTracker


STARTED_MARK = "rdt-sweep-started"  # in the Tune experiment directory: written before the parent run


def experiment_file(experiment_path: str, name: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """A file in the Tune experiment directory (a local path or a URI), and its filesystem."""
    filesystem, path = filesystem_and_path(experiment_path)
    return filesystem, f"{path}/{name}"


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


def saved_tune_trials(experiment_path: str) -> list[Trial] | None:
    """The trials in the experiment state Tune saved at ``experiment_path``, or None when it saved none
    (a sweep killed before its first trial): that sweep starts afresh."""
    filesystem = tune_filesystem(experiment_path)
    if not tune.Tuner.can_restore(experiment_path, filesystem):
        return None
    try:
        return ExperimentAnalysis(experiment_path, storage_filesystem=filesystem).trials
    except ValueError:  # no experiment state yet
        return None


def put_back_lost_checkpoints(trials: list[Trial]) -> None:
    """Tune deletes a trial's older checkpoint as soon as it registers a newer one, and saves the state
    that names the newer one a moment later: a sweep killed in between leaves a state naming a checkpoint
    that is gone, and Tune then refuses to restore that trial at all (it fails for good). Each such
    checkpoint of a trial that will be restored is put back, as a copy of the trial's newest checkpoint in
    storage (training resumes from there), or as an empty folder where there is none (it starts again)."""
    for trial in trials:
        checkpoint = trial.checkpoint
        if trial.status == "TERMINATED" or checkpoint is None:
            continue
        filesystem, lost = checkpoint.filesystem, checkpoint.path
        if filesystem.get_file_info(lost).type != pyarrow.fs.FileType.NotFound:
            continue
        folder = lost.rsplit("/", 1)[0]
        siblings = sorted(
            info.path for info in filesystem.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
            if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_")
        )
        if siblings:
            pyarrow.fs.copy_files(siblings[-1], lost, source_filesystem=filesystem, destination_filesystem=filesystem)
        else:
            filesystem.create_dir(lost, recursive=True)
        print(f"--resume: trial {trial.trial_id}'s checkpoint {lost} was gone; put back from "
              f"{siblings[-1] if siblings else 'nothing (the trial starts again)'}", flush=True)


def delete_runs_of_unknown_trials(tracker: SweepTracker, trials: list[Trial]) -> None:
    """Before a killed sweep resumes: a trial that started after Tune last saved its state is unknown to
    the restored Tune, which runs a trial in its place. Its child run is deleted, so that each trial of
    the sweep has one child run."""
    known = {trial.trial_id for trial in trials}
    unknown = [run for run in tracker.children() if run.data.tags.get("ray.trial_id") not in known]
    for run in unknown:
        tracker.client.delete_run(run.info.run_id)
    if unknown:
        print(f"--resume: deleted {len(unknown)} child run(s) of trials that started after Tune last saved "
              "its state; Tune runs trials in their place", flush=True)
