"""Kill a small sweep at a moment drawn at random, resume it, and check that nothing was lost or counted
twice.

One *kill point* is a seed. The seed picks the target (``TARGETS[seed % 4]``, so that a soak kills each in
turn) and draws when it is killed:
- ``driver``: the sweep's whole process group (the driver and its embedded Ray) with SIGKILL, at a
  random time, or as soon as a trial's checkpoint appears in storage (while Tune registers it), or as
  soon as a trial's final report reaches Tune (while the driver logs it to MLflow and tells Optuna), or
  in its first seconds, while it creates its fresh SQLite store (at a random moment after the store's
  temporary file appears beside it); then ``--resume``, which may be killed again the same way; then a
  last ``--resume`` left to finish;
- ``worker``: one trial's worker process (a Tune trial's actor), at a moment drawn over the trials' life:
  as the first trial's process appears, or as the n-th of the trials' reports (n drawn below their
  number, so before the last) appears in storage; if no trial runs then (between two trials), the next
  trial's process as it appears (Tune restarts the trial from its checkpoint);
- ``dp_worker``: one of the two Ray Train workers of a data-parallel trial (``workers_per_trial: 2``) of
  a sweep of such trials, the same way over those trials' life;
- ``server``: the MLflow tracking server, at a random time, started again on its port a few seconds later
  (a sweep that finds it down as it begins stops before any trial, as documented, and is run again).
Then every invariant of ``violations`` is checked. Used by ``tests/integration/test_kill_anywhere.py``
(a few seeds) and by ``make soak`` (``python -m tests.kill_anywhere --points 25``), which prints how many
kill points held, per target and in all.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

from rdt_core.sweep.resume import STARTED_MARK
from tests.helpers import (
    RUN_PY,
    free_port,
    isolated_env,
    load_smoke_spec,
    ray_actor_pids,
    start_tracking_server,
    stop_ray_started_in,
    stop_tracking_server,
    write_spec,
)

NAME = "fired"
LIFE_S = 40.0  # about how long the sweep runs here unkilled (38 s, 2 cores): driver and server kill times


@dataclass(frozen=True)
class Shape:
    """The sweep a target is killed in: its trials, how many run at once, their workers and length."""

    trials: int
    concurrent: int
    steps: int
    eval_every: int
    workers: int = 1

    @property
    def reports(self) -> int:
        """Reports the trials make in all (one per evaluation): the clock a worker kill is drawn on."""
        return self.trials * (self.steps // self.eval_every)


SINGLE = Shape(trials=3, concurrent=2, steps=300, eval_every=50)
# Two data-parallel trials of two workers (half a CPU each, as test_sweep's data-parallel test), one at a time.
DATA_PARALLEL = Shape(trials=2, concurrent=1, steps=150, eval_every=50, workers=2)
TARGETS = ("driver", "worker", "dp_worker", "server")
DRIVER_MOMENTS = ("any time", "at a checkpoint", "at a final report", "in store creation")
STORE_CREATION_S = 1.0  # about how long a fresh SQLite store's temporary file lives (MLflow's migrations)
TRIAL_ACTOR = {"worker": "ImplicitFunc", "dp_worker": "RayTrainWorker"}  # process titles of what is killed
MISSED = "before the kill"  # in the log of a kill point whose sweep ended before (one of) its kills


def shape_of(target: str) -> Shape:
    return DATA_PARALLEL if target == "dp_worker" else SINGLE


def sweep_spec(workdir: Path, shape: Shape = SINGLE) -> Path:
    """The smoke sweep, small: 3 trials of 300 steps, two at a time (or ``shape``'s), a checkpoint at
    every evaluation."""
    spec = load_smoke_spec()
    spec.update(name=NAME, num_samples=shape.trials, max_concurrent_trials=shape.concurrent)
    if shape.workers > 1:
        spec["resources"] = {"workers_per_trial": shape.workers, "cpus_per_worker": 0.5}
    spec["base"]["train"].update({"steps": shape.steps, "eval_every": shape.eval_every})
    return write_spec(workdir / f"{NAME}.yaml", spec)


@dataclass
class KillPoint:
    """What one seed kills, and when."""

    seed: int
    target: str
    kills: list[tuple[str, float]] = field(default_factory=list)  # (moment, delay or count) per driver run

    @classmethod
    def draw(cls, seed: int, target: str | None = None) -> "KillPoint":
        rng = random.Random(seed)
        point = cls(seed, target or TARGETS[seed % len(TARGETS)])
        shape = shape_of(point.target)
        n_driver_kills = rng.choice((1, 1, 2)) if point.target == "driver" else 1
        for run in range(n_driver_kills):
            if point.target in TRIAL_ACTOR:
                # After the how-manyth report of all (0: as the first trial's process appears), so before
                # the last: whatever the machine's speed, the kill falls while trials run.
                point.kills.append(("in a trial's life", rng.randrange(shape.reports)))
                continue
            # A resumed run finds its store made: only the first run can be killed while making it.
            moments = DRIVER_MOMENTS[:3] if run else DRIVER_MOMENTS
            moment = rng.choice(moments) if point.target == "driver" else "any time"
            if moment == "any time":
                point.kills.append((moment, rng.uniform(0, LIFE_S)))
            elif moment == "in store creation":  # seconds after the store's temporary file appears
                point.kills.append((moment, rng.uniform(0, STORE_CREATION_S)))
            else:  # the how-manyth checkpoint (of 6 per trial) or final report from the run's start
                point.kills.append((moment, rng.randint(1, shape.steps // shape.eval_every
                                                        if moment == "at a checkpoint" else shape.trials)))
        return point

    def describe(self) -> str:
        shown = ", ".join(f"{moment} #{value}" if moment in ("at a checkpoint", "at a final report")
                          else f"{moment} (after report {value} of {shape_of(self.target).reports})"
                          if moment == "in a trial's life" else f"{moment} ({value:.2f} s)"
                          for moment, value in self.kills)
        return f"seed {self.seed}: kill the {self.target} {shown}"


class Sweep:
    """``python sweeps/run.py SPEC [--resume]`` in its own process group, output to files."""

    def __init__(self, spec_path: Path, workdir: Path, env: dict[str, str], resume: bool, run_index: int):
        self.env, self.workdir = env, workdir
        self.out = workdir / f"run-{run_index}.out"
        command = [sys.executable, str(RUN_PY), str(spec_path), *(["--resume"] if resume else [])]
        with open(self.out, "w") as out:
            self.process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def kill(self) -> None:
        """SIGKILL the whole group at once, then whatever of its Ray lives on (a lost head node)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        stop_ray_started_in(self.env["RAY_TMPDIR"])

    def wait(self, timeout_s: float = 600) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self.kill()  # its Ray, whatever happened


def started(workdir: Path) -> bool:
    """Whether the sweep got as far as marking its start (after which ``--resume`` continues it)."""
    return (workdir / "ray_results" / NAME / STARTED_MARK).exists()


def checkpoints_in_storage(workdir: Path) -> set[str]:
    """The trials' checkpoint folders now in storage (Tune keeps the latest of each trial)."""
    return {str(path) for path in (workdir / "ray_results" / NAME).glob("trial-*/checkpoint_*")}


def final_reports_in_storage(workdir: Path) -> set[str]:
    """Trials whose Tune result file holds the final report (only it carries ``trial/finished``)."""
    return {str(path) for path in (workdir / "ray_results" / NAME).glob("trial-*/result.json")
            if "trial/finished" in path.read_text()}


def store_temporaries(workdir: Path) -> list[Path]:
    """The fresh SQLite store being made aside (rdt_core/tracking/store.py), while it is."""
    return list(workdir.glob(".mlflow.db.creating-*"))


def wait_for_store_creation(sweep: Sweep, delay: float) -> str | None:
    """Wait until the store's temporary file appears, then ``delay`` seconds more; says where the kill
    lands (None when the sweep ended first)."""
    store = sweep.workdir / "mlflow.db"
    deadline = time.monotonic() + 300
    while not store_temporaries(sweep.workdir):
        if sweep.process.poll() is not None or time.monotonic() > deadline:
            return None
        if store.exists():  # made between two looks
            return "just after its store was made"
        time.sleep(0.005)
    time.sleep(delay)
    if sweep.process.poll() is not None:
        return None
    return "while its store was being made" if store_temporaries(sweep.workdir) else "just after its store was made"


def reports_in_storage(workdir: Path) -> int:
    """The trials' reports so far: one line each in their Tune result files."""
    count = 0
    for path in (workdir / "ray_results" / NAME).glob("trial-*/result.json"):
        try:
            count += path.read_text().count("\n")
        except FileNotFoundError:
            pass
    return count


def kill_in_trials_life(sweep: Sweep, target: str, after: int, seed: int) -> str:
    """Kill one process of ``target`` (a Tune trial's actor, or a Ray Train worker) once ``after`` of the
    trials' reports are in storage (0: as the first appears), or, when none runs then, the next to appear;
    says what it did."""
    actor, ray_dir = TRIAL_ACTOR[target], sweep.env["RAY_TMPDIR"]
    began, deadline = time.monotonic(), time.monotonic() + 600
    while not ray_actor_pids(ray_dir, actor):
        if sweep.process.poll() is not None or time.monotonic() > deadline:
            return f"the sweep ended before any {actor} process, before the kill"
        time.sleep(0.1)
    first_s = time.monotonic() - began
    while reports_in_storage(sweep.workdir) < after:
        if sweep.process.poll() is not None or time.monotonic() > deadline:
            return f"the sweep ended before report {after}, before the kill"
        time.sleep(0.02)
    delay = time.monotonic() - began - first_s
    late = 0.0
    while not (pids := ray_actor_pids(ray_dir, actor)):
        if sweep.process.poll() is not None or time.monotonic() > deadline:
            return f"the sweep ended {delay:.1f} s after its first {actor} process, before the kill"
        time.sleep(0.05)
        late = time.monotonic() - began - first_s - delay
    try:
        os.kill(random.Random(seed).choice(pids), signal.SIGKILL)
    except ProcessLookupError:
        return f"the {actor} process drawn ended as it was killed"
    waited = f" (none ran then: the next, {late:.1f} s later)" if late else ""
    return (f"killed one of {len(pids)} {actor} processes after report {after} ({delay:.1f} s after the first "
            f"appeared){waited}")


def wait_for_moment(sweep: Sweep, moment: str, value: float) -> bool:
    """Wait until the drawn moment comes: ``value`` seconds, or the ``value``-th checkpoint or final
    report that appears in storage after the run starts. False when the sweep ended first."""
    deadline = time.monotonic() + (value if moment == "any time" else 300)
    look = {"at a checkpoint": checkpoints_in_storage, "at a final report": final_reports_in_storage}.get(moment)
    before = look(sweep.workdir) if look else set()
    appeared: set[str] = set()
    while time.monotonic() < deadline:
        if sweep.process.poll() is not None:
            return False
        if look:
            appeared |= look(sweep.workdir) - before
            if len(appeared) >= value:
                return True
        time.sleep(0.02)
    return moment == "any time"


def run_kill_point(point: KillPoint, workdir: Path) -> tuple[list[str], list[str]]:
    """Run the sweep under ``point``'s kills and resumes; returns (what happened, invariant violations)."""
    shape = shape_of(point.target)
    spec_path = sweep_spec(workdir, shape)
    log: list[str] = []
    server = port = None
    backend = f"sqlite:///{workdir / 'server.db'}"
    try:
        tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
        if point.target == "server":
            port = free_port()
            server, tracking_uri = start_tracking_server(backend, workdir / "served", workdir, port=port)
        runs = 0

        def start(resume: bool) -> Sweep:
            nonlocal runs
            env = isolated_env(workdir)
            env["MLFLOW_TRACKING_URI"] = tracking_uri
            runs += 1
            return Sweep(spec_path, workdir, env, resume, runs)

        sweep = start(resume=False)
        if point.target == "driver":
            for moment, value in point.kills:
                if moment == "in store creation":
                    landed = wait_for_store_creation(sweep, value)
                    came, moment = landed is not None, landed
                else:
                    came = wait_for_moment(sweep, moment, value)
                sweep.kill()
                log.append(f"run {runs}: killed {moment}" if came else f"run {runs}: ended before the kill")
                # Killed before it began (it marks its start in storage first), the sweep is run again as
                # it was: --resume would say that there is nothing to resume.
                sweep = start(resume=started(workdir))
        elif point.target in TRIAL_ACTOR:
            log.append(kill_in_trials_life(sweep, point.target, point.kills[0][1], point.seed))
        else:
            moment, delay = point.kills[0]
            if wait_for_moment(sweep, moment, delay):
                stop_tracking_server(server, crash=True)
                time.sleep(random.Random(point.seed).uniform(2, 15))
                server, _ = start_tracking_server(backend, workdir / "served", workdir, port=port)
                log.append(f"crashed the tracking server at {delay:.1f} s and started it again")
            else:
                log.append("the sweep ended before the kill")
        returncode = sweep.wait()
        if returncode == 1 and "does not answer" in sweep.out.read_text():
            # The server was down as the sweep began: it stopped before any trial, as documented, and is
            # run again now that the server is back (with --resume if it got as far as marking its start).
            log.append(f"run {runs} stopped on a server that was down as it began")
            sweep = start(resume=started(workdir))
            returncode = sweep.wait()
        log.append(f"run {runs} (last) exited {returncode}")
        problems = [] if returncode == 0 else [f"the last run exited {returncode}: {tail(sweep.out)}"]
        return log, problems + violations(tracking_uri, workdir, shape)
    finally:
        if server is not None:
            stop_tracking_server(server)


def tail(path: Path, lines: int = 6) -> str:
    return " | ".join(path.read_text().strip().splitlines()[-lines:])


def violations(tracking_uri: str, workdir: Path, shape: Shape = SINGLE) -> list[str]:
    """Every way the finished sweep breaks its promises: one FINISHED parent, one FINISHED child per
    trial with every evaluation logged once and its checkpoint, and an Optuna study holding one
    COMPLETE trial per trial (none RUNNING, no parameters twice)."""
    found: list[str] = []
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(NAME)
    if experiment is None:
        return ["no MLflow experiment"]
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    if len(parents) != 1:
        return found + [f"{len(parents)} parent runs"]
    parent = parents[0]
    if parent.info.status != "FINISHED":
        found.append(f"parent {parent.info.status}")
    if len(children) != shape.trials:
        found.append(f"{len(children)} child runs for {shape.trials} trials")
    if len({run.data.tags.get("ray.trial_id") for run in children}) != len(children):
        found.append("two child runs of one trial")
    evaluations = list(range(shape.eval_every, shape.steps + 1, shape.eval_every))
    for child in children:
        name, run_id = child.info.run_name, child.info.run_id
        if child.info.status != "FINISHED":
            found.append(f"{name} {child.info.status}")
        for key in child.data.metrics:
            steps = [metric.step for metric in client.get_metric_history(run_id, key)]
            if len(steps) != len(set(steps)):
                found.append(f"{name}: {key} logged twice at a step ({steps})")
                break
        loss_steps = sorted({m.step for m in client.get_metric_history(run_id, "loss/train")})
        if loss_steps != evaluations:
            found.append(f"{name}: evaluations at {loss_steps}, not {evaluations}")
        if "trial/finished" not in child.data.metrics:
            found.append(f"{name}: no final report")
        if "checkpoint/model.pt" not in [a.path for a in client.list_artifacts(run_id, "checkpoint")]:
            found.append(f"{name}: no checkpoint")
    study_name = parent.data.tags.get("optuna.study_name")
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return found + [f"no Optuna study {study_name}"]
    states = [trial.state for trial in study.trials]
    complete = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) != shape.trials:
        found.append(f"{len(complete)} COMPLETE Optuna trials for {shape.trials} trials "
                     f"({[state.name for state in states]})")
    if optuna.trial.TrialState.RUNNING in states:
        found.append("an Optuna trial left RUNNING")
    if len({json.dumps(trial.params, sort_keys=True) for trial in complete}) != len(complete):
        found.append("the same parameters COMPLETE twice in the study")
    linked = {trial.user_attrs.get("ray.trial_id") for trial in complete}
    if linked != {run.data.tags.get("ray.trial_id") for run in children}:
        found.append("the COMPLETE Optuna trials are not the child runs' trials")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.kill_anywhere", description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=25, help="kill points (seeds) to try")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--target", choices=TARGETS, action="append",
                        help="only this target; may be given more than once (default: each in turn, by seed)")
    parser.add_argument("--keep", type=Path, help="keep each kill point's files under this folder")
    args = parser.parse_args(argv)
    tally: dict[str, list[int]] = {}  # target: [held, tried, missed (the sweep ended before a kill)]
    for index, seed in enumerate(range(args.first_seed, args.first_seed + args.points)):
        point = KillPoint.draw(seed, args.target[index % len(args.target)] if args.target else None)
        workdir = Path(tempfile.mkdtemp(prefix=f"kill-{seed}-", dir=args.keep))
        started = time.monotonic()
        log, problems = run_kill_point(point, workdir)
        counts = tally.setdefault(point.target, [0, 0, 0])
        counts[0] += not problems
        counts[1] += 1
        counts[2] += any(MISSED in line for line in log)
        verdict = "held" if not problems else "BROKEN: " + "; ".join(problems)
        print(f"{point.describe()} -> {'; '.join(log)} -> {verdict} [{time.monotonic() - started:.0f} s, {workdir}]",
              flush=True)
    for target in TARGETS:
        if target in tally:
            held, tried, missed = tally[target]
            print(f"{target}: {held} of {tried} held" + (f" ({missed} ended before a kill)" if missed else ""),
                  flush=True)
    held = sum(counts[0] for counts in tally.values())
    print(f"{held} of {args.points} kill points held every invariant", flush=True)
    return 0 if held == args.points else 1

if __name__ == "__main__":
    raise SystemExit(main())
