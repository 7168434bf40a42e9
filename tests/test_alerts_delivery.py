"""Alert delivery against real HTTP receivers on 127.0.0.1: fast, down and slow endpoints."""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gradwatch.alerts import Alert, Delivery, WebhookSpec, redact_url
from gradwatch.errors import GradwatchError

SECRET_PATH = "/services/T000/B000/s3cr3t-token"


def make_alert(step: int = 7, severity: str = "critical", actions=("log", "webhook:hook")) -> Alert:
    return Alert(
        rule="loss_divergence",
        kind="loss_divergence",
        severity=severity,
        step=step,
        message="loss diverging: 9025 is above 10x its best so far (25)",
        details={"loss": 9025.0, "best": 25.0},
        actions=tuple(actions),
        timestamp=1.0,
    )


class Receiver:
    """A real webhook endpoint: records JSON bodies; can answer with a status or block."""

    def __init__(self, status: int = 200, block: threading.Event | None = None):
        self.bodies: list[dict] = []
        self.hits = 0
        self.received = threading.Condition()
        self.status, self.block = status, block
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.received:
                    outer.hits += 1
                    outer.received.notify_all()
                if outer.block is not None:
                    outer.block.wait(30)
                with outer.received:
                    outer.bodies.append(json.loads(body))
                    outer.received.notify_all()
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        with self.received:
            return self.received.wait_for(predicate, timeout)

    def close(self):
        if self.block is not None:
            self.block.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{SECRET_PATH}"  # nothing listens there any more


def test_webhook_posts_slack_text_and_alert_dict(receiver):
    delivery = Delivery(webhooks={"hook": WebhookSpec(url=receiver.url)})
    delivery.deliver(make_alert())
    assert delivery.close(timeout=10) == 0
    (body,) = receiver.bodies
    assert body["text"].startswith("[gradwatch] CRITICAL loss_divergence at step 7")
    assert body["alert"]["rule"] == "loss_divergence" and body["alert"]["details"]["loss"] == 9025
    assert delivery.stats["sent"] == 1 and delivery.stats["failed"] == 0


def test_bare_webhook_action_goes_to_every_webhook_and_min_severity_filters(receiver):
    other = Receiver()
    try:
        delivery = Delivery(
            webhooks={
                "a": WebhookSpec(url=receiver.url),
                "b": WebhookSpec(url=other.url, min_severity="critical"),
            }
        )
        delivery.deliver(make_alert(1, "warning", actions=("webhook",)))
        delivery.deliver(make_alert(2, "critical", actions=("webhook",)))
        delivery.close(timeout=10)
        assert [b["alert"]["step"] for b in receiver.bodies] == [1, 2]
        assert [b["alert"]["step"] for b in other.bodies] == [2]
    finally:
        other.close()


def test_down_endpoint_neither_blocks_nor_raises_and_never_logs_the_url(caplog):
    caplog.set_level(logging.DEBUG, logger="gradwatch.alerts")
    spec = WebhookSpec(url=closed_port_url(), timeout=1, retries=2, backoff=0.01)
    delivery = Delivery(webhooks={"hook": spec})
    for step in range(5):
        delivery.deliver(make_alert(step))  # returns; the failures happen in the background
    assert delivery.close(timeout=30) == 0
    assert delivery.stats["failed"] == 5 and delivery.stats["sent"] == 0
    text = caplog.text
    assert "could not deliver" in text and "…redacted" in text
    assert "s3cr3t" not in text and SECRET_PATH not in text
    assert "loss_divergence at step 4" in text  # the log action still reported the alert


def test_slow_endpoint_does_not_block_the_training_thread():
    release = threading.Event()
    slow = Receiver(block=release)
    try:
        delivery = Delivery(webhooks={"hook": WebhookSpec(url=slow.url, timeout=30)}, queue_size=10)
        delivery.deliver(make_alert(0))
        assert slow.wait(lambda: slow.hits == 1)  # the worker is now stuck in the request
        calls = 0
        for step in range(1, 100):  # the "training loop" keeps going meanwhile
            delivery.deliver(make_alert(step))
            calls += 1
        assert calls == 99 and not release.is_set() and slow.bodies == []
        # Bounded queue: 99 queued into 10 slots -> the 89 oldest dropped and counted.
        assert delivery.stats["dropped"] == 89
        release.set()
        assert delivery.close(timeout=20) == 0
        steps = [b["alert"]["step"] for b in slow.bodies]
        assert steps == [0, *range(90, 100)]  # the newest alerts survived
    finally:
        release.set()
        slow.close()


def test_server_error_is_retried_then_counted_as_failed():
    r = Receiver(status=503)
    try:
        delivery = Delivery(webhooks={"hook": WebhookSpec(url=r.url, retries=2, backoff=0.01)})
        delivery.deliver(make_alert())
        delivery.close(timeout=10)
        assert r.hits == 3 and delivery.stats["failed"] == 1
    finally:
        r.close()


def test_client_error_is_not_retried():
    r = Receiver(status=404)
    try:
        delivery = Delivery(webhooks={"hook": WebhookSpec(url=r.url, retries=3, backoff=0.01)})
        delivery.deliver(make_alert())
        delivery.close(timeout=10)
        assert r.hits == 1 and delivery.stats["failed"] == 1
    finally:
        r.close()


def test_callbacks_run_and_their_exceptions_are_logged_not_raised(caplog):
    seen = []

    def broken(alert):
        raise RuntimeError("callback bug")

    delivery = Delivery(callbacks={"ok": seen.append, "broken": broken})
    delivery.deliver(make_alert(actions=("callback:ok", "callback:broken")))
    delivery.deliver(make_alert(step=8, actions=("callback",)))
    delivery.close(timeout=10)
    assert [a.step for a in seen] == [7, 8]
    assert delivery.stats["failed"] == 2 and delivery.stats["sent"] == 2
    assert "callback 'broken' raised" in caplog.text and "callback bug" in caplog.text


def test_log_action_uses_a_level_per_severity(caplog):
    caplog.set_level(logging.DEBUG, logger="gradwatch.alerts")
    delivery = Delivery()
    for sev in ("info", "warning", "critical"):
        delivery.deliver(make_alert(severity=sev, actions=("log", "mlflow")))
    delivery.close()
    records = [r for r in caplog.records if r.name == "gradwatch.alerts"]
    assert [r.levelno for r in records] == [logging.INFO, logging.WARNING, logging.CRITICAL]
    assert records[0].gradwatch_alert["rule"] == "loss_divergence"


def test_urls_are_redacted_everywhere():
    spec = WebhookSpec(url="https://hooks.example.com" + SECRET_PATH)
    assert redact_url(spec.url) == "https://hooks.example.com/…redacted"
    assert "s3cr3t" not in repr(spec) and "s3cr3t" not in str(spec)


def test_deliver_after_close_names_the_state():
    delivery = Delivery()
    delivery.close()
    with pytest.raises(GradwatchError, match="closed"):
        delivery.deliver(make_alert())


# --------------------------------------------------------------------------------------------
# send(): synchronous, raises; userinfo as basic auth; one-line text


def test_send_delivers_here_and_now_or_raises_naming_the_target_without_the_url(receiver):
    from gradwatch.alerts import DeliveryError

    delivery = Delivery(
        webhooks={
            "hook": WebhookSpec(url=receiver.url),
            "down": WebhookSpec(url=closed_port_url(), timeout=1, retries=1, backoff=0.01),
        }
    )
    assert delivery.send(make_alert(), "webhook:hook") is True
    assert len(receiver.bodies) == 1, "returned only once the receiver had it"
    with pytest.raises(DeliveryError) as err:
        delivery.send(make_alert(), "webhook:down")
    assert "webhook 'down'" in str(err.value) and "…redacted" in str(err.value)
    assert "s3cr3t" not in str(err.value)
    with pytest.raises(DeliveryError, match="unknown alert target 'email:nobody'"):
        delivery.send(make_alert(), "email:nobody")
    assert delivery.stats == {"sent": 1, "failed": 1, "dropped": 0, "pending": 0}
    # Below the target's min_severity: nothing sent, nothing failed.
    quiet = Delivery(webhooks={"hook": WebhookSpec(url=receiver.url, min_severity="critical")})
    assert quiet.send(make_alert(severity="info"), "webhook:hook") is False
    assert len(receiver.bodies) == 1 and quiet.stats["sent"] == 0


@pytest.mark.parametrize("password", ["pw", "p@ss/w:rd%41", "a@b@c"])
def test_webhook_with_userinfo_delivers_with_basic_auth_and_logs_no_credentials(caplog, password):
    import base64

    from tests.webhooks import WebhookReceiver

    recv = WebhookReceiver()
    try:
        caplog.set_level(logging.DEBUG, logger="gradwatch")
        url = recv.url.replace("http://", f"http://alice:{password}@")
        down = closed_port_url().replace("http://", f"http://alice:{password}@")
        delivery = Delivery(
            webhooks={
                "ok": WebhookSpec(url=url),
                "down": WebhookSpec(url=down, timeout=1, retries=0),
            }
        )
        delivery.deliver(make_alert(actions=("webhook",)))
        delivery.close(timeout=10)
        (headers,) = recv.headers
        sent = base64.b64decode(headers["Authorization"].removeprefix("Basic ")).decode()
        expected = "alice:" + __import__("urllib.parse").parse.unquote(password)
        assert sent == expected
        assert delivery.stats["sent"] == 1 and delivery.stats["failed"] == 1
        assert "could not deliver" in caplog.text
        assert password not in caplog.text and "alice" not in caplog.text
        assert password not in repr(delivery.webhooks["ok"])
    finally:
        recv.close()


def test_control_characters_never_reach_a_log_line_or_the_payload_text(receiver, caplog):
    caplog.set_level(logging.INFO, logger="gradwatch.alerts")
    forged = "run evil\r\n12:00:00 CRITICAL gradwatch.alerts: all clear\x1b[2J\u2028x\u202e"
    alert = Alert(
        rule="nonfinite",
        kind="nonfinite",
        severity="critical",
        step=3,
        message=f"{forged}: NaN/Inf first seen in loss",
        details={},
        actions=("log", "webhook:hook"),
    )
    delivery = Delivery(webhooks={"hook": WebhookSpec(url=receiver.url)})
    delivery.deliver(alert)
    delivery.close(timeout=10)
    (record,) = [r for r in caplog.records if r.name == "gradwatch.alerts"]
    line = record.getMessage()
    assert not any(ch in line for ch in "\r\n\x1b\u2028\u202e"), line
    assert "run evil\\r\\n12:00:00 CRITICAL" in line  # shown, escaped, not obeyed
    (body,) = receiver.bodies
    assert "\n" not in body["text"] and "\r" not in body["text"]
    assert body["alert"]["message"] == alert.message  # the data itself is kept as it was
