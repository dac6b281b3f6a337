"""Resume in one place: everything ``python sweeps/run.py SPEC --resume`` does to continue a sweep that was
killed at any moment, in the order the sweep does it.

``run_sweep`` makes one ``Resumption`` (``Resumption.begin``) and hands it on; each step is a method called
at the one moment it must happen:

1. ``begin``: with ``--resume``, check that a sweep started here before MLflow is touched (``ResumeError``
   otherwise, and no MLflow experiment left behind), and read the trials Tune saved.
2. ``mark_started``, by every sweep, fresh ones too: a mark in the Tune experiment folder written before the
   parent run, so that a kill at any later moment leaves something for ``--resume`` to find.
3. ``reopened_parent_run``: the interrupted sweep's parent run, reopened; the Optuna study comes back with
   it (the parent run names it in a tag), and ``parent.open_parent_run`` writes what the kill left unwritten.
4. ``clean_up``, once the outbox has sent what the killed driver could not: the child runs of trials Tune
   never saved are deleted, and the checkpoints Tune's state names but a kill deleted are put back.
5. ``restored_tuner``: Tune's saved experiment (finished trials stay finished, unfinished ones restart from
   their latest checkpoint), or None where Tune saved nothing: a new Tuner then runs the sweep under the
   reopened parent run and study.

One step happens while the trials run, not before: an Optuna trial the killed sweep gave out after Tune last
saved its state is taken up by the trial Tune runs in its place (``search.PruningAwareOptunaSearch``, which
alone knows which study trials the restored search holds), and one still RUNNING at the end is marked FAIL
(``search.fail_running_trials``, from ``summary``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow.fs
from ray import tune
from ray.tune import ExperimentAnalysis
from ray.tune.experiment import Trial

from rdt_core.sweep.plan import SweepPlan
from rdt_core.sweep.storage import filesystem_and_path, tune_filesystem
from rdt_core.tracking import SweepTracker

STARTED_MARK = "rdt-sweep-started"  # in the Tune experiment directory: written before the parent run


class ResumeError(ValueError):
    """``--resume`` found nothing to resume; the message names what is missing."""


@dataclass(frozen=True)
class Resumption:
    """One sweep's resume steps. ``resuming``: run with ``--resume``; ``saved_trials``: the trials in the
    experiment state Tune saved, or None for a fresh sweep and for one killed before Tune saved any."""

    experiment_path: str
    resuming: bool
    saved_trials: list[Trial] | None

    @classmethod
    def begin(cls, plan: SweepPlan, resume: bool) -> "Resumption":
        """The sweep's resumption: for a fresh sweep only its start mark is left to write; for ``--resume``,
        checked to have something to resume, and Tune's saved trials read."""
        if not resume:
            return cls(plan.experiment_path, resuming=False, saved_trials=None)
        if not was_started(plan.experiment_path):
            raise ResumeError(f"--resume: no interrupted sweep {plan.spec.name!r} at {plan.experiment_path}")
        return cls(plan.experiment_path, resuming=True, saved_trials=saved_tune_trials(plan.experiment_path))

    def mark_started(self) -> None:
        """Written by every sweep before its parent run: from here on, ``--resume`` finds what it needs."""
        filesystem, path = experiment_file(self.experiment_path, STARTED_MARK)
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(path) as stream:
            stream.write(b"a sweep started here; python sweeps/run.py SPEC --resume continues it\n")

    def reopened_parent_run(self, tracker: SweepTracker) -> str | None:
        """On ``--resume``, the interrupted sweep's parent run (the latest one with this Tune experiment
        path), reopened; None for a fresh sweep and for one killed before it made its parent run."""
        return tracker.resume_parent(self.experiment_path) if self.resuming else None

    def clean_up(self, tracker: SweepTracker) -> None:
        """On ``--resume``, make MLflow and storage agree with the trials Tune saved. Called after the outbox
        has sent the killed driver's writes, which may make child runs of trials Tune never saved."""
        if self.resuming:
            delete_runs_of_unknown_trials(tracker, self.saved_trials or [])
            put_back_lost_checkpoints(self.saved_trials or [])

    def restored_tuner(self, trainable: Any) -> tune.Tuner | None:
        """The Tuner Tune saved, with its searcher, scheduler and callbacks, running ``trainable``; None for
        a fresh sweep and for one killed before Tune saved its state (a new Tuner runs it)."""
        if self.saved_trials is None:
            return None
        return tune.Tuner.restore(self.experiment_path, trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=tune_filesystem(self.experiment_path))


def experiment_file(experiment_path: str, name: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """A file in the Tune experiment directory (a local path or a URI), and its filesystem."""
    filesystem, path = filesystem_and_path(experiment_path)
    return filesystem, f"{path}/{name}"


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


def delete_runs_of_unknown_trials(tracker: SweepTracker, trials: list[Trial]) -> None:
    """A trial that started after Tune last saved its state is unknown to the restored Tune, which runs a
    trial in its place. Its child run is deleted, so that each trial of the sweep has one child run."""
    known = {trial.trial_id for trial in trials}
    unknown = [run for run in tracker.children() if run.data.tags.get("ray.trial_id") not in known]
    for run in unknown:
        tracker.client.delete_run(run.info.run_id)
    if unknown:
        print(f"--resume: deleted {len(unknown)} child run(s) of trials that started after Tune last saved "
              "its state; Tune runs trials in their place", flush=True)


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
