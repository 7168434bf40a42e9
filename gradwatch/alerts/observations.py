"""What the alert detectors see, and what they emit.

    obs = StepObservation(step=120, loss=0.41, lr=0.1, grad_norms={"W1": 0.8})
    chk = CheckObservation(step=200, report=report.to_dict())
    alert.to_dict()   # JSON-ready, for webhooks and gradwatch/alerts.jsonl

The hook turns numpy values into plain Python floats/ints before building an observation,
so detectors never touch numpy arrays and can be replayed from a journal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SEVERITIES",
    "SEVERITY_LOG_LEVELS",
    "Alert",
    "CheckObservation",
    "StepObservation",
    "severity_rank",
]

#: Severity levels, least to most severe.
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
#: The logging level an alert of each severity is logged at.
SEVERITY_LOG_LEVELS: dict[str, int] = {
    "info": logging.INFO,
    "warning": logging.WARNING,
    "critical": logging.CRITICAL,
}


def severity_rank(severity: str) -> int:
    """Order of ``severity`` in :data:`SEVERITIES` (``info`` = 0 ... ``critical`` = 2)."""
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class StepObservation:
    """One training step as the detectors see it.

        StepObservation(step=7, loss=0.3, lr=0.01, grad_norms={"W1": 1.2}, nonfinite={"W1": 0})

    ``grad_norms``, ``param_norms`` and ``update_ratios`` (``||Δθ|| / ||θ||`` of the step's
    update) are filled only on statistics steps; ``nonfinite`` maps a tensor name to its count
    of NaN/Inf values in gradients plus parameters. ``timestamp`` is seconds since the epoch.
    ``metrics`` holds any other metric logged at this step under its MLflow name
    (``grad_zero_frac/W1``, ``grad_abs_p99/W1``, a user's ``val_acc``): what the ``threshold``
    and ``dead_units`` rules read besides the fields above.
    """

    step: int
    loss: float | None = None
    lr: float | None = None
    grad_norms: Mapping[str, float] | None = None
    param_norms: Mapping[str, float] | None = None
    update_ratios: Mapping[str, float] | None = None
    nonfinite: Mapping[str, int] | None = None
    timestamp: float | None = None
    metrics: Mapping[str, float] | None = None


@dataclass(frozen=True)
class CheckObservation:
    """The result of one gradient check: ``report`` is ``CheckReport.to_dict()``.

    CheckObservation(step=500, report=check_gradients(loss_fn, params, grads).to_dict())
    """

    step: int
    report: Mapping[str, Any]
    timestamp: float | None = None


@dataclass(frozen=True)
class Alert:
    """A fired rule, after cooldown and de-duplication.

        Alert(rule="loss_divergence", kind="loss_divergence", severity="critical", step=3,
              message="...", details={...}, actions=("log", "mlflow"), timestamp=1.7e9)

    ``kind`` is the detector type; ``actions`` are the rule's actions (``log``, ``mlflow``,
    ``stop``, ``webhook``, ``webhook:<name>``, ``callback:<name>``).
    """

    rule: str
    kind: str
    severity: str
    step: int
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)
    actions: tuple[str, ...] = ()
    timestamp: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of every field (``actions`` as a list)."""
        return {
            "rule": self.rule,
            "kind": self.kind,
            "severity": self.severity,
            "step": self.step,
            "message": self.message,
            "details": dict(self.details),
            "actions": list(self.actions),
            "timestamp": self.timestamp,
        }

    def text(self) -> str:
        """One human line, used as the Slack ``text`` and the log message."""
        return (
            f"[gradwatch] {self.severity.upper()} {self.rule} at step {self.step}: {self.message}"
        )
