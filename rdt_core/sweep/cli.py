"""``python sweeps/run.py SPEC.yaml [--set key=value ...] [--dry-run] [--resume] [--send-outbox] [--verbose]``:
validate the spec, run the sweep, print where to look.

While the sweep runs the console shows its progress (``rdt_core.sweep.console``); Ray Tune's full output
and Ray's log lines go to ``sweep.log`` in the Tune experiment folder (its path printed), and to the
console as well with ``--verbose``.

Exit status: 0 when every trial finished and MLflow has every result, 1 when a trial or the sweep failed
or the tracking store stopped answering (its writes are then kept for ``--send-outbox``), 2 for invalid
input (one line naming the file and the key, printed before Ray or MLflow is touched).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from rdt_core.config import refuse
from rdt_core.sweep.spec import SpecError, load_spec

if TYPE_CHECKING:
    from rdt_core.sweep.plan import SweepPlan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sweeps/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="sweep spec (YAML), e.g. sweeps/smoke.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a spec key by its dotted path, e.g. --set base.train.steps=200 --set num_samples=2",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate and print the resolved plan; start nothing")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue an interrupted sweep of this spec: finished trials are not run again, MLflow runs are reused",
    )
    parser.add_argument(
        "--send-outbox", action="store_true",
        help="send the MLflow writes this sweep kept while its tracking store was down; run nothing",
    )
    parser.add_argument(
        "--verbose", action="store_true",
        help="show Ray Tune's result tables and Ray's log lines here too (they always go to the sweep's sweep.log)",
    )
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec, args.overrides)
    except SpecError as error:
        return refuse(error)

    from rdt_core.sweep.runner import (  # imports Ray: only once the spec is known good
        LocalResourcesError,
        OutboxError,
        ResumeError,
        SweepPlan,
        check_local_resources,
        run_sweep,
    )
    from rdt_core.sweep.console import routed_output, sweep_log_path
    from rdt_core.sweep.summary import parent_run_link
    from rdt_core.tracking import StoreRefused, TrackingUnavailable

    plan = SweepPlan.resolve(spec, args.spec)
    if args.send_outbox:
        return send_kept_writes(spec.name)
    if args.dry_run:
        for key, problem in spec.uncovered():
            print(f"warning: {args.spec}: {key}: {problem}", file=sys.stderr)
        print(yaml.safe_dump(plan.as_dict(), sort_keys=False), end="")
        return 0
    try:
        check_local_resources(spec)
    except LocalResourcesError as error:
        return refuse(f"{args.spec}: {error}")
    log_path = sweep_log_path(plan)
    try:
        with routed_output(log_path, verbose=args.verbose, append=args.resume) as console:
            console.line(header(plan, log_path, args.verbose), logged=False)
            outcome = run_sweep(plan, resume=args.resume)
    except (ResumeError, OutboxError) as error:
        return refuse(f"{args.spec}: {error}")
    except TrackingUnavailable as error:  # a store refused (what to do in one line) is bad input; one down is not
        return refuse(error, 2 if isinstance(error, StoreRefused) else 1)
    except BaseException:
        print(f"the sweep stopped; Ray Tune's and Ray's output is in {log_path}", file=sys.stderr)
        raise
    metric = spec.objectives()[0][0]
    print(f"\nsweep {spec.name}: {outcome.n_trials} trials, {outcome.n_failed} failed")
    best_value = f"{outcome.best_metrics.get(metric, float('nan')):.4f}"
    if spec.seeds > 1:  # the best setting, by its mean over its replicates
        spread, n = outcome.best_spread.get(metric, math.nan), outcome.best_replicates
        best_value += (f" ± {spread:.4f} (mean ± std over {n} replicates)" if math.isfinite(spread)
                       else f" (mean over {n} replicate{'s' if n != 1 else ''})")
    print(f"best {metric} = {best_value} with")
    for key, value in sorted(outcome.best_config.items()):
        print(f"  {key} = {value}")
    if outcome.pareto_front:
        print(f"Pareto front: {len(outcome.pareto_front)} trials (pareto_front.json on the parent run)")
    for note in outcome.report_notes:
        print(f"phase diagrams: {note}")
    print(f"Optuna study {outcome.study_name} in {plan.optuna_storage}")
    print(f"MLflow parent run {outcome.parent_run_id} in {outcome.tracking_uri}")
    if outcome.tracking_uri.startswith("sqlite:"):
        mlflow_command = Path(sys.executable).parent / "mlflow"
        if not mlflow_command.exists():
            mlflow_command = Path("mlflow")
        print(f"open it with: {mlflow_command} ui --backend-store-uri {outcome.tracking_uri} --port 5000 --workers 1")
        print(f"then: {parent_run_link(outcome, 'http://127.0.0.1:5000')}")
    elif outcome.tracking_uri.startswith(("http://", "https://")):
        print(f"open it at: {parent_run_link(outcome, outcome.tracking_uri)}")
    if outcome.unsent_writes:
        print(
            f"MLflow store {outcome.tracking_uri} is not answering: {outcome.unsent_writes} writes (results of "
            f"finished trials among them) are kept in {outcome.outbox_path}; once it answers, send them with: "
            f"python sweeps/run.py {args.spec} --send-outbox",
            file=sys.stderr,
        )
        return 1
    return 0 if outcome.n_failed == 0 else 1


def header(plan: SweepPlan, log_path: Path, verbose: bool) -> str:
    """The sweep's first lines: what it runs, and where the rest of its output goes."""
    spec = plan.spec
    metrics, modes = spec.objectives()
    replicated = f" ({spec.seeds} seeds of each setting, ranked by their mean)" if spec.seeds > 1 else ""
    where = "here and in" if verbose else "in"
    return (f"sweep {spec.name}: {spec.trial_count()} trials{replicated}, {spec.max_concurrent_trials} at a time, "
            f"best by {metrics[0]} ({modes[0]})\nRay Tune's full output and Ray's logs: {where} {log_path}"
            + ("" if verbose else " (--verbose shows them here)"))


def send_kept_writes(sweep_name: str) -> int:
    """``--send-outbox``: 0 once every kept write is in MLflow, 1 while the store still does not answer."""
    from rdt_core.tracking import outbox_path, send_outbox

    path = outbox_path(sweep_name)
    if not path.exists():
        print(f"{path}: nothing kept, nothing to send")
        return 0
    unsent = send_outbox(path)
    if unsent:
        return refuse(f"the MLflow store still does not answer; {unsent} writes stay in {path}", 1)
    print(f"sent every write kept in {path}; draw the phase diagrams with: python -m rdt_core.report {sweep_name}")
    return 0
