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
    args = ["monitor", "-e", experiment, "--rules", _config(tmp_path / "g.yaml", flaky.url),
            "--once", "--settle", "0"]  # fmt: skip

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
    monitor = Monitor(tracking_uri, experiment, rules=[Rule("nan", "nonfinite",
                      actions=("webhook",))], delivery=delivery, settle=0)  # fmt: skip
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
    monitor = Monitor(tracking_uri, experiment, rules=[], delivery=delivery, settle=0,
                      stale_minutes=30)  # fmt: skip
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
