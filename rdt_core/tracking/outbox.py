"""The MLflow writes of a sweep, kept when the tracking store stops answering mid-sweep and sent later.

Every write about a sweep's runs (a trial's run started, its metrics, its artifacts, its end; the
parent's best trial and end) goes through one :class:`Outbox`, which sends writes to the store in the
order they were made. When the store stops answering, the write that failed and every later one wait
in a JSON-lines file (``mlflow-outbox/<sweep>.jsonl`` in the driver's working directory) and go out,
still in order, with the first write after the store answers again. What is left when the sweep ends
is sent by ``python sweeps/run.py SPEC --send-outbox``. No finished trial's result is lost. MLflow only:
a checkpoint is read from its local path or ``s3://`` URI with pyarrow, not through Ray.

A write names its run by a key, ``parent`` or ``trial:<Ray trial id>``, not by a run id: a trial that
starts while the store is down has no run yet. Its run is made (or found, for a restarted trial) when
the write that starts it is sent, so runs are numbered in the order the trials started either way.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from rdt_core.tracking.tracker import SweepTracker, now_ms, store_answers

PARENT = "parent"
OUTBOX_DIR = "mlflow-outbox"
# The store understood the write and refused it: sending it again cannot help.
REFUSALS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST", "INVALID_STATE"}

logger = logging.getLogger(__name__)


def trial_key(trial_id: str) -> str:
    return f"trial:{trial_id}"


def outbox_path(sweep_name: str) -> Path:
    return Path(OUTBOX_DIR).resolve() / f"{sweep_name}.jsonl"


def read_outbox(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header (tracking URI, experiment, parent run) and the unsent writes of an outbox file."""
    header, *writes = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return header, writes


class Outbox:
    """Sends a sweep's writes to MLflow in order, keeping them in a file while the store is down."""

    def __init__(self, tracker: SweepTracker, sweep_name: str, path: Path):
        self.tracker = tracker
        self.sweep_name = sweep_name
        self.path = path
        self.pending: list[dict[str, Any]] = []
        self.reload()
        self.run_ids: dict[str, str] = {}  # run key -> MLflow run id, once known
        # For each trial's run: each metric's last logged step, read from the store for a run made before
        # (a resumed trial) and kept up as metrics are sent. A restarted trial, or a data-parallel trial
        # whose worker group Ray Train restarted from its checkpoint, reports again what came after that
        # checkpoint; what is logged already is not logged twice.
        self.logged_steps: dict[str, dict[str, int]] = {}
        self.store_down = False

    def __getstate__(self) -> dict[str, Any]:
        """Ray Tune pickles the sweep's callbacks, and this with them, for ``--resume``; the file, not
        the pickle, holds what is unsent, for it is newer."""
        return {**self.__dict__, "pending": []}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.reload()

    # The writes. Each is queued, then everything queued is sent while the store answers.

    def start_trial_run(
        self, trial_id: str, params: Mapping[str, Any], tags: Mapping[str, str], name: str | None = None
    ) -> None:
        """A trial's child run, named ``name`` (else ``<sweep>-<n>``, n counting the parent's children)."""
        self.put({"op": "start_trial", "run": trial_key(trial_id), "trial": trial_id, "name": name,
                  "params": {key: str(value) for key, value in params.items()}, "tags": dict(tags)})

    def reopen(self, run_key: str) -> None:
        self.put({"op": "reopen", "run": run_key})

    def log_params(self, run_key: str, params: Mapping[str, Any]) -> None:
        self.put({"op": "params", "run": run_key, "params": {key: str(value) for key, value in params.items()}})

    def log_metrics(self, run_key: str, metrics: Mapping[str, float], step: int) -> None:
        self.put({"op": "metrics", "run": run_key, "metrics": dict(metrics), "step": step, "timestamp": now_ms()})

    def log_curve(self, run_key: str, key: str, values: Mapping[int, float]) -> None:
        """One metric at many steps (``SweepTracker.log_curve``)."""
        self.put({"op": "curve", "run": run_key, "key": key, "values": [[step, value] for step, value in values.items()],
                  "timestamp": now_ms()})

    def log_table(self, run_key: str, rows: list[Mapping[str, Any]], artifact_file: str) -> None:
        self.put({"op": "table", "run": run_key, "rows": [dict(row) for row in rows], "artifact_file": artifact_file})

    def set_tag(self, run_key: str, key: str, value: str) -> None:
        self.put({"op": "tag", "run": run_key, "key": key, "value": value})

    def log_text(self, run_key: str, text: str, artifact_file: str) -> None:
        self.put({"op": "text", "run": run_key, "text": text, "artifact_file": artifact_file})

    def log_checkpoint(self, run_key: str, checkpoint_uri: str) -> None:
        """A Ray checkpoint's files (local path or ``s3://...``), read when the write is sent."""
        self.put({"op": "checkpoint", "run": run_key, "uri": checkpoint_uri})

    def finish(self, run_key: str, succeeded: bool) -> None:
        self.put({"op": "finish", "run": run_key, "succeeded": succeeded, "end_time": now_ms()})

    def put(self, write: dict[str, Any]) -> None:
        self.pending.append(write)
        self.flush()

    def reload(self) -> None:
        """Take up what the file holds unsent: at the start, after unpickling, and what another outbox
        over the same file left (Ray Tune's copy of the sweep's callback, restored from its saved state,
        holds its own)."""
        self.pending = read_outbox(self.path)[1] if self.path.exists() else []

    def run_id(self, run_key: str) -> str | None:
        """The MLflow run of a run key once its start has been sent, else None."""
        try:
            return self._run_id(run_key)
        except MlflowException:
            return None

    def flush(self) -> bool:
        """Send what is queued, in order, until the store stops answering. True when nothing is left."""
        if self.store_down and self.pending and not store_answers(self.tracker.tracking_uri):
            self._save()
            return False
        while self.pending:
            write = self.pending[0]
            try:
                self._send(write)
            except Exception as error:  # noqa: BLE001 - which failures are lasting is decided below
                if isinstance(error, MlflowException) and error.error_code in REFUSALS:
                    logger.warning("MLflow refused %s of %s (%s); dropped", write["op"], write["run"], error)
                    self.pending.pop(0)
                    continue
                if not self.store_down:
                    print(f"MLflow store {self.tracker.tracking_uri} stopped answering; keeping its writes in "
                          f"{self.path} until it does ({str(error)[:200]})", flush=True)
                self.store_down = True
                self._save()
                return False
            self.pending.pop(0)
        if self.store_down:
            print(f"MLflow store {self.tracker.tracking_uri} answers again: the kept writes are sent", flush=True)
            self.store_down = False
        self._save()
        return True

    def _save(self) -> None:
        """The unsent writes, whole, or no file when there are none (atomic: never half-written)."""
        if not self.pending:
            self.path.unlink(missing_ok=True)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = {"tracking_uri": self.tracker.tracking_uri, "experiment_id": self.tracker.experiment_id,
                  "parent_run_id": self.tracker.parent_run_id, "sweep": self.sweep_name}
        lines = [json.dumps(entry) for entry in [header, *self.pending]]
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False, suffix=".tmp") as scratch:
            scratch.write("\n".join(lines) + "\n")
        os.replace(scratch.name, self.path)

    def _run_id(self, run_key: str) -> str:
        if run_key == PARENT:
            return self.tracker.parent_run_id
        if run_key not in self.run_ids:
            found = self.tracker.child_of_trial(run_key.removeprefix("trial:"))
            if found is None:
                raise MlflowException(f"no MLflow run for {run_key}", error_code=RESOURCE_DOES_NOT_EXIST)
            self.run_ids[run_key] = found
        return self.run_ids[run_key]

    def _send(self, write: dict[str, Any]) -> None:
        op, tracker = write["op"], self.tracker
        if op == "start_trial":
            # A trial restarted, or resumed by a new driver, keeps the run it has; writing its params
            # again is harmless, and completes a start that failed half-way.
            existing = tracker.child_of_trial(write["trial"])
            if existing:
                tracker.reopen(existing)
                tracker.log_params(existing, write["params"])
                self.run_ids[write["run"]] = existing
                self.logged_steps[write["run"]] = tracker.latest_steps(existing)
            else:
                name = write.get("name") or f"{self.sweep_name}-{tracker.count_children():03d}"
                self.run_ids[write["run"]] = tracker.start_child(
                    name, params=write["params"], tags={**write["tags"], "ray.trial_id": write["trial"]}
                )
                self.logged_steps[write["run"]] = {}
            return
        run_id = self._run_id(write["run"])
        if op == "reopen":
            tracker.reopen(run_id)
            self.logged_steps[write["run"]] = tracker.latest_steps(run_id)
        elif op == "params":
            tracker.log_params(run_id, write["params"])
        elif op == "metrics":
            metrics = self._not_logged_yet(write)
            tracker.log_metrics(run_id, metrics, write["step"], timestamp=write["timestamp"])
            if (logged := self.logged_steps.get(write["run"])) is not None:
                logged.update(dict.fromkeys(metrics, write["step"]))
        elif op == "tag":
            tracker.client.set_tag(run_id, write["key"], write["value"])
        elif op == "curve":
            if write["key"] not in self.logged_steps.get(write["run"], {}):  # a curve is logged whole, once
                tracker.log_curve(run_id, write["key"], dict(write["values"]), timestamp=write["timestamp"])
        elif op == "text":
            tracker.client.log_text(run_id, write["text"], write["artifact_file"])
        elif op == "table":
            tracker.log_table(run_id, write["rows"], write["artifact_file"])
        elif op == "checkpoint":
            import pyarrow.fs  # reads a local path and s3:// alike

            with tempfile.TemporaryDirectory(prefix="rdt-checkpoint-") as scratch:
                pyarrow.fs.copy_files(write["uri"], scratch)
                tracker.client.log_artifacts(run_id, scratch, "checkpoint")
        elif op == "finish":
            tracker.finish(run_id, succeeded=write["succeeded"], end_time=write["end_time"])
        else:
            raise ValueError(f"{self.path}: unknown write {op!r}")

    def _not_logged_yet(self, write: dict[str, Any]) -> dict[str, float]:
        """The metrics of a write that its run does not hold yet at the write's step or later (all of
        them for the parent, whose summary metrics are rewritten at step 0 as the best changes)."""
        logged = self.logged_steps.get(write["run"])
        if logged is None:
            return write["metrics"]
        return {key: value for key, value in write["metrics"].items() if write["step"] > logged.get(key, -1)}


def send_outbox(path: Path) -> int:
    """Send the writes kept in ``path`` to the store its header names; how many are still unsent."""
    header, _ = read_outbox(path)
    tracker = SweepTracker(header["tracking_uri"], header["sweep"], experiment_id=header["experiment_id"])
    tracker.parent_run_id = header["parent_run_id"]
    outbox = Outbox(tracker, header["sweep"], path)
    outbox.flush()
    return len(outbox.pending)
