"""The ``mlflow`` alert action: how an alert is recorded in its run, for the hook and the monitor.

    sink = MlflowAlertSink(run)                 # run: anything with set_tags / log_metrics
    sink.record(alert, timestamp_ms)            # tag gradwatch.alert.<rule>, alerts/count, ...

The hook records through its journal run (``gradwatch.tracking`` ``Run``); ``gradwatch
monitor`` through :class:`ClientRecorder` (an ``MlflowClient`` and a run id). Both write the
same names (:mod:`gradwatch.schema`), so ``compare`` counts an alert whichever side raised it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from gradwatch.alerts.observations import Alert
from gradwatch.mlflow_access import log_metrics, log_tags
from gradwatch.schema import ALERT_COUNT, ARTIFACT_ALERTS, TAG_ALERT

__all__ = ["MAX_TAG_TEXT", "ClientRecorder", "MlflowAlertSink", "RunRecorder"]

#: Alert texts are cut to this many characters in the tag (MLflow allows 8000).
MAX_TAG_TEXT = 5000


class RunRecorder(Protocol):
    """What the sink writes through: the journal ``Run`` of the hook has exactly these."""

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_metrics(
        self, step: int, metrics: dict[str, float], timestamp_ms: int | None = None
    ) -> None: ...


class MlflowAlertSink:
    """Records each alert in the run: tag ``gradwatch.alert.<rule>`` (its latest text), the
    running ``alerts/count`` at the alert's step, and a line of ``gradwatch/alerts.jsonl``
    when the recorder can append artifact lines.

        sink = MlflowAlertSink(run); sink.record(alert); sink.count  # alerts recorded

    ``log_count=False`` leaves ``alerts/count`` alone: a process that sees only some of a
    run's alerts (the monitor) must not restart the hook's count.
    """

    def __init__(self, recorder: RunRecorder, log_count: bool = True) -> None:
        self.recorder = recorder
        self.log_count = log_count
        self.count = 0

    def record(self, alert: Alert, timestamp_ms: int | None = None) -> None:
        """Write ``alert`` to the run (stamped with the observed step's time when known)."""
        self.count += 1
        self.recorder.set_tags({TAG_ALERT + alert.rule: alert.text()[:MAX_TAG_TEXT]})
        if self.log_count:
            when = int(alert.timestamp * 1000) if alert.timestamp else timestamp_ms
            self.recorder.log_metrics(alert.step, {ALERT_COUNT: float(self.count)}, when)
        append = getattr(self.recorder, "append_artifact_line", None)
        if append is not None:
            append(ARTIFACT_ALERTS, alert.to_dict())


class ClientRecorder:
    """A :class:`RunRecorder` over an ``MlflowClient``: writes go straight to the server.

    sink = MlflowAlertSink(ClientRecorder(client, run_id), log_count=False)
    """

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def set_tags(self, tags: Mapping[str, str]) -> None:
        log_tags(self.client, self.run_id, tags)

    def log_metrics(
        self, step: int, metrics: Mapping[str, float], timestamp_ms: int | None = None
    ) -> None:
        log_metrics(self.client, self.run_id, step, metrics, timestamp_ms)
