"""A real webhook endpoint on 127.0.0.1 for the alert tests: it records every JSON body.

receiver = WebhookReceiver()          # or the ``receiver`` fixture of a test module
deliver_to(receiver.url) ...
receiver.rules()                      # ["check_failure", ...] in arrival order
receiver.close()
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["WebhookReceiver", "webhook_config"]


class WebhookReceiver:
    """Answers 200 "ok" to every POST and keeps the JSON bodies in ``bodies``."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.headers: list[dict[str, str]] = []  # the request headers of each POST
        received, headers = self.bodies, self.headers

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                headers.append(dict(self.headers))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def rules(self) -> list[str]:
        """The rule of each alert received, in arrival order."""
        return [b["alert"]["rule"] for b in self.bodies]

    def alerts(self) -> dict[str, list[dict]]:
        """The alerts received, by rule."""
        out: dict[str, list[dict]] = {}
        for body in self.bodies:
            out.setdefault(body["alert"]["rule"], []).append(body["alert"])
        return out

    def sent(self) -> list[tuple[str, str, int]]:
        """(rule, run name, step) of each alert received."""
        return [
            (b["alert"]["rule"], b["alert"]["details"]["run_name"], b["alert"]["step"])
            for b in self.bodies
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def webhook_config(path: Path, url: str, rules: str) -> str:
    """Write a gradwatch.yaml at ``path`` with no default rules, the webhook ``recv`` at
    ``url`` and ``rules`` (YAML list lines, indented 4) under ``alerts.rules``; its path."""
    path.write_text(
        "alerts:\n"
        "  defaults: false\n"
        f'  webhooks:\n    recv: {{url: "{url}", timeout: 5, retries: 2, backoff: 0.2}}\n'
        f"  rules:\n{rules}"
    )
    return str(path)
