"""The Ray Tune callback that mirrors every trial into an MLflow child run of the sweep's parent run,
and links each child run and its Optuna trial both ways."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import optuna
from ray import tune
from ray.train import Checkpoint

from rdt_core.sweep.search import TUNE_TRIAL_ATTR
from rdt_core.sweep.spec import trial_params
from rdt_core.sweep.storage import is_local
from rdt_core.tracking import Outbox, log_evaluation, log_final, trial_key

# Where each side names the other: a tag of the child run, user attributes of the Optuna trial (its run's
# id, and the link to its run's page in the MLflow UI, also the trial's note in optuna-dashboard).
TRIAL_NUMBER_TAG = "optuna.trial_number"
RUN_ID_ATTR = "mlflow.run_id"
RUN_URL_ATTR = "mlflow.run_url"
# The MLflow UI of a SQLite store, as the sweep tells a user to start it (``mlflow ui ... --port 5000``).
LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"


def run_page(experiment_id: str, run_id: str, server: str = "", artifact: str | None = None) -> str:
    """A run's page in the MLflow UI (or one of its artifacts), in its model-training view (MLflow 3 opens an
    experiment in its GenAI view otherwise): ``#/experiments/<id>/runs/<run_id>?workflowType=...``, relative to
    the UI that shows it (a run's description), or at ``server`` (``http://127.0.0.1:5000``)."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}" + (f"/artifacts/{artifact}" if artifact else "")
    link = f"{page}?workflowType=machine_learning"
    return f"{server.rstrip('/')}/{link}" if server else link


def mlflow_ui(tracking_uri: str) -> str:
    """Where the MLflow UI of a store is: a tracking server is its own UI; a SQLite store's is started by hand."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_MLFLOW_UI


def save_trial_note(storage: optuna.storages.BaseStorage, study_id: int, trial_id: int, body: str) -> None:
    """A trial's note in optuna-dashboard (markdown, so its links are links), where optuna-dashboard is
    installed (the ``dev`` extra); its notes are the study's system attributes, written as its ``save_note``."""
    try:
        from optuna_dashboard._note import note_ver_key, save_note_with_version
    except ImportError:
        return
    version = int(storage.get_study_system_attrs(study_id).get(note_ver_key(trial_id), 0)) + 1
    save_note_with_version(storage, study_id, trial_id, version, body)


def child_run_name(sweep_name: str, trial_number: int) -> str:
    """A trial's child run, named after its Optuna trial's number (the number optuna-dashboard shows)."""
    return f"{sweep_name}-{trial_number:03d}"


def checkpoint_uri(checkpoint: Checkpoint) -> str:
    """Where a checkpoint lives, as a path or a URI (``s3://...``) that pyarrow reads back."""
    if is_local(checkpoint.filesystem):
        return checkpoint.path
    return f"{checkpoint.filesystem.type_name}://{checkpoint.path}"


class MlflowTrialCallback(tune.Callback):
    """Mirrors every Tune trial into a child run of the sweep's parent run, through the sweep's outbox.

    A child run is named ``<sweep>-<n>`` after its Optuna trial's number n (the number optuna-dashboard
    shows), carries that number as a tag, and its run id and the link to its page go on the Optuna trial.
    Its metrics are the headline ones (``rdt_core.tracking.reports``) and the sweep's objectives; the rest
    of its last report goes to its tables. A trial restarted after its process died keeps its run, tagged
    with the number of restarts.
    """

    def __init__(self, outbox: Outbox, base: Mapping[str, Any], objectives: Iterable[str], study_name: str,
                 optuna_storage: str):
        self.outbox = outbox
        self.base = base
        self.objectives = list(objectives)
        self.study_name = study_name
        self.optuna_storage = optuna_storage
        self.started: set[str] = set()  # trials whose run this driver has started
        self.names: dict[str, str] = {}  # each started trial's child run name
        self._storage: optuna.storages.BaseStorage | None = None  # one connection, made on first use

    def __getstate__(self) -> dict[str, Any]:
        """Ray Tune pickles its callbacks with the experiment state; a database connection does not pickle."""
        return {**self.__dict__, "_storage": None}

    @property
    def storage(self) -> optuna.storages.BaseStorage:
        if getattr(self, "_storage", None) is None:  # also a callback pickled before it had one
            self._storage = optuna.storages.RDBStorage(self.optuna_storage)
        return self._storage

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key = trial_key(trial.trial_id)
        if trial.trial_id in self.started:  # restarted after a failure, or unpaused
            self.outbox.reopen(key)
            return
        self.started.add(trial.trial_id)
        params = trial_params(self.base, trial.config)  # the real seeds, and the replicate index if any
        optuna_trial = self.optuna_trial(trial.trial_id)
        if optuna_trial is None:  # not the sweep's searcher's trial: numbered by the store
            self.outbox.start_trial_run(trial.trial_id, params=params, tags={})
            return
        name = child_run_name(self.outbox.sweep_name, optuna_trial.number)
        self.names[trial.trial_id] = name
        self.outbox.start_trial_run(trial.trial_id, params, {TRIAL_NUMBER_TAG: str(optuna_trial.number)}, name)
        if (run_id := self.outbox.run_id(key)) is not None and not optuna_trial.state.is_finished():
            self.link_trial(optuna_trial, run_id, name)

    def link_trial(self, optuna_trial: optuna.trial.FrozenTrial, run_id: str, name: str) -> None:
        """The Optuna trial names its child run: its id, and the full link to its page (a user attribute,
        and the trial's note in optuna-dashboard, where it is a link to click)."""
        tracker = self.outbox.tracker
        url = run_page(tracker.experiment_id, run_id, mlflow_ui(tracker.tracking_uri))
        self.storage.set_trial_user_attr(optuna_trial._trial_id, RUN_ID_ATTR, run_id)
        self.storage.set_trial_user_attr(optuna_trial._trial_id, RUN_URL_ATTR, url)
        study_id = self.storage.get_study_id_from_name(self.study_name)
        save_trial_note(self.storage, study_id, optuna_trial._trial_id, f"MLflow run [{name}]({url})")

    def run_name(self, tune_trial_id: str) -> str | None:
        """A trial's child run name (``<sweep>-<n>``), for the console; one that an interrupted earlier run
        of the sweep started is looked up in the study once."""
        if not hasattr(self, "names"):  # a callback pickled before it had names
            self.names = {}
        if tune_trial_id not in self.names:
            optuna_trial = self.optuna_trial(tune_trial_id)
            found = child_run_name(self.outbox.sweep_name, optuna_trial.number) if optuna_trial else ""
            self.names[tune_trial_id] = found
        return self.names[tune_trial_id] or None

    def optuna_trial(self, tune_trial_id: str) -> optuna.trial.FrozenTrial | None:
        """The study's trial that the searcher gave to this Tune trial, if any."""
        study = optuna.load_study(study_name=self.study_name, storage=self.storage)
        return next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(TUNE_TRIAL_ATTR) == tune_trial_id), None)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        log_evaluation(self.outbox, trial_key(trial.trial_id), result, also=self.objectives)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.outbox.set_tag(trial_key(trial.trial_id), "ray.restarts", str(trial.num_failures))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key = trial_key(trial.trial_id)
        result = trial.last_result or {}
        log_final(self.outbox, key, result)
        checkpoint = trial.checkpoint or (  # a TorchTrainer trial forwards its checkpoint's path
            Checkpoint(result["checkpoint_path"]) if result.get("checkpoint_path") else None
        )
        if checkpoint is not None:
            self.outbox.log_checkpoint(key, checkpoint_uri(checkpoint))
        self.outbox.finish(key, succeeded=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.outbox.finish(trial_key(trial.trial_id), succeeded=False)
