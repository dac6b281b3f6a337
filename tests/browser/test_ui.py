"""A finished sweep as a user sees it: the MLflow UI and optuna-dashboard, in a real headless Chromium.

The other tests read a sweep back through MlflowClient and Optuna; a user reads it in two React apps,
which can fail to show what the stores hold: a description in a tag the UI does not read, a table
artifact shown with blank columns, a chart that does not draw. So this test runs a short smoke sweep,
starts both apps on its stores, loads each page a user opens after a sweep, waits for the element that
shows the result, and fails on a missing element or an error in a page. Every page is screenshotted,
under the test's tmp dir (the path is printed) and into $RDT_BROWSER_SHOTS when that is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import free_port, load_smoke_spec, run_sweep_cli, stop_tracking_server, write_spec

pytestmark = pytest.mark.slow

# What the platform is to show after a sweep. Each name is one page and what it must show (CHECKS,
# below); take a name out while the part of the platform it checks is being reworked.
EXPECTED = [
    "runs_from_home",  # first, on a fresh browser: from the home page, by clicks, to the sweep's runs table
    "parent_description",  # the parent run's overview shows the spec's description (tag mlflow.note.content)
    "child_runs_listed",  # the parent run's overview links every child run, named CHILD_RUN_NAME
    "leaderboard_table",  # the parent's LEADERBOARD (MlflowClient.log_table): a table with ACCURACY, no column blank
    "diagram_png",  # the parent's diagrams/DIAGRAM.png shows as an image
    "diagram_html",  # the parent's diagrams/DIAGRAM.html draws its Plotly figure, whole, in MLflow's pane
    "child_accuracy_chart",  # the model-metrics tab of the child run of Optuna trial 0 charts ACCURACY
    "optuna_study",  # optuna-dashboard's page of the sweep's study, with its history plot and best trial
]
CHILD_RUN_NAME = "{sweep}-{trial:03d}"  # a child run: the sweep's name and its Optuna trial's number
ACCURACY = "acc/id_val"
LEADERBOARD = "leaderboard.json"
DIAGRAM = "overthinking"  # one of rdt_core.report.diagrams.DIAGRAMS that a sweep of two trials draws

SHOTS_ENV = "RDT_BROWSER_SHOTS"
LOAD_S = 60  # a page's first content: a guard against a hang, not a speed check (a loaded CI is slow)
SHOWN_S = 10  # an element of a page whose content has come: it comes with that content or not at all

# Console errors that are no fault of the pages checked, each with why it is harmless.
HARMLESS_CONSOLE_ERRORS = {
    "/ajax-api/2.0/mlflow/users/current": "the MLflow UI asks who is signed in; a server without auth answers 404",
    "ResizeObserver loop": "Chromium's notice that a layout changed while it was being observed",
    "/ajax-api/2.0/mlflow/artifacts/presigned-download-url": "the MLflow UI (3.17.2's bundle) may ask for a "
    "presigned link to an artifact kept in a local folder; a server without one answers 501 and the UI reads "
    "the artifact directly (seen once in a fresh-clone run, the artifact pages whole)",
}


def test_a_finished_sweep_shows_in_the_mlflow_ui_and_optuna_dashboard(browser, tmp_path):
    spec = short_sweep_spec()
    completed = run_sweep_cli(write_spec(tmp_path / "smoke.yaml", spec), tmp_path, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    sweep = read_sweep(tmp_path, spec)

    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"screenshots: {shots}")
    try:
        with web_apps(tmp_path) as (mlflow_url, dashboard_url):
            problems = run_checks(browser, Site(sweep, mlflow_url, dashboard_url), shots)
    finally:
        if os.environ.get(SHOTS_ENV):
            shutil.copytree(shots, os.environ[SHOTS_ENV], dirs_exist_ok=True)
    assert not problems, f"screenshots in {shots}:\n" + "\n".join(problems)


def short_sweep_spec() -> dict:
    """sweeps/smoke.yaml made short (two 100-step trials at once: about 50 s on 2 cores), drawing DIAGRAM."""
    spec = load_smoke_spec()
    spec["base"]["train"].update({"steps": 100, "eval_every": 50})
    spec.update(num_samples=2, max_concurrent_trials=2, phase_diagrams=[DIAGRAM])
    return spec


@dataclass(frozen=True)
class FinishedSweep:
    """What the pages are to show, from the sweep's spec and its MLflow store."""

    spec: dict
    experiment_id: str
    parent_id: str
    children: dict[str, str]  # run name -> run id
    study_name: str


def read_sweep(workdir: Path, spec: dict) -> FinishedSweep:
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(spec["name"])
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = {run.info.run_name: run.info.run_id for run in runs if run is not parent}
    study_name = parent.data.tags["optuna.study_name"]
    return FinishedSweep(spec, experiment.experiment_id, parent.info.run_id, children, study_name)


# MLflow 3's job runner (GenAI scorers: nothing these pages use) would start about seven more processes.
UI_ENV = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@contextmanager
def web_apps(workdir: Path):
    """The MLflow UI (as the sweep's last line says to open it, on a free port) and optuna-dashboard on
    the sweep's stores, started together (each takes seconds to answer); yields their URLs. Their
    output goes to ``workdir/<app>.log``."""
    bin_dir = Path(sys.executable).parent
    mlflow_port, dashboard_port = free_port(), free_port()
    apps = {
        "mlflow-ui": (
            [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
             "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
            f"http://127.0.0.1:{mlflow_port}", "/health",
        ),
        "optuna-dashboard": (
            [str(bin_dir / "optuna-dashboard"), f"sqlite:///{workdir / 'optuna.db'}",
             "--host", "127.0.0.1", "--port", str(dashboard_port)],
            f"http://127.0.0.1:{dashboard_port}", "/api/studies",
        ),
    }
    started = []
    try:
        for name, (command, _, _) in apps.items():
            with open(workdir / f"{name}.log", "w") as log:
                started.append(subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True, env=UI_ENV))
        for process, (name, (_, url, probe)) in zip(started, apps.items()):
            wait_until_answering(process, url + probe, workdir / f"{name}.log")
        yield [url for _, url, _ in apps.values()]
    finally:
        for process in started:
            stop_tracking_server(process)  # the whole session: the app and its workers


def wait_until_answering(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 300  # a guard against a hang, not a speed check
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within 300 s:\n{log.read_text()[-3000:]}")


@dataclass(frozen=True)
class Site:
    """The sweep and where the two apps serve it."""

    sweep: FinishedSweep
    mlflow: str
    dashboard: str

    def run_page(self, run_id: str, tab: str = "") -> str:
        """A run's page in the MLflow UI, in its "Model training" view: MLflow 3 opens in its GenAI view
        (traces, prompts) unless the URL or the browser's remembered choice says otherwise."""
        path = f"/#/experiments/{self.sweep.experiment_id}/runs/{run_id}" + (f"/{tab}" if tab else "")
        return f"{self.mlflow}{path}?workflowType=machine_learning"

    def child_run_name(self, trial: int) -> str:
        return CHILD_RUN_NAME.format(sweep=self.sweep.spec["name"], trial=trial)


def run_checks(browser, site: Site, shots: Path) -> list[str]:
    """Every EXPECTED check, each on a page of its own, screenshotted whatever happens; returns what
    went wrong, one line each. A page of its own: the MLflow UI moved to another artifact by its URL
    alone keeps showing the first one, and an error belongs to the page that raised it."""
    from playwright.sync_api import Error as PlaywrightError

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    problems = []
    for name in EXPECTED:
        page = context.new_page()
        errors = page_errors(page)
        try:
            CHECKS[name](page, site)
        except (AssertionError, PlaywrightError) as failure:
            problems.append(f"{name}: {str(failure).splitlines()[0]}")
        page.screenshot(path=shots / f"{name}.png")
        problems += [f"{name}: {error}" for error in errors]
        page.close()
    context.close()
    return problems


def page_errors(page) -> list[str]:
    """The errors that ``page`` raises (uncaught) or logs to its console, less HARMLESS_CONSOLE_ERRORS;
    the list fills as they come."""
    errors = []
    page.on("pageerror", lambda error: errors.append(f"uncaught error in the page: {error}"))

    def on_console(message) -> None:
        where = message.location.get("url", "")
        if message.type == "error" and not any(known in f"{message.text} {where}" for known in HARMLESS_CONSOLE_ERRORS):
            errors.append(f"console error: {message.text} ({where})")

    page.on("console", on_console)
    return errors


def shown(locator, what: str, timeout_s: float = SHOWN_S):
    """The first element of ``locator`` once visible, scrolled into view for the screenshot; an
    AssertionError naming ``what`` if it is not shown within ``timeout_s``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        locator.first.wait_for(state="visible", timeout=timeout_s * 1000)
    except PlaywrightTimeout:
        raise AssertionError(f"{what}: not shown within {timeout_s:g} s") from None
    locator.first.scroll_into_view_if_needed()
    return locator.first


# The checks: each loads a page, waits (LOAD_S) for the sign that its content has come, then for what it
# must show.


def check_runs_from_home(page, site: Site) -> None:
    """What a user new to MLflow 3 does: open the home page, switch its view to "Model training" (MLflow
    3.17 and 3.18 open experiments in its GenAI view unless told; the browser remembers the choice), open the
    experiments list and the sweep's experiment, find its parent run in the runs table and unfold its child
    runs."""
    page.goto(f"{site.mlflow}/")
    shown(page.get_by_role("button", name="Model training", exact=True), "the home page's Model training switch",
          LOAD_S).click()
    shown(page.get_by_role("link", name="Experiments", exact=True), "the side bar's Experiments link").click()
    experiment = site.sweep.spec["name"]
    shown(page.get_by_role("link", name=experiment, exact=True), f"the experiment {experiment} in the list",
          LOAD_S).click()
    # The parent run is named after the sweep, and its children sit under it, folded: the button in its
    # name's cell unfolds them.
    parent = page.locator('[role="gridcell"]').filter(has=page.get_by_role("link", name=experiment, exact=True))
    shown(parent, "the parent run in the experiment's runs table", LOAD_S).locator("button").first.click()
    name = site.child_run_name(0)
    shown(page.get_by_role("link", name=name, exact=True), f"the child run {name} in the experiment's runs table",
          LOAD_S)


def open_parent_overview(page, site: Site) -> None:
    page.goto(site.run_page(site.sweep.parent_id))
    shown(page.get_by_text(site.sweep.parent_id, exact=True), "the parent run's overview", LOAD_S)


def check_parent_description(page, site: Site) -> None:
    open_parent_overview(page, site)
    description = site.sweep.spec["description"]
    note = page.get_by_test_id("note-editor-preview-content").filter(has_text=description)
    shown(note, f"the parent run's description {description!r}")


def check_child_runs_listed(page, site: Site) -> None:
    open_parent_overview(page, site)
    for trial in range(site.sweep.spec["num_samples"]):
        name = site.child_run_name(trial)
        shown(page.get_by_role("link", name=name, exact=True), f"a link to the child run {name}")


def open_parent_artifact(page, site: Site, path: str) -> None:
    page.goto(site.run_page(site.sweep.parent_id, f"artifacts/{path}"))
    shown(page.get_by_text("spec.yaml", exact=True), "the parent run's artifacts", LOAD_S)


def check_leaderboard_table(page, site: Site) -> None:
    open_parent_artifact(page, site, LEADERBOARD)
    shown(page.get_by_role("columnheader"), f"the table of {LEADERBOARD}")
    headers = page.get_by_role("columnheader").all_inner_texts()
    rows = [row.get_by_role("cell").all_inner_texts() for row in page.get_by_role("row").all()]
    rows = [cells for cells in rows if cells]  # the header row holds column headers, not cells
    assert rows, f"{LEADERBOARD}: a table without rows"
    assert ACCURACY in headers, f"{LEADERBOARD}: no column {ACCURACY} among {headers}"
    blank = [header for column, header in enumerate(headers)
             if not any(column < len(cells) and cells[column].strip() for cells in rows)]
    # MLflow 3.17 shows a column whose name holds a '.' blank: it reads the name as a path into nested data.
    assert not blank, f"{LEADERBOARD}: columns shown blank: {blank}"


def check_diagram_png(page, site: Site) -> None:
    path = f"diagrams/{DIAGRAM}.png"
    open_parent_artifact(page, site, path)
    image = shown(page.get_by_alt_text(path, exact=True), f"the image {path}")
    assert image.evaluate("img => img.complete && img.naturalWidth > 0"), f"{path}: the image did not load"


def check_diagram_html(page, site: Site) -> None:
    path = f"diagrams/{DIAGRAM}.html"
    open_parent_artifact(page, site, path)
    plot = page.frame_locator("iframe.mlflow-html-iframe").locator(".js-plotly-plot")
    figure = shown(plot, f"the Plotly figure of {path}")
    page_width = "plot => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    drawn, pane = figure.evaluate(page_width)  # in the iframe: the diagram's page and MLflow's pane
    assert drawn <= pane, f"{path}: {drawn} px wide in a pane of {pane} px: its right part is cut off"


def check_child_accuracy_chart(page, site: Site) -> None:
    name = site.child_run_name(0)
    assert name in site.sweep.children, f"no child run {name} (there are {sorted(site.sweep.children)})"
    page.goto(site.run_page(site.sweep.children[name], "model-metrics"))
    search = shown(page.get_by_placeholder("Search metric charts"), f"the model-metrics tab of {name}", LOAD_S)
    search.fill(ACCURACY)  # only the charts of the first sections are drawn until scrolled to
    legend = f"{name} ({ACCURACY})"  # a chart's legend: run name (metric)
    chart = page.get_by_test_id("experiment-view-compare-runs-card").filter(has_text=legend)
    shown(chart, f"the chart of {ACCURACY} of {name}")
    drawn(chart.locator("path.js-line"), f"the line of {ACCURACY} in a chart of {name}")


def drawn(line, what: str) -> None:
    """A plotted line through at least two points. Not "visible": a line of one constant value (a short
    run's accuracy may stay at 0) is a path of zero height, which a browser reports as an empty box."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        line.first.wait_for(state="attached", timeout=SHOWN_S * 1000)
    except PlaywrightTimeout:
        raise AssertionError(f"{what}: not drawn within {SHOWN_S:g} s") from None
    path = line.first.get_attribute("d") or ""
    assert path.count("L") >= 1, f"{what}: a path through fewer than two points ({path[:80]!r})"


def check_optuna_study(page, site: Site) -> None:
    study = site.sweep.study_name
    page.goto(f"{site.dashboard}/dashboard")
    shown(page.get_by_text(study), f"the study {study} in optuna-dashboard's list", LOAD_S).click()
    shown(page.get_by_role("banner").filter(has_text=study), f"the page of the study {study}", LOAD_S)
    shown(page.get_by_role("heading", name="Best Trial"), "the study's best trial")
    shown(page.get_by_role("heading", name="History"), "the study's history")
    shown(page.locator(".js-plotly-plot .scatterlayer .point"), "a trial in the history plot")


CHECKS = {
    "runs_from_home": check_runs_from_home,
    "parent_description": check_parent_description,
    "child_runs_listed": check_child_runs_listed,
    "leaderboard_table": check_leaderboard_table,
    "diagram_png": check_diagram_png,
    "diagram_html": check_diagram_html,
    "child_accuracy_chart": check_child_accuracy_chart,
    "optuna_study": check_optuna_study,
}
