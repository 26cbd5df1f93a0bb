"""The stock views as a user sees them, in headless Chromium: the MLflow UI as `make ui` starts it,
and the page `dvc plots show` writes, opened with no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import free_port, mlflow_runs, open_browser, wait_until_healthy

from pipeline.tracking import names, views

# Where the screenshots go when asked (docs/ holds the published ones): a folder.
SCREENSHOTS = os.environ.get("STOCK_VIEWS_SCREENSHOTS")


def keep(browser, name: str) -> None:
    if SCREENSHOTS:
        browser.save_screenshot(os.path.join(SCREENSHOTS, name))


@pytest.mark.slow
def test_dvc_plots_page_draws_its_curves_with_no_network(replicated, tmp_path):
    root, env = replicated.root, replicated.env  # (read only: the page goes to tmp_path)
    result = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--out", str(tmp_path / "dvc_plots")],
                            cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    page = tmp_path / "dvc_plots" / "index.html"
    assert "cdn.jsdelivr" not in page.read_text()  # DVC's own page loads its library from there
    browser = open_browser(tmp_path / "profile", size="1400,2400", offline=True)
    try:
        browser.get(page.as_uri())
        from selenium.webdriver.support.ui import WebDriverWait

        # Each curve chart is an SVG; a line's path has a vertex per data point ("M" then one "L" each).
        def drawn(driver):
            charts = driver.execute_script("""
                return Array.from(document.querySelectorAll('.vega-embed')).map(chart => [chart.id,
                    Math.max(0, ...Array.from(chart.querySelectorAll('svg .mark-line path'))
                        .map(path => (path.getAttribute('d') || '').split(/[ML]/).length - 1))]);""")
            return dict(charts) if len(charts) == declared + len(stage_csvs) and all(n for _, n in charts) else False

        declared = len(yaml.safe_load((root / "dvc.yaml").read_text())["plots"])
        stage_csvs = [next(iter(entry)) for stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values()
                      for entry in stage.get("plots", []) if isinstance(entry, dict)]
        points = WebDriverWait(browser, 60, poll_frequency=1).until(drawn)
        rows = {path: len((root / path).read_text().splitlines()) - 1 for path in stage_csvs}
        ids = {path: path.replace("/", "_").replace(".", "_") for path in stage_csvs}  # DVC's div ids
        for path, count in rows.items():  # a stage's CSV plot: one point per row
            assert points[ids[path]] == count, path
        titled = [n for chart, n in points.items() if chart not in ids.values()]  # dvc.yaml's top-level plots
        assert len(titled) == declared
        assert set(titled) <= {rows["outputs/vae/history.csv"], rows["outputs/gan/history.csv"]}
        keep(browser, "dvc-plots-offline.png")
    finally:
        browser.quit()


@pytest.mark.slow
def test_mlflow_ui_as_make_ui_starts_it_lands_on_the_runs_with_the_headline_columns(replicated, tmp_path):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root, env = replicated.root, replicated.env
    (summary,) = mlflow_runs(root / "mlflow.db", "mnist5k", summaries=True)
    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "wb") as output:
        server = subprocess.Popen([sys.executable, "-m", "pipeline.tools.ui", "--port", str(port)], cwd=root, env=env,
                                  stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    browser = None
    try:
        wait_until_healthy(server, f"http://127.0.0.1:{port}/health", log.read_text, seconds=120)
        printed = [line.split()[-1] for line in log.read_text().splitlines() if line.startswith("  mnist5k: ")]
        experiment_id = summary.info.experiment_id
        assert printed == [f"http://127.0.0.1:{port}/{views.runs_path(experiment_id)}"]
        # A light server: the one process `mlflow ui` runs as, and its one worker.
        children = subprocess.run(["pgrep", "-g", str(server.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 2

        # Wide enough for the table to draw every column it holds (it draws only those in view).
        browser = open_browser(tmp_path / "profile", size="4800,1000")
        browser.get(printed[0])

        # The params first, then each headline metric and its interval's half-width, in that order,
        # left to right (the view's column order lands a moment after its columns: wait for it).
        wanted = [*views.SHOWN_PARAMS, *(f"{key}{suffix}" for key in views.headline_metric_keys()
                                         for suffix in ("", views.HALF_WIDTH))]

        def headers(driver):
            shown = driver.execute_script("""
                return Array.from(document.querySelectorAll("[data-testid^='sort-header-']"))
                    .sort((a, b) => a.getBoundingClientRect().left - b.getBoundingClientRect().left)
                    .map(cell => cell.textContent);""")
            seen.append([header for header in shown if header in wanted])
            return seen[-1] == wanted

        seen: list[list[str]] = []
        try:
            WebDriverWait(browser, 60, poll_frequency=1).until(headers)
        except TimeoutException:
            assert seen[-1] == wanted  # shows what the table held last
        body = browser.find_element(By.TAG_NAME, "body").text
        assert summary.info.run_name in body  # the configuration's summary row (its seeds folded under it)
        assert "Headline numbers" in body  # the saved view, by name
        # The sidebar is the model-training one (GenAI's lists Overview, Sessions, Prompts, ...).
        sidebar = browser.find_element(By.CSS_SELECTOR, "nav, aside").text.splitlines()
        assert "Runs" in sidebar and "Model registry" in sidebar and "Prompts" not in sidebar
        keep(browser, "mlflow-ui-runs.png")

        # The chart view opens on the headline section: its charts are the headline metrics', in order,
        # each drawn with the run's value, before any other section.
        browser.set_window_size(1600, 3000)  # tall enough for every headline chart to be drawn
        browser.get(printed[0] + "&compareRunsMode=CHART")
        marker = f"{views.SECTION}\n({len(names.SHOWN_FIRST)})\nAdd chart\n"
        text = WebDriverWait(browser, 60, poll_frequency=1).until(
            lambda d: marker in (t := d.find_element(By.TAG_NAME, "body").text) and t)
        charts = text.split(marker, 1)[1]
        titles = [line for line in charts.splitlines() if line.startswith("eval/")]
        assert titles[:len(names.SHOWN_FIRST)] == views.headline_metric_keys()
        assert f"{summary.data.metrics[names.HEADLINE_METRICS['kl']]:.2f}" in charts.split(titles[2])[0]
        keep(browser, "mlflow-ui-charts.png")
    finally:
        if browser is not None:
            browser.quit()
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_the_saved_view_is_what_the_ui_reads():
    """The tag's value is MLflow's saved-view envelope around the page state, which names the
    headline columns and charts; an experiment whose tag holds it is left alone, any other value
    (older code's, or MLflow's own after a user saved over it) is replaced by ensure_experiment."""
    envelope = json.loads(views.envelope(123))
    assert envelope["name"] == views.VIEW_NAME and envelope["createdAt"] == 123
    state = json.loads(envelope["state"])
    assert state["selectedColumns"][:3] == ["params.`latent_dim`", "params.`vae.beta`", "params.`seed`"]
    assert [chart["metricKey"] for chart in state["compareRunCharts"]] == views.headline_metric_keys()
    assert views.is_current(views.envelope(456)) and not views.is_current('{"name": "x"}') and not views.is_current(None)


def test_make_ui_refuses_a_project_without_a_store(tmp_path):
    from conftest import run_in_process

    result = run_in_process(tmp_path, "ui")
    assert result.returncode == 2 and "run `make repro` first" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_plots_template_carries_its_library_and_no_address(tmp_path):
    from pipeline.tools import plots_template

    path = tmp_path / "t.html"
    plots_template.write(path)
    text = path.read_text()
    assert "{plot_divs}" in text and "{scripts}" not in text  # DVC's CDN tags go nowhere
    assert "<script src" not in text and "cdn.jsdelivr" not in text  # every script inline
    assert "vegaEmbed" in text and len(text) > 500_000  # the bundle itself
