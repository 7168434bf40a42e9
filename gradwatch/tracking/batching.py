"""Pure batching: journal lines -> MLflow ``log_batch`` requests within MLflow's limits.

    plan = plan_batches(lines, offset, acked_seq)       # no I/O, no MLflow
    for batch in plan.batches: send(batch.metrics, batch.param_list(), batch.tag_list())
    rejected = send_bisecting(send, metrics, params, tags, is_rejection)

A request MLflow rejects as invalid is split in halves until each offending entity is alone
(``send_bisecting``), so one bad value costs only itself, never the rest of its batch.
Values no store can hold (a step outside int64, a metric that is not a number) are refused
here, before any request, and reported in ``plan.rejected``.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gradwatch.tracking.journal import (
    ARTIFACT_FILE,
    ARTIFACT_LINE,
    END,
    HEADER,
    METRICS,
    PARAMS,
    TAGS,
    encode_record,
)

__all__ = [
    "MAX_KEY",
    "MAX_PARAM_VALUE",
    "MAX_TAG_VALUE",
    "Batch",
    "BatchPlan",
    "plan_batches",
    "safe_key",
    "send_bisecting",
    "truncate_value",
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
INT64 = (-(2**63), 2**63 - 1)
TRUNCATION_MARK = "...[truncated by gradwatch]"

_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_key_cache: dict[str, str] = {}

Metric = tuple[str, float, int, int]  # key, value, timestamp ms, step


class Batch:
    """One log_batch call plus the journal records it completes."""

    __slots__ = (
        "metrics",
        "params",
        "tags",
        "nbytes",
        "kind",
        "end_offset",
        "end_seq",
        "records",
        "last_ts",
        "art_lines",
        "files",
        "end",
    )

    def __init__(self, end_offset: int, end_seq: int) -> None:
        self.metrics: list[Metric] = []
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.nbytes = 0
        self.kind: str | None = None  # "params" requests never mix with metrics/tags
        self.end_offset = end_offset
        self.end_seq = end_seq
        self.records = 0
        self.last_ts: int | None = None
        self.art_lines: list[tuple[str, str]] = []
        self.files: list[dict[str, Any]] = []
        self.end: dict[str, Any] | None = None

    @property
    def entities(self) -> int:
        return len(self.metrics) + len(self.params) + len(self.tags)

    def param_list(self) -> list[tuple[str, str]]:
        return list(self.params.items())

    def tag_list(self) -> list[tuple[str, str]]:
        return list(self.tags.items())

    def full_for(self, nbytes: int, kind: str, key: str | None = None) -> bool:
        """True if an entity of ``kind`` ("metric", "param", "tag") must open a new batch."""
        if self.entities >= MAX_ENTITIES or self.nbytes + nbytes > MAX_REQUEST_BYTES:
            return not (kind == "tag" and key in self.tags)
        if kind == "metric":
            return self.kind == "params" or len(self.metrics) >= MAX_METRICS
        if kind == "tag":
            return self.kind == "params" or (
                key not in self.tags and len(self.tags) >= MAX_PARAMS_TAGS
            )
        # A repeated param key goes to its own request (MLflow refuses a changed value).
        return self.kind == "data" or key in self.params or len(self.params) >= MAX_PARAMS_TAGS


@dataclass
class BatchPlan:
    """What ``plan_batches`` made of a chunk of journal lines."""

    batches: list[Batch]
    corrupt: list[int] = field(default_factory=list)  # end offsets of lines that did not parse
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # kind, key, why


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _in_int64(value: Any) -> bool:
    return isinstance(value, int) and INT64[0] <= value <= INT64[1]


def plan_batches(
    lines: list[tuple[int, dict[str, Any] | None]],
    offset: int,
    acked_seq: int,
    metric_prefix: str = "",
) -> BatchPlan:
    """Turn ``(end_offset, record)`` lines read from ``offset`` into log_batch requests.

    ``metric_prefix`` goes before every metric key (the hook's series in a run it shares
    with the user's own logging: ``gradwatch/loss``); the journal keeps the bare keys.
    """
    plan = BatchPlan([])
    cur = Batch(offset, acked_seq)

    def room(nbytes: int, kind: str, key: str | None = None) -> Batch:
        nonlocal cur
        if cur.full_for(nbytes, kind, key):
            plan.batches.append(cur)
            cur = Batch(cur.end_offset, cur.end_seq)
        cur.kind = "params" if kind == "param" else "data"
        cur.nbytes += nbytes
        return cur

    for end_offset, rec in lines:
        kind = rec.get("t") if rec is not None else None
        if rec is None or kind is None:
            plan.corrupt.append(end_offset)
        elif kind == METRICS:
            ts, step = rec.get("ts"), rec.get("st")
            if not (_in_int64(ts) and _in_int64(step)):
                plan.rejected.append(
                    ("step", str(step), "step or timestamp is not a 64-bit integer")
                )
            else:
                for key, raw in (rec.get("m") or {}).items():
                    value = _as_float(raw)
                    if value is None:
                        plan.rejected.append(("metric", key, f"value {raw!r} is not a number"))
                        continue
                    mkey = safe_key(metric_prefix + key if metric_prefix else key)
                    room(len(mkey) + 60, "metric").metrics.append((mkey, value, ts, step))
        elif kind == TAGS:
            for key, raw in (rec.get("g") or {}).items():
                tkey, tval = safe_key(key), truncate_value(str(raw), MAX_TAG_VALUE)
                room(len(tkey) + len(tval) + 20, "tag", tkey).tags[tkey] = tval  # later wins
        elif kind == PARAMS:
            for key, raw in (rec.get("p") or {}).items():
                pkey, pval = safe_key(key), truncate_value(str(raw), MAX_PARAM_VALUE)
                room(len(pkey) + len(pval) + 20, "param", pkey).params[pkey] = pval
        elif kind == ARTIFACT_LINE:
            cur.art_lines.append((str(rec.get("path")), encode_record(rec.get("r"))))
        elif kind == ARTIFACT_FILE:
            cur.files.append(rec)
        elif kind == END:
            cur.end = rec
        if rec is not None and kind not in (None, HEADER):
            cur.records += 1
            cur.last_ts = rec.get("ts", cur.last_ts)
        cur.end_offset = end_offset
        if rec is not None and isinstance(rec.get("s"), int):
            cur.end_seq = rec["s"]
    if cur.end_offset != (plan.batches[-1].end_offset if plan.batches else offset):
        plan.batches.append(cur)
    return plan


Send = Callable[[list[Metric], list[tuple[str, str]], list[tuple[str, str]]], None]


def send_bisecting(
    send: Send,
    metrics: list[Metric],
    params: list[tuple[str, str]],
    tags: list[tuple[str, str]],
    is_rejection: Callable[[BaseException], bool],
) -> list[tuple[str, tuple, BaseException]]:
    """Send in halves until every entity MLflow rejects is alone; return those.

    Raises the first error that is not a rejection (an outage: retry the whole batch later).
    """
    try:
        send(metrics, params, tags)
        return []
    except Exception as err:
        if not is_rejection(err):
            raise
        rejection = err
    entities = [("metric", m) for m in metrics]
    entities += [("param", p) for p in params] + [("tag", t) for t in tags]
    if len(entities) <= 1:
        return [(kind, entity, rejection) for kind, entity in entities]
    half = len(entities) // 2
    out = []
    for part in (entities[:half], entities[half:]):
        out += send_bisecting(
            send,
            [e for kind, e in part if kind == "metric"],
            [e for kind, e in part if kind == "param"],
            [e for kind, e in part if kind == "tag"],
            is_rejection,
        )
    return out


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
