"""``python sweeps/run.py SPEC.yaml``: validate the spec, run the sweep, print where to look.

Exit status: 0 when every trial finished, 1 when a trial or the sweep failed, 2 for invalid input
(one line naming the file and the key, printed before Ray or MLflow is touched).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rdt_core.sweep.spec import SpecError, load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sweeps/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="sweep spec (YAML), e.g. sweeps/smoke.yaml")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from rdt_core.sweep.runner import run_sweep  # imports Ray: only once the spec is known good

    outcome = run_sweep(spec, args.spec)
    print(f"\nsweep {spec.name}: {outcome.n_trials} trials, {outcome.n_failed} failed")
    print(f"best {spec.metric} = {outcome.best_metrics.get(spec.metric, float('nan')):.4f} with")
    for key, value in sorted(outcome.best_config.items()):
        print(f"  {key} = {value}")
    print(f"MLflow parent run {outcome.parent_run_id} in {outcome.tracking_uri}")
    if outcome.tracking_uri.startswith("sqlite:"):
        mlflow_command = Path(sys.executable).parent / "mlflow"
        if not mlflow_command.exists():
            mlflow_command = Path("mlflow")
        print(
            f"open it with: {mlflow_command} ui --backend-store-uri {outcome.tracking_uri} --port 5000"
            " (then http://127.0.0.1:5000)"
        )
    return 0 if outcome.n_failed == 0 else 1
