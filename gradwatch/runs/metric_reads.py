"""Reading only the new points of many runs' metrics, in few calls (for ``gradwatch monitor``).

    reader = NewPoints(client)
    points = reader.read({("run-id", "loss"): (101, 140), ...})   # {(run_id, key): [Metric]}

A poll learns from ``search_runs`` (one call per page of runs) the latest step of every metric
of every run; only the metrics whose latest step moved are read, and only from the first step
not yet seen. Against an http(s) MLflow server the points come from the server's bulk history
endpoint (``/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval``, the one MLflow's own UI
charts use): one request per metric for up to 100 runs whose new steps lie within one window of
2,500 steps (within that window the server returns every point; a run that has more points
than that in the window is read whole, as below). Elsewhere (a database URI, or a server that
does not answer there) each metric is read with ``MlflowClient.get_metric_history``.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, NamedTuple

from gradwatch.errors import TrackingError
from gradwatch.secrets import mask_uri, split_userinfo

__all__ = ["BULK_RUNS", "BULK_STEPS", "NewPoints", "Point"]

logger = logging.getLogger("gradwatch.monitor")

BULK_RUNS = 100  # runs per bulk request (the server's limit)
BULK_STEPS = 2500  # points per run per bulk request (the server's limit; more are sampled)
_BULK_PATH = "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval"
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class Point(NamedTuple):
    """One logged value, shaped like MLflow's ``Metric`` (what the readers of histories use)."""

    key: str
    value: float
    timestamp: int
    step: int


#: ``(run_id, key)`` -> ``(first step wanted, latest step known)``
Wanted = Mapping[tuple[str, str], tuple[int, int]]


class NewPoints:
    """Reads the points of ``(run, metric)`` pairs from a first step on; see the module doc.

    ``calls`` counts the requests made (the benchmark reports it).
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls = 0
        uri = str(client.tracking_uri)
        self._session: Any = None
        self._base: str | None = None
        if uri.startswith(("http://", "https://")):
            bare, user, password = split_userinfo(uri)
            self._base = bare.rstrip("/")
            self._auth = _auth(user, password)

    def read(self, wanted: Wanted) -> dict[tuple[str, str], list]:
        """The points at steps >= the first step wanted, per pair (sorted by step, time)."""
        out: dict[tuple[str, str], list] = {}
        whole: list[tuple[str, str]] = []
        by_key: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
        for (run_id, key), (first, last) in wanted.items():
            if self._base is None or last - first + 1 > BULK_STEPS:
                whole.append((run_id, key))
            else:
                by_key[key].append((run_id, first, last))
        for key, items in by_key.items():
            for batch in _batches(items):
                got = self._bulk(key, batch)
                if got is None:  # the server has no bulk endpoint: read every pair whole
                    whole += [(run_id, key) for run_id, _, _ in batch]
                    continue
                for run_id, first, _ in batch:
                    points = got.get(run_id, [])
                    if len(points) >= BULK_STEPS:  # maybe sampled: read it whole
                        whole.append((run_id, key))
                    else:
                        out[(run_id, key)] = [m for m in points if m.step >= first]
        for run_id, key in whole:
            first = wanted[(run_id, key)][0]
            self.calls += 1
            history = self.client.get_metric_history(run_id, key)
            out[(run_id, key)] = sorted(
                (m for m in history if m.step >= first), key=lambda m: (m.step, m.timestamp)
            )
        return out

    def _bulk(self, key: str, batch: list[tuple[str, int, int]]) -> dict[str, list] | None:
        """One bulk request: ``{run_id: [Metric]}``, or None when the server has no such API."""
        import requests

        if self._session is None:
            self._session = requests.Session()
            self._session.headers.update({"User-Agent": "gradwatch", **self._auth})
            self._session.verify = _verify()
        params = {
            "run_ids": [run_id for run_id, _, _ in batch],
            "metric_key": key,
            "start_step": min(first for _, first, _ in batch),
            "end_step": max(last for _, _, last in batch),
            "max_results": BULK_STEPS,
        }
        self.calls += 1
        try:
            response = self._session.get(self._base + _BULK_PATH, params=params, timeout=60)
        except requests.RequestException as err:
            raise TrackingError(
                f"MLflow at {mask_uri(self.client.tracking_uri)}: {type(err).__name__}: "
                f"{mask_uri(err)}"
            ) from None
        if response.status_code in (404, 405, 501):
            logger.debug("no bulk history at %s: reading metric by metric", mask_uri(self._base))
            self._base = None
            return None
        if response.status_code != 200:
            raise TrackingError(
                f"MLflow at {mask_uri(self.client.tracking_uri)}: bulk metric history answered "
                f"HTTP {response.status_code}: {mask_uri(response.text[:200])}"
            )
        out: dict[str, list] = defaultdict(list)
        for m in response.json().get("metrics", []):
            value = m.get("value", math.nan)
            value = _NONFINITE.get(value, value) if isinstance(value, str) else value
            out[m["run_id"]].append(
                Point(key, float(value), int(m.get("timestamp", 0)), int(m.get("step", 0)))
            )
        for points in out.values():
            points.sort(key=lambda m: (m.step, m.timestamp))
        return out


def _batches(items: list[tuple[str, int, int]]) -> list[list[tuple[str, int, int]]]:
    """Runs grouped so that each group's steps fit one window and one request."""
    batches: list[list[tuple[str, int, int]]] = []
    for item in sorted(items, key=lambda i: (i[1], i[2])):
        if batches:
            batch = batches[-1]
            start = min(i[1] for i in batch)
            end = max(item[2], *(i[2] for i in batch))
            if len(batch) < BULK_RUNS and end - start + 1 <= BULK_STEPS:
                batch.append(item)
                continue
        batches.append([item])
    return batches


def _auth(user: str | None, password: str | None) -> dict[str, str]:
    """The Authorization header MLflow's client would send (URI userinfo, then MLflow's env)."""
    import base64

    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user is not None and password is None:  # https://TOKEN@host
        token, user = user, None
    user = user or os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = password or os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        }
    if token:
        return {"Authorization": f"Bearer {token}"}
    return {}


def _verify() -> bool | str:
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return False
    return os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True
