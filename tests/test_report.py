"""The run report end to end: real GradWatch runs on a real MLflow server -> `gradwatch report`
-> report.html and histograms.png as the run's artifacts; the journal reader agrees with the
MLflow one; hostile strings are escaped and secrets masked; bad data never raises into the
shipper's call."""

from __future__ import annotations

import json
import math
import os
import re
import struct
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

import gradwatch
from gradwatch.cli import main
from gradwatch.demo import MLP, make_blobs
from gradwatch.errors import InputError, TrackingError
from gradwatch.mlflow_access import artifact_text, get_client
from gradwatch.report import (
    from_journal,
    from_mlflow,
    histograms_png,
    render_report,
    write_run_artifacts,
)
from gradwatch.runs.compare import select_runs, summarize_runs
from gradwatch.schema import ARTIFACT_HISTOGRAMS, ARTIFACT_HISTOGRAMS_PNG, ARTIFACT_REPORT
from gradwatch.stats import hist_edges, histogram_record
from tests.mlflow_server import free_port

HOSTILE = "<script>alert(1)</script>"
#: A webhook URL written literally into the config: the uploaded copy masks it.
WEBHOOK_SECRET = "SECRETWEBHOOKTOKEN"
CONFIG = textwrap.dedent(
    f"""\
    hook:
      seed: 0
    alerts:
      defaults: true
      webhooks:
        team:
          url: "https://hooks.example.org/services/{WEBHOOK_SECRET}"
    """
)
STEPS, EVERY, HIST_EVERY = 120, 20, 10


def _train(
    uri: str,
    journal_dir: Path,
    config: Path,
    run_name: str,
    bug: bool,
    extra_params: dict | None = None,
    report: bool = True,
) -> tuple[str, Path]:
    """A small numpy MLP watched by GradWatch; with ``bug``, dW2 gets an offset from step 60
    on (not a shared factor: a backprop bug). The hook writes a histogram every statistics
    step; with ``report`` the shipper draws the report at the end of the run."""
    X, y = make_blobs(n=256, dim=8, classes=3, seed=0)
    mlp = MLP([8, 16, 3], seed=0)
    params = mlp.params
    rng = np.random.default_rng(0)
    with gradwatch.GradWatch(
        every=EVERY,
        experiment="report-tests",
        run_name=run_name,
        tracking_uri=uri,
        journal_dir=str(journal_dir),
        keep_journal=True,
        config=str(config),
        stats_every=HIST_EVERY,
        report=report,
        params={"lr": 0.2, "bug": bug, **(extra_params or {})},
    ) as watch:
        for step in range(STEPS):
            idx = rng.choice(len(X), size=32, replace=False)
            Xb, yb = X[idx], y[idx]
            loss, grads = mlp.loss_and_grads(params, Xb, yb)
            if bug and step >= 60:
                grads["dW2"] = grads["dW2"] + 0.05 * float(np.abs(grads["dW2"]).max())
            watch.step(
                params,
                grads,
                loss=loss,
                lr=0.2,
                loss_fn=lambda p, Xb=Xb, yb=yb: mlp.loss(p, Xb, yb),
            )
            for k in params:
                params[k] -= 0.2 * grads["d" + k]
    result = watch.close_result
    assert result.complete, result.message
    return result.run_id, Path(result.journal_path)


@pytest.fixture(scope="module")
def runs(mlflow_server, tmp_path_factory):
    """Two finished runs on the shared server: {"bug": (run_id, journal), "ok": (...)}."""
    root = tmp_path_factory.mktemp("report-runs")
    config = root / "gradwatch.yaml"
    config.write_text(CONFIG)
    return {
        "bug": _train(mlflow_server.uri, root / "j", config, "mlp bug", bug=True),
        "ok": _train(mlflow_server.uri, root / "j", config, "mlp ok", bug=False, report=False),
    }


def _compare_verdict(uri: str, run_id: str) -> str:
    client = get_client(uri)
    ((summary, _),) = summarize_runs(client, select_runs(client, run_ids=[run_id]))
    return summary.verdict


class _Page(HTMLParser):
    """Text, tags and attributes of an HTML page, as a browser would parse them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self._in_verdict = False
        self.verdict = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if attrs.get("class") == "word":
            self._in_verdict = True

    def handle_endtag(self, tag):
        self._in_verdict = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_verdict:
            self.verdict += data


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _assert_self_contained(html: str, page: _Page) -> None:
    """No scripts of any kind, nothing loaded from anywhere, no address of another host."""
    assert "<script" not in html.lower()
    assert not [t for t, _ in page.tags if t in ("script", "iframe", "object", "embed", "link")]
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            if name in ("src", "href"):
                assert value.startswith("data:image/png;base64,"), (tag, name, value[:80])
    hosts = set(re.findall(r"https?://([^/\s\"'<>:@]+(?:@[^/\s\"'<>:]+)?)", html))
    assert hosts <= {"127.0.0.1"}, hosts


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


# --------------------------------------------------------------------------- the command


def test_every_run_ends_with_its_report_and_histograms_unless_turned_off(runs, mlflow_server):
    # Before any `gradwatch report`: the hook drew both as the run's last records.
    client = MlflowClient(mlflow_server.uri)
    run_id, journal = runs["bug"]
    assert client.get_run(run_id).info.status == "FINISHED"
    names = {f.path for f in client.list_artifacts(run_id, "gradwatch")}
    assert {ARTIFACT_REPORT, ARTIFACT_HISTOGRAMS, ARTIFACT_HISTOGRAMS_PNG} <= names
    html = artifact_text(client, run_id, ARTIFACT_REPORT)
    verdict = _compare_verdict(mlflow_server.uri, run_id)
    assert "BUG" in verdict
    assert _parse(html).verdict == verdict
    hist_steps = [
        json.loads(line)["step"]
        for line in artifact_text(client, run_id, ARTIFACT_HISTOGRAMS).splitlines()
    ]
    assert hist_steps == list(range(0, STEPS, HIST_EVERY))  # hist_every=1: every statistics step
    # report=False: histograms still recorded, no pictures drawn.
    ok_id, ok_journal = runs["ok"]
    names = {f.path for f in client.list_artifacts(ok_id, "gradwatch")}
    assert ARTIFACT_HISTOGRAMS in names and not {ARTIFACT_REPORT, ARTIFACT_HISTOGRAMS_PNG} & names


def test_report_command_attaches_the_report_of_a_run_with_a_backprop_bug(
    runs, mlflow_server, tmp_path
):
    run_id, _ = runs["bug"]
    out = tmp_path / "bug.html"
    result = CliRunner().invoke(
        main, ["report", run_id, "--tracking-uri", mlflow_server.uri, "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    client = MlflowClient(mlflow_server.uri)
    names = {f.path for f in client.list_artifacts(run_id, "gradwatch")}
    assert {ARTIFACT_REPORT, ARTIFACT_HISTOGRAMS_PNG} <= names
    html = out.read_text()
    assert artifact_text(client, run_id, ARTIFACT_REPORT) == html  # the uploaded file is this one
    page = _parse(html)
    # The verdict is at the top and is exactly what `gradwatch compare` says.
    verdict = _compare_verdict(mlflow_server.uri, run_id)
    assert "BACKPROP BUG" in verdict
    assert page.verdict == verdict
    assert html.index('id="verdict"') < html.index("<h2")
    # Every check is in the table, failed ones with their mismatching W2 coordinates.
    checks = [
        json.loads(line)
        for line in artifact_text(client, run_id, "gradwatch/checks.jsonl").splitlines()
    ]
    failed = [c for c in checks if not c["passed"]]
    assert failed and len(failed) < len(checks)
    assert f"Gradient checks ({len(checks)})" in html
    for c in checks:
        assert f"step {c['step']}: " in html
    worst = max(
        (p for p in failed[0]["per_param"]["W2"]["coords"] if p["verdict"] == "mismatch"),
        key=lambda p: p["rel_error"],
    )
    row = f'<td>W2</td><td>[{",".join(map(str, worst["index"]))}]</td><td class="num">{worst["analytic"]:.6g}</td>'
    assert row in html
    assert '<td class="v-mismatch">mismatch</td>' in html
    # The alerts, with their steps.
    alerts = [
        json.loads(line)
        for line in artifact_text(client, run_id, "gradwatch/alerts.jsonl").splitlines()
    ]
    assert any(a["rule"] == "check_failure" for a in alerts)
    for a in alerts:
        assert f"<td>{a['step']}</td><td>{a['severity']}</td><td>{a['rule']}</td>" in html
    # Pictures: the curves and the distributions, both decodable PNGs of a readable size.
    imgs = [a["src"] for t, a in page.tags if t == "img"]
    assert len(imgs) == 2
    import base64

    for src in imgs:
        width, height = _png_size(base64.b64decode(src.split(",", 1)[1]))
        assert width >= 600 and height >= 300
    _assert_self_contained(html, page)
    assert WEBHOOK_SECRET not in html and "hooks.example.org" not in html
    assert "webhooks:" in html  # the (masked) config is shown


def test_report_of_a_healthy_run_says_ok_like_compare(runs, mlflow_server, tmp_path, monkeypatch):
    run_id, _ = runs["ok"]
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["report", run_id, "--no-upload", "--tracking-uri", mlflow_server.uri]
    )
    assert result.exit_code == 0, result.output
    html = (tmp_path / f"gradwatch-report-{run_id}.html").read_text()
    verdict = _compare_verdict(mlflow_server.uri, run_id)
    assert "BUG" not in verdict
    assert _parse(html).verdict == verdict
    assert 'class="v-mismatch"' not in html and 'class="v-failed"' not in html
    assert "No alerts." in html
    names = {f.path for f in MlflowClient(mlflow_server.uri).list_artifacts(run_id, "gradwatch")}
    assert ARTIFACT_REPORT not in names  # --no-upload


def test_report_command_errors_are_one_clear_line(mlflow_server, tmp_path):
    runner = CliRunner()
    unknown = runner.invoke(main, ["report", "0" * 32, "--tracking-uri", mlflow_server.uri])
    assert unknown.exit_code == 1
    assert f"no run '{'0' * 32}'" in unknown.output and "Traceback" not in unknown.output
    down = f"http://bob:hunter2@127.0.0.1:{free_port()}"
    gone = runner.invoke(main, ["report", "abc", "--tracking-uri", down])
    assert gone.exit_code == 1
    assert "server unreachable" in gone.output
    assert "hunter2" not in gone.output and "bob:***@127.0.0.1" in gone.output
    assert not list(tmp_path.glob("*.html"))
    with pytest.raises(TrackingError, match="no run"):
        from_mlflow("f" * 32, mlflow_server.uri)


# ------------------------------------------------------------------------------ readers


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        sa == sb and (va == vb or (math.isnan(va) and math.isnan(vb)))
        for (sa, va), (sb, vb) in zip(a, b)
    )


def test_journal_and_mlflow_readers_agree_on_the_same_run(runs, mlflow_server):
    run_id, journal = runs["bug"]
    server = from_mlflow(run_id, mlflow_server.uri)
    local = from_journal(journal)
    assert local.run_id == server.run_id == run_id
    assert (local.run_name, local.status, local.experiment) == (
        server.run_name,
        server.status,
        server.experiment,
    )
    assert local.status == "FINISHED"
    assert set(local.metrics) == set(server.metrics) and len(local.metrics) > 10
    for key in server.metrics:
        assert _same(local.metrics[key], server.metrics[key]), key
    assert local.params == server.params
    assert local.tags.items() <= server.tags.items()
    assert local.checks == server.checks and len(local.checks) == STEPS // EVERY
    assert local.alerts == server.alerts and local.alerts
    # >=: the hook may write histogram lines of its own besides the ones _train appends.
    assert local.histograms == server.histograms and len(local.histograms) >= STEPS // HIST_EVERY
    assert local.config_text == server.config_text and WEBHOOK_SECRET not in local.config_text
    assert local.summary() == server.summary()
    assert "BACKPROP BUG" in local.summary().verdict


def test_write_run_artifacts_writes_what_the_shipper_uploads(runs, tmp_path):
    _, journal = runs["bug"]
    paths = write_run_artifacts(journal, tmp_path / "out")
    assert [p.name for p in paths] == ["report.html", "histograms.png"]
    width, height = _png_size(paths[1].read_bytes())
    assert width >= 800 and height >= 600
    html = paths[0].read_text()
    assert "BACKPROP BUG" in _parse(html).verdict
    _assert_self_contained(html, _parse(html))


def test_write_run_artifacts_never_raises_on_bad_data(tmp_path, caplog):
    assert write_run_artifacts(tmp_path / "missing.jsonl", tmp_path / "a") == []
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('not json\n{"t": "m"}\n')
    assert write_run_artifacts(garbage, tmp_path / "b") == []
    assert "no run report" in caplog.text
    # A journal whose histogram lines are malformed still gets its report, without the picture.
    journal = tmp_path / "j.jsonl"
    lines = [
        {
            "s": 0,
            "t": "h",
            "v": 1,
            "id": "x" * 32,
            "uri": "http://u:pw@127.0.0.1:1",
            "name": "r",
            "exp": "e",
            "ts": 1,
        },
        {"s": 1, "t": "m", "ts": 2, "st": 0, "m": {"loss": 1.0}},
        {"s": 2, "t": "a", "ts": 3, "path": ARTIFACT_HISTOGRAMS, "r": {"step": 0, "bins": 3}},
        {"s": 3, "t": "e", "ts": 4, "status": "FINISHED"},
    ]
    journal.write_text("".join(json.dumps(x) + "\n" for x in lines))
    paths = write_run_artifacts(journal, tmp_path / "c")
    assert [p.name for p in paths] == ["report.html"]
    html = paths[0].read_text()
    assert "could not be drawn" in html and "pw@" not in html
    # An unwritable folder: logged, nothing returned, nothing raised.
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert write_run_artifacts(journal, blocker / "sub") == []


# ------------------------------------------------------------------------- escaping


def test_hostile_strings_are_escaped_and_credentials_masked(mlflow_server, tmp_path):
    config = tmp_path / "gradwatch.yaml"
    config.write_text(CONFIG)
    run_id, journal = _train(
        mlflow_server.uri,
        tmp_path / "j",
        config,
        HOSTILE,
        bug=False,
        extra_params={
            HOSTILE: "<img src=x onerror=alert(2)>",
            "db": "postgresql://admin:pa55w0rd@127.0.0.1/x",
        },
    )
    for data in (from_journal(journal), from_mlflow(run_id, mlflow_server.uri)):
        html = render_report(data)
        page = _parse(html)
        _assert_self_contained(html, page)
        assert "<img src=x" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert HOSTILE in "".join(page.text)  # shown to the reader as text
        assert "pa55w0rd" not in html and "admin:***@127.0.0.1" in html


# ------------------------------------------------------------------------- histograms


def _records(steps: int = 5) -> list[dict]:
    rng = np.random.default_rng(1)
    out = []
    for step in range(steps):
        grad = rng.normal(scale=10.0**-step, size=(20, 30))
        grad[:, : step * 5] = 0.0  # dying units: more exact zeros every step
        if step == 3:
            grad[0, -1] = np.nan
        out.append(histogram_record(step * 100, {"W": rng.normal(size=(20, 30))}, {"W": grad}))
    return out


def test_histograms_png_draws_every_tensor_and_rejects_nothing_usable():
    records = _records()
    assert len(hist_edges(records[0]["bins"])) == 57
    png = histograms_png(records)
    width, height = _png_size(png)
    assert width >= 800 and 250 <= height
    # A name that would be a (broken) mathtext formula is drawn as it is.
    odd = "layer$_{x^$" + "y" * 60
    two = [dict(r, tensors={**r["tensors"], odd: r["tensors"]["W"]}) for r in records]
    assert _png_size(histograms_png(two))[1] > height  # one more row of panels
    with pytest.raises(InputError, match="no usable histogram records"):
        histograms_png([{"step": 1, "bins": {}, "tensors": {}}])
    with pytest.raises(InputError):
        histograms_png([])


def test_without_matplotlib_the_report_is_written_and_says_how_to_get_the_pictures(runs, tmp_path):
    import subprocess
    import sys

    _, journal = runs["ok"]
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from gradwatch.report import write_run_artifacts\n"
        f"print([p.name for p in write_run_artifacts({str(journal)!r}, {str(tmp_path)!r})])\n"
        "print('mlflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['report.html']", "False"]  # and MLflow was never imported
    html = (tmp_path / "report.html").read_text()
    assert "pip install gradwatch[plot]" in html and "<img" not in html
    assert "Gradient checks (" in html  # everything but the pictures is there


def test_a_long_run_is_thinned_for_the_report_and_its_passing_checks_capped():
    from gradwatch.report import RunData
    from gradwatch.report.data import MAX_POINTS, sorted_series

    # A million loss values, logged out of order at the end: sorted, then evenly thinned.
    n = 1_000_000
    steps = np.arange(n, dtype=np.int64)
    steps[-2:] = steps[-2:][::-1]
    values = np.linspace(2.0, 0.1, n)
    metrics, stamps = sorted_series({"loss": (steps, steps * 10, values)})
    points = metrics["loss"]
    assert len(points) == len(stamps["loss"]) == MAX_POINTS
    got_steps = [s for s, _ in points]
    assert got_steps == sorted(got_steps) and got_steps[0] == 0 and got_steps[-1] == n - 1
    assert max(np.diff(got_steps)) <= 2 * n // MAX_POINTS  # evenly spread, no gap
    # Rows as tuples (the MLflow reader's form) give the same.
    rows = list(zip(steps[:5000].tolist(), (steps[:5000] * 10).tolist(), values[:5000].tolist()))
    assert sorted_series({"loss": rows})[0]["loss"] == sorted((s, v) for s, _, v in rows)

    def check(step: int, passed: bool) -> dict:
        return {
            "step": step,
            "passed": passed,
            "max_rel_error": 1e-9 if passed else 0.3,
            "per_param": {
                "W": {
                    "verdict": "ok" if passed else "mismatch",
                    "max_rel_error": 1e-9 if passed else 0.3,
                    "num_mismatches": 0 if passed else 1,
                    "coords": [],
                }
            },
        }

    checks = [check(s, passed=s != 700) for s in range(0, 20_000, 100)]  # 200 checks, 1 failed
    html = render_report(
        RunData(
            run_id="r", run_name="long", status="FINISHED", metrics={"loss": points}, checks=checks
        )
    )
    assert "Gradient checks (200)" in html
    assert "149 earlier passing checks are not listed" in html
    assert "step 700: " in html  # the failed one, early in the run, is always there
    assert "step 19900: " in html and "step 100: " not in html
