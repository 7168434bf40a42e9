"""The verdict where MLflow users look, through a real ``mlflow server``: the ``gradwatch.verdict``
tag (the words ``gradwatch compare`` uses), the run's description, the links close() prints, and
the run page in a real browser (Debian's chromium, as tests/test_report_browser.py drives it)."""

from __future__ import annotations

import time

import mlflow
import pytest

from gradwatch import GradWatch
from gradwatch.demo import MLP, make_blobs
from gradwatch.mlflow_access import get_client
from gradwatch.runs.compare import select_runs, summarize_runs
from gradwatch.schema import ARTIFACT_REPORT, TAG_NOTE, TAG_VERDICT
from tests.test_report_browser import CHROMEDRIVER, CHROMIUM, browser  # noqa: F401 - a fixture

pytestmark = pytest.mark.server
X, Y = make_blobs(256, 12, 3, seed=0)


def _train(watch: GradWatch, steps: int = 40, bug: bool = False) -> None:
    mlp = MLP([12, 16, 3], seed=0)
    params = mlp.params
    for s in range(steps):
        b = slice((s * 32) % 256, (s * 32) % 256 + 32)
        loss, grads = mlp.loss_and_grads(params, X[b], Y[b])
        if bug:  # two different factors: no clipping, no one shared factor explains it
            grads["dW2"], grads["db1"] = grads["dW2"] * 2, grads["db1"] * 4
        watch.step(params, grads, loss=loss, lr=0.1, loss_fn=lambda p, b=b: mlp.loss(p, X[b], Y[b]))
        for k in params:
            params[k] -= 0.1 * grads["d" + k]


def _compare_verdict(uri: str, run_id: str) -> str:
    client = get_client(uri)
    ((summary, _),) = summarize_runs(client, select_runs(client, run_ids=[run_id]))
    return summary.verdict


@pytest.fixture(scope="module")
def bug_run(mlflow_server):
    """A run with a backprop bug on the shared server, and what close() printed."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        with GradWatch(
            every=10,
            experiment="verdict",
            run_name="bug",
            tracking_uri=mlflow_server.uri,
            config=False,
        ) as watch:
            _train(watch, bug=True)
    run = mlflow.MlflowClient(mlflow_server.uri).get_run(watch.close_result.run_id)
    return run, err.getvalue()


def test_the_verdict_tag_is_compares_and_the_description_says_why(bug_run, mlflow_server):
    run, printed = bug_run
    tags = run.data.tags
    assert tags[TAG_VERDICT] == _compare_verdict(mlflow_server.uri, run.info.run_id)
    assert tags[TAG_VERDICT].startswith("BACKPROP BUG")
    note = tags[TAG_NOTE]
    assert note.startswith(f"**gradwatch verdict: {tags[TAG_VERDICT]}**")
    assert "gradient check(s) failed" in note
    run_page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert f"[{ARTIFACT_REPORT}]({run_page}/artifacts/{ARTIFACT_REPORT})" in note
    # close() printed the verdict and direct links (a server serves its own UI).
    base = mlflow_server.uri
    assert f"gradwatch: verdict {tags[TAG_VERDICT]}" in printed
    assert f"run: {base}/{run_page}\n" in printed
    assert f"report: {base}/{run_page}/artifacts/{ARTIFACT_REPORT}\n" in printed
    assert f"{base}/#/experiments/{run.info.experiment_id}/runs\n" in printed
    assert "mlflow ui" not in printed


def test_a_clean_run_is_ok(tracking_uri):
    with GradWatch(every=10, experiment="verdict-ok", config=False) as watch:
        _train(watch, 60)
    tags = mlflow.MlflowClient(tracking_uri).get_run(watch.close_result.run_id).data.tags
    assert tags[TAG_VERDICT] == "ok" == _compare_verdict(tracking_uri, watch.close_result.run_id)
    assert tags[TAG_NOTE].startswith("**gradwatch verdict: ok**")


def test_the_users_own_description_is_left_alone(tracking_uri):
    mlflow.set_tracking_uri(tracking_uri)
    try:
        mlflow.set_experiment("verdict-shared")
        with mlflow.start_run(description="my notes on this run") as mine:
            with GradWatch(every=10, config=False) as watch:
                _train(watch, 20)
    finally:
        mlflow.set_tracking_uri(None)
    tags = mlflow.MlflowClient(tracking_uri).get_run(mine.info.run_id).data.tags
    assert tags[TAG_NOTE] == "my notes on this run"
    assert tags[TAG_VERDICT] == _compare_verdict(tracking_uri, mine.info.run_id)


@pytest.mark.slow
def test_a_local_store_gets_the_mlflow_ui_command_and_the_runs_path(tmp_path, capsys):
    with GradWatch(every=10, experiment="local", config=False, flush_timeout=120) as watch:
        _train(watch, 20)
    result = watch.close_result
    assert result.pending == 0, result.message
    run = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result.run_id)
    exp = run.info.experiment_id
    printed = capsys.readouterr().err
    assert (
        f"open it: `mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db`, then" in printed
    )
    assert f"run: http://127.0.0.1:5000/#/experiments/{exp}/runs/{result.run_id}\n" in printed
    assert f"all runs of the experiment: http://127.0.0.1:5000/#/experiments/{exp}/runs" in printed


@pytest.mark.slow
@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver",
)
def test_the_run_page_shows_the_verdict_in_its_description(browser, bug_run, mlflow_server):  # noqa: F811
    from selenium.webdriver.common.by import By

    run, _ = bug_run
    verdict = run.data.tags[TAG_VERDICT]
    page = f"{mlflow_server.uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    browser.get(page)
    heading = f"gradwatch verdict: {verdict}"
    deadline = time.monotonic() + 60
    shown = []
    while not shown and time.monotonic() < deadline:
        shown = [
            e
            for e in browser.find_elements(By.XPATH, f"//strong[contains(., '{heading}')]")
            if e.is_displayed()
        ]
        time.sleep(0.25)
    assert shown, f"the run page shows no '{heading}' in bold"
    # The description's link opens the report in MLflow's artifact viewer, on this host.
    links = browser.find_elements(By.XPATH, f"//a[contains(., '{ARTIFACT_REPORT}')]")
    assert links and links[0].is_displayed()
    href = links[0].get_property("href")  # resolved against the page: relative, any host
    assert href == f"{page}/artifacts/{ARTIFACT_REPORT}"
    browser.get(href)
    frames = []
    deadline = time.monotonic() + 60
    while not frames and time.monotonic() < deadline:
        frames = browser.find_elements(By.TAG_NAME, "iframe")
        time.sleep(0.25)
    assert frames, "the report link did not open MLflow's artifact viewer"
