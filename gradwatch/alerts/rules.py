"""Alert rules: the one schema of a rule (name, type, severity, cooldown, actions, params).

    rule = validate_rule({"name": "grad-explosion", "type": "grad_norm_drift", "z": 6,
                          "actions": ["log", "webhook:slack"]}, webhooks={"slack"})
    Rule("div", "loss_divergence", params={"factor": 5.0})      # the same checks

Both the YAML loader (:mod:`gradwatch.config`) and Python callers go through the checks
here, so a value is accepted or refused the same way on every path. Every problem is a
:class:`~gradwatch.errors.ConfigError` whose ``key`` names the offending key relative to the
rule (``severity``, ``actions.1``, ``factor``) and whose message lists what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from gradwatch.alerts.detectors import DETECTORS, Detector, build_detector
from gradwatch.alerts.observations import SEVERITIES
from gradwatch.errors import ConfigError, InputError, did_you_mean

__all__ = [
    "ACTIONS",
    "ACTION_PREFIXES",
    "DEFAULT_ACTIONS",
    "DEFAULT_COOLDOWN",
    "DEFAULT_RULE_TYPES",
    "RULE_KEYS",
    "Rule",
    "check_action",
    "default_rules",
    "validate_rule",
]

#: Plain actions (``webhook``/``callback``: all of them); ``webhook:<name>``,
#: ``callback:<name>`` and ``email:<name>`` name one.
ACTIONS: tuple[str, ...] = ("log", "mlflow", "webhook", "callback", "stop")
ACTION_PREFIXES: tuple[str, ...] = ("webhook:", "callback:", "email:")
DEFAULT_ACTIONS: tuple[str, ...] = ("log", "mlflow")
#: Steps a rule stays quiet after an alert. Checks run every ~100 steps, so 1000 steps means a
#: persistent failure is re-announced about every tenth check.
DEFAULT_COOLDOWN = 1000
DEFAULT_RULE_TYPES: tuple[str, ...] = (
    "check_failure",
    "nonfinite",
    "loss_divergence",
    "vanishing_gradients",
    "exploding_gradients",
    "dead_units",
    "saturated_units",
    "stuck_loss",
    "slow_learning",
)
#: Keys of a rule besides its detector's parameters.
RULE_KEYS: tuple[str, ...] = ("name", "type", "severity", "cooldown", "actions", "enabled")
# Rule names become MLflow tag keys (gradwatch.alert.<rule>): keep to characters MLflow accepts.
_RULE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def check_action(action: Any) -> str:
    """Return ``action`` if it is a valid form, else raise InputError listing the forms.

    check_action("webhook:slack")   # -> "webhook:slack"
    """
    if isinstance(action, str) and (
        action in ACTIONS
        or any(action.startswith(p) and len(action) > len(p) for p in ACTION_PREFIXES)
    ):
        return action
    allowed = ", ".join(ACTIONS + tuple(p + "<name>" for p in ACTION_PREFIXES))
    raise InputError(
        f"unknown action {action!r}{did_you_mean(action, ACTIONS)}; allowed: {allowed}"
    )


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _RULE_NAME.match(name):
        raise ConfigError(f"rule name {name!r} must be letters, digits, '_', '.', '-'", key="name")
    return name


def _check_type(kind: Any) -> str:
    if kind not in DETECTORS:
        raise ConfigError(
            f"unknown rule type {kind!r}{did_you_mean(kind, DETECTORS)}; "
            f"allowed: {', '.join(DETECTORS)}",
            key="type",
        )
    return kind


def _check_severity(severity: Any) -> str | None:
    if severity is not None and severity not in SEVERITIES:
        raise ConfigError(
            f"unknown severity {severity!r}{did_you_mean(severity, SEVERITIES)}; "
            f"allowed: {', '.join(SEVERITIES)}",
            key="severity",
        )
    return severity


def _check_cooldown(cooldown: Any) -> int:
    if isinstance(cooldown, bool) or not isinstance(cooldown, int) or cooldown < 0:
        raise ConfigError(
            f"cooldown must be an integer >= 0 (steps), got {cooldown!r}", key="cooldown"
        )
    return cooldown


def _check_actions(
    actions: Any, webhooks: Collection[str] | None, emails: Collection[str] | None = None
) -> tuple[str, ...]:
    """Each action's form; with ``webhooks``/``emails`` given, that each named one exists."""
    if isinstance(actions, str):
        actions = [actions]
    if not isinstance(actions, (list, tuple)):
        raise ConfigError("actions must be a list of strings, e.g. [log, mlflow]", key="actions")
    for i, action in enumerate(actions):
        try:
            check_action(action)
        except InputError as exc:
            raise ConfigError(str(exc), key=f"actions.{i}") from None
        if action.startswith("email:") and emails is not None and action[6:] not in emails:
            known = sorted(emails)
            raise ConfigError(
                f"no email target named {action[6:]!r}{did_you_mean(action[6:], known)}; define it "
                f"under alerts.email (defined: {', '.join(known) or 'none'})",
                key=f"actions.{i}",
            )
        if webhooks is None:
            continue
        if action.startswith("webhook:") and action[8:] not in webhooks:
            known = sorted(webhooks)
            raise ConfigError(
                f"no webhook named {action[8:]!r}{did_you_mean(action[8:], known)}; define it "
                f"under alerts.webhooks (defined: {', '.join(known) or 'none'})",
                key=f"actions.{i}",
            )
        if action == "webhook" and not webhooks:
            raise ConfigError(
                "action `webhook` but no alerts.webhooks are defined", key=f"actions.{i}"
            )
    return tuple(actions)


def _check_monitor_only(kind: str, actions: tuple[str, ...]) -> None:
    """A rule only ``gradwatch monitor`` judges cannot ``stop`` training: it runs elsewhere."""
    if DETECTORS[kind].monitor_only and "stop" in actions:
        raise ConfigError(
            f"{kind} is judged by `gradwatch monitor`, outside the training process, which it "
            "cannot stop; remove `stop` from the actions",
            key=f"actions.{actions.index('stop')}",
        )


def _check_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Each parameter against the detector's schema, normalized (``1`` -> ``1.0``, ...)."""
    spec = DETECTORS[kind]
    out = {}
    for name, value in params.items():
        if name not in spec.params:
            allowed = ", ".join(spec.params) or "none"
            raise ConfigError(
                f"unknown parameter {name!r} for {kind}{did_you_mean(name, spec.params)}; "
                f"allowed: {allowed}",
                key=str(name),
            )
        try:
            out[name] = spec.params[name].check(value)
        except ValueError as exc:
            raise ConfigError(str(exc), key=str(name)) from None
    return out


@dataclass(frozen=True)
class Rule:
    """One alert rule: a detector ``type`` with its ``params``, and what to do when it fires.

        Rule("grad-explosion", "grad_norm_drift", severity="warning", cooldown=200,
             actions=("log", "mlflow", "webhook:slack"), params={"z": 6.0})

    ``severity=None`` lets the detector decide (check_failure grades by rel-error band; the
    others use their type's default). ``cooldown`` is in steps. Invalid values raise
    ConfigError naming the key (see :func:`validate_rule` for the mapping form).
    """

    name: str
    type: str
    severity: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    cooldown: int = DEFAULT_COOLDOWN
    actions: tuple[str, ...] = DEFAULT_ACTIONS
    enabled: bool = True

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_type(self.type)
        _check_severity(self.severity)
        _check_cooldown(self.cooldown)
        object.__setattr__(self, "actions", _check_actions(self.actions, None))
        _check_monitor_only(self.type, self.actions)
        object.__setattr__(self, "params", _check_params(self.type, self.params))
        self.detector()  # cross-parameter problems now, not at the first observation

    def detector(self) -> Detector:
        """Build this rule's detector (raises ConfigError on a bad parameter)."""
        try:
            return build_detector(self.type, self.params)
        except ValueError as exc:  # InputError from build_detector, or a factory's own check
            raise ConfigError(f"rule {self.name!r}: {exc}", key="params") from None

    @property
    def default_severity(self) -> str | None:
        return self.severity or DETECTORS[self.type].severity


def validate_rule(
    spec: Any, *, webhooks: Collection[str] | None = None, emails: Collection[str] | None = None
) -> Rule:
    """Build a :class:`Rule` from a mapping written as in ``gradwatch.yaml``.

        validate_rule({"type": "loss_divergence", "factor": 5.0})   # name defaults to the type
        validate_rule({"name": "slack-nan", "type": "nonfinite", "actions": ["webhook:slack"]},
                      webhooks={"slack"})

    Keys are :data:`RULE_KEYS` plus the detector's parameters (listed in
    :data:`~gradwatch.alerts.detectors.DETECTORS`); ``type`` may be left out when ``name`` is a
    rule type. With ``webhooks`` (the names defined), ``webhook:<name>`` actions must name one
    of them and a bare ``webhook`` needs at least one; with ``emails``, ``email:<name>`` must
    name a defined e-mail target. Raises ConfigError whose ``key`` is the
    offending key relative to the rule: ``type``, ``severity``, ``actions.1``, ``factor``...
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"each rule must be a mapping, got {type(spec).__name__}")
    kind = spec.get("type", spec.get("name") if spec.get("name") in DETECTORS else None)
    if kind is None:
        raise ConfigError(f"rule needs a `type`; allowed: {', '.join(DETECTORS)}", key="type")
    kind = _check_type(kind)
    allowed = (*RULE_KEYS, *DETECTORS[kind].params)
    for key in spec:
        if key not in allowed:
            raise ConfigError(
                f"unknown key{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}",
                key=str(key),
            )
    enabled = spec.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"expected true or false, got {enabled!r}", key="enabled")
    actions = spec.get("actions")
    return Rule(
        name=_check_name(spec.get("name", kind)),
        type=kind,
        severity=_check_severity(spec.get("severity")),
        params={k: v for k, v in spec.items() if k not in RULE_KEYS},
        cooldown=_check_cooldown(spec.get("cooldown", DEFAULT_COOLDOWN)),
        actions=DEFAULT_ACTIONS if actions is None else _check_actions(actions, webhooks, emails),
        enabled=enabled,
    )


def default_rules() -> list[Rule]:
    """The rules on with no configuration: check_failure, nonfinite, loss_divergence and the
    named training problems (:data:`~gradwatch.alerts.detectors.PROBLEMS`): vanishing and
    exploding gradients, dead and saturated units, a loss not improving, learning too slow.

        engine = AlertEngine(default_rules())

    Each is named after its type, delivered to ``log`` and ``mlflow``, with default params.
    """
    return [Rule(name=kind, type=kind) for kind in DEFAULT_RULE_TYPES]
