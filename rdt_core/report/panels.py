"""What a diagram shows, independent of how it is drawn: a figure of heatmap and scatter panels.

The diagrams build these once and ``render`` draws them twice, as a PNG (matplotlib) and as an
interactive HTML page (plotly), so that the two files cannot show different things.

Heatmap axes are categorical (one cell per loop, hop count, trial or threshold, ``off`` included), so
marks and lines are placed by axis label or by cell index (``1.5``: between the second and third cell).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Marks:
    """Points drawn over a heatmap, e.g. the peak of every row; ``symbol`` is a plotly symbol name."""

    label: str
    points: list[tuple[str, str]]  # (x label, y label)
    symbol: str = "star"
    text: list[str] | None = None  # hover text of each point (HTML), e.g. a mean onset ± its spread


@dataclass(frozen=True)
class Line:
    """A straight line across a heatmap at a cell index: ``axis`` "x" is a vertical line."""

    axis: str
    position: float
    label: str


@dataclass(frozen=True)
class Heatmap:
    """Accuracy (or any value in [0, 1]) per cell; ``values[i][j]`` is row ``y[i]``, column ``x[j]``,
    NaN where there is nothing (drawn grey)."""

    title: str
    x_title: str
    y_title: str
    x: list[str]
    y: list[str]
    values: list[list[float]]
    marks: list[Marks] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    cell_text: list[list[str]] | None = None  # written in each cell, e.g. mean loops
    spread_text: list[list[str]] | None = None  # hover value of each cell where it is a mean over replicates


@dataclass(frozen=True)
class Series:
    """One group of scatter points (e.g. one trial's halting rules), each with its hover text."""

    name: str
    x: list[float]
    y: list[float]
    text: list[str]


@dataclass(frozen=True)
class Scatter:
    """Points of several series and a staircase through ``front`` (sorted by x), e.g. a Pareto front."""

    title: str
    x_title: str
    y_title: str
    series: list[Series]
    front: list[tuple[float, float]]
    front_label: str


Panel = Heatmap | Scatter


@dataclass(frozen=True)
class Figure:
    """One diagram: its file stem (``overthinking``), its title, its panels side by side, and notes on
    any panel left out for want of data."""

    name: str
    title: str
    panels: list[Panel]
    notes: list[str] = field(default_factory=list)
