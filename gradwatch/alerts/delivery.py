"""Delivering alerts: Python logging, webhooks, e-mail and callbacks, never blocking training.

    delivery = Delivery(webhooks={"slack": WebhookSpec(url=os.environ["SLACK_WEBHOOK"])},
                        emails={"oncall": EmailSpec("smtp.example.com", sender="gw@example.com",
                                                    to=("oncall@example.com",))},
                        callbacks={"pager": page_me})
    delivery.deliver(alert)                  # queued: returns at once
    delivery.send(alert, "webhook:slack")    # now, in this thread: raises DeliveryError
    delivery.close(timeout=5.0)              # drain what it can, then give up

Per alert, ``alert.actions`` decide where it goes: ``log`` -> logger ``gradwatch.alerts`` at a
level matching the severity (in the caller's thread: cheap); ``webhook`` -> every configured
webhook, ``webhook:<name>`` -> one; ``email:<name>`` -> one SMTP recipient list; ``callback``
-> every callback, ``callback:<name>`` -> one. ``mlflow`` and ``stop`` belong to the hook and
are ignored here.

``send(alert, target)`` is the one way an alert reaches a target: synchronous, with the
target's retries (``retries`` more attempts on a transient failure, ``backoff`` doubling; the
same rules for webhooks and e-mail), counted as ``sent`` only once the target took it, and
raising :class:`DeliveryError` when it gave up (a message that cannot even be built included).
``deliver`` wraps it: each target gets its own background thread and bounded queue, so a slow
endpoint delays nothing but itself; when a queue is full the oldest alert is dropped and
counted (``delivery.stats["dropped"]``).

Alert text reaches e-mail subjects, log lines and the webhook ``text`` through
:func:`single_line` (CR/LF and other control characters escaped: a run name cannot add a
header or forge a log line). Webhook URLs and SMTP passwords are secrets: never logged;
messages show :func:`redact_url` forms like ``https://hooks.example/…redacted``. A webhook URL
with ``user:password@`` is posted to without its userinfo, with HTTP basic auth.
"""

from __future__ import annotations

import base64
import json
import logging
import smtplib
import ssl
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from gradwatch.alerts.detectors import Param
from gradwatch.alerts.observations import SEVERITIES, SEVERITY_LOG_LEVELS, Alert
from gradwatch.errors import GradwatchError, InputError
from gradwatch.secrets import mask_uri, split_userinfo

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "EMAIL_OPTIONS",
    "Delivery",
    "DeliveryError",
    "EmailSpec",
    "WebhookSpec",
    "email_spec",
    "redact_url",
    "single_line",
]

logger = logging.getLogger("gradwatch.alerts")

DEFAULT_QUEUE_SIZE = 1000  # alerts waiting per target; cooldowns keep real traffic far below
DEFAULT_TIMEOUT = 5.0  # seconds per HTTP attempt
DEFAULT_RETRIES = 3  # attempts after the first
DEFAULT_BACKOFF = 0.5  # seconds before the first retry, doubled each time
# 4xx answers other than these will not get better by retrying.
_RETRYABLE_4XX = (408, 425, 429)


def redact_url(url: str) -> str:
    """``https://hooks.slack.com/services/T0/B0/xyz`` -> ``https://hooks.slack.com/…redacted``
    (credentials in the URL are dropped with the rest)."""
    try:
        parts = urllib.parse.urlsplit(split_userinfo(url)[0])
        host = parts.hostname or "?"
        if parts.port:
            host = f"{host}:{parts.port}"
        return f"{parts.scheme or '?'}://{host}/…redacted"
    except ValueError:
        return "…redacted"


@dataclass(frozen=True, repr=False)
class WebhookSpec:
    """Where and how to POST alerts. ``url`` is a secret (kept out of repr, logs, params).

        WebhookSpec(url="${SLACK_WEBHOOK}" expanded, timeout=5, retries=3, backoff=0.5)

    ``timeout`` is per attempt (s); ``retries`` more attempts follow a failure (connection
    error, 5xx, 408/429), waiting ``backoff`` s then doubling; ``min_severity`` filters;
    ``headers`` (also secret: tokens) are added to the request.
    """

    url: str
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF
    min_severity: str = "info"
    headers: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"WebhookSpec(url={redact_url(self.url)!r}, timeout={self.timeout}, "
            f"retries={self.retries}, backoff={self.backoff}, min_severity={self.min_severity!r})"
        )


@dataclass(frozen=True, repr=False)
class EmailSpec:
    """An SMTP server and recipients for ``email:<name>`` actions. ``password`` is a secret.

        EmailSpec("smtp.example.com", port=587, sender="gradwatch@example.com",
                  to=("oncall@example.com",), starttls=True, username="gw", password=pw)

    ``starttls`` upgrades the connection (certificate verified) before ``username``/``password``
    log in; ``timeout``, ``retries``, ``backoff`` and ``min_severity`` work as for webhooks:
    connection errors and 4xx SMTP answers are retried, 5xx and refused logins are not.
    """

    host: str
    sender: str
    to: tuple[str, ...]
    port: int = 25
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF
    min_severity: str = "info"

    def __post_init__(self) -> None:
        to = (self.to,) if isinstance(self.to, str) else tuple(self.to)
        if not to or not all(isinstance(a, str) and "@" in a for a in to):
            raise InputError(f"email `to` needs one or more addresses, got {self.to!r}")
        if not isinstance(self.sender, str) or "@" not in self.sender:
            raise InputError(f"email `from` must be an address, got {self.sender!r}")
        object.__setattr__(self, "to", to)

    def __repr__(self) -> str:
        login = f", username={self.username!r}, password='***'" if self.username else ""
        return (
            f"EmailSpec(host={self.host!r}, port={self.port}, sender={self.sender!r}, "
            f"to={self.to!r}, starttls={self.starttls}{login})"
        )


#: The keys of ``alerts.email.<name>`` in gradwatch.yaml, with defaults (``from`` is
#: :attr:`EmailSpec.sender`; ``host``, ``from`` and ``to`` are required).
EMAIL_OPTIONS: dict[str, Param] = {
    "host": Param(None, "str", "SMTP server host"),
    "port": Param(25, "int", "SMTP port (587 with starttls, usually)", minimum=1, maximum=65535),
    "from": Param(None, "str", "sender address"),
    "to": Param(None, "str_list", "recipient address(es)"),
    "starttls": Param(False, "bool", "upgrade to TLS (certificate verified) before logging in"),
    "username": Param(None, "str", "SMTP login (null: no login)"),
    "password": Param(None, "str", "SMTP password (secret: use ${VAR})"),
    "timeout": Param(DEFAULT_TIMEOUT, "float", "seconds per attempt", minimum=0, exclusive=True),
    "retries": Param(DEFAULT_RETRIES, "int", "attempts after the first failure", minimum=0),
    "backoff": Param(
        DEFAULT_BACKOFF, "float", "seconds before the first retry, doubled", minimum=0
    ),
    "min_severity": Param(
        "info", "str", "alerts below this severity are not sent", choices=SEVERITIES
    ),
}


def email_spec(options: Mapping[str, Any]) -> EmailSpec:
    """An :class:`EmailSpec` from checked ``alerts.email.<name>`` options (YAML key names).

    email_spec({"host": "smtp.example.com", "from": "gw@example.com", "to": ["me@x.org"]})
    """
    for key in ("host", "from", "to"):
        if options.get(key) is None:
            raise InputError(f"email needs `{key}`")
    kwargs = {("sender" if k == "from" else k): v for k, v in options.items() if v is not None}
    return EmailSpec(**kwargs)


def single_line(text: object) -> str:
    """``text`` on one line: CR, LF and every other control or line/format character (bidi
    overrides too) written as its escape, so a run name cannot forge a header or a log line.

        single_line("run a\r\nBcc: x")  # 'run a\\r\\nBcc: x'
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(
        ch
        if ch == " " or unicodedata.category(ch)[0] not in "CZ"
        else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def email_message(alert: Alert, spec: EmailSpec) -> EmailMessage:
    """Subject: the alert's one line (controls escaped); body: that line and the alert as JSON."""
    message = EmailMessage()
    message["Subject"] = single_line(alert.text())[:200]
    message["From"] = spec.sender
    message["To"] = ", ".join(spec.to)
    body = json.dumps(alert.to_dict(), indent=2, default=str)
    message.set_content(f"{single_line(alert.text())}\n\n{body}\n")
    return message


def payload(alert: Alert) -> dict[str, Any]:
    """The JSON body: a Slack-compatible ``text`` (one line) plus the alert dict under ``alert``."""
    return {"text": single_line(alert.text()), "alert": alert.to_dict()}


class DeliveryError(GradwatchError):
    """An alert did not reach a target (retries spent, refused, or never sendable).

    ``str(err)`` names the target (URL redacted) and the last problem, never a secret.
    """


class _Worker:
    """One daemon thread draining one bounded queue with ``send(item)``."""

    def __init__(self, label: str, send: Callable[[Any], None], maxsize: int) -> None:
        self.label, self.send, self.maxsize = label, send, maxsize
        self.queue: deque[Any] = deque()
        self.cv = threading.Condition()
        self.busy = False
        self.closing = False
        self.dropped = 0
        self.thread: threading.Thread | None = None

    def put(self, item: Any) -> None:
        with self.cv:
            if len(self.queue) >= self.maxsize:
                # Newest alerts matter most while training runs: drop the oldest.
                self.queue.popleft()
                self.dropped += 1
            self.queue.append(item)
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name=f"gradwatch-alerts-{self.label}", daemon=True
                )
                self.thread.start()
            self.cv.notify()

    @property
    def pending(self) -> int:
        with self.cv:
            return len(self.queue) + int(self.busy)

    def _run(self) -> None:
        while True:
            with self.cv:
                while not self.queue and not self.closing:
                    self.cv.wait()
                if not self.queue:
                    return
                item = self.queue.popleft()
                self.busy = True
            try:
                self.send(item)
            except Exception:  # a delivery bug must not kill the thread; logged without secrets
                logger.exception("gradwatch alert delivery to %s failed", self.label)
            finally:
                with self.cv:
                    self.busy = False
                    self.cv.notify_all()

    def close(self, deadline: float) -> int:
        with self.cv:
            self.closing = True
            self.cv.notify_all()
        if self.thread is not None:
            self.thread.join(max(0.0, deadline - time.monotonic()))
        return self.pending


class Delivery:
    """Sends alerts to logging, webhooks, e-mail and callbacks; see the module docstring.

        delivery = Delivery(webhooks=config.webhooks, callbacks={"notify": fn})
        delivery.deliver(alert)                   # queued: returns at once, never raises
        delivery.send(alert, "webhook:slack")     # here and now: raises DeliveryError
        delivery.stats; delivery.close(timeout=5.0)

    :meth:`send` is the one way an alert reaches a target: it tries (with the target's
    retries) and raises :class:`DeliveryError` when it gave up. :meth:`deliver` is a thin
    wrapper that queues ``send`` for each target on that target's background thread, logs and
    counts what fails, and never blocks the caller.
    """

    def __init__(
        self,
        webhooks: Mapping[str, WebhookSpec] | None = None,
        callbacks: Mapping[str, Callable[[Alert], Any]] | None = None,
        *,
        emails: Mapping[str, EmailSpec] | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        if queue_size < 1:
            raise InputError(f"queue_size must be >= 1, got {queue_size}")
        self.webhooks = dict(webhooks or {})
        self.emails = dict(emails or {})
        self.callbacks = dict(callbacks or {})
        self.queue_size = queue_size
        self._abort = threading.Event()  # set when close() gives up: cuts backoff sleeps short
        self._lock = threading.Lock()
        self._counts = {"sent": 0, "failed": 0}
        self._closed = False
        self._warned: set[str] = set()
        self._workers: dict[str, _Worker] = {}

    # -- public -------------------------------------------------------------------------------

    def targets(self, alert: Alert) -> list[str]:
        """The targets ``alert``'s actions name, one per entry: ``webhook`` and ``callback``
        expanded by name (``["webhook:slack", "email:oncall"]``); ``log``, ``mlflow`` and
        ``stop`` are not targets."""
        targets: list[str] = []
        for action in alert.actions:
            if action == "webhook":
                targets += [f"webhook:{name}" for name in self.webhooks]
            elif action == "callback":
                targets += [f"callback:{name}" for name in self.callbacks]
            elif action.startswith(("webhook:", "email:", "callback:")):
                targets.append(action)
        return list(dict.fromkeys(targets))

    def send(self, alert: Alert, target: str) -> bool:
        """Deliver ``alert`` to ``target`` (``webhook:NAME``, ``email:NAME``, ``callback:NAME``)
        now, in this thread, with the target's retries.

            delivery.send(alert, "email:oncall")  # True: delivered; False: below min_severity

        Raises :class:`DeliveryError` when it did not get there (unknown target included).
        """
        kind, _, name = target.partition(":")
        if kind == "webhook" and name in self.webhooks:
            spec: Any = self.webhooks[name]
        elif kind == "email" and name in self.emails:
            spec = self.emails[name]
        elif kind == "callback" and name in self.callbacks:
            return self._call(name, alert)
        else:
            known = {"webhook": self.webhooks, "email": self.emails, "callback": self.callbacks}
            names = ", ".join(known.get(kind, ())) or "none"
            raise DeliveryError(f"unknown alert target {single_line(target)!r} (known: {names})")
        if not _severe_enough(alert, spec.min_severity):
            return False
        if kind == "webhook":
            label = f"webhook {name!r} ({redact_url(spec.url)})"
            self._with_retries(alert, label, spec, _webhook_attempt(spec, alert))
        else:
            label = f"email {name!r} (smtp {spec.host}:{spec.port})"
            self._with_retries(alert, label, spec, _email_attempt(spec, alert))
        return True

    def deliver(self, alert: Alert) -> None:
        """Route ``alert`` by its actions; returns immediately (``log`` is written here)."""
        if self._closed:
            raise GradwatchError("Delivery is closed; create a new Delivery to send more alerts")
        if "log" in alert.actions:
            self._log(alert)
        for target in self.targets(alert):
            kind, _, name = target.partition(":")
            if name not in {"webhook": self.webhooks, "email": self.emails}.get(
                kind, self.callbacks
            ):
                self._warn_once(f"{kind} {name!r}", kind)
                continue
            spec = self.webhooks.get(name) if kind == "webhook" else self.emails.get(name)
            if kind != "callback" and not _severe_enough(alert, spec.min_severity):
                continue
            self._worker(target).put(alert)
        # "mlflow" and "stop" are the hook's.

    @property
    def stats(self) -> dict[str, int]:
        """``sent``, ``failed`` (gave up), ``dropped`` (queue full) and ``pending`` counts."""
        with self._lock:
            out = dict(self._counts)
            workers = list(self._workers.values())
        out["dropped"] = sum(w.dropped for w in workers)
        out["pending"] = sum(w.pending for w in workers)
        return out

    def close(self, timeout: float = 5.0) -> int:
        """Stop accepting alerts, deliver what is queued within ``timeout`` s.

        Returns how many alerts were still undelivered (they are abandoned; the threads are
        daemons, and an HTTP attempt in flight ends within its own timeout).
        """
        self._closed = True
        deadline = time.monotonic() + timeout
        with self._lock:
            workers = list(self._workers.values())
        left = sum(w.close(deadline) for w in workers)
        self._abort.set()
        return left

    def __enter__(self) -> Delivery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- targets ------------------------------------------------------------------------------

    def _worker(self, target: str) -> _Worker:
        with self._lock:
            worker = self._workers.get(target)
            if worker is None:
                label = target.replace(":", "-")
                worker = _Worker(label, lambda a: self._send_queued(a, target), self.queue_size)
                self._workers[target] = worker
            return worker

    def _send_queued(self, alert: Alert, target: str) -> None:
        try:
            self.send(alert, target)
        except DeliveryError:
            pass  # logged and counted by send

    def _log(self, alert: Alert) -> None:
        level = SEVERITY_LOG_LEVELS.get(alert.severity, logging.WARNING)
        logger.log(level, single_line(alert.text()), extra={"gradwatch_alert": alert.to_dict()})

    def _warn_once(self, what: str, kind: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            known = {"webhook": self.webhooks, "email": self.emails}.get(kind, self.callbacks)
            logger.warning(
                "gradwatch alert action names unknown %s (known: %s)",
                single_line(what),
                ", ".join(known) or "none",
            )

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def _call(self, name: str, alert: Alert) -> bool:
        try:
            self.callbacks[name](alert)
        except Exception as exc:
            self._count("failed")
            logger.exception(
                "gradwatch alert callback %r raised (alert %s at step %d)",
                name,
                single_line(alert.rule),
                alert.step,
            )
            raise DeliveryError(f"callback {name!r} raised {type(exc).__name__}") from exc
        self._count("sent")
        return True

    def _with_retries(
        self, alert: Alert, label: str, spec: Any, once: Callable[[], tuple[bool, str | None]]
    ) -> None:
        """``once() -> (retryable, problem or None)``, retried as ``spec`` says; counted;
        raises :class:`DeliveryError` when it gives up."""
        problem = "not attempted"
        for attempt in range(spec.retries + 1):
            if attempt and self._abort.wait(spec.backoff * 2 ** (attempt - 1)):
                break  # close() gave up waiting
            retry, problem = once()
            if problem is None:
                self._count("sent")
                return
            if not retry:
                break
        self._count("failed")
        text = (
            f"could not deliver alert {single_line(alert.rule)} (step {alert.step}) "
            f"to {label}: {single_line(problem)}"
        )
        logger.warning("gradwatch %s", text)
        raise DeliveryError(text)


def _severe_enough(alert: Alert, min_severity: str) -> bool:
    order = SEVERITIES
    return min_severity not in order or order.index(alert.severity) >= order.index(min_severity)


def _email_attempt(spec: EmailSpec, alert: Alert) -> Callable[[], tuple[bool, str | None]]:
    """One SMTP session per call. A message that cannot be built is a failure, not a retry."""
    try:
        message = email_message(alert, spec)
    except (ValueError, TypeError) as exc:
        problem = f"message not built: {type(exc).__name__}: {single_line(mask_uri(exc))}"
        return lambda: (False, problem)
    return lambda: _mail_once(spec, message)


def _mail_once(spec: EmailSpec, message: EmailMessage) -> tuple[bool, str | None]:
    """One SMTP session: ``(retryable, problem or None)``. Problems never contain the password."""
    try:
        with smtplib.SMTP(spec.host, spec.port, timeout=spec.timeout) as smtp:
            if spec.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if spec.username:
                smtp.login(spec.username, spec.password or "")
            smtp.send_message(message)
        return False, None
    except smtplib.SMTPAuthenticationError as exc:
        return False, f"login refused (SMTP {exc.smtp_code})"
    except smtplib.SMTPRecipientsRefused as exc:
        return False, f"recipients refused: {', '.join(exc.recipients)}"
    except smtplib.SMTPResponseException as exc:
        return 400 <= exc.smtp_code < 500, f"SMTP {exc.smtp_code}"
    except (smtplib.SMTPException, OSError, ValueError) as exc:  # refused, reset, timeout, TLS
        text = mask_uri(str(exc))
        if spec.password:
            text = text.replace(spec.password, "***")
        return not isinstance(exc, ValueError), f"{type(exc).__name__}: {text}"


def _webhook_attempt(spec: WebhookSpec, alert: Alert) -> Callable[[], tuple[bool, str | None]]:
    """One POST per call; ``user:password@`` in the URL becomes HTTP basic auth."""
    url, user, password = split_userinfo(spec.url)
    body = json.dumps(payload(alert), default=str).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "gradwatch"}
    if user is not None:
        basic = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {basic}"
    headers.update(spec.headers)
    return lambda: _post_once(spec, url, body, headers)


def _post_once(
    spec: WebhookSpec, url: str, body: bytes, headers: dict[str, str]
) -> tuple[bool, str | None]:
    """One POST: ``(retryable, problem or None)``. Problems never contain the URL."""
    try:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=spec.timeout) as resp:
            resp.read()
            return False, None
    except urllib.error.HTTPError as exc:
        retry = exc.code >= 500 or exc.code in _RETRYABLE_4XX
        return retry, f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return True, f"{type(exc.reason).__name__}: {_scrub(str(exc.reason), spec.url)}"
    except (OSError, ValueError) as exc:  # timeouts, resets, malformed URL
        return True, f"{type(exc).__name__}: {_scrub(str(exc), spec.url)}"


def _scrub(text: str, url: str) -> str:
    bare = split_userinfo(url)[0]
    return mask_uri(text.replace(url, redact_url(url)).replace(bare, redact_url(url)))
