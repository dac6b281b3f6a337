"""The per-setting summary of a replicated sweep: for each setting (trials that differ only in their
seeds), the mean, sample standard deviation and number of replicates of the sweep's metric and of the
phase onsets, as ``summary.csv`` (one column each) and ``summary.md`` (``mean ± std (n)`` cells).

A statistic over fewer replicates than the setting has (a trial that failed, or never reached a phase)
says so by its ``n``; NaN (one replicate's std, or no value) is an empty CSV cell.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from rdt_core.metrics import PHASE_STEP
from rdt_core.report.runs import SEED_PARAMS, Setting, Spread, Sweep

PHASE_KEYS = tuple(PHASE_STEP.name(split=split) for split in ("train", "id", "ood"))
NO_VALUE = Spread(math.nan, math.nan, 0)


def summary_keys(sweep: Sweep) -> list[str]:
    """The sweep's metric, then the phase onsets that some setting reports."""
    keys = dict.fromkeys([sweep.metric, *PHASE_KEYS])  # ordered, without repeats
    return [key for key in keys if key == sweep.metric or any(key in s.spread for s in sweep.settings)]


def varying_params(settings: list[Setting]) -> list[str]:
    """The params (seeds aside) whose value differs between settings: what tells them apart."""
    keys = sorted({key for setting in settings for key in setting.params} - SEED_PARAMS)
    return [key for key in keys if len({setting.params.get(key) for setting in settings}) > 1]


def summary_rows(sweep: Sweep) -> list[dict[str, object]]:
    """One row per setting: its name, the params that vary, its replicates, and mean, std and n of
    each summary key."""
    keys, varying = summary_keys(sweep), varying_params(sweep.settings)
    rows = []
    for setting in sweep.settings:
        row: dict[str, object] = {"setting": setting.name, **{k: setting.params.get(k, "") for k in varying}}
        row["replicates"] = setting.n
        for key in keys:
            spread = setting.spread.get(key, NO_VALUE)
            row |= {f"{key} mean": spread.mean, f"{key} std": spread.std, f"{key} n": spread.n}
        rows.append(row)
    return rows


def write_summary(sweep: Sweep, out: Path) -> list[Path]:
    """``summary.csv`` and ``summary.md`` in ``out``; returns their paths."""
    rows, keys = summary_rows(sweep), summary_keys(sweep)
    csv_path, md_path = out / "summary.csv", out / "summary.md"
    with csv_path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
    md_path.write_text(markdown_table(sweep, rows, keys))
    return [csv_path, md_path]


def csv_cell(value: object) -> object:
    return "" if isinstance(value, float) and not math.isfinite(value) else value


def markdown_table(sweep: Sweep, rows: list[dict[str, object]], keys: list[str]) -> str:
    """The rows as a Markdown table, a statistic per cell as ``mean ± std (n=k)``."""
    params = varying_params(sweep.settings)
    header = ["setting", *params, "replicates", *keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting, row in zip(sweep.settings, rows):
        stats = [setting.spread.get(key, NO_VALUE) for key in keys]
        cells = [setting.name, *(str(row[p]) for p in params), str(setting.n)]
        cells += [stat.text(0 if key in PHASE_KEYS else 3, of=setting.n) if stat.n else "—" for key, stat in zip(keys, stats)]
        lines.append("| " + " | ".join(cells) + " |")
    best = sweep.best_setting()
    chosen = f"best setting by its mean {sweep.metric} ({sweep.mode}): {best.name}" if best else "no setting reports it"
    intro = (
        f"# {sweep.experiment}: {len(sweep.settings)} settings, {len(sweep.trials)} trials\n\n"
        "Each statistic: mean ± sample standard deviation (n = replicates that report it).\n"
        f"{chosen}\n\n"
    )
    return intro + "\n".join(lines) + "\n"
