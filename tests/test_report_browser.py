"""The run report in a real headless browser (Debian's chromium driven by selenium): what a
person sees in the file, and inside MLflow's own artifact viewer on a real server.

Skipped only when chromium or its driver is not installed (.ci/run installs both). selenium
is given the driver's path, so it never downloads anything; the browser runs with a fresh
profile and its background networking off, and only ever loads 127.0.0.1 or a local file.

``GRADWATCH_SCREENSHOT=docs/img/report-in-mlflow.png`` makes the MLflow UI test save its
screenshot there (see docs/screenshot.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from gradwatch.cli import main
from gradwatch.mlflow_access import get_client
from gradwatch.runs.compare import select_runs, summarize_runs
from tests.test_report import CONFIG, _train

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
)

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def reported_run(mlflow_server, tmp_path_factory):
    """A run with a backprop bug, its report drawn and uploaded by `gradwatch report`."""
    root = tmp_path_factory.mktemp("browser-run")
    config = root / "gradwatch.yaml"
    config.write_text(CONFIG)
    run_id, _ = _train(mlflow_server.uri, root / "j", config, "mlp bug (browser)", bug=True)
    html = root / "report.html"
    result = CliRunner().invoke(
        main, ["report", run_id, "-o", str(html), "--tracking-uri", mlflow_server.uri]
    )
    assert result.exit_code == 0, result.output
    client = get_client(mlflow_server.uri)
    ((summary, _),) = summarize_runs(client, select_runs(client, run_ids=[run_id]))
    return {"run_id": run_id, "html": html, "verdict": summary.verdict, "checks": summary.checks}


def _wait_for(find, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        found = find()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


IMAGES = """return Array.from(document.images).map(i => [i.complete, i.naturalWidth,
    i.naturalHeight, i.getBoundingClientRect().width, i.getBoundingClientRect().height]);"""


def test_a_person_sees_the_verdict_the_plots_and_the_checks(browser, reported_run):
    from selenium.webdriver.common.by import By

    browser.get(reported_run["html"].as_uri())
    verdict = browser.find_element(By.ID, "verdict")
    assert verdict.is_displayed()
    assert reported_run["verdict"] in verdict.text and "BACKPROP BUG" in verdict.text
    # At the top: inside the first screenful, above every section.
    first_section = browser.find_element(By.TAG_NAME, "h2")
    assert verdict.rect["y"] < 300 and verdict.rect["y"] < first_section.rect["y"]
    images = browser.execute_script(IMAGES)
    assert len(images) == 2
    for complete, natural_w, natural_h, shown_w, shown_h in images:
        assert complete and natural_w > 0 and natural_h > 0
        assert shown_w >= 600 and shown_h >= 300  # drawn at a readable size, not a thumbnail
    table = browser.find_element(By.CSS_SELECTOR, "table.checks")
    assert table.is_displayed()
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == reported_run["checks"]
    assert any("FAILED" in r.text.upper() for r in rows)
    # What is wrong, in words, on the first screen: the tensor and the likeliest cause.
    assert "BACKPROP BUG in W2" in verdict.text and "Likeliest cause:" in verdict.text
    # Probe tables are collapsed; opening a failed check shows its mismatching coordinates.
    assert not browser.find_elements(By.CSS_SELECTOR, "details[open]")
    summaries = browser.find_elements(By.CSS_SELECTOR, "details summary")
    failed = [d for d in summaries if "failed" in d.text]
    assert failed and not browser.find_elements(By.CSS_SELECTOR, "td.v-mismatch")[0].is_displayed()
    failed[0].click()
    mismatch = browser.find_elements(By.CSS_SELECTOR, "details[open] td.v-mismatch")
    assert mismatch and mismatch[0].is_displayed()
    # No script ran and nothing but the page itself was loaded.
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert [r for r in resources if not r.startswith("data:")] == []


def test_the_report_shows_in_mlflows_own_artifact_viewer(browser, reported_run, mlflow_server):
    from selenium.webdriver.common.by import By

    run_id = reported_run["run_id"]
    experiment_id = MlflowClient(mlflow_server.uri).get_run(run_id).info.experiment_id
    browser.get(
        f"{mlflow_server.uri}/#/experiments/{experiment_id}/runs/{run_id}"
        "/artifacts/gradwatch/report.html"
    )
    frames = _wait_for(lambda: browser.find_elements(By.TAG_NAME, "iframe"), 60)
    assert frames, "MLflow's artifact viewer showed no iframe for report.html"
    browser.switch_to.frame(frames[0])
    try:
        verdict = _wait_for(lambda: browser.find_elements(By.ID, "verdict"))
        assert verdict and verdict[0].is_displayed()
        assert reported_run["verdict"] in verdict[0].text
        images = _wait_for(lambda: all(i[0] and i[1] > 0 for i in browser.execute_script(IMAGES)))
        assert images, "an image of the report did not load inside MLflow's viewer"
    finally:
        browser.switch_to.default_content()
    shot = os.environ.get("GRADWATCH_SCREENSHOT")
    if shot:
        time.sleep(1.0)  # let the UI finish its transitions
        browser.save_screenshot(shot)
