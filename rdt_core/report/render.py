"""Draw a ``panels.Figure`` as a PNG (matplotlib's Agg canvas) and as a self-contained HTML page (plotly).

The PNG uses a bare ``matplotlib.figure.Figure`` on an Agg canvas, not pyplot: no global backend is
switched and no figure lingers in a process that draws many. The HTML page embeds plotly.js, so it
opens offline (about 5 MB a file). Accuracy colour scales are fixed to [0, 1] in both, so that
colours compare across panels, diagrams and sweeps.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import plotly.graph_objects as go
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.image import AxesImage
from plotly.subplots import make_subplots

from rdt_core.report.panels import Figure, Heatmap, Scatter

COLOUR_SCALE = "viridis"
MARK_STYLES = {  # plotly symbol -> (matplotlib marker, colour, filled, size in points): open squares frame a cell
    "star": ("*", "red", True, 12),
    "diamond": ("D", "orangered", True, 10),
    "square-open": ("s", "white", False, 24),
}
LINE_DASHES = {"x": (":", "dot"), "y": ("--", "dash")}  # (matplotlib, plotly): vertical and horizontal differ
LEGEND_BACKGROUND = "silver"  # white marks and lines must show in the legend too
MAX_TICKS = 12
MAX_LEGEND_SERIES = 12  # beyond this a PNG legend hides the data; the HTML one still lists them all


def write_png(figure: Figure, path: Path) -> Path:
    canvas = FigureCanvasAgg(MplFigure(figsize=(5.4 * len(figure.panels) + 1.2, 4.8), layout="constrained"))
    drawing = canvas.figure
    drawing.suptitle(figure.title)
    heatmap_axes, image = [], None
    for axes, panel in zip(drawing.subplots(1, len(figure.panels), squeeze=False)[0], figure.panels):
        if isinstance(panel, Heatmap):
            image = png_heatmap(axes, panel)
            heatmap_axes.append(axes)
        else:
            png_scatter(axes, panel)
    if image is not None:
        drawing.colorbar(image, ax=heatmap_axes, label="accuracy")
    drawing.savefig(path, dpi=110)
    return path


def png_heatmap(axes: Axes, panel: Heatmap) -> AxesImage:
    colours = matplotlib.colormaps[COLOUR_SCALE].with_extremes(bad="lightgrey")
    values = np.array(panel.values, dtype=float)
    image = axes.imshow(values, origin="lower", aspect="auto", vmin=0, vmax=1, cmap=colours, interpolation="nearest")
    axes.set(xlabel=panel.x_title, ylabel=panel.y_title)
    axes.set_title(panel.title, fontsize=10)
    axes.set_xticks(*thinned(panel.x))
    axes.set_yticks(*thinned(panel.y))
    column, row = {x: j for j, x in enumerate(panel.x)}, {y: i for i, y in enumerate(panel.y)}
    for mark in panel.marks:
        marker, colour, filled, size = MARK_STYLES[mark.symbol]
        axes.scatter(
            [column[x] for x, _ in mark.points],
            [row[y] for _, y in mark.points],
            marker=marker,
            s=size**2,
            label=mark.label,
            facecolors=colour if filled else "none",
            edgecolors="black" if filled else colour,
            linewidths=1.2 if filled else 2,
            zorder=3,
        )
    for line in panel.lines:
        draw = axes.axvline if line.axis == "x" else axes.axhline
        draw(line.position, color="white", linestyle=LINE_DASHES[line.axis][0], linewidth=2, label=line.label)
    for i, row_text in enumerate(panel.cell_text or []):
        for j, text in enumerate(row_text):
            dark = not values[i, j] > 0.6  # NaN too: grey cells take black text
            axes.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    if panel.marks or panel.lines:  # below the axes, where it hides no cell
        axes.legend(
            fontsize=7,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.13),
            ncols=3,
            facecolor=LEGEND_BACKGROUND,
            markerscale=0.6,
        )
    return image


def png_scatter(axes: Axes, panel: Scatter) -> None:
    with_legend = len(panel.series) <= MAX_LEGEND_SERIES
    for series in panel.series:
        axes.scatter(series.x, series.y, s=16, alpha=0.8, label=series.name if with_legend else None)
    xs, ys = zip(*panel.front) if panel.front else ((), ())
    axes.step(xs, ys, where="post", color="black", linewidth=1.5, label=panel.front_label)
    axes.scatter(xs, ys, s=50, facecolors="none", edgecolors="black", zorder=3)
    axes.set(xlabel=panel.x_title, ylabel=panel.y_title, ylim=(0, 1.02))
    axes.set_title(panel.title, fontsize=10)
    axes.legend(fontsize=7, loc="lower right", ncols=2 if with_legend and len(panel.series) > 6 else 1)


def thinned(labels: list[str]) -> tuple[list[int], list[str]]:
    """Tick positions and labels, at most ``MAX_TICKS`` of them (steps can number hundreds)."""
    every = max(1, math.ceil(len(labels) / MAX_TICKS))
    positions = list(range(0, len(labels), every))
    return positions, [labels[i] for i in positions]


def write_html(figure: Figure, path: Path) -> Path:
    n = len(figure.panels)
    drawing = make_subplots(rows=1, cols=n, subplot_titles=[panel.title for panel in figure.panels])
    shown: set[str] = set()  # each legend entry once, though marks repeat across panels
    for col, panel in enumerate(figure.panels, start=1):
        if isinstance(panel, Heatmap):
            html_heatmap(drawing, panel, col, shown)
        else:
            html_scatter(drawing, panel, col)
        drawing.update_xaxes(title_text=panel.x_title, row=1, col=col)
        drawing.update_yaxes(title_text=panel.y_title, row=1, col=col)
    drawing.update_layout(
        title=figure.title,
        width=520 * n + 180,
        height=520,
        coloraxis={"colorscale": COLOUR_SCALE, "cmin": 0, "cmax": 1, "colorbar": {"title": {"text": "accuracy"}}},
        legend={"orientation": "h", "y": -0.18, "bgcolor": LEGEND_BACKGROUND},
    )
    drawing.update_annotations(font_size=12)  # the subplot titles, long ones included
    drawing.write_html(path, include_plotlyjs=True, full_html=True)
    return path


def html_heatmap(drawing: go.Figure, panel: Heatmap, col: int, shown: set[str]) -> None:
    value = "%{customdata}" if panel.spread_text else "%{z:.3f}"  # mean ± std (n) over replicates
    hover = f"{panel.x_title}: %{{x}}<br>{panel.y_title}: %{{y}}<br>accuracy: {value}"
    drawing.add_trace(
        go.Heatmap(
            x=panel.x,
            y=panel.y,
            z=[[None if math.isnan(v) else v for v in row] for row in panel.values],
            coloraxis="coloraxis",
            customdata=panel.spread_text,
            text=panel.cell_text,
            texttemplate="%{text}" if panel.cell_text else None,
            hovertemplate=hover + ("<br>%{text}" if panel.cell_text else "") + "<extra></extra>",
        ),
        row=1,
        col=col,
    )
    drawing.update_xaxes(type="category", row=1, col=col)
    drawing.update_yaxes(type="category", row=1, col=col)
    for mark in panel.marks:
        _, colour, filled, size = MARK_STYLES[mark.symbol]
        drawing.add_trace(
            go.Scatter(
                x=[x for x, _ in mark.points],
                y=[y for _, y in mark.points],
                mode="markers",
                name=mark.label,
                text=mark.text,
                hovertemplate="%{text}<extra></extra>" if mark.text else None,
                legendgroup=mark.label,
                showlegend=mark.label not in shown,
                marker={
                    "symbol": mark.symbol,
                    "size": size,
                    "color": colour,
                    "line": {"width": 1 if filled else 2, "color": "black" if filled else colour},
                },
            ),
            row=1,
            col=col,
        )
        shown.add(mark.label)
    for line in panel.lines:
        place = drawing.add_vline if line.axis == "x" else drawing.add_hline
        line_style = {"dash": LINE_DASHES[line.axis][1], "color": "white", "width": 2}
        place(line.position, line=line_style, name=line.label, showlegend=True, row=1, col=col)


def html_scatter(drawing: go.Figure, panel: Scatter, col: int) -> None:
    hover = f"%{{text}}<br>{panel.x_title}: %{{x:.2f}}<br>{panel.y_title}: %{{y:.3f}}<extra></extra>"
    for series in panel.series:
        drawing.add_trace(
            go.Scatter(x=series.x, y=series.y, text=series.text, mode="markers", name=series.name, hovertemplate=hover),
            row=1,
            col=col,
        )
    drawing.add_trace(
        go.Scatter(
            x=[x for x, _ in panel.front],
            y=[y for _, y in panel.front],
            mode="lines+markers",
            line={"shape": "hv", "color": "black"},
            marker={"symbol": "circle-open", "size": 10},
            name=panel.front_label,
        ),
        row=1,
        col=col,
    )
    drawing.update_yaxes(range=[0, 1.02], row=1, col=col)
