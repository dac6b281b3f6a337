"""What a sweep prints for people, and where everything else goes.

While a sweep runs, ``routed_output`` owns the process's console: the sweep's own lines (``Console``: a
header, one line per finished trial, a progress line with the counts, the time left and the best so far)
go to the console, and everything else (Ray Tune's result tables, Ray's and the trials' log lines such as
"Checkpoint successfully created", MLflow's and Optuna's notes, warnings) goes to the sweep's log file,
``sweep.log`` in the Tune experiment folder (``sweep_log_path``). ``--verbose`` shows all of it on the console
as well. What must not be hidden still reaches the console (``for_people``): what this platform's own code
prints, errors logged by any library (first line; the rest is in the log), Tune's warnings that a sweep
cannot go on (no resources for a trial, an interrupted run), and what a trial prints for people. A failed
trial's error is told by ``ProgressCallback`` in one line naming its error file.

On a terminal the progress line is redrawn in place; elsewhere (a file, ``ray job submit``'s log) it is
printed when a trial ends and now and then in between, so that the console stays a few dozen lines.
"""

from __future__ import annotations

import io
import logging
import math
import re
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TextIO

from ray import tune

from rdt_core.metrics import ACC
from rdt_core.sweep.plan import SweepPlan
from rdt_core.sweep.spec import REPLICATE_KEY, SweepSpec
from rdt_core.sweep.storage import filesystem_and_path, is_local
from rdt_core.sweep.summary import rank_settings

LOG_FILE = "sweep.log"

# Modules that only carry a write on its way (logging, warnings, tracebacks): the writer is the first
# frame outside them.
CARRIERS = ("logging", "warnings", "traceback", "contextlib", "ray._private.log", "mlflow.utils.logging_utils",
            __name__)
# Warnings that say the sweep cannot go on as it is: Tune waiting for resources no node has, a run interrupted.
WARNINGS_FOR_PEOPLE = ("ray.tune.execution.insufficient_resources_manager", "ray.tune.tune")
# Tune logs every trial failure with its traceback, and the failed trials at the end; ProgressCallback
# tells each failure in one line instead, and the summary counts them.
TOLD_BY_PROGRESS = re.compile(r"Trial task failed for trial|Trials did not complete")
# What a trial prints for people (rdt_core.train, rdt_core.sweep.trainables), forwarded by Ray as
# "(<actor> pid=...) <line>".
TRIAL_LINES_FOR_PEOPLE = re.compile(r"train\.compile: |cannot be read whole")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def sweep_log_path(plan: SweepPlan) -> Path:
    """``sweep.log`` in the Tune experiment folder; for storage that is not a local disk (``s3://...``),
    in ``ray_results/<sweep>`` of the working directory."""
    filesystem, path = filesystem_and_path(plan.experiment_path)
    if is_local(filesystem):
        return Path(path) / LOG_FILE
    return Path("ray_results").resolve() / plan.spec.name / LOG_FILE


def for_people(text: str, origin: str, record: logging.LogRecord | None) -> str | None:
    """What of ``text`` (one write to stdout or stderr by module ``origin``, carrying ``record`` when a log
    handler writes it) the console shows when the rest goes to the log only; None for nothing."""
    if record is not None:
        if record.name.startswith("rdt_core"):
            return text if record.levelno >= logging.WARNING else None
        if record.levelno >= logging.ERROR and not TOLD_BY_PROGRESS.search(str(record.msg)):
            return first_line(text)
        if record.levelno >= logging.WARNING and record.name in WARNINGS_FOR_PEOPLE:
            return first_line(text)
        return None
    if origin.startswith("rdt_core"):
        return text
    if origin == "ray._private.worker" and TRIAL_LINES_FOR_PEOPLE.search(text):
        return ANSI.sub("", text)
    return None


def first_line(text: str) -> str:
    lines = text.strip("\n").splitlines()
    more = " (more in the sweep's log)" if len(lines) > 1 else ""
    return f"{lines[0] if lines else ''}{more}\n"


def writer_of_this_write() -> tuple[str, logging.LogRecord | None]:
    """The module that wrote (the first frame outside the carriers) and the log record it carries, if any."""
    frame = sys._getframe(2)
    record = None
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if record is None and frame.f_code.co_name == "emit":
            found = frame.f_locals.get("record")
            record = found if isinstance(found, logging.LogRecord) else None
        if not (module in CARRIERS or module.startswith("logging.")):
            return module, record
        frame = frame.f_back
    return "", record


class Console:
    """The sweep's lines for people, on the process's real stdout and stderr, each also in the log; on a
    terminal, one progress line kept at the bottom and redrawn in place."""

    def __init__(self, stdout: TextIO, stderr: TextIO, log: "LazyLog | None", verbose: bool):
        self.stdout, self.stderr, self.log, self.verbose = stdout, stderr, log, verbose
        self.started_at = time.monotonic()  # the sweep's clock
        self.live = not verbose and stdout.isatty()
        self.live_text = ""
        self.lock = threading.RLock()

    def line(self, text: str, to_stderr: bool = False, logged: bool = True) -> None:
        """A line (or several) for people; ``logged=False`` keeps it out of the log (the header: a sweep
        refused before it starts, a store that does not answer, leaves no log behind)."""
        with self.lock:
            if self.log is not None and logged:
                self.log.write(text if text.endswith("\n") else f"{text}\n")
            self._forward(text if text.endswith("\n") else f"{text}\n", to_stderr)

    def _forward(self, text: str, to_stderr: bool) -> None:
        """``text`` to the console, above the progress line."""
        with self.lock:
            self._clear_live()
            stream = self.stderr if to_stderr else self.stdout
            stream.write(text)
            stream.flush()
            self._draw_live()

    def progress(self, text: str) -> None:
        """The progress line: redrawn in place on a terminal, else a line like any other."""
        with self.lock:
            if not self.live:
                self.line(text)
                return
            self._clear_live()
            self.live_text = text
            self._draw_live()

    def end_progress(self) -> None:
        """The progress line, as it last was, left in place as an ordinary line."""
        with self.lock:
            if self.live and self.live_text:
                self._clear_live()
                text, self.live_text = self.live_text, ""
                self.line(text)

    def _clear_live(self) -> None:
        if self.live and self.live_text:
            self.stdout.write("\r\x1b[K")
            self.stdout.flush()

    def _draw_live(self) -> None:
        if self.live and self.live_text:
            self.stdout.write(self.live_text)
            self.stdout.flush()


class LazyLog:
    """The sweep's log file, made (with its folder) at its first write; appended to on ``--resume``."""

    def __init__(self, path: Path, append: bool):
        self.path, self.append = path, append
        self.file: TextIO | None = None
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        with self.lock:
            if self.file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.file = open(self.path, "a" if self.append else "w", encoding="utf-8", errors="replace")
                if self.append:
                    self.file.write(f"\n--- resumed {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
            self.file.write(text)
            self.file.flush()

    def close(self) -> None:
        with self.lock:
            if self.file is not None:
                self.file.close()
                self.file = None


class RoutedStream(io.TextIOBase):
    """What ``sys.stdout`` or ``sys.stderr`` is while a sweep runs: every write goes to the log, and what
    ``for_people`` keeps (everything, with ``--verbose``) to the console as well."""

    def __init__(self, console: Console, real: TextIO, to_stderr: bool):
        super().__init__()
        self.console, self.real, self.to_stderr = console, real, to_stderr

    def write(self, text: str) -> int:
        if not text:
            return 0
        if self.console.log is not None:
            self.console.log.write(text)
        if self.console.verbose:
            shown: str | None = text
        else:
            origin, record = writer_of_this_write()
            shown = for_people(text, origin, record)
        if shown:
            self.console._forward(shown, self.to_stderr)
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def isatty(self) -> bool:
        return self.console.verbose and self.real.isatty()

    def fileno(self) -> int:
        """The real stream's: what writes below Python (a crash's stack dump) stays on the console."""
        return self.real.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.real, "encoding", "utf-8")


_active: Console | None = None
_plain: Console | None = None


def active_console() -> Console:
    """The console of the sweep running in this process; outside ``routed_output``, plain stdout."""
    global _plain
    if _active is not None:
        return _active
    if _plain is None or _plain.stdout is not sys.stdout or _plain.stderr is not sys.stderr:
        _plain = Console(sys.stdout, sys.stderr, None, verbose=True)
    return _plain


@contextmanager
def routed_output(log_path: Path, verbose: bool = False, append: bool = False) -> Iterator[Console]:
    """While it lasts, the process's stdout and stderr (and every log handler that writes to them) go to
    ``log_path`` and, what is for people (all with ``verbose``), to the console."""
    global _active
    real_out, real_err = sys.stdout, sys.stderr
    log = LazyLog(log_path, append)
    console = Console(real_out, real_err, log, verbose)
    routed_out, routed_err = RoutedStream(console, real_out, False), RoutedStream(console, real_err, True)
    # Handlers made before now hold the real streams (Ray's, Optuna's, a root handler); point them here too.
    repointed = []
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
                    and handler.stream in (real_out, real_err)):
                repointed.append((handler, handler.stream))
                handler.setStream(routed_err if handler.stream is real_err else routed_out)
    sys.stdout, sys.stderr, _active = routed_out, routed_err, console
    try:
        yield console
    finally:
        console.end_progress()
        sys.stdout, sys.stderr, _active = real_out, real_err, None
        for handler, stream in repointed:
            handler.setStream(stream)
        log.close()


def clock(seconds: float) -> str:
    """``0:42``, ``12:05``, ``1:02:09``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def number(value: Any) -> str:
    """A value at 3 significant digits; not a number as it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else f"{value:.3g}"


def short_names(keys: list[str]) -> dict[str, str]:
    """Searched keys by their last part (``lr`` for ``train.lr``) where that is unambiguous."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: short if last.count(short) == 1 else key for key, short in zip(keys, last)}


def time_left(elapsed_s: float, units_done: float, units_total: float) -> float | None:
    """Seconds left at the pace so far, or None before any work is done."""
    if units_done <= 0 or elapsed_s <= 0:
        return None
    return max(0.0, (units_total - units_done) * elapsed_s / units_done)


def never_fails(event: Callable) -> Callable:
    """A display that fails must not fail the sweep (Tune ends an experiment whose callback raises): the
    error goes to the sweep's log and the sweep goes on."""

    @wraps(event)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            event(self, *args, **kwargs)
        except Exception:  # noqa: BLE001 - told in the log, below
            console = active_console()
            if console.log is not None:
                console.log.write(f"the progress display failed in {event.__name__}:\n{traceback.format_exc()}")

    return guarded


class ProgressCallback(tune.Callback):
    """The sweep's live display, from Tune's events in the driver: one line per finished (or failed, or
    restarted) trial with its headline values, and the progress line (trials done, running, pending and
    failed, time elapsed and left, the best so far by the spec's first objective; by a setting's mean
    over its replicates when ``seeds > 1``)."""

    # Off a terminal, a progress line when none came for this long, or for a quarter of the time so far if longer.
    HEARTBEAT_S = 60.0

    def __init__(self, spec: SweepSpec, name_of: Callable[[str], str | None] | None = None):
        self.n_trials = spec.trial_count()
        metrics, modes = spec.objectives()
        self.metric, self.mode = metrics[0], modes[0]
        self.headline = list(dict.fromkeys([*metrics, ACC.name(split="id"), ACC.name(split="ood")]))
        self.searched = list(spec.search_space)
        self.seeds = spec.seeds
        self.replicated = spec.seeds > 1
        self.at_once = min(spec.max_concurrent_trials, self.n_trials)
        base = spec.base_config().train
        self.evaluations = 1 if spec.trained_model is not None else max(1, math.ceil(base.steps / base.eval_every))
        self.name_of = name_of
        self._reset()

    def _reset(self) -> None:
        self.first_trial_at: float | None = None
        self.finished_before: set[str] | None = None  # trials a resumed sweep's earlier run finished
        self.last_line_at = 0.0
        self.last_drawn_at = 0.0
        self.said_running = False

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with Tune's experiment; a resumed sweep's display starts its clock again."""
        return {key: value for key, value in self.__dict__.items()
                if key in ("n_trials", "metric", "mode", "headline", "searched", "seeds", "replicated", "at_once",
                           "evaluations", "name_of")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def setup(self, **info: Any) -> None:
        self._reset()

    # Tune's events
    @never_fails
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.first_trial_at is None:
            self.first_trial_at = time.monotonic()

    @never_fails
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        values = "  ".join(f"{name} {number(result[name])}" for name in self.headline if name in result)
        done = result.get("training_iteration", 0)
        early = f", stopped early after {done}/{self.evaluations} evaluations" if 0 < done < self.evaluations else ""
        self.say(f"{self.name(trial)} finished in {clock(result.get('time_total_s', 0))}{early}: "
                 f"{values or 'no values reported'} | {self.params(trial)}")
        self.show_progress(trials, permanent=True, ending={trial.trial_id: "TERMINATED"})

    @never_fails
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.say(f"{self.name(trial)} FAILED: {self.error_of(trial)} (the whole error: {self.error_path(trial)})",
                 to_stderr=True)
        self.show_progress(trials, permanent=True, ending={trial.trial_id: "ERROR"})

    @never_fails
    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.say(f"{self.name(trial)} stopped ({self.error_of(trial)}); it restarts from its latest checkpoint "
                 f"(restart {trial.num_failures})", to_stderr=True)

    @never_fails
    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        console = active_console()
        if self.finished_before is None:
            self.finished_before = {trial.trial_id for trial in trials if trial.status in ("TERMINATED", "ERROR")}
        if not self.said_running and self.first_trial_at is not None:
            running = sum(trial.status == "RUNNING" for trial in trials)
            if running >= self.at_once or now - self.first_trial_at >= 10:  # the first trials have started
                self.said_running = True
                self.show_progress(trials, permanent=True)
        elif console.live and now - self.last_drawn_at >= 1.0:
            self.show_progress(trials, permanent=False)
        elif not console.live and self.said_running:
            quiet_for = now - self.last_line_at
            if quiet_for >= max(self.HEARTBEAT_S, (now - console.started_at) / 4):
                self.show_progress(trials, permanent=True)

    @never_fails
    def on_experiment_end(self, trials: list, **info: Any) -> None:
        active_console().end_progress()

    # What is shown
    def say(self, text: str, to_stderr: bool = False) -> None:
        console = active_console()
        self.last_line_at = time.monotonic()
        console.line(f"[{clock(self.last_line_at - console.started_at)}] {text}", to_stderr)

    def show_progress(self, trials: list, permanent: bool, ending: Mapping[str, str] | None = None) -> None:
        now = time.monotonic()
        self.last_drawn_at = now
        console = active_console()
        text = f"[{clock(now - console.started_at)}] {self.progress_text(trials, now, ending or {})}"
        if console.live:
            console.progress(text)
        elif permanent:
            self.last_line_at = now
            console.line(text)

    def progress_text(self, trials: list, now: float, ending: Mapping[str, str]) -> str:
        """``ending``: trials whose state Tune changes after it tells the callbacks, by their new state."""
        state = {trial.trial_id: ending.get(trial.trial_id, trial.status) for trial in trials}
        states = list(state.values())
        done, failed = states.count("TERMINATED"), states.count("ERROR")
        running = states.count("RUNNING") + states.count("PAUSED")
        pending = max(0, self.n_trials - done - failed - running)
        parts = [f"{done}/{self.n_trials} done, {running} running, {pending} pending, {failed} failed"]
        # The pace: trials (and evaluations of running ones) done by this run of the sweep since its first
        # trial started; trials an interrupted earlier run finished count for neither the pace nor the rest.
        before = self.finished_before or set()
        units = sum(1.0 if status in ("TERMINATED", "ERROR") else
                    min(1.0, (trial.last_result or {}).get("training_iteration", 0) / self.evaluations)
                    for trial, status in zip(trials, states) if trial.trial_id not in before)
        left = time_left(now - (self.first_trial_at or now), units, self.n_trials - len(before))
        if done + failed < self.n_trials:
            parts.append("time left: known after the first evaluations" if left is None
                         else "almost done" if left < 1 else f"about {clock(left)} left")
        parts.append(self.best_text([trial for trial in trials if state[trial.trial_id] == "TERMINATED"]))
        return "; ".join(part for part in parts if part)

    def best_text(self, finished: list) -> str:
        """The best so far among the ``finished`` trials."""
        if not finished:
            return ""
        configs = [trial.config for trial in finished]
        values = [(trial.last_result or {}).get(self.metric) for trial in finished]
        best = rank_settings(configs, values, self.mode)[0]
        if not math.isfinite(best.mean):
            return ""
        if self.replicated:
            spread = f" ± {number(best.std)}" if math.isfinite(best.std) else ""
            return (f"best {self.metric} {number(best.mean)}{spread} (mean of {best.n}/{self.seeds} replicates: "
                    f"{self.params_of(best.config)})")
        return f"best {self.metric} {number(best.mean)} ({self.name(finished[best.members[0]])})"

    def name(self, trial: Any) -> str:
        name = self.name_of(trial.trial_id) if self.name_of is not None else None
        return name or f"trial {trial.trial_id}"

    def params(self, trial: Any) -> str:
        return self.params_of(trial.config, with_replicate=True)

    def params_of(self, config: Mapping[str, Any], with_replicate: bool = False) -> str:
        names = short_names(self.searched)
        shown = [f"{names[key]} {number(config[key])}" for key in self.searched if key in config]
        if with_replicate and REPLICATE_KEY in config:
            shown.append(f"{REPLICATE_KEY} {config[REPLICATE_KEY]}")
        return ", ".join(shown)

    @staticmethod
    def error_of(trial: Any, limit: int = 200) -> str:
        """The last line of a trial's error (the exception and its message), cut at ``limit`` characters."""
        try:
            text = Path(trial.error_file).read_text() if trial.error_file else ""
        except OSError:
            text = ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        last = lines[-1] if lines else "no error text"
        return last if len(last) <= limit else f"{last[:limit]}..."

    @staticmethod
    def error_path(trial: Any) -> str:
        """Where a trial's whole error stays: its folder in the sweep's storage, else Tune's local copy."""
        name = getattr(getattr(trial, "run_metadata", None), "error_filename", None)
        folder = getattr(trial, "path", None)
        return f"{folder}/{name}" if name and folder else str(trial.error_file)
