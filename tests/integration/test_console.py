"""A sweep's console is for people: its progress and its summary, a few dozen lines; Ray Tune's result tables
and Ray's log lines go to the sweep's log file (``rdt_core.sweep.console``). The routing and the progress
display are checked in process on plain data; one real smoke sweep holds the whole bound."""

from __future__ import annotations

import io
import logging
import sys
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Iterator

import pytest

from rdt_core.config import refuse
from rdt_core.sweep.console import ProgressCallback, clock, routed_output, time_left
from rdt_core.sweep.spec import validate_spec
from tests.helpers import isolated_env, load_smoke_spec, run_sweep_cli, stop_ray_started_in, write_spec

CONSOLE_LINES = 60  # the whole console of the smoke sweep, summary included (issue 24)


@contextmanager
def fake_console() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Fake real stdout and stderr (not terminals) for a ``routed_output`` entered inside. Made in the
    test itself: pytest puts its own capture back between a fixture's set-up and the test."""
    real = sys.stdout, sys.stderr
    out, err = io.StringIO(), io.StringIO()
    sys.stdout, sys.stderr = out, err
    try:
        yield out, err
    finally:
        sys.stdout, sys.stderr = real


def test_only_what_is_for_people_reaches_the_console_and_everything_reaches_the_log(tmp_path):
    log_path = tmp_path / "sweep" / "sweep.log"
    ray_logger = logging.getLogger("ray.tune.test_console")
    ray_logger.propagate = False
    with fake_console() as (out, err):
        with routed_output(log_path) as console:
            console.line("sweep x: 4 trials")
            print("+----- a Tune result table -----+")  # printed here: not rdt_core's own code
            print("(run_single_worker_trial pid=7) Checkpoint successfully created at: ...", file=sys.stderr)
            refuse("a message of this platform's own")  # rdt_core's print to stderr: kept
            handler = logging.StreamHandler()  # made now: writes to the routed stderr
            ray_logger.addHandler(handler)
            try:
                ray_logger.info("Wrote the latest version of all result files")
                ray_logger.error("Trial task failed for trial t1\nTraceback ...")  # told by the progress display
                ray_logger.error("Experiment state snapshotting failed\nTraceback (most recent call last):\n  ...")
            finally:
                ray_logger.removeHandler(handler)
        assert sys.stdout is out and sys.stderr is err  # put back
    assert out.getvalue() == "sweep x: 4 trials\n"
    assert err.getvalue() == ("error: a message of this platform's own\n"
                              "Experiment state snapshotting failed (more in the sweep's log)\n")
    log = log_path.read_text()
    for line in ("sweep x: 4 trials", "a Tune result table", "Checkpoint successfully created",
                 "Wrote the latest version", "Trial task failed", "Traceback (most recent call last)"):
        assert line in log


def test_verbose_shows_everything_on_the_console_too(tmp_path):
    with fake_console() as (out, _), routed_output(tmp_path / "sweep.log", verbose=True):
        print("+----- a Tune result table -----+")
    assert "a Tune result table" in out.getvalue() and "a Tune result table" in (tmp_path / "sweep.log").read_text()


def test_a_log_handler_made_before_the_sweep_is_routed_too(tmp_path):
    """Optuna's and Ray's handlers hold the stream they were made with."""
    logger = logging.getLogger("optuna.test_console")
    logger.propagate = False
    with fake_console() as (_, err):
        handler = logging.StreamHandler(err)
        logger.addHandler(handler)
        try:
            with routed_output(tmp_path / "sweep.log"):
                logger.warning("A new study created in RDB with name: x")
            assert handler.stream is err  # put back
        finally:
            logger.removeHandler(handler)
    assert err.getvalue() == "" and "A new study created" in (tmp_path / "sweep.log").read_text()


def fake_trial(trial_id: str, status: str, lr: float, value: float | None = None, iteration: int = 0,
               error_file: str | None = None):
    result = {"training_iteration": iteration, "time_total_s": 65.0}
    if value is not None:
        result.update({"acc/id_val": value, "acc/id": value - 0.01})
    return SimpleNamespace(trial_id=trial_id, status=status, config={"train.lr": lr, "train.train_loops": 3},
                           last_result=result, error_file=error_file, num_failures=1)


def smoke_spec(**changes):
    raw = load_smoke_spec()
    raw.update(changes)
    return validate_spec(raw, "smoke.yaml")


def test_the_progress_display_tells_each_finished_and_failed_trial_in_a_line(tmp_path):
    error_file = tmp_path / "error.txt"
    error_file.write_text("Failure # 1\nTraceback (most recent call last):\n  File ...\nValueError: the graph is gone\n")
    progress = ProgressCallback(smoke_spec(), name_of={"a": "smoke-000", "b": "smoke-001"}.get)
    a = fake_trial("a", "RUNNING", 0.00357, 0.609, iteration=6)
    b = fake_trial("b", "RUNNING", 0.01, iteration=3, error_file=str(error_file))
    c = fake_trial("c", "PENDING", 0.002)
    with fake_console() as (out, err), routed_output(tmp_path / "sweep.log"):
        progress.on_trial_start(0, [a, b, c], a)
        progress.on_trial_complete(1, [a, b, c], a)
        a.status = "TERMINATED"
        progress.on_trial_error(2, [a, b, c], b)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert "smoke-000 finished in 1:05: acc/id_val 0.609  acc/id 0.599 | train_loops 3, lr 0.00357" in lines[0]
    assert "1/4 done, 1 running, 2 pending, 0 failed" in lines[1] and "best acc/id_val 0.609 (smoke-000)" in lines[1]
    assert "1/4 done, 0 running, 2 pending, 1 failed" in lines[2]
    assert err.getvalue().count("\n") == 1
    assert f"smoke-001 FAILED: ValueError: the graph is gone (the whole error: {error_file})" in err.getvalue()


def test_with_seeds_the_best_so_far_is_a_settings_mean():
    progress = ProgressCallback(smoke_spec(sampler={"type": "grid"}, num_samples=None, seeds=2, search_space={
        "train.lr": {"type": "grid", "values": [0.01, 0.003]}}))
    trials = [fake_trial(f"t{i}", "TERMINATED", lr, value) for i, (lr, value) in
              enumerate([(0.01, 0.9), (0.01, 0.3), (0.003, 0.7), (0.003, 0.66)])]
    for trial, replicate in zip(trials, [0, 1, 0, 1]):
        trial.config = {"train.lr": trial.config["train.lr"], "replicate": replicate}
    assert progress.best_text(trials) == "best acc/id_val 0.68 ± 0.0283 (mean of 2/2 replicates: lr 0.003)"


def test_times_read_as_clocks_and_the_time_left_follows_the_pace():
    assert [clock(s) for s in (0, 42.4, 725, 3729)] == ["0:00", "0:42", "12:05", "1:02:09"]
    assert time_left(60, 1.5, 4) == pytest.approx(100)
    assert time_left(60, 0, 4) is None


@pytest.mark.slow
def test_the_smoke_sweeps_console_is_a_few_dozen_lines_with_its_summary_and_tune_in_the_log(tmp_path):
    spec = load_smoke_spec()
    spec["base"]["train"].update({"steps": 200, "eval_every": 50})  # the console, not the accuracy
    env = isolated_env(tmp_path)  # an embedded Ray, as `make demo` starts: its start-up lines count too
    try:
        completed = run_sweep_cli(write_spec(tmp_path / "smoke.yaml", spec), tmp_path, timeout=600, env=env)
    finally:
        stop_ray_started_in(env["RAY_TMPDIR"])
    console = completed.stdout + completed.stderr
    assert completed.returncode == 0, console[-5000:]
    lines = console.splitlines()
    assert len(lines) <= CONSOLE_LINES, f"{len(lines)} lines:\n{console}"
    log_path = tmp_path / "ray_results" / "smoke" / "sweep.log"
    assert f"Ray Tune's full output and Ray's logs: in {log_path}" in completed.stdout
    assert sum(" finished in " in line for line in lines) == spec["num_samples"]  # one line per trial
    assert "4/4 done, 0 running, 0 pending, 0 failed" in completed.stdout
    for summary in ("sweep smoke: 4 trials, 0 failed", "best acc/id_val = ", "Optuna study smoke-001 in ",
                    "MLflow parent run ", "mlflow ui --backend-store-uri", "then: http://127.0.0.1:5000/#/experiments/"):
        assert summary in completed.stdout, summary
    assert "Checkpoint successfully created" not in console and "Trial status:" not in console
    log = log_path.read_text()
    assert "Trial status:" in log and "Checkpoint successfully created" in log  # Tune's and Ray's detail
    assert "acc/id_val" in log and "finished in" in log
