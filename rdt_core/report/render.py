"""Draw a ``panels.Figure`` as a PNG (matplotlib's Agg canvas) and as an interactive HTML page (plotly).

The PNG uses a bare ``matplotlib.figure.Figure`` on an Agg canvas, not pyplot: no global backend is
switched and no figure lingers in a process that draws many. Accuracy colour scales are fixed to [0, 1]
in both, so that colours compare across panels, diagrams and sweeps.

The HTML page holds only the figure's data (10 to 15 KB for a small sweep) and fills the width it is
shown in, MLflow's artifact preview included. It loads plotly.js (4.8 MB) from one shared copy beside
it, ``plotly.min.mjs``, rather than inlining it in every page; no CDN, which clusters may not reach.
Where that copy is found:

- opened from disk or any folder served as files: beside the page;
- in MLflow's artifact preview (3.x), which shows the page as a ``blob:`` URL in an iframe sandboxed
  with ``allow-scripts`` only, so that no relative URL resolves: from the tracking server's
  ``get-artifact`` route, which the page builds from the run id and the preview's own address
  (``document.referrer``, the MLflow page, path prefix included).

The copy is named ``.mjs`` because MLflow serves ``.js`` artifacts as ``text/plain`` with
``X-Content-Type-Options: nosniff``, which browsers refuse to run; ``.mjs`` goes out as JavaScript.
"""

from __future__ import annotations

import html
import json
import math
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import plotly.graph_objects as go
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.image import AxesImage
from plotly.io.json import to_json_plotly
from plotly.offline import get_plotlyjs

from rdt_core.report.panels import Figure, Heatmap, Panel, Scatter

COLOUR_SCALE = "viridis"
MARK_STYLES = {  # plotly symbol -> (matplotlib marker, colour, filled, size in points): open squares frame a cell
    "star": ("*", "red", True, 12),
    "diamond": ("D", "orangered", True, 10),
    "square-open": ("s", "white", False, 24),
}
LINE_DASHES = {"x": (":", "dot"), "y": ("--", "dash")}  # (matplotlib, plotly): vertical and horizontal differ
LEGEND_BACKGROUND = "silver"  # white marks and lines must show in the legend too
MAX_TICKS = 12
TITLE_WIDTH = 70  # characters of a PNG panel's title per line
X_TICK_ROOM = 60  # characters of tick labels that fit side by side under a PNG panel at its font size
MAX_LEGEND_SERIES = 12  # beyond this a PNG legend hides the data; the HTML one still lists them all
PLOTLY_JS = "plotly.min.mjs"  # the one plotly.js of a folder of HTML diagrams; why .mjs: module docstring
COLOUR_AXIS = {"colorscale": COLOUR_SCALE, "cmin": 0, "cmax": 1, "colorbar": {"title": {"text": "accuracy"}}}
HTML_PANEL_WIDTH, HTML_PANEL_HEIGHT = 460, 480  # px; a panel goes below the one before where it would be narrower
HTML_PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ margin: 0; font-family: "Open Sans", verdana, arial, sans-serif; color: #2a3f5f; }}
h1 {{ font-size: 17px; font-weight: normal; margin: 12px 16px 4px; }}
h2 {{ font-size: 13px; font-weight: normal; margin: 8px 16px 0; text-align: center; }}
#status {{ margin: 0 16px; color: firebrick; }}
#panels {{ display: flex; flex-wrap: wrap; }}
.panel {{ flex: 1 1 {panel_width}px; min-width: 0; }}
.plot {{ height: {panel_height}px; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p id="status"></p>
<div id="panels">
{panels}
</div>
<script>
const template = {template};  // plotly's default look, once for every panel
const figures = {figures};  // per panel: its traces and layout
const plotlyJs = {plotly_js};  // [URL relative to this page, [run id, artifact path] or null]

/* Where plotly.js may be: beside this page; on the MLflow server that shows it in a preview. */
function places() {{
  const [sibling, artifact] = plotlyJs;
  const found = [sibling];
  if (artifact) {{
    const [runId, path] = artifact;
    const route = "get-artifact?path=" + encodeURIComponent(path) + "&run_uuid=" + encodeURIComponent(runId);
    try {{
      found.push(new URL(route, document.referrer || location.origin + "/").href);
    }} catch (unresolvable) {{}}
  }}
  return found;
}}

/* Load plotly.js from the first place that has it, then draw every panel; say so where none has it. */
function load(urls) {{
  if (!urls.length) {{
    document.getElementById("status").textContent = "plotly.js (" + plotlyJs[0] + ") was found neither " +
      "beside this page nor on the MLflow server: download it with the page, or see this diagram's PNG.";
    return;
  }}
  const script = document.createElement("script");
  script.src = urls[0];
  script.onload = () => document.querySelectorAll(".plot").forEach((box, i) =>
    Plotly.newPlot(box, figures[i].data, {{...figures[i].layout, template}}, {{responsive: true}}));
  script.onerror = () => {{ script.remove(); load(urls.slice(1)); }};
  document.head.appendChild(script);
}}

load(places());
</script>
</body>
</html>
"""


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
    axes.set_title(wrapped(panel.title), fontsize=10)
    axes.set_xticks(*thinned(panel.x, X_TICK_ROOM))
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
    axes.set_title(wrapped(panel.title), fontsize=10)
    axes.legend(fontsize=7, loc="lower right", ncols=2 if with_legend and len(panel.series) > 6 else 1)


def wrapped(title: str) -> str:
    """A panel title on lines that fit above its panel (a best setting's title names its metric and spread)."""
    return "\n".join(textwrap.wrap(title, TITLE_WIDTH)) or title


def thinned(labels: list[str], room: int | None = None) -> tuple[list[int], list[str]]:
    """Tick positions and labels, at most ``MAX_TICKS`` of them (steps can number hundreds) and, along
    an axis with ``room`` characters, no more than fit side by side (twenty steps of five digits)."""
    every = max(1, math.ceil(len(labels) / MAX_TICKS))
    if room and labels:
        every = max(every, math.ceil(len(labels) * (max(map(len, labels)) + 2) / room))
    positions = list(range(0, len(labels), every))
    return positions, [labels[i] for i in positions]


def write_html(figure: Figure, path: Path, run_id: str | None = None, artifact_dir: str | None = None) -> Path:
    """Write the figure as an HTML page at ``path`` and, once per folder, the plotly.js it loads
    (``write_plotly_js``). With the MLflow run id and the run's artifact folder that the folder's files
    are logged to, the page also draws in MLflow's artifact preview (see the module docstring).

    Each panel is a plot of its own, as wide as the page allows: side by side in a wide window, one
    under the other in a narrow one such as the preview, where side by side they would overlap. Panel
    titles are HTML text, which wraps."""
    specs = [html_panel(panel).to_plotly_json() for panel in figure.panels]
    template = specs[0]["layout"]["template"]
    for spec in specs:
        del spec["layout"]["template"]
    sections = [
        f'<section class="panel"><h2>{html.escape(panel.title)}</h2><div class="plot"></div></section>'
        for panel in figure.panels
    ]
    artifact = [run_id, f"{artifact_dir}/{PLOTLY_JS}" if artifact_dir else PLOTLY_JS] if run_id else None
    page = HTML_PAGE.format(
        title=html.escape(figure.title),
        panel_width=HTML_PANEL_WIDTH,
        panel_height=HTML_PANEL_HEIGHT,
        panels="\n".join(sections),
        template=to_json_plotly(template),  # plotly's JSON escapes < and >: no string in it ends the script
        figures=to_json_plotly(specs),
        plotly_js=json.dumps([PLOTLY_JS, artifact]),
    )
    write_plotly_js(path.parent)
    path.write_text(page, encoding="utf-8")
    return path


def write_plotly_js(folder: Path) -> Path:
    """The plotly.js bundled with the plotly package, written into ``folder`` as ``PLOTLY_JS`` unless it
    is there already: the folder's HTML pages load it, so it must be logged along with them."""
    target, script = folder / PLOTLY_JS, get_plotlyjs()
    if not target.exists() or target.read_text(encoding="utf-8") != script:  # another plotly's, in a reused folder
        target.write_text(script, encoding="utf-8")
    return target


def html_panel(panel: Panel) -> go.Figure:
    """One panel as a plotly figure that takes the size of the box it is drawn in."""
    drawing = go.Figure()
    if isinstance(panel, Heatmap):
        html_heatmap(drawing, panel)
    else:
        html_scatter(drawing, panel)
    drawing.update_layout(
        autosize=True,  # no width or height: the box's
        xaxis_title=panel.x_title,
        yaxis_title=panel.y_title,
        margin={"t": 24, "r": 24},  # the title is above, in the page
        legend={"orientation": "h", "y": -0.18, "bgcolor": LEGEND_BACKGROUND},
    )
    return drawing


def html_heatmap(drawing: go.Figure, panel: Heatmap) -> None:
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
        )
    )
    drawing.update_layout(coloraxis=COLOUR_AXIS, xaxis_type="category", yaxis_type="category")
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
                marker={
                    "symbol": mark.symbol,
                    "size": size,
                    "color": colour,
                    "line": {"width": 1 if filled else 2, "color": "black" if filled else colour},
                },
            )
        )
    for line in panel.lines:
        place = drawing.add_vline if line.axis == "x" else drawing.add_hline
        line_style = {"dash": LINE_DASHES[line.axis][1], "color": "white", "width": 2}
        place(line.position, line=line_style, name=line.label, showlegend=True)


def html_scatter(drawing: go.Figure, panel: Scatter) -> None:
    hover = f"%{{text}}<br>{panel.x_title}: %{{x:.2f}}<br>{panel.y_title}: %{{y:.3f}}<extra></extra>"
    for series in panel.series:
        drawing.add_trace(
            go.Scatter(x=series.x, y=series.y, text=series.text, mode="markers", name=series.name, hovertemplate=hover)
        )
    drawing.add_trace(
        go.Scatter(
            x=[x for x, _ in panel.front],
            y=[y for _, y in panel.front],
            mode="lines+markers",
            line={"shape": "hv", "color": "black"},
            marker={"symbol": "circle-open", "size": 10},
            name=panel.front_label,
        )
    )
    drawing.update_yaxes(range=[0, 1.02])
