"""gradwatch monitor: an alert counts as sent only once delivered (a real receiver that fails,
then recovers), and stale RUNNING runs raise ``stale_run``."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.entities import Metric

from gradwatch.alerts import Delivery, WebhookSpec
from gradwatch.cli import main
from gradwatch.runs.monitor import STALE_RULE, TAG_ALERTED, Monitor


class FlakyReceiver:
    """A real webhook endpoint on 127.0.0.1 that answers 500 to its first ``failures`` POSTs."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.delivered: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                receiver.attempts += 1
                if receiver.attempts <= receiver.failures:
                    self.send_response(500)
                else:
                    receiver.delivered.append(body)
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky():
    receiver = FlakyReceiver(failures=1)
    yield receiver
    receiver.close()


def _run_with_nan(client: MlflowClient, experiment: str) -> str:
    exp_id = client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name="nan-run").info.run_id
    ts = int((time.time() - 60) * 1000)
    losses = [1.0, 0.9, float("nan"), 0.5]
    client.log_batch(run, metrics=[Metric("loss", v, ts, s) for s, v in enumerate(losses)])
    return run


def _config(path: Path, url: str) -> str:
    path.write_text(
        "alerts:\n"
        "  defaults: false\n"
        f'  webhooks:\n    recv: {{url: "{url}", timeout: 5, retries: 0}}\n'
        "  rules:\n    - {name: nan, type: nonfinite, actions: [log, webhook]}\n"
    )
    return str(path)


def test_failed_delivery_is_retried_by_the_next_run_and_never_duplicated(
    tracking_uri, flaky, tmp_path
):
    client = MlflowClient(tracking_uri)
    experiment = f"flaky-{time.time_ns()}"
    run_id = _run_with_nan(client, experiment)
    args = [
        "monitor",
        "-e",
        experiment,
        "--rules",
        _config(tmp_path / "g.yaml", flaky.url),
        "--once",
        "--settle",
        "0",
    ]

    first = CliRunner().invoke(main, args)
    assert flaky.attempts == 1 and flaky.delivered == []
    assert first.exit_code == 1 and "1 alert(s) not delivered" in first.output, first.output
    assert TAG_ALERTED + "nan" not in client.get_run(run_id).data.tags, "not sent: not recorded"

    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert [b["alert"]["rule"] for b in flaky.delivered] == ["nan"]
    assert flaky.delivered[0]["alert"]["step"] == 2
    assert client.get_run(run_id).data.tags[TAG_ALERTED + "nan"] == "2"

    third = CliRunner().invoke(main, args)
    assert third.exit_code == 0 and "1 already sent before" in third.output, third.output
    assert len(flaky.delivered) == 1 and flaky.attempts == 2


def test_failed_delivery_is_retried_at_the_next_poll_of_a_running_monitor(tracking_uri, flaky):
    client = MlflowClient(tracking_uri)
    experiment = f"flaky-poll-{time.time_ns()}"
    _run_with_nan(client, experiment)
    from gradwatch.alerts import Rule

    delivery = Delivery(webhooks={"recv": WebhookSpec(url=flaky.url, timeout=5, retries=0)})
    monitor = Monitor(
        tracking_uri,
        experiment,
        rules=[Rule("nan", "nonfinite", actions=("webhook",))],
        delivery=delivery,
        settle=0,
    )
    try:
        first = monitor.poll()
        assert first.failed == 1 and first.sent == [] and flaky.attempts == 1
        second = monitor.poll()
        assert [a.rule for _, a in second.sent] == ["nan"] and second.failed == 0
        third = monitor.poll()
        assert third.sent == [] and third.failed == 0
    finally:
        assert monitor.close(timeout=5) == 0
    assert len(flaky.delivered) == 1 and flaky.attempts == 2


def test_stale_running_run_raises_stale_run_once(tracking_uri, flaky):
    flaky.failures = 0
    client = MlflowClient(tracking_uri)
    exp_id = client.create_experiment(f"stale-{time.time_ns()}")
    experiment = client.get_experiment(exp_id).name
    stale = client.create_run(exp_id, run_name="crashed-host").info.run_id
    hours_ago = int((time.time() - 2 * 3600) * 1000)
    client.log_batch(stale, metrics=[Metric("loss", 1.0 / (s + 1), hours_ago, s) for s in range(5)])
    alive = client.create_run(exp_id, run_name="alive").info.run_id
    now = int(time.time() * 1000)
    client.log_batch(alive, metrics=[Metric("loss", 1.0 / (s + 1), now, s) for s in range(5)])

    delivery = Delivery(webhooks={"recv": WebhookSpec(url=flaky.url, timeout=5, retries=0)})
    monitor = Monitor(
        tracking_uri, experiment, rules=[], delivery=delivery, settle=0, stale_minutes=30
    )
    try:
        first = monitor.poll()
        second = monitor.poll()
    finally:
        monitor.close(timeout=5)
    assert [(a.rule, a.step) for _, a in first.sent] == [(STALE_RULE, 4)]
    assert second.sent == []
    [body] = flaky.delivered
    assert body["alert"]["details"]["run_id"] == stale
    assert "logged no step for 120 min" in body["alert"]["message"]
    tags = client.get_run(stale).data.tags
    assert tags[TAG_ALERTED + STALE_RULE] == "4" and "gradwatch.alert.stale_run" in tags
    assert TAG_ALERTED + STALE_RULE not in client.get_run(alive).data.tags


# --------------------------------------------------------------------------------------------
# E-mail through the monitor: sent means delivered; two monitors deliver each alert once


def _email_config(path: Path, port: int) -> str:
    path.write_text(
        "alerts:\n"
        "  defaults: false\n"
        "  email:\n"
        f"    oncall: {{host: 127.0.0.1, port: {port}, from: gw@example.com,"
        " to: [oncall@example.com], timeout: 2, retries: 1, backoff: 0.05}\n"
        "  rules:\n    - {name: nan, type: nonfinite, actions: [log, 'email:oncall']}\n"
    )
    return str(path)


def test_an_email_alert_counts_as_sent_only_once_mailed_and_its_run_name_forges_no_line(
    tracking_uri, tmp_path
):
    from tests.test_alerts_email import SmtpServer

    client = MlflowClient(tracking_uri)
    experiment = f"mail-{time.time_ns()}"
    exp_id = client.create_experiment(experiment)
    run_id = client.create_run(exp_id, run_name="lr=1\r\nINFO all clear").info.run_id
    ts = int((time.time() - 60) * 1000)
    client.log_batch(
        run_id, metrics=[Metric("loss", v, ts, s) for s, v in enumerate([1.0, float("nan")])]
    )
    refusing = SmtpServer(busy=100)
    try:
        args = [
            "monitor",
            "-e",
            experiment,
            "--once",
            "--settle",
            "0",
            "--rules",
            _email_config(tmp_path / "a.yaml", refusing.port),
        ]
        first = CliRunner().invoke(main, args)
    finally:
        refusing.close()
    assert first.exit_code == 1, first.output
    assert "0 alert(s) sent" in first.output and "1 alert(s) not delivered" in first.output
    assert refusing.sessions == 2 and refusing.messages == []  # retried, never mailed

    smtp = SmtpServer()
    try:
        args[-1] = _email_config(tmp_path / "b.yaml", smtp.port)
        second = CliRunner().invoke(main, args)
        third = CliRunner().invoke(main, args)
    finally:
        smtp.close()
    assert second.exit_code == 0 and "1 alert(s) sent" in second.output, second.output
    assert third.exit_code == 0 and "0 alert(s) sent" in third.output, third.output
    (message,) = smtp.messages
    assert "lr=1\\r\\nINFO all clear" in str(message["Subject"]).replace("\r\n ", " ")
    for out in (first.output, second.output):
        assert not [line for line in out.splitlines() if line.startswith("INFO all clear")]


def test_two_monitor_processes_on_one_experiment_deliver_each_alert_once(tracking_uri, tmp_path):
    """Two real ``gradwatch monitor`` services started together over ten runs with a NaN."""
    import os
    import signal
    import subprocess
    import sys

    from tests.webhooks import WebhookReceiver, webhook_config

    client = MlflowClient(tracking_uri)
    experiment = f"twins-{time.time_ns()}"
    exp_id = client.create_experiment(experiment)
    ts = int((time.time() - 60) * 1000)
    runs = []
    for i in range(10):
        run_id = client.create_run(exp_id, run_name=f"run{i}").info.run_id
        losses = [1.0] * (i + 1) + [float("nan"), 0.5]
        client.log_batch(run_id, metrics=[Metric("loss", v, ts, s) for s, v in enumerate(losses)])
        runs.append((run_id, i + 1))
    receiver = WebhookReceiver()
    config = webhook_config(
        tmp_path / "gradwatch.yaml",
        receiver.url,
        "    - {name: nan, type: nonfinite, actions: [log, webhook]}\n",
    )
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    cmd = [
        sys.executable,
        "-m",
        "gradwatch",
        "monitor",
        "-e",
        experiment,
        "--rules",
        config,
        "--interval",
        "0.3",
        "--settle",
        "0",
    ]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 120
        while len(receiver.bodies) < len(runs) and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), [p.stdout.read() for p in procs]
            time.sleep(0.2)
        time.sleep(3.0)  # several more polls of both: nothing may come twice
    finally:
        outs = []
        for p in procs:
            p.send_signal(signal.SIGTERM)
            outs.append(p.communicate(timeout=60)[0])
        receiver.close()
    sent = sorted((b["alert"]["details"]["run_id"], b["alert"]["step"]) for b in receiver.bodies)
    assert sent == sorted(runs), outs
    for run_id, step in runs:
        params = client.get_run(run_id).data.params
        claims = {k: v for k, v in params.items() if k.startswith("gradwatch.monitor.claim.")}
        assert list(claims) == [f"gradwatch.monitor.claim.nan.{step}.0"]
    assert all(p.returncode == 0 for p in procs), outs
    assert all("Traceback" not in out for out in outs), outs
