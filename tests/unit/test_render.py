"""The HTML diagrams: small pages that share one plotly.js, fit the width they are shown in (MLflow's
artifact preview is about 600 px wide), and still hold every trace of every panel."""

from __future__ import annotations

import json
import math
import re

from plotly.offline import get_plotlyjs

from rdt_core.report.panels import Figure, Heatmap, Line, Marks, Scatter, Series
from rdt_core.report.render import PLOTLY_JS, write_html

HEATMAP = Heatmap(
    "best trial t-001 (acc/id = 0.900): id split",
    "inference loops",
    "hops",
    x=["1", "2", "3"],
    y=["2", "3"],
    values=[[0.1, 0.9, 0.5], [0.2, math.nan, 0.7]],
    marks=[Marks("peak of each row", [("2", "2"), ("3", "3")]), Marks("trained loops R", [("2", "2")], "square-open")],
    lines=[Line("x", 1, "trained loops R")],
    cell_text=[["1.0", "2.0", "3.0"], ["1.5", "", "2.5"]],
    spread_text=[["0.100 ± 0.010 (n=3)", "0.900 ± 0.020 (n=3)", "0.500 ± 0.030 (n=3)"], ["", "", ""]],
)
SCATTER = Scatter(
    "every rule of every trial </script> (id split, final)",
    "mean loops",
    "accuracy",
    series=[Series("t-000", [2.0, 3.0], [0.4, 0.5], ["t-000: kl_0.01_h_off", "t-000: kl_1_h_off"])],
    front=[(2.0, 0.4), (3.0, 0.5)],
    front_label="Pareto front",
)
FIGURE = Figure("halting", "Adaptive halting: accuracy against loops (sweep)", [SCATTER, HEATMAP])


def page_value(page: str, name: str):
    """The JSON that the page's script assigns to ``const NAME``."""
    return json.loads(re.search(rf"^const {name} = (.*);  // ", page, re.MULTILINE).group(1))


def test_pages_are_a_hundredth_of_inlined_plotly_js_and_share_one_copy_of_it(tmp_path):
    pages = [write_html(FIGURE, tmp_path / "halting.html"), write_html(FIGURE, tmp_path / "again.html")]

    plotly_js = get_plotlyjs()  # what every page used to inline: 4.8 MB
    for page in pages:
        assert page.stat().st_size < len(plotly_js) / 100
        assert page_value(page.read_text(encoding="utf-8"), "plotlyJs") == [PLOTLY_JS, None]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["halting.html", "again.html", PLOTLY_JS])
    assert (tmp_path / PLOTLY_JS).read_text(encoding="utf-8") == plotly_js


def test_a_stale_plotly_js_in_a_reused_folder_is_replaced(tmp_path):
    (tmp_path / PLOTLY_JS).write_text("// another plotly's", encoding="utf-8")

    write_html(FIGURE, tmp_path / "halting.html")

    assert (tmp_path / PLOTLY_JS).read_text(encoding="utf-8") == get_plotlyjs()


def test_with_the_run_the_page_also_finds_plotly_js_among_the_run_artifacts(tmp_path):
    page = write_html(FIGURE, tmp_path / "halting.html", run_id="0123abcd", artifact_dir="diagrams")

    text = page.read_text(encoding="utf-8")
    assert page_value(text, "plotlyJs") == [PLOTLY_JS, ["0123abcd", f"diagrams/{PLOTLY_JS}"]]
    assert '"get-artifact?path=" + encodeURIComponent(path) + "&run_uuid="' in text  # the MLflow server's route


def test_each_panel_takes_the_width_it_is_given_and_panels_wrap_where_it_is_narrow(tmp_path):
    text = write_html(FIGURE, tmp_path / "halting.html").read_text(encoding="utf-8")

    layouts = [figure["layout"] for figure in page_value(text, "figures")]
    assert len(layouts) == len(FIGURE.panels)
    for layout in layouts:
        assert layout["autosize"] is True
        assert "width" not in layout and "height" not in layout
    assert "{responsive: true}" in text  # plotly redraws when the window (or preview pane) resizes
    assert re.search(r"#panels \{[^}]*flex-wrap: wrap", text)
    assert re.search(r"\.panel \{[^}]*flex: 1 1 \d+px; min-width: 0", text)
    assert text.count('<div class="plot">') == len(FIGURE.panels)


def test_every_trace_of_every_panel_is_in_the_page(tmp_path):
    text = write_html(FIGURE, tmp_path / "halting.html").read_text(encoding="utf-8")

    scatter, heatmap = page_value(text, "figures")
    assert [trace["name"] for trace in scatter["data"]] == ["t-000", "Pareto front"]
    assert scatter["data"][0]["text"] == SCATTER.series[0].text
    assert [trace["type"] for trace in heatmap["data"]] == ["heatmap", "scatter", "scatter"]
    assert heatmap["data"][0]["z"] == [[0.1, 0.9, 0.5], [0.2, None, 0.7]]
    assert heatmap["data"][0]["customdata"] == HEATMAP.spread_text
    assert [trace["name"] for trace in heatmap["data"][1:]] == ["peak of each row", "trained loops R"]
    assert [(shape["name"], shape["x0"]) for shape in heatmap["layout"]["shapes"]] == [("trained loops R", 1)]
    assert heatmap["layout"]["coloraxis"]["cmin"] == 0 and heatmap["layout"]["coloraxis"]["cmax"] == 1
    assert page_value(text, "template")["layout"]  # plotly's look, once for all panels
    assert f"<h1>{FIGURE.title}</h1>" in text
    assert f"<h2>{HEATMAP.title}</h2>" in text


def test_no_text_of_the_figure_ends_the_page_script_early(tmp_path):
    text = write_html(FIGURE, tmp_path / "halting.html").read_text(encoding="utf-8")

    assert text.count("</script>") == 1
    assert "<h2>every rule of every trial &lt;/script&gt; (id split, final)</h2>" in text
