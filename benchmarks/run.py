"""Every CPU benchmark, each a ratio against a baseline measured in the same run; writes results.json.

    python -m benchmarks.run            # all of them (make bench, ~6 minutes on 2 cores)
    python -m benchmarks.run --quick    # fewer repeats, no Ray (make bench-quick, ~2.5 minutes)
    python -m benchmarks.run --only train_step,compile

One thread per run, as a trial runs on a CPU core: figures then compare what a sweep's trials see.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from benchmarks.common import Entry, detail_lines, table, write_results
from benchmarks.datagen import generation_scaling
from benchmarks.evaluation import dense_and_early_exit
from benchmarks.training import compile_step, replicas_together, train_step


def trial_start_on_ray(quick: bool) -> list[Entry]:
    from benchmarks.trial_start import trial_start  # imports Ray: only when asked for

    return trial_start(repeats=1 if quick else 2)


BENCHMARKS: dict[str, tuple[Callable[[bool], list[Entry]], bool]] = {  # name -> (function, in --quick)
    "train_step": (train_step, True),
    "dense_eval_and_early_exit": (dense_and_early_exit, True),
    "datagen": (generation_scaling, True),
    "compile": (compile_step, True),
    "replicas": (replicas_together, True),
    "trial_start": (trial_start_on_ray, False),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes; skips the Ray benchmark")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args(argv)
    chosen = args.only.split(",") if args.only else [name for name, (_, quick) in BENCHMARKS.items()
                                                       if quick or not args.quick]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        print(f"--only: unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    entries: list[Entry] = []
    for name in chosen:
        started = time.perf_counter()
        entries += BENCHMARKS[name][0](args.quick)
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    command = "python -m benchmarks.run " + shlex.join(argv if argv is not None else sys.argv[1:])
    write_results(args.out, entries, "cpu", command.strip())
    print(table(entries))
    print(detail_lines(entries))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
