"""Old import path of :mod:`gradwatch.runs.monitor` (``gradwatch monitor``)."""

from __future__ import annotations

from gradwatch.runs.monitor import (
    BASELINE_TAG,
    DEFAULT_INTERVAL,
    DEFAULT_SETTLE,
    STALE_RULE,
    TAG_ALERTED,
    TAG_STATE,
    Monitor,
    PollResult,
    alert_for_run,
    check_report,
    observations,
    settled_upto,
)

__all__ = [
    "BASELINE_TAG",
    "DEFAULT_INTERVAL",
    "DEFAULT_SETTLE",
    "STALE_RULE",
    "TAG_ALERTED",
    "TAG_STATE",
    "Monitor",
    "PollResult",
    "alert_for_run",
    "check_report",
    "observations",
    "settled_upto",
]
