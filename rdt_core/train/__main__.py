"""``python -m rdt_core.train CONFIG.yaml [--set key=value ...] [--out run.jsonl] [--no-mlflow]``

One training run without Ray: the quickest way to debug a config. A progress bar follows the
evaluations; the run is logged to MLflow the way a sweep's trial is (its full config as parameters, the
headline metrics at every evaluation step, the tables and per-loop curves at the end, the checkpoint), in
the experiment named by ``--experiment`` (default: the config file's name). ``--out`` also writes every
report, every metric of it, as one JSON line.
Invalid input exits 2 with one line naming the file and the key, before anything starts.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from tqdm import tqdm

from rdt_core.config import ConfigError, ExperimentConfig, parse_override, read_yaml_mapping, refuse
from rdt_core.data.splits import load_splits
from rdt_core.metrics import ACC, LOSS
from rdt_core.tracking.reports import log_evaluation, log_final
from rdt_core.train import CHECKPOINT_FILE, train_worker

SHOWN = [LOSS.name(split="train"), *(ACC.name(split=split) for split in ("train", "id", "ood"))]  # on the progress bar


def parse_config(path: Path, overrides: list[str]) -> ExperimentConfig:
    """The config file with its ``--set`` overrides, validated, and its graph's splits built once, so that
    a graph too small for its splits is refused here in one line, as a sweep refuses it."""
    raw = read_yaml_mapping(path, "config file") or {}
    config = ExperimentConfig.from_dict(raw, dict(parse_override(item) for item in overrides))
    load_splits(config.data)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rdt_core.train", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="experiment config (YAML; only what differs from defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, help="write every report as one JSON line here")
    parser.add_argument("--experiment", help="MLflow experiment (default: the config file's stem)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    args = parser.parse_args(argv)
    try:
        config = parse_config(args.config, args.overrides)
    except ConfigError as error:
        return refuse(f"{args.config}: {error}")

    tracker = run_id = None
    if not args.no_mlflow:
        from rdt_core.tracking import StoreRefused, SweepTracker, resolve_tracking_uri

        try:  # a SQLite store: opened under its lock, made or repaired whole; refused in one line
            tracker = SweepTracker(resolve_tracking_uri(None), args.experiment or args.config.stem)
        except StoreRefused as error:
            return refuse(error)
        run_id = tracker.start_parent(
            args.config.stem, params=config.to_flat_dict(), tags={"rdt.config_path": str(args.config)}
        )
    evaluations = math.ceil(config.train.steps / config.train.eval_every)
    progress = tqdm(total=evaluations, unit="eval", desc=args.config.stem)
    reports: list[dict[str, float]] = []

    def report(metrics: dict[str, float], checkpoint: Path | None) -> None:  # one run: no resuming
        reports.append(metrics)
        if tracker is not None:
            log_evaluation(tracker, run_id, metrics)
        shown = {name: f"{metrics[name]:.3f}" for name in SHOWN if name in metrics}
        progress.set_postfix(shown, refresh=False)
        progress.update(1)

    succeeded = False
    try:
        with tempfile.TemporaryDirectory() as checkpoint_dir:
            train_worker(config, report, Path(checkpoint_dir))
            if tracker is not None:
                log_run_artifacts(tracker, run_id, reports[-1], Path(checkpoint_dir))
        succeeded = True
    finally:
        progress.close()
        if tracker is not None:
            tracker.finish(run_id, succeeded=succeeded)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in reports))  # whole, at the end
    if tracker is not None:
        print(f"MLflow run {run_id} in {tracker.tracking_uri}")
    return 0


def log_run_artifacts(tracker, run_id: str, final: dict[str, float], checkpoint_dir: Path) -> None:
    log_final(tracker, run_id, final)
    tracker.client.log_artifact(run_id, str(checkpoint_dir / CHECKPOINT_FILE), "checkpoint")


if __name__ == "__main__":
    raise SystemExit(main())
