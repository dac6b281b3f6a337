"""``python sweeps/run.py SPEC.yaml [--set key=value ...] [--dry-run] [--resume] [--send-outbox]``: validate
the spec, run the sweep, print where to look.

Exit status: 0 when every trial finished and MLflow has every result, 1 when a trial or the sweep failed
or the tracking store stopped answering (its writes are then kept for ``--send-outbox``), 2 for invalid
input (one line naming the file and the key, printed before Ray or MLflow is touched).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from rdt_core.config import refuse
from rdt_core.sweep.spec import SpecError, load_spec


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
    from rdt_core.sweep.summary import parent_run_link
    from rdt_core.tracking import TrackingUnavailable

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
    try:
        outcome = run_sweep(plan, resume=args.resume)
    except (ResumeError, OutboxError) as error:
        return refuse(f"{args.spec}: {error}")
    except TrackingUnavailable as error:
        return refuse(error, 1)
    metric = spec.objectives()[0][0]
    print(f"\nsweep {spec.name}: {outcome.n_trials} trials, {outcome.n_failed} failed")
    print(f"best {metric} = {outcome.best_metrics.get(metric, float('nan')):.4f} with")
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
