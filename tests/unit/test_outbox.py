"""The outbox's order, keeping and sending, on a real SQLite MLflow store whose client is made to fail
while the test says the store is down (pure logic: which writes go, in which order, what stays)."""

import pickle

import pytest
from mlflow.exceptions import MlflowException

from rdt_core.tracking.outbox import PARENT, Outbox, read_outbox, send_outbox, trial_key
from rdt_core.tracking import SweepTracker


class SwitchableClient:
    """The real client, except that every call fails while ``down`` (as a gone server's would)."""

    def __init__(self, client):
        self.client, self.down = client, False

    def __getattr__(self, name):
        method = getattr(self.client, name)

        def call(*args, **kwargs):
            if self.down:
                raise MlflowException("API request failed with exception ConnectionRefusedError")
            return method(*args, **kwargs)

        return call


@pytest.fixture
def tracker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a SQLite store keeps its artifacts in ./mlruns
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "sweep")
    tracker.start_parent("sweep", params={}, tags={})
    tracker._client = SwitchableClient(tracker.client)
    return tracker


def children(tracker):
    runs = tracker.client.client.search_runs([tracker.experiment_id], filter_string="tags.`ray.trial_id` != ''")
    return {run.data.tags["ray.trial_id"]: run for run in runs}


def test_writes_go_straight_to_a_store_that_answers_and_nothing_is_kept(tracker, tmp_path):
    outbox = Outbox(tracker, "sweep", tmp_path / "outbox.jsonl")
    outbox.start_trial_run("t1", params={"train.lr": 0.01}, tags={})
    outbox.log_metrics(trial_key("t1"), {"acc/id": 0.5}, step=10)
    outbox.finish(trial_key("t1"), succeeded=True)
    run = children(tracker)["t1"]
    assert run.info.run_name == "sweep-000" and run.info.status == "FINISHED"
    assert run.data.params == {"train.lr": "0.01"} and run.data.metrics == {"acc/id": 0.5}
    assert not (tmp_path / "outbox.jsonl").exists() and outbox.pending == []


def test_writes_made_while_the_store_is_down_are_kept_then_sent_in_order(tracker, tmp_path):
    path = tmp_path / "outbox.jsonl"
    outbox = Outbox(tracker, "sweep", path)
    outbox.start_trial_run("t1", params={}, tags={})
    tracker.client.down = True
    outbox.log_metrics(trial_key("t1"), {"acc/id": 0.25}, step=1)
    outbox.start_trial_run("t2", params={"train.lr": 0.02}, tags={})  # a trial that starts while down
    outbox.log_metrics(trial_key("t2"), {"acc/id": 0.75}, step=1)
    outbox.finish(trial_key("t1"), succeeded=True)
    header, kept = read_outbox(path)
    assert header["parent_run_id"] == tracker.parent_run_id
    assert [(write["op"], write["run"]) for write in kept] == [
        ("metrics", "trial:t1"), ("start_trial", "trial:t2"), ("metrics", "trial:t2"), ("finish", "trial:t1")]
    assert set(children(tracker)) == {"t1"}

    tracker.client.down = False
    outbox.log_metrics(PARENT, {"best/acc/id": 0.75}, step=0)  # the next write sends everything first
    runs = children(tracker)
    assert runs["t1"].info.status == "FINISHED" and runs["t1"].data.metrics == {"acc/id": 0.25}
    assert runs["t2"].info.run_name == "sweep-001" and runs["t2"].data.params == {"train.lr": "0.02"}
    assert runs["t2"].info.status == "RUNNING"
    assert not path.exists() and outbox.pending == []


def test_a_refused_write_is_dropped_and_does_not_block_the_rest(tracker, tmp_path):
    outbox = Outbox(tracker, "sweep", tmp_path / "outbox.jsonl")
    outbox.log_metrics(trial_key("never-started"), {"acc/id": 0.1}, step=1)  # no run: refused for good
    outbox.start_trial_run("t1", params={}, tags={})
    assert set(children(tracker)) == {"t1"} and outbox.pending == []


def test_what_is_kept_survives_the_driver_and_is_sent_by_a_new_one(tracker, tmp_path):
    path = tmp_path / "outbox.jsonl"
    outbox = Outbox(tracker, "sweep", path)
    tracker.client.down = True
    outbox.start_trial_run("t1", params={}, tags={})
    outbox.finish(trial_key("t1"), succeeded=True)
    restored = pickle.loads(pickle.dumps(outbox))  # as Ray Tune keeps callbacks for --resume
    assert [write["op"] for write in restored.pending] == ["start_trial", "finish"]

    assert send_outbox(path) == 0  # a new process: the real client, the store answering
    assert children(tracker)["t1"].info.status == "FINISHED"
    assert not path.exists()


def test_a_restarted_trial_reporting_again_logs_nothing_twice(tracker, tmp_path):
    """A trial that resumes from an earlier checkpoint, or from its final one, reports again steps its
    run holds already: only what is new is logged (a new driver, as after --resume)."""
    first = Outbox(tracker, "sweep", tmp_path / "outbox.jsonl")
    first.start_trial_run("t1", params={}, tags={})
    first.log_metrics(trial_key("t1"), {"acc/id": 0.25, "loss/train": 2.0}, step=10)
    first.log_metrics(trial_key("t1"), {"acc/id": 0.5}, step=20)  # killed before loss/train at 20 was sent

    resumed = Outbox(tracker, "sweep", tmp_path / "outbox.jsonl")
    resumed.start_trial_run("t1", params={}, tags={})  # finds the run it had
    resumed.log_metrics(trial_key("t1"), {"acc/id": 0.5, "loss/train": 1.5}, step=20)
    resumed.log_metrics(trial_key("t1"), {"acc/id": 0.75, "loss/train": 1.0}, step=30)
    resumed.reopen(trial_key("t1"))  # its worker died and resumed from step 20 in the same driver
    resumed.log_metrics(trial_key("t1"), {"acc/id": 0.75, "loss/train": 1.0}, step=30)
    run_id = children(tracker)["t1"].info.run_id
    history = lambda key: [(m.step, m.value) for m in tracker.client.get_metric_history(run_id, key)]  # noqa: E731
    assert history("acc/id") == [(10, 0.25), (20, 0.5), (30, 0.75)]
    assert history("loss/train") == [(10, 2.0), (20, 1.5), (30, 1.0)]


def test_a_report_sent_again_without_a_reopen_is_not_logged_twice(tracker, tmp_path):
    """Ray Train restarts a data-parallel trial's worker group from its checkpoint inside the same Tune
    trial: the driver sees the final report again, with no restart in between (seen by killing a worker
    right after the last report: ``python -m tests.kill_anywhere --target dp_worker``, seed 15). The
    parent's summary, rewritten at step 0 as the best changes, is still logged every time."""
    outbox = Outbox(tracker, "sweep", tmp_path / "outbox.jsonl")
    outbox.start_trial_run("t1", params={}, tags={})
    outbox.log_metrics(trial_key("t1"), {"acc/id": 0.5}, step=20)
    outbox.log_metrics(trial_key("t1"), {"acc/id": 0.5, "lens/id": 0.1}, step=20)  # the report again, and more
    outbox.log_metrics(PARENT, {"best/acc/id": 0.25}, step=0)
    outbox.log_metrics(PARENT, {"best/acc/id": 0.5}, step=0)
    run_id = children(tracker)["t1"].info.run_id
    history = lambda run, key: [(m.step, m.value) for m in tracker.client.get_metric_history(run, key)]  # noqa: E731
    assert history(run_id, "acc/id") == [(20, 0.5)] and history(run_id, "lens/id") == [(20, 0.1)]
    assert history(tracker.parent_run_id, "best/acc/id") == [(0, 0.25), (0, 0.5)]


def test_tables_and_curves_kept_while_down_are_sent_once_and_a_table_sent_again_replaces_itself(tracker, tmp_path):
    """A restarted trial sends its last report again: its table must not grow a second copy of its rows
    (``MlflowClient.log_table`` appends), nor its curve a second point at each loop."""
    import json

    outbox = Outbox(tracker, "sweep", tmp_path / "outbox.jsonl")
    outbox.start_trial_run("t1", params={}, tags={}, name="sweep-007")
    tracker.client.down = True
    outbox.log_table(trial_key("t1"), [{"split": "id", "loop": 1, "accuracy": 0.5}], "tables/accuracy_by_loop.json")
    outbox.log_curve(trial_key("t1"), "acc_by_loop/id", {1: 0.5, 2: 0.75})
    assert len(read_outbox(tmp_path / "outbox.jsonl")[1]) == 2
    tracker.client.down = False
    outbox.flush()
    run_id = children(tracker)["t1"].info.run_id
    resumed = Outbox(tracker, "sweep", tmp_path / "outbox.jsonl")  # a resumed sweep's driver
    resumed.reopen(trial_key("t1"))
    resumed.log_table(trial_key("t1"), [{"split": "id", "loop": 1, "accuracy": 0.5}], "tables/accuracy_by_loop.json")
    resumed.log_curve(trial_key("t1"), "acc_by_loop/id", {1: 0.5, 2: 0.75})

    client = tracker.client.client
    assert client.get_run(run_id).info.run_name == "sweep-007"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "acc_by_loop/id")] == [(1, 0.5), (2, 0.75)]
    written = json.loads(open(client.download_artifacts(run_id, "tables/accuracy_by_loop.json", str(tmp_path))).read())
    assert written["data"] == [["id", 1, 0.5]]
    marked = json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert marked == [{"path": "tables/accuracy_by_loop.json", "type": "table"}]
