"""A SQLite tracking store that several processes open at once, and that kills cannot break
(``rdt_core.tracking.store``): real MLflow, real SQLite files, real processes (forked from this one, so
that each starts in milliseconds with MLflow already imported), no mocks.

(a) one fresh store opened by 8 processes at once, 20 times, never fails and all 8 see the same experiments
    (some rounds with a 9th process that opens it as the MLflow UI does, without the lock);
(b) a process killed at random moments while it makes a store leaves no store or a whole one, and the next
    open succeeds; so does one killed while MLflow itself migrates the store in place (the old failure);
(c) a store left with alembic's ``_alembic_tmp_experiments`` is repaired with one line and keeps its runs;
    one that cannot be repaired safely is refused in one line (exit 2 from the command, no traceback).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from rdt_core.tracking import StoreRefused, SweepTracker, store
from rdt_core.tracking.store import inspect_store, ready_store, revisions

FORK = multiprocessing.get_context("fork")
N_PROCESSES, N_ROUNDS = 8, 20
REPO = Path(__file__).resolve().parents[2]


def uri_of(path: Path) -> str:
    return f"sqlite:///{path}"


def forget_opened() -> None:
    """This process's memory of stores it found whole: a test that breaks a store must look again."""
    store._ready.clear()


def leave_behind(path: Path) -> None:
    """Date a store and its journal an hour back: what an earlier run left, not one being written now."""
    hour_ago = time.time() - 3600
    for file in (path, *store.siblings(path)):
        if file.exists():
            os.utime(file, (hour_ago, hour_ago))


def experiment_names(tracking_uri: str) -> list[str]:
    client = MlflowClient(tracking_uri)
    return sorted(e.name for e in client.search_experiments(view_type=ViewType.ALL))


# --- (a) ------------------------------------------------------------------------------------------------------


def open_as_sweep(tracking_uri: str, index: int, start, written, results) -> None:
    """One process: the sweep's first touch of a store (``SweepTracker``), one shared and one own experiment,
    then, once every process has written, the experiments it sees."""
    try:
        start.wait(60)
        tracker = SweepTracker(tracking_uri, "shared")
        tracker.experiment_named(f"process-{index}")
        written.wait(60)
        names = sorted(e.name for e in tracker.client.search_experiments(view_type=ViewType.ALL))
        results.put((index, names))
    except BaseException as error:
        results.put((index, f"{type(error).__name__}: {str(error)[:500]}"))
        raise


def open_as_mlflow_ui(tracking_uri: str, start, results) -> None:
    """A process that opens the store as MLflow itself does (the UI, a script reading progress): no lock."""
    try:
        start.wait(60)
        results.put(("plain", experiment_names(tracking_uri)))
    except BaseException as error:
        results.put(("plain", f"{type(error).__name__}: {str(error)[:500]}"))
        raise


@pytest.mark.slow  # 20 stores made and opened by 160 processes: 60-100 s on a shared 2-core machine
def test_a_fresh_store_opened_by_8_processes_at_once_20_times_never_fails(tmp_path):
    expected = sorted(["Default", "shared", *(f"process-{i}" for i in range(N_PROCESSES))])
    for round_ in range(N_ROUNDS):
        path = tmp_path / f"round-{round_:02d}" / "mlflow.db"
        tracking_uri = uri_of(path)
        beside = round_ % 4 == 3  # some rounds: the MLflow UI opens it too, without the lock
        start = FORK.Barrier(N_PROCESSES + beside)
        written = FORK.Barrier(N_PROCESSES)
        results = FORK.Queue()
        processes = [
            FORK.Process(target=open_as_sweep, args=(tracking_uri, i, start, written, results))
            for i in range(N_PROCESSES)
        ]
        if beside:
            processes.append(FORK.Process(target=open_as_mlflow_ui, args=(tracking_uri, start, results)))
        for process in processes:
            process.start()
        seen = dict(results.get(timeout=120) for _ in processes)
        for process in processes:
            process.join(timeout=60)
        failed = {key: value for key, value in seen.items() if isinstance(value, str)}
        assert not failed, f"round {round_}: {failed}"
        assert [process.exitcode for process in processes] == [0] * len(processes), f"round {round_}"
        mine = [seen[i] for i in range(N_PROCESSES)]
        assert all(names == expected for names in mine), f"round {round_}: {mine}"
        if beside:  # it may have looked before the others wrote: what it saw is a part of the same list
            assert set(seen["plain"]) <= set(expected), f"round {round_}: {seen['plain']}"
        assert inspect_store(path).is_whole()
        assert not list(path.parent.glob(".mlflow.db.*")), "a temporary was left behind"


# --- (b) ------------------------------------------------------------------------------------------------------


def make_it(tracking_uri: str, started) -> None:
    started.set()
    ready_store(tracking_uri)


def make_it_as_mlflow(tracking_uri: str, started) -> None:
    started.set()
    MlflowClient(tracking_uri).search_experiments()  # MLflow's own creation: migrated in place


def run_and_kill(target, tracking_uri: str, delay_s: float | None) -> float:
    """Run ``target`` in a process; SIGKILL it ``delay_s`` after it starts (None: let it finish). Returns
    the seconds from its start to its end."""
    started = FORK.Event()
    process = FORK.Process(target=target, args=(tracking_uri, started))
    process.start()
    assert started.wait(60)
    began = time.monotonic()
    if delay_s is None:
        process.join(timeout=120)
        assert process.exitcode == 0
    else:
        time.sleep(delay_s)
        os.kill(process.pid, signal.SIGKILL)
        process.join(timeout=60)
    return time.monotonic() - began


def test_b_a_store_killed_while_being_made_is_absent_or_whole(tmp_path):
    making_s = run_and_kill(make_it, uri_of(tmp_path / "calibration" / "mlflow.db"), None)
    outcomes = []
    for seed in range(8):
        path = tmp_path / f"seed-{seed}" / "mlflow.db"
        delay = random.Random(seed).uniform(0.0, 1.2 * making_s)
        run_and_kill(make_it, uri_of(path), delay)
        state = inspect_store(path)
        assert state is None or state.is_whole(), f"seed {seed}, killed at {delay:.2f} s: a store not whole"
        outcomes.append("absent" if state is None else "whole")
        forget_opened()
        ready_store(uri_of(path))  # the next open
        assert inspect_store(path).is_whole()
        assert experiment_names(uri_of(path)) == ["Default"]
        assert not list(path.parent.glob(".mlflow.db.*")), "the killed maker's temporary was not cleared"
    assert "absent" in outcomes, f"no kill landed while the store was made ({making_s:.2f} s): {outcomes}"


def test_b_a_store_killed_while_mlflow_migrates_it_in_place_is_made_whole(tmp_path, capfd):
    """The failure this module exists for: MLflow itself killed in the middle of its migrations."""
    making_s = run_and_kill(make_it_as_mlflow, uri_of(tmp_path / "calibration" / "mlflow.db"), None)
    for seed in range(5):
        path = tmp_path / f"seed-{seed}" / "mlflow.db"
        delay = random.Random(100 + seed).uniform(0.0, making_s)
        run_and_kill(make_it_as_mlflow, uri_of(path), delay)
        leave_behind(path)
        capfd.readouterr()
        forget_opened()
        ready_store(uri_of(path))
        said = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
        assert len(said) <= 1, said  # repaired in one line, or nothing to say (absent, or whole already)
        assert inspect_store(path).is_whole(), f"seed {seed}: {said}"
        assert experiment_names(uri_of(path)) == ["Default"]


# --- (c) ------------------------------------------------------------------------------------------------------


def add_a_run(tracking_uri: str, results) -> None:
    client = store.open_store(tracking_uri)
    run = client.create_run(client.create_experiment("kept"))
    client.log_metric(run.info.run_id, "acc/id", 0.5)
    client.set_terminated(run.info.run_id)
    results.put(run.info.run_id)


def store_with_a_run(path: Path) -> str:
    """A whole store holding one finished run, made by another process (this one holds no connection to
    the file that a repair then replaces)."""
    results = FORK.Queue()
    process = FORK.Process(target=add_a_run, args=(uri_of(path), results))
    process.start()
    run_id = results.get(timeout=120)
    process.join(timeout=60)
    assert process.exitcode == 0
    return run_id


@pytest.mark.parametrize("dropped", [False, True], ids=["before-the-drop", "after-the-drop"])
def test_c_a_store_with_a_leftover_alembic_tmp_table_is_repaired_in_one_line(tmp_path, capsys, dropped):
    """Alembic's batch copy of a table: create ``_alembic_tmp_experiments``, copy the rows, drop
    ``experiments``, rename the copy. Killed before the drop, the copy goes; after it, the copy is the table."""
    path = tmp_path / "mlflow.db"
    run_id = store_with_a_run(path)
    with sqlite3.connect(path) as connection:  # as a batch migration killed midway left it
        schema = connection.execute("SELECT sql FROM sqlite_master WHERE name = 'experiments'").fetchone()[0]
        connection.execute(schema.replace("experiments", "_alembic_tmp_experiments", 1))
        connection.execute("INSERT INTO _alembic_tmp_experiments SELECT * FROM experiments")
        if dropped:
            connection.execute("DROP TABLE experiments")
    connection.close()
    leave_behind(path)
    capsys.readouterr()
    forget_opened()
    client = store.open_store(uri_of(path))
    said = capsys.readouterr()
    lines = [line for line in (said.out + said.err).splitlines() if line.strip()]
    assert len(lines) == 1 and "_alembic_tmp_experiments" in lines[0] and "repaired" in lines[0], lines
    assert ("renamed" if dropped else "dropped") in lines[0], lines
    state = inspect_store(path)
    assert state.is_whole() and not state.leftover_tables
    assert client.get_run(run_id).data.metrics == {"acc/id": 0.5}
    assert "kept" in experiment_names(uri_of(path))
    forget_opened()
    store.open_store(uri_of(path))  # and again: nothing more to say
    assert not capsys.readouterr().err.strip()


def test_c_a_store_behind_the_schema_with_runs_is_refused_in_one_line(tmp_path):
    path = tmp_path / "mlflow.db"
    store_with_a_run(path)
    head, known = revisions()
    older = sorted(known - {head})[0]
    with sqlite3.connect(path) as connection:  # as an older MLflow left it
        connection.execute("UPDATE alembic_version SET version_num = ?", (older,))
    connection.close()
    leave_behind(path)
    forget_opened()
    with pytest.raises(StoreRefused, match="mlflow db upgrade"):
        ready_store(uri_of(path))
    done = subprocess.run(
        [sys.executable, "-m", "rdt_core.report", "kept", "--tracking-uri", uri_of(path),
         "--out-dir", str(tmp_path / "report")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: MLflow store") and "mlflow db upgrade" in lines[0], lines


def test_an_experiment_is_marked_as_model_training_when_made_and_when_found_unmarked(tmp_path):
    from rdt_core.tracking.tracker import EXPERIMENT_KIND, MODEL_TRAINING, SweepTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "made")
    made = tracker.experiment_id
    unmarked = tracker.client.create_experiment("unmarked")
    assert tracker.experiment_named("unmarked") == unmarked
    for experiment_id in (made, unmarked):
        assert tracker.client.get_experiment(experiment_id).tags[EXPERIMENT_KIND] == MODEL_TRAINING
