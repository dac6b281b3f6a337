"""What every benchmark shares: an entry of results.json, interleaved timing, the machine, the table.

Every figure is a ratio against a baseline measured in the same process and the same run, so that a busy
or a faster machine moves both alike. The two sides are timed in turns (A, B, A, B, ...) and each side's
median is kept: a burst of load then spoils one repeat of each, not the whole of one side.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Entry:
    """One line of results.json: ``value`` against ``baseline`` (same unit), ``ratio = value / baseline``
    unless the benchmark says otherwise in ``note``; ``met`` is None where the figure could not be taken."""

    name: str
    value: float | None
    baseline: float | None
    ratio: float | None
    unit: str
    target: str  # e.g. "<= 1.05", ">= 6"
    met: bool | None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def meets(ratio: float | None, target: str) -> bool | None:
    """Whether ``ratio`` satisfies a target written as ``"<= x"`` or ``">= x"``."""
    if ratio is None or math.isnan(ratio):
        return None
    operator, bound = target.split()
    return ratio <= float(bound) if operator == "<=" else ratio >= float(bound)


def entry(name: str, value: float, baseline: float, unit: str, target: str, note: str = "",
          ratio: float | None = None, **details: Any) -> Entry:
    """An entry whose ratio is value / baseline (or ``ratio``), checked against ``target``."""
    ratio = value / baseline if ratio is None else ratio
    return Entry(name, value, baseline, ratio, unit, target, meets(ratio, target), note, details)


def interleaved(first: Callable[[], float], second: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Medians of ``repeats`` alternating calls of two measurements (each returns its own figure)."""
    firsts, seconds = [], []
    for _ in range(repeats):
        firsts.append(first())
        seconds.append(second())
    return statistics.median(firsts), statistics.median(seconds)


def seconds_of(function: Callable[[], Any]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
    }


def write_results(path: Path, entries: list[Entry], device: str, command: str) -> None:
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine(device),
        "entries": [asdict(item) for item in entries],
    }
    path.write_text(json.dumps(results, indent=2) + "\n")


def number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def table(entries: list[Entry]) -> str:
    """A Markdown table: pastes into docs/performance.md as it prints."""
    rows = [("name", "value", "baseline", "ratio", "unit", "target", "met")]
    for item in entries:
        met = {True: "yes", False: "NO", None: "-"}[item.met]
        rows.append((item.name, number(item.value), number(item.baseline), number(item.ratio), item.unit,
                     item.target, met))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def detail_lines(entries: list[Entry]) -> str:
    """What the table leaves out: each entry's note and its scalar details (accuracies, compile time)."""
    lines = []
    for item in entries:
        scalars = {key: value for key, value in item.details.items() if not isinstance(value, (list, dict))}
        extra = ", ".join(f"{key}={value}" for key, value in scalars.items())
        lines.append(f"- {item.name}: {item.note}" + (f" [{extra}]" if extra else ""))
    return "\n".join(lines)
