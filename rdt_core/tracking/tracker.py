"""The MLflow store and the runs in it: one parent run per sweep (or per single run), one nested child
run per trial; a store that does not answer is told apart from one that refuses.

All writes happen in the sweep's driver process (through its outbox) or in the single-run command: one
writer per store, which a SQLite backend needs, and no MLflow credentials on the workers.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from mlflow.entities import Metric, Param, Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS, MLFLOW_PARENT_RUN_ID
from mlflow.utils.rest_utils import http_request

from rdt_core.tracking.errors import TrackingCredentialsError, TrackingUnavailable
from rdt_core.tracking.store import open_store

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# The experiment tag by which MLflow 3 tells a model-training experiment from a GenAI one (the value its own
# "traditional ML" choice writes; its assistant reads it). MLflow 3.17.2's UI does not open by it: with
# its GenAI / Model training toggle it opens every experiment by a choice the browser keeps
# (mlflow.workflowType, GenAI at first), so the links this platform prints name the view.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit


def resolve_tracking_uri(spec_uri: str | None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the spec's ``tracking_uri``, else a local SQLite file."""
    return os.environ.get("MLFLOW_TRACKING_URI") or spec_uri or DEFAULT_TRACKING_URI


BASIC_AUTH_VARIABLES = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
CREDENTIALS_PROBE = "/api/2.0/mlflow/experiments/search"  # any user may search (the results are filtered)


def store_answers(tracking_uri: str, timeout_s: float = 5.0) -> bool:
    """Whether the store answers now and takes the credentials: an HTTP server's health check and one
    request with the credentials; a database is taken to. (While a server refuses the credentials, an
    outbox keeps its writes, as for a server that is down.)"""
    try:
        check_reachable(tracking_uri, timeout_s)
    except TrackingUnavailable:
        return False
    return True


def check_reachable(tracking_uri: str, timeout_s: float = 10.0) -> None:
    """Fail at once when an HTTP tracking server is down or refuses the credentials, before any trial
    runs and loses its results (the MLflow client would retry each request for minutes, and a refused
    write would end the sweep with a traceback)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    refuse_credentials_in_uri(tracking_uri)
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as error:  # before OSError, of which it is one: the server did answer
        status = error.code
    except OSError as error:
        raise TrackingUnavailable(
            f"MLflow tracking server {tracking_uri} does not answer ({getattr(error, 'reason', error)})"
        ) from None
    if status in (401, 403):  # a proxy in front of the server may guard /health as well
        raise credentials_refused(tracking_uri, status)
    if status != 200:
        raise TrackingUnavailable(f"MLflow tracking server {tracking_uri} does not answer (HTTP {status})")
    check_credentials(tracking_uri, timeout_s)


def check_credentials(tracking_uri: str, timeout_s: float) -> None:
    """One request that a server with authentication lets through only with valid credentials, sent
    with MLflow's own request helper: the credentials are found exactly as the client finds them for
    every later request (``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``,
    ``~/.mlflow/credentials``, ``MLFLOW_TRACKING_TOKEN``, TLS settings)."""
    try:
        response = http_request(
            get_default_host_creds(tracking_uri), CREDENTIALS_PROBE, "GET",
            max_retries=0, timeout=timeout_s, params={"max_results": 1},
        )
    except MlflowException as error:  # the connection failed, or a 5xx answered
        raise TrackingUnavailable(
            f"MLflow tracking server {tracking_uri} does not answer ({str(error).splitlines()[0][:200]})"
        ) from None
    if response.status_code in (401, 403):
        raise credentials_refused(tracking_uri, response.status_code)
    if response.status_code != 200:
        raise TrackingUnavailable(
            f"MLflow tracking server {tracking_uri} does not answer (HTTP {response.status_code} on {CREDENTIALS_PROBE})"
        )


def credentials_refused(tracking_uri: str, status: int) -> TrackingCredentialsError:
    """The error for a 401 (no or wrong credentials) or a 403 (valid, but not allowed), naming what was
    sent (a user name, a token: never its value) and the variable to set."""
    sent = get_default_host_creds(tracking_uri)
    password_source = "MLFLOW_TRACKING_PASSWORD" if os.environ.get("MLFLOW_TRACKING_PASSWORD") else "~/.mlflow/credentials"
    server = f"MLflow tracking server {tracking_uri}"
    if status == 403:
        who = f"user {sent.username!r}" if sent.username else "these credentials"
        return TrackingCredentialsError(
            f"{server} forbids {who} to read its experiments (HTTP 403): ask its admin for a permission"
        )
    if sent.username and sent.password:
        problem = f"refuses the password of user {sent.username!r} (HTTP 401): check {password_source}"
    elif sent.username:
        problem = "wants a password (HTTP 401): MLFLOW_TRACKING_USERNAME is set, MLFLOW_TRACKING_PASSWORD is not"
    elif sent.token:
        problem = f"refuses the token in MLFLOW_TRACKING_TOKEN (HTTP 401): check it, or set {BASIC_AUTH_VARIABLES}"
    else:
        problem = f"wants credentials (HTTP 401): set {BASIC_AUTH_VARIABLES} (or MLFLOW_TRACKING_TOKEN)"
    return TrackingCredentialsError(f"{server} {problem}")


def refuse_credentials_in_uri(tracking_uri: str) -> None:
    """A password in the URI (``http://user:secret@host``) would reach every place the URI goes: the
    parent run's ``plan.yaml``, the console, the outbox file."""
    parts = urllib.parse.urlsplit(tracking_uri)
    if parts.password is None:
        return
    host = parts.netloc.rpartition("@")[2]
    shown = parts._replace(netloc=f"{parts.username}:***@{host}").geturl()
    raise TrackingCredentialsError(
        f"MLflow tracking URI {shown} holds a password, which the sweep would log and print: take it out, "
        f"and set {BASIC_AUTH_VARIABLES} instead"
    )


@contextmanager
def store_must_answer(tracking_uri: str) -> Iterator[None]:
    """For the writes that come before the outbox takes over (the experiment, the parent run): a server
    that stops answering then stops the sweep like one that was down from the start (``TrackingUnavailable``),
    and one that lets the user read but not write (a read-only user) with one line naming the user
    (``TrackingCredentialsError``), not with a traceback."""
    try:
        yield
    except MlflowException as error:
        if error.error_code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
            user = get_default_host_creds(tracking_uri).username
            who = f"user {user!r}" if user else "these credentials"
            raise TrackingCredentialsError(
                f"MLflow tracking server {tracking_uri} does not let {who} write the sweep's experiment "
                f"({error.error_code}): ask its admin for EDIT permission on it"
            ) from None
        if store_answers(tracking_uri):
            raise
        raise TrackingUnavailable(
            f"MLflow tracking server {tracking_uri} does not answer (it stopped before the sweep began: "
            f"{str(error)[:120]})"
        ) from None


def now_ms() -> int:
    return int(time.time() * 1000)


class SweepTracker:
    """Owns the parent run of one sweep and creates, fills and closes its child runs."""

    def __init__(self, tracking_uri: str, experiment_name: str, experiment_id: str | None = None):
        """The experiment named ``experiment_name``, made if need be, unless its id is given."""
        self.tracking_uri = tracking_uri
        self._client: MlflowClient | None = None
        if experiment_id is None:
            experiment_id = self.experiment_named(experiment_name)
        self.experiment_id = experiment_id
        self.parent_run_id: str | None = None

    @property
    def client(self) -> MlflowClient:
        """Made on first use, and again after unpickling: Ray Tune pickles its callbacks with the
        experiment state (for ``--resume``), and a live database connection does not pickle."""
        if self._client is None:
            self._client = open_store(self.tracking_uri)  # a SQLite store: made or repaired whole, under its lock
        return self._client

    def experiment_named(self, name: str) -> str:
        """The id of the experiment ``name``, made if need be (another process making it at the same
        moment is no error), and marked as model training (``EXPERIMENT_KIND``)."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                self.client.create_experiment(name, tags={EXPERIMENT_KIND: MODEL_TRAINING})
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise MlflowException(f"experiment {name} was made and is gone")
        if experiment.tags.get(EXPERIMENT_KIND) is None:  # one made before this mark, or by MLflow itself
            self.client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        return experiment.experiment_id

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    def child_of_trial(self, trial_id: str) -> str | None:
        """The child run already made for ``trial_id`` (a resumed sweep reuses it), if any."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`ray.trial_id` = '{trial_id}' and tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}'",
        )
        return runs[0].info.run_id if runs else None

    def children(self) -> list[Run]:
        """The parent's child runs so far (deleted ones aside)."""
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}'"
        )

    def count_children(self) -> int:
        return len(self.children())

    def latest_steps(self, run_id: str) -> dict[str, int]:
        """Each metric of a run and the last step it was logged at (one request)."""
        return {metric.key: metric.step for metric in self.client.get_run(run_id).data.to_proto().metrics}

    def resume_parent(self, tune_path: str) -> str | None:
        """The latest parent run of the sweep whose Tune experiment is at ``tune_path``, reopened."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`sweep.tune_path` = '{tune_path}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            return None
        self.parent_run_id = runs[0].info.run_id
        self.reopen(self.parent_run_id)
        return self.parent_run_id

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))

    def start_parent(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
        self.parent_run_id = run.info.run_id
        self.log_params(self.parent_run_id, params)
        return self.parent_run_id

    def start_child(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={MLFLOW_PARENT_RUN_ID: self.parent_run_id, **tags},
        )
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow's limit of params per batch
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int, timestamp: int | None = None) -> None:
        timestamp = timestamp or now_ms()
        items = [Metric(key, value, timestamp, step) for key, value in metrics.items()]
        for start in range(0, len(items), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=items[start : start + MAX_METRICS_PER_BATCH])

    def log_curve(self, run_id: str, key: str, values: Mapping[int, float], timestamp: int | None = None) -> None:
        """One metric at many steps at once: a curve whose step axis is not the optimizer step (the
        accuracy over inference loops of ``rdt_core.metrics.ACC_BY_LOOP_CURVE``)."""
        timestamp = timestamp or now_ms()
        items = [Metric(key, value, timestamp, step) for step, value in sorted(values.items())]
        for start in range(0, len(items), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=items[start : start + MAX_METRICS_PER_BATCH])

    def log_table(self, run_id: str, rows: list[Mapping[str, Any]], artifact_file: str) -> None:
        """Rows as an MLflow table: JSON in pandas' ``split`` orient, marked in the run's tags as a table,
        as ``MlflowClient.log_table`` writes it, except that a table sent again (a restarted trial's last
        report) replaces the one there instead of being appended to it."""
        import pandas  # MLflow's own dependency; only tables need it

        folder, name = posixpath.split(artifact_file)
        with tempfile.TemporaryDirectory(prefix="rdt-table-") as scratch:
            local = Path(scratch) / name
            pandas.DataFrame(rows).to_json(local, orient="split", index=False)
            self.client.log_artifact(run_id, str(local), folder or None)
        logged = json.loads(self.client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
        if (entry := {"path": artifact_file, "type": "table"}) not in logged:
            self.client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*logged, entry]))

    def finish(self, run_id: str, succeeded: bool, end_time: int | None = None) -> None:
        status = RunStatus.to_string(RunStatus.FINISHED if succeeded else RunStatus.FAILED)
        self.client.set_terminated(run_id, status=status, end_time=end_time)
