"""Alerts: rules over training statistics and gradient checks, delivered while training runs.

    from gradwatch.alerts import AlertEngine, Delivery, StepObservation, default_rules
    engine, delivery = AlertEngine(default_rules()), Delivery()
    for alert in engine.observe_step(StepObservation(step=3, loss=9025.0, lr=10.0)):
        delivery.deliver(alert)

Detectors (``gradwatch.alerts.detectors``) are pure; the engine adds cooldown and
de-duplication; delivery does the I/O. MLflow is imported only by the baseline loader.
"""

from __future__ import annotations

from gradwatch.alerts.baseline import attach_baselines, find_baseline_run, load_baseline
from gradwatch.alerts.delivery import (
    Delivery,
    DeliveryError,
    EmailSpec,
    WebhookSpec,
    redact_url,
)
from gradwatch.alerts.detectors import DETECTORS, PROBLEMS, Detector, Finding, build_detector
from gradwatch.alerts.engine import AlertEngine, EngineState
from gradwatch.alerts.observations import SEVERITIES, Alert, CheckObservation, StepObservation
from gradwatch.alerts.rules import (
    ACTIONS,
    DEFAULT_COOLDOWN,
    RULE_KEYS,
    Rule,
    check_action,
    default_rules,
    validate_rule,
)

__all__ = [
    "PROBLEMS",
    "ACTIONS",
    "DEFAULT_COOLDOWN",
    "DETECTORS",
    "RULE_KEYS",
    "SEVERITIES",
    "Alert",
    "AlertEngine",
    "CheckObservation",
    "Delivery",
    "DeliveryError",
    "EmailSpec",
    "Detector",
    "EngineState",
    "Finding",
    "Rule",
    "StepObservation",
    "WebhookSpec",
    "attach_baselines",
    "build_detector",
    "check_action",
    "default_rules",
    "find_baseline_run",
    "load_baseline",
    "redact_url",
    "validate_rule",
]
