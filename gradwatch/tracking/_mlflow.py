"""The one place the tracking pipeline talks to MLflow's internals.

    store = make_store(uri, request_timeout=10.0)      # fail-fast for http(s) servers
    upload_artifact(repo, local_file, "gradwatch", request_timeout=10.0)

Why a dedicated store: MLflow's REST client retries every request with urllib3 backoff
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=7``, backoff factor 2: ~4 minutes in all) and
``RestStore._call_endpoint`` gives no way to pass ``max_retries``/``timeout`` per call.
A shipper using the plain client would sit minutes inside one call after a server restart.
The shipper already retries on its own (journal on disk, backoff 0.5 s doubling to a few
seconds), so its calls must fail fast instead. ``_FailFastRestStore`` overrides only
``_call_endpoint`` and calls ``mlflow.utils.rest_utils.http_request`` with
``max_retries=0`` and a short timeout - the same recipe MLflow uses for its own
``/version`` probe - so the user's global MLflow environment variables and their own
``MlflowClient`` are untouched. Non-HTTP URIs (sqlite, file, ...) use MLflow's normal store.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from functools import partial
from math import isfinite
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.service_pb2 import LogBatch
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
from mlflow.store.tracking.rest_store import RestStore
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.proto_json_utils import parse_dict
from mlflow.utils.rest_utils import augmented_raise_for_status, http_request, verify_rest_response

__all__ = [
    "MAX_ENTITIES",
    "MAX_KEY",
    "MAX_METRICS",
    "MAX_PARAMS_TAGS",
    "MAX_PARAM_VALUE",
    "MAX_REQUEST_BYTES",
    "MAX_TAG_VALUE",
    "is_permanent",
    "log_batch",
    "make_store",
    "safe_key",
    "truncate_value",
    "upload_artifact",
]

# mlflow/utils/validation.py limits for one log_batch request.
MAX_METRICS = 1000
MAX_PARAMS_TAGS = 100
MAX_ENTITIES = 1000
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
# The server rejects a request body over 1e6 bytes; 100 long tags alone are 800 kB.
MAX_REQUEST_BYTES = 900_000

TRUNCATION_MARK = "...[truncated by gradwatch]"

_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_key_cache: dict[str, str] = {}


class _FailFastRestStore(RestStore):
    """RestStore whose requests are never retried by urllib3 and time out quickly."""

    def __init__(self, get_host_creds: Any, request_timeout: float) -> None:
        super().__init__(get_host_creds)
        self._request_timeout = request_timeout

    def _call_endpoint(
        self, api, json_body=None, endpoint=None, retry_timeout_seconds=None, response_proto=None
    ):
        # Mirrors RestStore._call_endpoint + rest_utils.call_endpoint (mlflow 3.x), adding
        # max_retries=0 and our timeout.
        method_to_info = self._V3_METHOD_TO_INFO if api in self._V3_APIS else self._METHOD_TO_INFO
        self._validate_workspace_support_if_specified()
        if endpoint:
            _, method = method_to_info[api]
        else:
            endpoint, method = method_to_info[api]
        body = json.loads(json_body) if json_body is not None else None
        kwargs = {"params": body} if method == "GET" else {"json": body}
        response = http_request(
            self.get_host_creds(),
            endpoint,
            method,
            max_retries=0,
            timeout=self._request_timeout,
            **kwargs,
        )
        response = verify_rest_response(response, endpoint)
        proto = response_proto or api.Response()
        if response.status_code == 204:
            return proto
        parse_dict(js_dict=json.loads(response.text), message=proto)
        return proto

    def log_batch_raw(
        self,
        run_id: str,
        metrics: list[tuple[str, float, int, int]],
        params: list[tuple[str, str]],
        tags: list[tuple[str, str]],
    ) -> None:
        """LogBatch from plain tuples, JSON-encoded by the C encoder.

        MLflow's own path (entity -> proto -> pure-Python indented JSON) cost ~100 us of
        client CPU per metric here, all of it on the training process's GIL; this one a
        few us. Same endpoint, same request body as RestStore.log_batch.
        """
        endpoint, method = self._METHOD_TO_INFO[LogBatch]
        body = {
            "run_id": run_id,
            "metrics": [
                {
                    "key": k,
                    "value": v if isfinite(v) else _NONFINITE[str(v)],
                    "timestamp": ts,
                    "step": st,
                }
                for k, v, ts, st in metrics
            ],  # fmt: skip
            "params": [{"key": k, "value": v} for k, v in params],
            "tags": [{"key": k, "value": v} for k, v in tags],
        }
        response = http_request(
            self.get_host_creds(),
            endpoint,
            method,
            max_retries=0,
            timeout=self._request_timeout,
            json=body,
        )
        verify_rest_response(response, endpoint)


# Protobuf's JSON form of non-finite doubles (requests refuses bare NaN in JSON bodies).
_NONFINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def log_batch(
    store: Any,
    run_id: str,
    metrics: list[tuple[str, float, int, int]],
    params: list[tuple[str, str]],
    tags: list[tuple[str, str]],
) -> None:
    """One LogBatch of plain tuples to any tracking store."""
    if isinstance(store, _FailFastRestStore):
        store.log_batch_raw(run_id, metrics, params, tags)
    else:
        store.log_batch(
            run_id,
            metrics=[Metric(k, v, ts, st) for k, v, ts, st in metrics],
            params=[Param(k, v) for k, v in params],
            tags=[RunTag(k, v) for k, v in tags],
        )


def make_store(tracking_uri: str, request_timeout: float = 10.0) -> Any:
    """A tracking store for ``tracking_uri``: fail-fast REST for http(s), MLflow's otherwise."""
    if tracking_uri.startswith(("http://", "https://")):
        return _FailFastRestStore(partial(get_default_host_creds, tracking_uri), request_timeout)
    from mlflow.tracking._tracking_service.utils import _get_store

    return _get_store(tracking_uri)


def artifact_repo(artifact_uri: str, tracking_uri: str) -> ArtifactRepository:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)


def upload_artifact(
    repo: ArtifactRepository,
    local_file: str | os.PathLike,
    artifact_path: str | None,
    request_timeout: float = 10.0,
) -> None:
    """Upload one file (overwriting), failing fast for the proxied HTTP artifact store."""
    local_file = os.fspath(local_file)
    if isinstance(repo, HttpArtifactRepository) and not repo._should_multipart_upload(local_file):
        # Same request as HttpArtifactRepository.log_artifact, without urllib3 retries.
        from mlflow.utils.mime_type_utils import _guess_mime_type

        name = os.path.basename(local_file)
        endpoint = posixpath.join("/", *((artifact_path, name) if artifact_path else (name,)))
        with open(local_file, "rb") as f:
            resp = http_request(
                repo._host_creds,
                endpoint,
                "PUT",
                data=f,
                extra_headers={"Content-Type": _guess_mime_type(name)},
                max_retries=0,
                timeout=request_timeout,
            )
        augmented_raise_for_status(resp)
    else:
        repo.log_artifact(local_file, artifact_path)


# Error codes with which a server (or the embedded store) rejects the request itself:
# sending it again cannot succeed. Everything else (connection refused, timeouts, 5xx,
# 429) is transient and retried with backoff.
_PERMANENT_CODES = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE"}


def is_permanent(err: BaseException) -> bool:
    """True if ``err`` means the request is invalid rather than the server unavailable."""
    return isinstance(err, MlflowException) and err.error_code in _PERMANENT_CODES


def safe_key(key: object) -> str:
    """A valid MLflow key for ``key``: bad characters -> "_", path-normalised, <= 250 chars.

    Over-long keys keep a hash of the original so two long keys stay distinct.
    """
    raw = key if isinstance(key, str) else str(key)
    cached = _key_cache.get(raw)
    if cached is not None:
        return cached
    out = _BAD_KEY_CHARS.sub("_", raw)
    # MLflow rejects names that a path normalisation would change ("a//b", "./a", "a/").
    out = posixpath.normpath(out) if out else "_"
    while out.startswith(("/", "..")):
        out = out.lstrip("/")
        if out.startswith(".."):
            out = "_" + out[2:]
    if out in ("", "."):
        out = "_"
    if len(out) > MAX_KEY:
        digest = hashlib.sha1(raw.encode()).hexdigest()[:8]
        out = out[: MAX_KEY - 9].rstrip("/") + "-" + digest
    if len(_key_cache) < 100_000:
        _key_cache[raw] = out
    return out


def truncate_value(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, marked so the cut is visible in the UI."""
    if len(value) <= limit:
        return value
    return value[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK
