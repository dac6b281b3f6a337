"""What --resume reads of a killed sweep (rdt_core.sweep.resume), on a real SQLite MLflow store and a real
folder (no Ray started)."""

from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException

from rdt_core.sweep.plan import SweepPlan
from rdt_core.sweep.resume import (
    ResumeError,
    Resumption,
    delete_runs_of_unknown_trials,
    put_back_lost_checkpoints,
)
from rdt_core.sweep.spec import validate_spec
from rdt_core.sweep.storage import tune_filesystem
from rdt_core.tracking import SweepTracker, TrackingUnavailable, store_must_answer
from tests.helpers import free_port, load_smoke_spec


def test_a_sweep_is_resumable_from_the_moment_it_marks_its_start_before_tune_saves_anything(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    plan = SweepPlan(validate_spec(load_smoke_spec(), "smoke.yaml"), "smoke.yaml", store,
                     str(tmp_path / "ray_results"), f"sqlite:///{tmp_path / 'optuna.db'}")
    with pytest.raises(ResumeError, match="no interrupted sweep"):
        Resumption.begin(plan, resume=True)
    Resumption.begin(plan, resume=False).mark_started()  # killed right after: no parent run, no Tune state yet
    resumed = Resumption.begin(plan, resume=True)
    assert resumed.saved_trials is None  # --resume then starts the sweep afresh, same parent
    assert resumed.restored_tuner(trainable=None) is None  # a new Tuner runs it
    assert resumed.reopened_parent_run(SweepTracker(store, "smoke")) is None  # none made before the kill


def test_child_runs_of_trials_tune_never_saved_are_deleted_and_the_others_kept(tmp_path, capsys):
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "sweep")
    tracker.start_parent("sweep", params={}, tags={})
    for trial_id in ("known", "unknown"):
        tracker.start_child(f"sweep-{trial_id}", params={}, tags={"ray.trial_id": trial_id})
    delete_runs_of_unknown_trials(tracker, [SimpleNamespace(trial_id="known")])  # Tune's saved trials
    assert [run.data.tags["ray.trial_id"] for run in tracker.children()] == ["known"]
    assert "deleted 1 child run" in capsys.readouterr().out


def test_a_server_that_stops_before_the_outbox_takes_over_stops_the_sweep_in_one_line():
    with pytest.raises(TrackingUnavailable, match="does not answer"):
        with store_must_answer(f"http://127.0.0.1:{free_port()}"):  # nothing listens there
            raise MlflowException("API request failed: Connection refused")
    with pytest.raises(MlflowException, match="refused for its own reasons"):  # a store that answers
        with store_must_answer("sqlite:///answers.db"):
            raise MlflowException("refused for its own reasons")


def test_a_checkpoint_the_saved_state_names_but_a_kill_deleted_is_put_back(tmp_path):
    """Tune deleted checkpoint_000004 on registering checkpoint_000005, and was killed before it saved the
    state naming 000005: the trial resumes from a copy of 000005 (or starts again where there is none)."""
    filesystem = tune_filesystem(str(tmp_path))
    newest = tmp_path / "trial-a" / "checkpoint_000005"
    newest.mkdir(parents=True)
    (newest / "model.pt").write_bytes(b"the final model")
    (tmp_path / "trial-b").mkdir()

    def saved(trial_id: str, status: str, checkpoint: str) -> SimpleNamespace:
        return SimpleNamespace(trial_id=trial_id, status=status,
                               checkpoint=SimpleNamespace(filesystem=filesystem, path=str(tmp_path / checkpoint)))

    put_back_lost_checkpoints([saved("a", "RUNNING", "trial-a/checkpoint_000004"),
                               saved("b", "PENDING", "trial-b/checkpoint_000002"),
                               saved("c", "TERMINATED", "trial-c/checkpoint_000009")])
    assert (tmp_path / "trial-a" / "checkpoint_000004" / "model.pt").read_bytes() == b"the final model"
    assert list((tmp_path / "trial-b" / "checkpoint_000002").iterdir()) == []  # not resumable: starts again
    assert not (tmp_path / "trial-c").exists()  # finished: Tune will not restore it
