"""Reading only the new points of many runs' metrics, in few calls (for ``gradwatch monitor``).

    reader = NewPoints(client)
    points = reader.read({("run-id", "loss"): (101, 140), ...})   # {(run_id, key): [Metric]}

A poll learns from ``search_runs`` (one call per page of runs) the latest step of every metric
of every run; only the metrics whose latest step moved are read, and only from the first step
not yet seen. Against an http(s) MLflow server the points come from the server's bulk history
endpoints, the ones MLflow's own UI charts use, one request per metric for up to 100 runs:

- runs whose whole history of the metric is short (<= 2,500 steps): ``get-history-bulk``,
  one database query for all of them (up to 25,000 points a request);
- longer ones whose new steps lie within one window of 2,500 steps:
  ``get-history-bulk-interval`` for that window (the server returns every point within it;
  a run with more points than that in the window is read whole, as below).

Elsewhere (a database URI, or a server that does not answer there) each metric is read with
``MlflowClient.get_metric_history``.
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

__all__ = ["BULK_ROWS", "BULK_RUNS", "BULK_STEPS", "NewPoints", "Point"]

logger = logging.getLogger("gradwatch.monitor")

BULK_RUNS = 100  # runs per bulk request (the server's limit)
BULK_STEPS = 2500  # points per run per bulk request (the server's limit; more are sampled)
BULK_ROWS = 25000  # points per whole-history bulk request (the server's limit)
_BULK_PATH = "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval"
_HISTORY_PATH = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
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
        short: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
        windowed: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
        for (run_id, key), (first, last) in wanted.items():
            if self._base is None:
                whole.append((run_id, key))
            elif last + 1 <= BULK_STEPS:  # the whole history is short: one query for many runs
                short[key].append((run_id, first, last))
            elif last - first + 1 <= BULK_STEPS:
                windowed[key].append((run_id, first, last))
            else:
                whole.append((run_id, key))
        requests = [
            (key, batch, self._histories)
            for key, items in short.items()
            for batch in _by_total(items)
        ]
        requests += [
            (key, batch, self._window)
            for key, items in windowed.items()
            for batch in _batches(items)
        ]
        for key, batch, fetch in requests:
            got = fetch(key, batch) if self._base is not None else None
            if got is None:  # no bulk endpoint, or an answer that may be cut: read them whole
                whole += [(run_id, key) for run_id, _, _ in batch]
                continue
            for run_id, first, _ in batch:
                points = got.get(run_id, [])
                if len(points) >= BULK_STEPS and fetch == self._window:  # maybe sampled
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

    def _histories(self, key: str, batch: list[tuple[str, int, int]]) -> dict[str, list] | None:
        """Whole histories of ``key`` for the batch's runs, in one query (``get-history-bulk``)."""
        params = {
            "run_id": [run_id for run_id, _, _ in batch],
            "metric_key": key,
            "max_results": BULK_ROWS,
        }
        got = self._get(_HISTORY_PATH, params, key)
        if got is not None and sum(len(p) for p in got.values()) >= BULK_ROWS:
            return None  # cut at the server's limit
        return got

    def _window(self, key: str, batch: list[tuple[str, int, int]]) -> dict[str, list] | None:
        """The batch's points of ``key`` within one step window (``get-history-bulk-interval``)."""
        params = {
            "run_ids": [run_id for run_id, _, _ in batch],
            "metric_key": key,
            "start_step": min(first for _, first, _ in batch),
            "end_step": max(last for _, _, last in batch),
            "max_results": BULK_STEPS,
        }
        return self._get(_BULK_PATH, params, key)

    def _get(self, path: str, params: dict, key: str) -> dict[str, list] | None:
        """One bulk request: ``{run_id: [Point]}``, or None when the server has no such API."""
        import requests

        if self._session is None:
            self._session = requests.Session()
            self._session.headers.update({"User-Agent": "gradwatch", **self._auth})
            self._session.verify = _verify()
        self.calls += 1
        try:
            response = self._session.get(self._base + path, params=params, timeout=60)
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


def _by_total(items: list[tuple[str, int, int]]) -> list[list[tuple[str, int, int]]]:
    """Runs grouped so that each group's whole histories fit one request."""
    batches: list[list[tuple[str, int, int]]] = []
    total = 0
    for item in items:
        size = item[2] + 1
        if batches and len(batches[-1]) < BULK_RUNS and total + size <= BULK_ROWS:
            batches[-1].append(item)
            total += size
        else:
            batches.append([item])
            total = size
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
