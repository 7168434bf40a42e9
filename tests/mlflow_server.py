"""Start and stop a real ``mlflow server`` on a free loopback port, for tests and benchmarks.

    with MlflowServer(tmp_path) as server:
        client = mlflow.MlflowClient(server.uri)

The server runs in its own process group so ``stop()`` (or ``kill()``) takes down its
workers too; ``start()`` again reuses the same port and sqlite store, which is what the
outage tests need.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    # The job runner burns ~2 cores for 10-20 s after start-up (shared/MLFLOW.md).
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


class MlflowServer:
    """A real tracking server: sqlite store and proxied artifacts under ``root``."""

    def __init__(self, root: Path, port: int | None = None, backend_uri: str | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.backend_uri = backend_uri or f"sqlite:///{self.root / 'mlflow.db'}"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.root / "server.log"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]

    def start(self, timeout: float = 90.0) -> MlflowServer:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_env(),
            start_new_session=True,
        )
        log.close()
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited early; see {self.log_path}:\n"
                    + self.log_path.read_text()[-3000:]
                )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.read().strip() == b"OK":
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"mlflow server not healthy after {timeout}s; see {self.log_path}")

    def _signal_group(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL to its whole process group)."""
        self._signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self._signal_group(signal.SIGTERM)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def forward(handler: BaseHTTPRequestHandler, target, body: bytes, timeout: float) -> None:
    """Send the request ``handler`` is serving (its ``body`` already read) to ``target`` (a
    parsed URL) and write the answer back: what every test proxy here does with a request it
    lets through."""
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=timeout)
    headers = {k: v for k, v in handler.headers.items() if k.lower() != "host"}
    conn.request(handler.command, handler.path, body or None, headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    handler.send_response(resp.status)
    for key, value in resp.getheaders():
        if key.lower() not in ("transfer-encoding", "connection", "content-length"):
            handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class RelayProxy:
    """A real HTTP relay on 127.0.0.1 in front of an MLflow server that answers every
    request ``delay`` seconds late: a server that is slow but alive. ``on_request(method,
    path)`` runs as each request arrives, before it is relayed.

        proxy = RelayProxy(server.uri, delay=0.5); open_run(tracking_uri=proxy.uri); proxy.close()
    """

    def __init__(self, upstream: str, delay: float = 0.0, on_request=None) -> None:
        import threading
        import urllib.parse
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        target = urllib.parse.urlsplit(upstream)
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as MLflow's server

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.requests += 1
                if on_request is not None:
                    on_request(self.command, self.path)
                time.sleep(delay)
                forward(self, target, body, timeout=60)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
