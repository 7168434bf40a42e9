"""Rules, and the engine that runs their detectors with cooldown and de-duplication.

    engine = AlertEngine(default_rules())            # or load_config().rules
    for alert in engine.observe_step(StepObservation(step=s, loss=loss, lr=lr)):
        delivery.deliver(alert)
    engine.observe_check(CheckObservation(step=s, report=report.to_dict()))

Each rule owns one detector (see :mod:`gradwatch.alerts.detectors`). A rule fires at most one
alert per observation; after an alert it is quiet for ``cooldown`` steps, so a run that keeps
failing sends one message per rule per cooldown, not one per step. A finding more severe than
the rule's last alert (warning -> critical) is let through the cooldown: escalation is news.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from gradwatch.alerts.detectors import DETECTORS, Detector
from gradwatch.alerts.observations import Alert, CheckObservation, StepObservation, severity_rank
from gradwatch.alerts.rules import (
    ACTIONS,
    DEFAULT_ACTIONS,
    DEFAULT_COOLDOWN,
    Rule,
    check_action,
    default_rules,
    validate_rule,
)
from gradwatch.errors import ConfigError

logger = logging.getLogger("gradwatch.alerts")

#: (engine's detectors, rule) pairs whose detector raised: said once, not at every step.
_FAILED_RULES: set[tuple[int, str]] = set()

__all__ = [
    "ACTIONS",
    "DEFAULT_ACTIONS",
    "DEFAULT_COOLDOWN",
    "AlertEngine",
    "EngineState",
    "Rule",
    "check_action",
    "default_rules",
    "validate_rule",
]


class EngineState(NamedTuple):
    """Everything the engine knows; replaced, never mutated, on each observation."""

    detectors: Mapping[str, Any]  # rule name -> detector state
    last_step: Mapping[str, int]  # rule name -> step of its last alert
    last_severity: Mapping[str, str]  # rule name -> severity of its last alert
    fired: Mapping[str, int]  # rule name -> alerts emitted
    suppressed: Mapping[str, int]  # rule name -> findings swallowed by the cooldown
    total: int  # alerts emitted, all rules


class AlertEngine:
    """Runs each enabled rule's detector on every observation and applies cooldowns.

        engine = AlertEngine(config.rules)
        alerts = engine.observe_step(obs)     # list[Alert], usually empty
        engine.state.fired                    # {"loss_divergence": 1, ...}

    Disabled rules and rules only ``gradwatch monitor`` can judge (``stale_run``) are left
    out of ``rules``. Not thread-safe: call it from the training thread (it is cheap and does
    no I/O).
    """

    def __init__(self, rules: Iterable[Rule] | None = None) -> None:
        rules = default_rules() if rules is None else list(rules)
        names = [r.name for r in rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"duplicate rule name(s): {', '.join(dupes)}", key="name")
        # Monitor-only rules (stale_run) are accepted in a rules file the hook shares with
        # `gradwatch monitor`, but only the monitor can judge them.
        self.rules: tuple[Rule, ...] = tuple(
            r for r in rules if r.enabled and not DETECTORS[r.type].monitor_only
        )
        # Plain loss steps (most steps) skip the rules that read only statistics steps.
        self._plain_rules = tuple(r for r in self.rules if not DETECTORS[r.type].statistics_only)
        self._detectors = {r.name: r.detector() for r in self.rules}
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far (start of a new run)."""
        self._state = EngineState(
            detectors={name: det.init() for name, det in self._detectors.items()},
            last_step={},
            last_severity={},
            fired={},
            suppressed={},
            total=0,
        )

    @property
    def state(self) -> EngineState:
        """The current immutable state, for inspection and tests."""
        return self._state

    def observe_step(self, obs: StepObservation) -> list[Alert]:
        """Feed one training step; return the alerts that survive cooldown (in rule order)."""
        return self._observe(obs)

    def observe_steps(self, observations: Iterable[StepObservation]) -> list[Alert]:
        """Feed several steps in order; the same alerts as ``observe_step`` on each in turn.

        alerts = engine.observe_steps([StepObservation(s, loss) for s, loss in batch])
        """
        alerts, self._state = _apply(self._rule_sets, self._detectors, self._state, observations)
        return alerts

    def observe_check(self, obs: CheckObservation) -> list[Alert]:
        """Feed one gradient-check report; return the alerts that survive cooldown."""
        return self._observe(obs)

    def _observe(self, obs: StepObservation | CheckObservation) -> list[Alert]:
        alerts, self._state = _apply(self._rule_sets, self._detectors, self._state, (obs,))
        return alerts

    @property
    def _rule_sets(self) -> tuple[tuple[Rule, ...], tuple[Rule, ...]]:
        return self.rules, self._plain_rules


def _apply(
    rule_sets: tuple[tuple[Rule, ...], tuple[Rule, ...]],
    detectors: Mapping[str, Detector],
    state: EngineState,
    observations: Iterable[StepObservation | CheckObservation],
) -> tuple[list[Alert], EngineState]:
    # One copy of the state per batch of observations, not per observation: the hook feeds
    # steps in batches, and this is most of the per-step cost of alerting.
    det_states = dict(state.detectors)
    last_step, last_sev = dict(state.last_step), dict(state.last_severity)
    fired, suppressed = dict(state.fired), dict(state.suppressed)
    alerts: list[Alert] = []
    rules, plain_rules = rule_sets
    for obs in observations:
        plain = isinstance(obs, StepObservation) and not (
            obs.grad_norms or obs.update_ratios or obs.param_norms or obs.metrics or obs.nonfinite
        )
        _apply_one(
            plain_rules if plain else rules,
            detectors,
            obs,
            det_states,
            last_step,
            last_sev,
            fired,
            suppressed,
            alerts,
        )
    new_state = EngineState(
        det_states, last_step, last_sev, fired, suppressed, state.total + len(alerts)
    )
    return alerts, new_state


def _apply_one(rules, detectors, obs, det_states, last_step, last_sev, fired, suppressed, alerts):
    """Run every rule on ``obs``, updating the batch's working copies of the state."""
    now = obs.timestamp if obs.timestamp is not None else time.time()
    for rule in rules:
        try:
            finding, det_states[rule.name] = detectors[rule.name].update(det_states[rule.name], obs)
        except Exception as err:  # noqa: BLE001 - a detector's fault never stops training
            if (id(detectors), rule.name) not in _FAILED_RULES:
                _FAILED_RULES.add((id(detectors), rule.name))
                logger.error(
                    "gradwatch: alert rule %r failed at step %s (%s: %s); it skips the "
                    "observations it cannot read, training goes on",
                    rule.name,
                    obs.step,
                    type(err).__name__,
                    err,
                )
            continue
        if finding is None:
            continue
        severity = rule.severity or finding.severity or rule.default_severity or "warning"
        prev = last_step.get(rule.name)
        escalated = severity_rank(severity) > severity_rank(last_sev.get(rule.name, "critical"))
        if prev is not None and 0 <= obs.step - prev < rule.cooldown and not escalated:
            suppressed[rule.name] = suppressed.get(rule.name, 0) + 1
            continue
        last_step[rule.name], last_sev[rule.name] = obs.step, severity
        fired[rule.name] = fired.get(rule.name, 0) + 1
        alerts.append(
            Alert(
                rule=rule.name,
                kind=rule.type,
                severity=severity,
                step=obs.step,
                message=finding.message,
                details=dict(finding.details),
                actions=rule.actions,
                timestamp=now,
            )
        )
