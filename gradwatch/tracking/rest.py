"""``RestApiStore``: MLflow's documented REST API (``/api/2.0/mlflow/...``) over ``http.client``.

    store = RestApiStore("http://user:pw@127.0.0.1:5000", request_timeout=10.0)
    store.log_batch(run_id, [("loss", 0.5, 1700000000000, 3)], [], [])

One keep-alive connection, no retries of its own and a timeout on every request: the
shipper retries from the journal with its own backoff, so a request must fail fast instead of
sitting minutes inside urllib3's retries. Credentials come from the URI's ``user:password@``
or MLflow's own ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` or
``MLFLOW_TRACKING_TOKEN``; TLS honours ``MLFLOW_TRACKING_SERVER_CERT_PATH`` and
``MLFLOW_TRACKING_INSECURE_TLS``. Artifacts go through the server's artifact proxy
(``mlflow-artifacts:`` URIs); a run whose artifacts live elsewhere (s3://, ...) is uploaded
through MLflow's client instead. Nothing here imports MLflow.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import mimetypes
import os
import ssl
import urllib.parse
from pathlib import Path
from typing import Any

from gradwatch.secrets import mask_uri, split_userinfo
from gradwatch.tracking.store_error import StoreError, classify_code

__all__ = ["RestApiStore"]

API = "/api/2.0/mlflow/"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts/"
# Protobuf's JSON form of non-finite doubles (the server's parser refuses bare NaN).
_NONFINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


_STALE_CONNECTION = (
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
    http.client.RemoteDisconnected,
    http.client.BadStatusLine,
)


class RestApiStore:
    """The shipper's ``Store`` for an http(s) tracking server (see store.py)."""

    def __init__(self, tracking_uri: str, request_timeout: float = 10.0) -> None:
        bare, uri_user, uri_password = split_userinfo(tracking_uri)
        parts = urllib.parse.urlsplit(bare)
        self.request_timeout = request_timeout
        self.shown_uri = mask_uri(tracking_uri)
        self._uri = tracking_uri
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port
        self._base = parts.path.rstrip("/")
        self._headers = {"Content-Type": "application/json", "User-Agent": "gradwatch"}
        user = uri_user or os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = uri_password or os.environ.get("MLFLOW_TRACKING_PASSWORD")
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        if uri_user and uri_password is None:  # https://TOKEN@host
            token, user = uri_user, None
        if user and password:
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {basic}"
        elif token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._conn: http.client.HTTPConnection | None = None
        self._artifact_uris: dict[str, str] = {}
        self._fallback: Any = None

    # ------------------------------------------------------------------ HTTP
    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                ctx = ssl.create_default_context(
                    cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
                )
                if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
                    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.request_timeout, context=ctx
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self.request_timeout
                )
        self._conn.timeout = self.request_timeout
        if self._conn.sock is not None:
            self._conn.sock.settimeout(self.request_timeout)
        return self._conn

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        url = self._base + path
        for attempt in range(2):
            reused = self._conn is not None and self._conn.sock is not None
            try:
                conn = self._connection()
                conn.request(method, url, body=body, headers=headers or self._headers)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (OSError, http.client.HTTPException) as err:
                self.close()  # a half-used connection cannot be reused
                # The server (or a proxy) closed an idle keep-alive connection: the request
                # never reached it, so one fresh connection is tried at once. Replaying is
                # safe (shipper.py: every request is idempotent or found again by its tag).
                if attempt == 0 and reused and isinstance(err, _STALE_CONNECTION):
                    continue
                raise StoreError(
                    f"{method} {self.shown_uri}{path}: {type(err).__name__}: {err}", "transient"
                ) from None
        if resp.will_close:
            self.close()
        if 200 <= resp.status < 300:
            try:
                return json.loads(data) if data.strip() else {}
            except ValueError:
                return {}
        try:
            detail = json.loads(data)
            code, message = detail.get("error_code"), detail.get("message", "")
        except (ValueError, AttributeError):
            code, message = None, data[:300].decode("utf-8", "replace")
        kind = classify_code(code, resp.status)
        text = f"{method} {self.shown_uri}{path}: HTTP {resp.status} {code or ''}: {message}"
        raise StoreError(mask_uri(text)[:1000], kind, code)

    def _call(
        self, endpoint: str, body: dict[str, Any] | None = None, get: bool = False
    ) -> dict[str, Any]:
        if get:
            query = urllib.parse.urlencode(body or {})
            return self._request("GET", f"{API}{endpoint}?{query}")
        return self._request("POST", API + endpoint, json.dumps(body).encode())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ the Store interface
    def experiment_id(self, name: str | None, experiment_id: str | None) -> str:
        if not name:
            return str(experiment_id or "0")
        for attempt in range(2):
            try:
                exp = self._call("experiments/get-by-name", {"experiment_name": name}, get=True)[
                    "experiment"
                ]
            except StoreError as err:
                if err.code != "RESOURCE_DOES_NOT_EXIST":
                    raise
            else:
                if exp.get("lifecycle_stage") == "deleted":
                    raise StoreError(
                        f"experiment {name!r} is deleted on {self.shown_uri}; restore it "
                        "or log to another experiment",
                        "fatal",
                        "EXPERIMENT_DELETED",
                    )
                return str(exp["experiment_id"])
            try:
                return str(self._call("experiments/create", {"name": name})["experiment_id"])
            except StoreError as err:
                if err.code != "RESOURCE_ALREADY_EXISTS" or attempt:
                    raise  # else another process created it first: look it up again
        raise StoreError(f"experiment {name!r} could not be found or created", "transient")

    def find_run(self, experiment_id: str, tag: str, value: str) -> str | None:
        body = {
            "experiment_ids": [experiment_id],
            "filter": f"tags.`{tag}` = '{value}'",
            "run_view_type": "ACTIVE_ONLY",
            "max_results": 1,
        }
        runs = self._call("runs/search", body).get("runs") or []
        return runs[0]["info"]["run_id"] if runs else None

    def create_run(
        self,
        experiment_id: str,
        user: str,
        start_ms: int | None,
        tags: dict[str, str],
        name: str | None,
    ) -> str:
        body: dict[str, Any] = {
            "experiment_id": experiment_id,
            "user_id": user,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        if start_ms is not None:
            body["start_time"] = start_ms
        if name:
            body["run_name"] = name
        info = self._call("runs/create", body)["run"]["info"]
        self._artifact_uris[info["run_id"]] = info.get("artifact_uri", "")
        return info["run_id"]

    def log_batch(self, run_id: str, metrics: list, params: list, tags: list) -> None:
        body = {
            "run_id": run_id,
            "metrics": [
                {
                    "key": k,
                    "value": v if math.isfinite(v) else _NONFINITE[str(v)],
                    "timestamp": ts,
                    "step": st,
                }
                for k, v, ts, st in metrics
            ],
            "params": [{"key": k, "value": v} for k, v in params],
            "tags": [{"key": k, "value": v} for k, v in tags],
        }
        self._call("runs/log-batch", body)

    def _run_info(self, run_id: str) -> dict[str, Any]:
        info = self._call("runs/get", {"run_id": run_id}, get=True)["run"]["info"]
        self._artifact_uris[run_id] = info.get("artifact_uri", "")
        return info

    def run_lifecycle(self, run_id: str) -> str:
        return str(self._run_info(run_id).get("lifecycle_stage", "active"))

    def end_run(self, run_id: str, status: str, end_ms: int | None) -> None:
        body: dict[str, Any] = {"run_id": run_id, "run_uuid": run_id, "status": status}
        if end_ms is not None:
            body["end_time"] = end_ms
        self._call("runs/update", body)

    def upload(self, run_id: str, local_file: Path, artifact_dir: str | None) -> None:
        artifact_uri = self._artifact_uris.get(run_id) or self._run_info(run_id).get(
            "artifact_uri", ""
        )
        if not artifact_uri.startswith("mlflow-artifacts:"):
            return self._upload_with_mlflow(run_id, local_file, artifact_dir)
        root = urllib.parse.urlsplit(artifact_uri).path.strip("/")
        parts = [
            root,
            *(artifact_dir.strip("/").split("/") if artifact_dir else []),
            local_file.name,
        ]
        path = ARTIFACTS_API + "/".join(urllib.parse.quote(p) for p in parts if p)
        headers = dict(self._headers)
        headers["Content-Type"] = (
            mimetypes.guess_type(local_file.name)[0] or "application/octet-stream"
        )
        self._request("PUT", path, local_file.read_bytes(), headers)

    def _upload_with_mlflow(self, run_id: str, local_file: Path, artifact_dir: str | None) -> None:
        """Artifacts the server does not proxy (s3://, a shared path): MLflow's client."""
        if self._fallback is None:
            from gradwatch.tracking.client_store import ClientStore

            self._fallback = ClientStore(self._uri, self.request_timeout)
        self._fallback.upload(run_id, local_file, artifact_dir)
