"""The MLflow side of shipping: the small interface the shipper uses, and how to pick one.

    store = open_store("http://127.0.0.1:5000", request_timeout=10.0)   # RestApiStore
    store = open_store("sqlite:////abs/mlflow.db")                      # ClientStore
    exp_id = store.experiment_id("mlp"); run = store.create_run(...)

Two implementations, same methods: ``RestApiStore`` (rest.py) speaks MLflow's documented REST
API over one keep-alive HTTP connection, so neither the training process nor the shipper
imports MLflow for an http(s) server; ``ClientStore`` (client_store.py) uses MLflow's public
``MlflowClient`` for every other store (the embedded sqlite store, databases, plugins) and for
servers that need MLflow's own auth plugins. Errors are ``StoreError`` with a ``kind``:

    "transient"  outage, timeout, 5xx, 429: retry later, nothing is lost
    "rejected"   MLflow refuses this request's content (400, INVALID_PARAMETER_VALUE):
                 the shipper bisects to drop only the offending entity
    "fatal"      the run cannot receive data at all (deleted experiment or run, permission
                 denied, bad credentials): stop, keep the journal, tell the user
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from gradwatch.tracking.store_error import StoreError, classify_code

__all__ = ["Store", "StoreError", "classify_code", "open_store"]


class Store(Protocol):
    """What the shipper needs from MLflow (both implementations provide exactly this)."""

    request_timeout: float

    def experiment_id(self, name: str | None, experiment_id: str | None) -> str: ...
    def find_run(self, experiment_id: str, tag: str, value: str) -> str | None: ...
    def create_run(
        self,
        experiment_id: str,
        user: str,
        start_ms: int | None,
        tags: dict[str, str],
        name: str | None,
    ) -> str: ...
    def log_batch(self, run_id: str, metrics: list, params: list, tags: list) -> None: ...
    def run_lifecycle(self, run_id: str) -> str: ...
    def end_run(self, run_id: str, status: str, end_ms: int | None) -> None: ...
    def upload(self, run_id: str, local_file: Path, artifact_dir: str | None) -> None: ...
    def close(self) -> None: ...


def _needs_mlflow_auth() -> bool:
    """True if the server's credentials come from something only MLflow itself reads."""
    if any(
        os.environ.get(v)
        for v in (
            "MLFLOW_TRACKING_AUTH",
            "MLFLOW_TRACKING_AWS_SIGV4",
            "MLFLOW_TRACKING_CLIENT_CERT_PATH",
        )
    ):
        return True
    return (Path.home() / ".mlflow" / "credentials").exists()


def open_store(tracking_uri: str, request_timeout: float = 10.0) -> Any:
    """A ``Store`` for ``tracking_uri``: REST for http(s) servers, MlflowClient otherwise."""
    if tracking_uri.startswith(("http://", "https://")) and not _needs_mlflow_auth():
        from gradwatch.tracking.rest import RestApiStore

        return RestApiStore(tracking_uri, request_timeout)
    from gradwatch.tracking.client_store import ClientStore

    return ClientStore(tracking_uri, request_timeout)
