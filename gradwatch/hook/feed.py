"""The hook's side of the alert engine: steps are queued as typed records and handed to the
engine in batches; whatever fires is dispatched to the run (``mlflow``), the delivery
(``log``, webhooks, callbacks) and, for ``stop``, back to the hook.

    feed = AlertFeed(engine, delivery, run)
    feed.pending.append(PendingStep(step, loss, lr, None, None, timestamp))   # every step
    if feed.due(now): feed.flush(now)                                          # every few steps
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, NamedTuple

from gradwatch.alert_sink import MlflowAlertSink
from gradwatch.alerts import Alert, AlertEngine, CheckObservation, Delivery, StepObservation
from gradwatch.hook.statistics import StepStats

__all__ = ["ALERT_BATCH_STEPS", "ALERT_MAX_DELAY", "AlertFeed", "PendingStep"]

logger = logging.getLogger("gradwatch")

#: Alerts are evaluated in batches of this many steps (at once on statistics, checks and a
#: non-finite loss; every step when a rule can stop training)...
ALERT_BATCH_STEPS = 32
#: ...and at least this often, in seconds.
ALERT_MAX_DELAY = 1.0


class PendingStep(NamedTuple):
    """One step waiting for the alert engine (a tuple's cost on the hot path, with names)."""

    step: int
    loss: float | None
    lr: float | None
    update_ratios: dict[str, float] | None
    stats: StepStats | None
    timestamp: float  # seconds since the epoch

    def observation(self) -> StepObservation:
        stats = self.stats
        return StepObservation(
            step=self.step,
            loss=self.loss,
            lr=self.lr,
            grad_norms=stats.grad_norms if stats else None,
            param_norms=stats.param_norms if stats else None,
            update_ratios=self.update_ratios,
            nonfinite=stats.nonfinite if stats else None,
            timestamp=self.timestamp,
            # Every other metric of the step, for `threshold` and `dead_units` rules.
            metrics=stats.metrics if stats else None,
        )


class AlertFeed:
    """Batches steps into the alert engine and dispatches the alerts that fire."""

    def __init__(self, engine: AlertEngine, delivery: Delivery, run: Any) -> None:
        self.engine = engine
        self.delivery = delivery
        self.run = run
        self.sink = MlflowAlertSink(run)  # the `mlflow` action, as the monitor records it
        # A rule that stops training must see every step as it happens.
        stops = any("stop" in r.actions for r in engine.rules)
        self.batch = 1 if stops else ALERT_BATCH_STEPS
        self.pending: list[PendingStep] = []
        self.fed_at = time.perf_counter()
        self.alerts: list[Alert] = []
        self.stop_alert: Alert | None = None
        # Every step passes through here: the loss and lr values logged so far, counted per
        # flush (not per step) for the budget, which pays for shipping them.
        self.scalars_fed = 0

    def due(self, now: float) -> bool:
        return len(self.pending) >= self.batch or now - self.fed_at >= ALERT_MAX_DELAY

    def flush(self, now: float) -> None:
        """Give the engine the steps queued since the last flush; dispatch what fires."""
        self.fed_at = now
        pending, self.pending = self.pending, []
        self.scalars_fed += sum((p.loss is not None) + (p.lr is not None) for p in pending)
        observations = [p.observation() for p in pending]
        for alert in self.engine.observe_steps(observations):
            self.dispatch(alert)

    def observe_check(self, step: int, report: dict[str, Any], timestamp: float) -> list[Alert]:
        """Alerts on a check's report. Those with the ``log`` action are returned for the
        caller to print together with the report (one failure prints once); every other
        action is dispatched here."""
        fired = self.engine.observe_check(CheckObservation(step, report, timestamp))
        logged = [a for a in fired if "log" in a.actions]
        for alert in fired:
            quiet = tuple(a for a in alert.actions if a != "log")
            self.dispatch(alert, dataclasses.replace(alert, actions=quiet))
        return logged

    def dispatch(self, alert: Alert, delivered: Alert | None = None) -> None:
        """Record ``alert``; hand ``delivered`` (default: the alert itself) to the delivery."""
        self.alerts.append(alert)
        self.delivery.deliver(delivered or alert)
        if "mlflow" in alert.actions:
            # Stamped with the observed step's time (alerts are evaluated in batches).
            self.sink.record(alert, int(time.time() * 1000))
        if "stop" in alert.actions and self.stop_alert is None:
            self.stop_alert = alert

    @property
    def count(self) -> int:
        """Alerts recorded with the ``mlflow`` action (the ``alerts/count`` metric)."""
        return self.sink.count

    def close(self) -> None:
        """At close: the steps since the last batch still get their alerts."""
        if not self.pending:
            return
        try:
            self.flush(time.perf_counter())
        except Exception as exc:  # noqa: BLE001 - closing the run matters more
            logger.warning("gradwatch: alerts for the last steps failed: %s", exc)
