"""The side-by-side's learning curves, paper script against this project, as OUT/summary.json and a
markdown table OUT/summary.md: accuracy at the trained R = 4 per kind of query, mean and standard
deviation over seeds, at this project's evaluation steps (the paper's script evaluates after every epoch;
the epoch ending at or just before each step is taken).

    python docs/side_by_side/summarize.py OUT BATCHES_PER_EPOCH SEED [SEED ...]
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

# kind of query -> (the paper's test type, this project's metric)
KINDS = {
    "training loss (mean of the last epoch / eval window)": ("loss", "loss/train"),
    "atomic facts (trained)": ("id_atomic", "acc/train/hops_1"),
    "2-hop, trained": ("train_inferred", "acc/train/hops_2"),
    "2-hop, in distribution (id)": ("test_inferred_iid", "acc/id"),
    "2-hop, held-out facts (ood)": ("test_inferred_ood", "acc/ood"),
}
EPOCH_LINE = re.compile(r"Epoch (\d+): Test Acc: [\d.]+ Elapsed Time: [\d.]+ \((.*)\)")
LOSS_LINE = re.compile(r"Epoch (\d+)/\d+, Loss: ([\d.]+)")  # printed to the script's output, 1-based


def paper_curve(log: Path, batches: int) -> dict[int, dict[str, float]]:
    """Step -> {paper type: accuracy} from the paper script's log file."""
    curve = {}
    for line in log.read_text().splitlines():
        if match := EPOCH_LINE.match(line):
            pairs = (item.split(": ") for item in match[2].split(", "))
            curve[(int(match[1]) + 1) * batches] = {name: float(value) for name, value in pairs}
    return curve


def paper_losses(output: Path, batches: int) -> dict[int, float]:
    """Step -> the epoch's mean training loss, from the paper script's printed output."""
    return {int(match[1]) * batches: float(match[2]) for match in map(LOSS_LINE.search, output.read_text().splitlines())
            if match}


def ours_curve(reports: Path) -> dict[int, dict[str, float]]:
    return {int(report["step"]): report for report in map(json.loads, reports.read_text().splitlines())}


def main(out: Path, batches: int, seeds: list[str]) -> None:
    paper = {seed: paper_curve(out / f"paper_{seed}.txt", batches) for seed in seeds}
    for seed in seeds:  # the training loss beside the accuracies: an epoch's mean, as the script prints it
        for step, loss in paper_losses(out / f"paper_{seed}.log", batches).items():
            paper[seed].setdefault(step, {})["loss"] = loss
    ours = {seed: ours_curve(out / f"ours_{seed}.jsonl") for seed in seeds}
    steps = sorted(set.intersection(*(set(curve) for curve in ours.values())))
    rows = []
    for step in steps:
        row = {"step": step}
        for kind, (paper_type, metric) in KINDS.items():
            for side, found in (
                ("paper", [curve[max(s for s in curve if s <= step)][paper_type] for curve in paper.values()]),
                ("ours", [curve[step][metric] for curve in ours.values()]),
            ):
                row[f"{kind}|{side}"] = (statistics.mean(found), statistics.stdev(found) if len(found) > 1 else 0.0)
        rows.append(row)
    (out / "summary.json").write_text(json.dumps({"seeds": seeds, "batches_per_epoch": batches, "rows": rows}, indent=1))
    columns = [f"{kind}|{side}" for kind in KINDS for side in ("paper", "ours")]
    lines = ["| step | " + " | ".join(column.replace("|", ": ") for column in columns) + " |",
             "|---:|" + "---:|" * len(columns)]
    for row in rows:
        cells = [f"{row[column][0]:.3f} ± {row[column][1]:.3f}" for column in columns]
        lines.append(f"| {row['step']} | " + " | ".join(cells) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
