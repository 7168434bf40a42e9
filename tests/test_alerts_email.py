"""E-mail alerts delivered to a real SMTP server on 127.0.0.1: login, retries, never blocking."""

from __future__ import annotations

import base64
import email
import logging
import socketserver
import threading
import time

import pytest

from gradwatch.alerts import Alert, Delivery, EmailSpec, validate_rule
from gradwatch.errors import ConfigError, InputError

PASSWORD = "s3cr3t-pw"


class SmtpServer:
    """A small real SMTP server (RFC 5321 subset: EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT).

    ``busy`` sessions are answered ``421`` at once (a transient failure); ``stall`` makes it
    accept connections and never greet."""

    def __init__(self, busy: int = 0, stall: bool = False) -> None:
        self.messages: list[email.message.Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[tuple[str, str]] = []
        self.sessions = 0
        self.busy, self.stall = busy, stall
        self.done = threading.Condition()
        self.release = threading.Event()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")

            def handle(self) -> None:
                with outer.done:
                    outer.sessions += 1
                    busy = outer.sessions <= outer.busy
                if outer.stall:
                    outer.release.wait(30)
                    return
                if busy:
                    self.reply("421 busy, try again later")
                    return
                self.reply("220 127.0.0.1 ESMTP test")
                sender, rcpts = "", []
                while line := self.rfile.readline().decode().rstrip("\r\n"):
                    verb = line.split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        self.reply("250-127.0.0.1")
                        self.reply("250 AUTH PLAIN")
                    elif verb == "AUTH":
                        _, user, password = base64.b64decode(line.split()[2]).decode().split("\0")
                        outer.logins.append((user, password))
                        ok = password == PASSWORD
                        self.reply("235 ok" if ok else "535 authentication failed")
                    elif verb == "MAIL":
                        sender = line.split(":", 1)[1].strip("<> ")
                        self.reply("250 ok")
                    elif verb == "RCPT":
                        rcpts.append(line.split(":", 1)[1].strip("<> "))
                        self.reply("250 ok")
                    elif verb == "DATA":
                        self.reply("354 end with <CRLF>.<CRLF>")
                        data = []
                        while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                            data.append(chunk)
                        with outer.done:
                            outer.messages.append(email.message_from_bytes(b"".join(data)))
                            outer.envelopes.append((sender, rcpts))
                            outer.done.notify_all()
                        self.reply("250 queued")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("250 ok")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float = 10.0) -> bool:
        with self.done:
            return self.done.wait_for(lambda: len(self.messages) >= count, timeout)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def smtp():
    server = SmtpServer()
    yield server
    server.close()


def spec(port: int, **kw) -> EmailSpec:
    base = dict(
        host="127.0.0.1",
        port=port,
        sender="gradwatch@example.com",
        to=("oncall@example.com", "ml@example.com"),
        username="gw",
        password=PASSWORD,
        timeout=2.0,
        retries=3,
        backoff=0.01,
    )
    return EmailSpec(**{**base, **kw})


def alert(actions=("email:oncall",), severity="critical") -> Alert:
    return Alert(
        rule="loss_divergence",
        kind="loss_divergence",
        severity=severity,
        step=7,
        message="loss diverging: 9025 is above 10x its lowest smoothed level (25)",
        details={"loss": 9025.0},
        actions=tuple(actions),
        timestamp=1.0,
    )


def test_alert_is_mailed_with_login_to_every_recipient(smtp):
    delivery = Delivery(emails={"oncall": spec(smtp.port)})
    delivery.deliver(alert())
    assert smtp.wait(1)
    delivery.close(5.0)
    (message,) = smtp.messages
    subject = str(message["Subject"]).replace("\r", "").replace("\n", "")  # unfolded
    assert subject == "[gradwatch] CRITICAL loss_divergence at step 7: " + (
        "loss diverging: 9025 is above 10x its lowest smoothed level (25)"
    )
    assert message["From"] == "gradwatch@example.com"
    assert smtp.envelopes == [("gradwatch@example.com", ["oncall@example.com", "ml@example.com"])]
    assert '"loss": 9025.0' in message.get_payload()
    assert smtp.logins == [("gw", PASSWORD)]
    assert delivery.stats["sent"] == 1


def test_transient_smtp_failures_are_retried():
    server = SmtpServer(busy=2)
    try:
        delivery = Delivery(emails={"oncall": spec(server.port)})
        delivery.deliver(alert())
        assert server.wait(1)
        delivery.close(5.0)
        assert server.sessions == 3 and delivery.stats == {
            "sent": 1,
            "failed": 0,
            "dropped": 0,
            "pending": 0,
        }
    finally:
        server.close()


def test_refused_login_is_not_retried_and_never_logs_the_password(smtp, caplog):
    delivery = Delivery(emails={"oncall": spec(smtp.port, password="wrong-" + PASSWORD)})
    with caplog.at_level(logging.WARNING, logger="gradwatch.alerts"):
        delivery.deliver(alert())
        delivery.close(5.0)
    assert smtp.sessions == 1 and smtp.messages == []
    assert delivery.stats["failed"] == 1
    assert "login refused (SMTP 535)" in caplog.text and PASSWORD not in caplog.text
    assert PASSWORD not in repr(spec(smtp.port)) and "password='***'" in repr(spec(smtp.port))


def test_a_stalled_smtp_server_never_blocks_deliver():
    server = SmtpServer(stall=True)
    try:
        delivery = Delivery(emails={"oncall": spec(server.port, timeout=0.5, retries=0)})
        t0 = time.perf_counter()
        for _ in range(20):
            delivery.deliver(alert())
        assert time.perf_counter() - t0 < 0.1
        assert delivery.close(timeout=0.2) > 0  # given up, not waited for
    finally:
        server.close()


def test_min_severity_and_unknown_targets(smtp, caplog):
    delivery = Delivery(emails={"oncall": spec(smtp.port, min_severity="critical")})
    with caplog.at_level(logging.WARNING, logger="gradwatch.alerts"):
        delivery.deliver(alert(severity="warning"))
        delivery.deliver(alert(actions=("email:nobody",)))
        delivery.close(5.0)
    assert smtp.sessions == 0
    assert "unknown email 'nobody'" in caplog.text


def test_email_actions_in_rules_and_bad_specs():
    rule = validate_rule({"type": "nonfinite", "actions": ["email:oncall"]}, emails={"oncall"})
    assert rule.actions == ("email:oncall",)
    with pytest.raises(ConfigError, match="no email target named 'oncal'.*did you mean") as err:
        validate_rule({"type": "nonfinite", "actions": ["email:oncal"]}, emails={"oncall"})
    assert err.value.key == "actions.0"
    with pytest.raises(InputError, match="`to` needs one or more addresses"):
        EmailSpec("127.0.0.1", sender="a@example.com", to=())
    with pytest.raises(InputError, match="`from` must be an address"):
        EmailSpec("127.0.0.1", sender="nobody", to=("a@example.com",))


def test_run_name_with_crlf_is_mailed_on_one_subject_line(smtp):
    """A CR/LF in the alert (a run name) once made the message unbuildable: lost but 'sent'."""
    evil = Alert(
        rule="nonfinite",
        kind="nonfinite",
        severity="critical",
        step=2,
        message="run a\r\nBcc: thief@example.org\r\n\r\nhi: NaN/Inf first seen in loss",
        details={},
        actions=("email:oncall",),
        timestamp=1.0,
    )
    delivery = Delivery(emails={"oncall": spec(smtp.port)})
    assert delivery.send(evil, "email:oncall") is True
    (message,) = smtp.messages
    assert message["Bcc"] is None
    subject = str(message["Subject"]).replace("\r\n ", " ").replace("\n ", " ")
    assert "\n" not in subject and "run a\\r\\nBcc: thief@example.org" in subject
    assert smtp.envelopes == [("gradwatch@example.com", ["oncall@example.com", "ml@example.com"])]
    assert delivery.stats["sent"] == 1


def test_an_email_that_cannot_be_delivered_raises_and_is_never_counted_sent():
    from gradwatch.alerts import DeliveryError

    server = SmtpServer(busy=100)  # answers 421 to every session: transient, retried
    try:
        delivery = Delivery(emails={"oncall": spec(server.port, retries=2)})
        with pytest.raises(DeliveryError, match="email 'oncall'.*SMTP 421"):
            delivery.send(alert(), "email:oncall")
        assert server.sessions == 3, "retried like a webhook"
        assert delivery.stats["sent"] == 0 and delivery.stats["failed"] == 1
    finally:
        server.close()
