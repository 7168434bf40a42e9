"""Evaluate alert rules server-side, from the metrics runs have logged to MLflow.

    monitor = Monitor("http://127.0.0.1:5000", "mlp", rules=config.rules,
                      delivery=config.delivery(), stale_minutes=30)
    monitor.poll()                         # once (cron: ``gradwatch monitor --once``)
    monitor.run(interval=10, stop=event)   # until ``event`` is set (SIGTERM/SIGINT)

Why: training nodes often cannot reach the alert channel, drift *across* runs (this run vs
a baseline run) can only be judged where all runs are visible, and a crashed host cannot
report that its run stopped.

How it works, per poll:

1. Find the experiment's active runs: ``RUNNING`` ones, plus runs this monitor was following
   (tag ``gradwatch.monitor.state=active``) that have finished since, so their last steps are
   evaluated too. The baseline run itself is skipped.
2. Read their metric histories and rebuild what the hook saw
   (:func:`gradwatch.schema.observations_from_metrics`): the series the hook logs for the
   rules (loss, lr, norms, ratios, non-finite counts, ``gradcheck/*``), plus every metric a
   rule names (a ``threshold`` rule's ``metric`` glob, ``grad_zero_frac/*`` for
   ``dead_units``, a ``baseline_drift`` rule's ``metrics``), a user's own ``val_acc`` too:
   those reach the rules in ``StepObservation.metrics``, as in the hook. A running run's
   newest step is held back until it is :data:`DEFAULT_SETTLE` seconds old, so half-shipped
   steps are not judged.
3. Feed them, in step order, to one :class:`AlertEngine` per run (the same rules, detectors
   and cooldowns as the hook), resuming after the last step seen.
4. Deliver every alert, one target at a time, waiting for the outcome; only once every
   target has it, record it in the run's tag ``gradwatch.monitor.alerted.<rule>`` = step.
   A delivery that failed is tried again at the next poll (only to the targets that failed).
   After a restart the monitor replays each run from step 0 (detectors need the history)
   and delivers only alerts at a later step than the tag says, so nothing delivered is
   sent twice. The ``mlflow`` action writes through the same sink as the hook.
5. Each ``stale_run`` rule (or ``stale_minutes``): a RUNNING run whose newest step is older
   than its ``minutes`` raises it, once per step it stalled at (a run that logs again and
   stalls again is news): a crashed host whose process never ended the run. ``stale_minutes``
   is the shorthand for a rule ``stale_run`` (actions log, mlflow and every webhook); given
   with ``stale_run`` rules, it sets their ``minutes`` (the command line wins) and keeps
   their names and actions.

Baseline drift: a ``baseline_drift`` rule compares each run with the baseline run (``--baseline
RUN_ID``, or the newest run of the experiment tagged ``gradwatch.baseline=true``); with no such
rule configured, the monitor adds one whenever a baseline exists.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gradwatch.alert_sink import ClientRecorder, MlflowAlertSink
from gradwatch.alerts import (
    Alert,
    AlertEngine,
    CheckObservation,
    Delivery,
    Rule,
    StepObservation,
    attach_baselines,
    default_rules,
    find_baseline_run,
)
from gradwatch.alerts.detectors import DETECTORS, REL_ERROR_WARNING
from gradwatch.errors import InputError, TrackingError
from gradwatch.mlflow_access import experiment_id, get_client, mlflow_errors, search_all
from gradwatch.schema import (
    GRAD_ZERO_FRAC,
    TAG_BASELINE,
    TAG_MONITOR_ALERTED,
    TAG_MONITOR_STATE,
    check_report_from_metrics,
    hook_keys,
    hook_series,
    observations_from_metrics,
    rows_by_step,
)
from gradwatch.secrets import mask_uri

__all__ = [
    "BASELINE_TAG",
    "DEFAULT_INTERVAL",
    "DEFAULT_SETTLE",
    "STALE_RULE",
    "TAG_ALERTED",
    "TAG_STATE",
    "ConfirmedDelivery",
    "Monitor",
    "PollResult",
    "alert_for_run",
    "check_report",
    "hook_series",
    "observations",
    "rule_metrics",
    "settled_upto",
    "stale_run_alert",
]

logger = logging.getLogger("gradwatch.monitor")

DEFAULT_INTERVAL = 10.0  # seconds between polls
#: A running run's newest step is judged once its metrics are this many seconds old: the
#: hook ships a step's metrics within about a second, so by then they have all landed.
DEFAULT_SETTLE = 5.0
#: Longest wait for one alert's delivery to one target (its retries included).
DEFAULT_DELIVERY_TIMEOUT = 60.0
TAG_ALERTED = TAG_MONITOR_ALERTED
TAG_STATE = TAG_MONITOR_STATE
BASELINE_TAG = TAG_BASELINE
BASELINE_RULE = "baseline_drift"
STALE_RULE = "stale_run"
# Actions that are not a delivery target: the hook's, and the log line written at once.
_NOT_TARGETS = ("log", "mlflow", "stop")


def check_report(values: Mapping[str, float]) -> dict[str, Any]:
    """A ``CheckReport.to_dict()``-shaped dict rebuilt from one check's metrics (see
    :func:`gradwatch.schema.check_report_from_metrics`)."""
    return check_report_from_metrics(values, REL_ERROR_WARNING)


def rule_metrics(rules: Iterable[Rule]) -> tuple[str, ...]:
    """Globs of the metrics ``rules`` read besides :func:`hook_series`.

    rule_metrics([Rule("acc", "threshold", params={"metric": "val_acc", "below": 0.5})])
    # ("val_acc",)
    """
    patterns: list[str] = []
    for rule in rules:
        if not rule.enabled:
            continue
        defaults = {name: p.default for name, p in DETECTORS[rule.type].params.items()}
        params = {**defaults, **rule.params}
        if rule.type == "threshold":
            patterns.append(params["metric"])
        elif rule.type == "dead_units":
            patterns.append(GRAD_ZERO_FRAC + "*")
        elif rule.type == BASELINE_RULE:
            patterns.extend(params["metrics"] or ())
    return tuple(dict.fromkeys(patterns))


def observations(
    histories: Mapping[str, Sequence], after: int = -1, upto: int | None = None
) -> list[StepObservation | CheckObservation]:
    """What the hook saw at steps ``after < step <= upto``, rebuilt from metric histories.

        obs = observations({"loss": [...], "val_acc": [...]}, after=99)

    Keys that are not :func:`~gradwatch.schema.hook_series` (``grad_zero_frac/W1``, a
    user's ``val_acc``) go to ``StepObservation.metrics``
    (:func:`gradwatch.schema.observations_from_metrics`, with the rules' warning level).
    """
    return observations_from_metrics(histories, after, upto, REL_ERROR_WARNING)


def settled_upto(
    histories: Mapping[str, Sequence], running: bool, now: float, settle: float
) -> int | None:
    """The last step safe to judge: a running run's newest step only once ``settle`` s old."""
    rows = rows_by_step(histories)
    if not rows:
        return None
    latest = max(rows)
    if running and now * 1000.0 - rows[latest]["_ts"] < settle * 1000.0:
        return latest - 1
    return latest


@dataclass(frozen=True)
class PollResult:
    """What one poll did: runs looked at, observations fed, alerts sent, skipped and failed."""

    runs: int = 0
    observations: int = 0
    sent: list[tuple[str, Alert]] = field(default_factory=list)  # (run name, alert)
    already_sent: int = 0  # alerts a previous monitor process had delivered
    failed: int = 0  # alerts whose delivery failed: tried again at the next poll


@dataclass
class _Followed:
    run_id: str
    run_name: str
    engine: AlertEngine
    alerted: dict[str, int]  # rule -> step of the last alert delivered (from the tags)
    cursor: int = -1  # last step fed to the engine
    # metric -> its points at steps <= cursor when last read (metrics not from the hook)
    judged: dict[str, int] = field(default_factory=dict)
    # (rule, step) -> the alert and the targets that still have to get it
    undelivered: dict[tuple[str, int], tuple[Alert, list[str]]] = field(default_factory=dict)


class Monitor:
    """Polls one experiment's active runs and delivers the alerts its rules raise.

        monitor = Monitor(uri, "mlp", rules=load_config("gradwatch.yaml").rules)
        result = monitor.poll()           # raises TrackingError when MLflow is unreachable
        monitor.close()

    ``rules`` default to :func:`default_rules`; ``delivery`` to a log-only ``Delivery()``.
    ``baseline_run_id`` overrides the baseline of every ``baseline_drift`` rule;
    ``stale_minutes`` is the shorthand for a ``stale_run`` rule, or sets the ``minutes`` of
    the ``stale_run`` rules given. ``clock`` (seconds since the epoch) decides what is settled
    and what is stale. MLflow's own settings apply (the ``gradwatch monitor`` command makes
    them fail fast).
    """

    def __init__(
        self,
        tracking_uri: str | None,
        experiment: str,
        rules: Iterable[Rule] | None = None,
        delivery: Delivery | None = None,
        baseline_run_id: str | None = None,
        settle: float = DEFAULT_SETTLE,
        clock: Callable[[], float] = time.time,
        stale_minutes: float | None = None,
        delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT,
    ) -> None:
        self.client = get_client(tracking_uri, must_exist=False)
        self.tracking_uri = self.client.tracking_uri
        self.experiment = experiment
        self.delivery = delivery if delivery is not None else Delivery()
        self.baseline_run_id = baseline_run_id
        self.settle = settle
        self.clock = clock
        self.stale_minutes = stale_minutes
        self.confirmed = ConfirmedDelivery(self.delivery, delivery_timeout)
        self._configured = list(default_rules() if rules is None else rules)
        self._stale_rules = self._with_stale_minutes(stale_minutes)
        self._patterns = rule_metrics(self._configured)
        self._rules: list[Rule] | None = None  # with baselines loaded; built on first poll
        self._baseline_missing = False  # look for a baseline again at the next poll
        self._warned: set[str] = set()
        self._baseline_ids: set[str] = set()
        self._experiment_id: str | None = None
        self._followed: dict[str, _Followed] = {}

    # -- rules and baselines ---------------------------------------------------------------

    def _with_stale_minutes(self, minutes: float | None) -> list[Rule]:
        """The enabled ``stale_run`` rules, with ``minutes`` (``--stale-minutes``) applied."""
        rules = [r for r in self._configured if r.type == STALE_RULE and r.enabled]
        if minutes is None:
            return rules
        if not rules:
            targets = ("webhook",) if self.delivery.webhooks else ()
            return [Rule(STALE_RULE, STALE_RULE, params={"minutes": minutes},
                         actions=("log", "mlflow", *targets))]  # fmt: skip
        logger.warning("stale_minutes=%g replaces the minutes of rule(s) %s", minutes,
                       ", ".join(r.name for r in rules))  # fmt: skip
        return [dataclasses.replace(r, params={**r.params, "minutes": minutes}) for r in rules]

    def _baseline_for(self, experiment: str | None, key: str) -> str | None:
        try:
            return self.baseline_run_id or find_baseline_run(self.tracking_uri, experiment)
        except TrackingError as err:
            self._baseline_missing = True
            self._note(key, "baseline drift (%s) off until a baseline run appears: %s", key, err)
            return None

    def _prepare_rules(self) -> list[Rule]:
        """Give ``baseline_drift`` rules their baseline run and load its series."""
        self._baseline_missing = False
        rules = list(self._configured)
        if not any(r.type == BASELINE_RULE for r in rules):
            if self._baseline_for(self.experiment, BASELINE_RULE) is not None:
                targets = ("webhook",) if self.delivery.webhooks else ()
                rules.append(
                    Rule(BASELINE_RULE, BASELINE_RULE, actions=("log", "mlflow", *targets))
                )
        prepared = []
        for rule in rules:
            if rule.type == BASELINE_RULE and rule.params.get("baseline") is None:
                params = dict(rule.params)
                if self.baseline_run_id or not params.get("run_id"):
                    params["run_id"] = self._baseline_for(
                        params.get("experiment") or self.experiment, rule.name
                    )
                if params["run_id"] is None:
                    prepared.append(dataclasses.replace(rule, enabled=False))
                    continue
                rule = dataclasses.replace(rule, params=params)
            prepared.append(rule)
        loaded = attach_baselines(prepared, tracking_uri=self.tracking_uri)
        for rule in loaded:
            if rule.type == BASELINE_RULE and rule.params.get("run_id"):
                if rule.enabled:
                    self._baseline_ids.add(rule.params["run_id"])
                else:
                    self._baseline_missing = True
        return loaded

    def _note(self, key: str, msg: str, *args: Any) -> None:
        # Retried every poll: say it once, not every 10 s. Errors may quote a URI: masked.
        level = logging.DEBUG if key in self._warned else logging.WARNING
        logger.log(level, msg, *(mask_uri(a) if isinstance(a, Exception) else a for a in args))
        self._warned.add(key)

    # -- polling ---------------------------------------------------------------------------

    def _active_runs(self) -> list:
        if self._experiment_id is None:
            try:
                self._experiment_id = experiment_id(self.client, self.experiment)
            except InputError as err:  # not created yet: the next poll looks again
                raise TrackingError(f"{err} (yet)") from None
        ids = [self._experiment_id]
        running = search_all(self.client, ids, "attributes.status = 'RUNNING'")
        followed = search_all(self.client, ids, f"tags.`{TAG_STATE}` = 'active'")
        runs = {r.info.run_id: r for r in [*followed, *running]}
        return [r for r in runs.values() if r.info.run_id not in self._baseline_ids]

    def poll(self) -> PollResult:
        """Evaluate every active run once. Raises TrackingError if MLflow cannot be read."""
        with mlflow_errors(self.tracking_uri):
            return self._poll()

    def _poll(self) -> PollResult:
        runs = self._active_runs()
        if self._rules is None or self._baseline_missing:
            had_rules = self._rules is not None
            self._rules = self._prepare_rules()
            if had_rules and not self._baseline_missing:
                # A baseline appeared: replay every run with it (the alerted tags keep
                # earlier alerts from being sent again).
                self._followed.clear()
            runs = [r for r in runs if r.info.run_id not in self._baseline_ids]
        sent: list[tuple[str, Alert]] = []
        fed = already = failed = 0
        for run in runs:
            n, skipped, lost = self._poll_run(run, sent)
            fed, already, failed = fed + n, already + skipped, failed + lost
        return PollResult(len(runs), fed, sent, already, failed)

    def _follow(self, run: Any) -> _Followed:
        tags = run.data.tags
        alerted = {}
        for key, value in tags.items():
            if key.startswith(TAG_ALERTED):
                try:
                    alerted[key[len(TAG_ALERTED) :]] = int(value)
                except ValueError:
                    pass
        if tags.get(TAG_STATE) != "active" and run.info.status == "RUNNING":
            self.client.set_tag(run.info.run_id, TAG_STATE, "active")
        assert self._rules is not None
        # The engine leaves stale_run rules out (monitor-only): _stale_alerts judges them.
        return _Followed(run.info.run_id, run.info.run_name or run.info.run_id,
                         AlertEngine(self._rules), alerted)  # fmt: skip

    def _poll_run(self, run: Any, sent: list[tuple[str, Alert]]) -> tuple[int, int, int]:
        run_id = run.info.run_id
        state = self._followed.get(run_id)
        if state is None:
            state = self._followed[run_id] = self._follow(run)
        for alert, targets in list(state.undelivered.values()):
            self._deliver(run, state, alert, targets, sent)
        names = hook_keys(run.data.metrics, run.data.tags)  # gradwatch/loss -> loss, if shared
        keys = [k for k in names if self._reads(k)]
        histories = {k: self.client.get_metric_history(run_id, names[k]) for k in keys}
        running = run.info.status == "RUNNING"
        upto = settled_upto(histories, running, self.clock(), self.settle)
        self._warn_behind(state, histories)
        obs = observations(histories, after=state.cursor, upto=upto) if upto is not None else []
        skipped = 0
        for ob in obs:
            if isinstance(ob, CheckObservation):
                alerts = state.engine.observe_check(ob)
            else:
                alerts = state.engine.observe_step(ob)
            for alert in alerts:
                if alert.step <= state.alerted.get(alert.rule, -1):
                    skipped += 1
                    continue
                self._raise(run, state, alert, sent)
            state.cursor = ob.step
        if upto is not None:
            state.cursor = max(state.cursor, upto)
        state.judged = {k: _points_upto(h, state.cursor) for k, h in histories.items()
                        if not hook_series(k)}  # fmt: skip
        for stale in self._stale_alerts(run, histories) if running else ():
            if stale.step > state.alerted.get(stale.rule, -1) and (
                (stale.rule, stale.step) not in state.undelivered
            ):
                self._raise(run, state, stale, sent)
        if not running and not state.undelivered:
            # Evaluated to its end: stop following it (and say so, for the next process).
            self.client.set_tag(run_id, TAG_STATE, "done")
            self._followed.pop(run_id, None)
        return len(obs), skipped, len(state.undelivered)

    def _warn_behind(self, state: _Followed, histories: Mapping[str, Sequence]) -> None:
        """Points that landed at steps already judged are never seen by the rules: say so.

        The hook logs in step order; a user's metric logged at a step count of its own (the
        epoch) falls behind the training steps.
        """
        for key, history in histories.items():
            if hook_series(key):
                continue
            if _points_upto(history, state.cursor) > state.judged.get(key, 0):
                self._note(f"behind:{state.run_id}:{key}",
                           "run %s: metric %s got new values at steps the rules have already "
                           "judged (up to %d), so they never see them; log it at the training "
                           "step: mlflow.log_metric(%r, value, step=step)",
                           state.run_name, key, state.cursor, key)  # fmt: skip

    def _reads(self, key: str) -> bool:
        """Whether a poll reads metric ``key``: the hook's series, and what a rule names."""
        return hook_series(key) or any(fnmatch.fnmatchcase(key, p) for p in self._patterns)

    def _stale_alerts(self, run: Any, histories: Mapping[str, Sequence]) -> list[Alert]:
        now, default_minutes = self.clock(), DETECTORS[STALE_RULE].params["minutes"].default
        alerts = []
        for rule in self._stale_rules:
            minutes = float(rule.params.get("minutes", default_minutes))
            alert = stale_run_alert(run, histories, now, minutes, rule)
            if alert is not None:
                alerts.append(alert)
        return alerts

    # -- delivery --------------------------------------------------------------------------

    def _raise(self, run: Any, state: _Followed, alert: Alert, sent: list) -> None:
        logger.info("run %s (%s): %s", state.run_name, run.info.run_id[:8], alert.text())
        if "log" in alert.actions:
            self.delivery.deliver(dataclasses.replace(alert_for_run(alert, run), actions=("log",)))
        if "mlflow" in alert.actions:
            MlflowAlertSink(ClientRecorder(self.client, run.info.run_id), log_count=False).record(
                alert
            )
        self._deliver(run, state, alert, self.confirmed.targets(alert), sent)

    def _deliver(self, run: Any, state: _Followed, alert: Alert, targets: list[str],
                 sent: list) -> None:  # fmt: skip
        """Send to each target, waiting for the outcome; remember the alert once all have it."""
        left = [t for t in targets if not self.confirmed.send(alert_for_run(alert, run), t)]
        key = (alert.rule, alert.step)
        if left:
            state.undelivered[key] = (alert, left)
            logger.warning("run %s: alert %s (step %d) not delivered to %s; retrying at the "
                           "next poll", state.run_name, alert.rule, alert.step, ", ".join(left))  # fmt: skip
            return
        state.undelivered.pop(key, None)
        if alert.step > state.alerted.get(alert.rule, -1):
            # Remembered in this process first: a failing tag write must not re-send it.
            state.alerted[alert.rule] = alert.step
            self.client.set_tag(run.info.run_id, f"{TAG_ALERTED}{alert.rule}", str(alert.step))
        sent.append((state.run_name, alert))

    # -- service ---------------------------------------------------------------------------

    def run(
        self,
        interval: float = DEFAULT_INTERVAL,
        stop: threading.Event | None = None,
        on_poll: Callable[[PollResult | None, BaseException | None], None] | None = None,
    ) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set; MLflow outages are survived.

        ``on_poll(result, error)`` is called after each poll (error: the TrackingError of a
        failed poll, which is logged and retried at the next interval).
        """
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                result, error = self.poll(), None
            except TrackingError as err:
                result, error = None, err
                logger.warning("poll failed, retrying in %gs: %s", interval, err)
            if on_poll is not None:
                on_poll(result, error)
            stop.wait(interval)

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is queued (within ``timeout`` s); returns alerts left undelivered."""
        left = sum(len(s.undelivered) for s in self._followed.values())
        return self.delivery.close(timeout) + left


class ConfirmedDelivery:
    """Delivers an alert to one target at a time and waits for the outcome.

        confirmed = ConfirmedDelivery(delivery, timeout=60)
        ok = all(confirmed.send(alert, t) for t in confirmed.targets(alert))

    ``Delivery`` itself never blocks and reports outcomes only as counts; one alert to one
    target at a time turns those counts into this alert's outcome.
    """

    def __init__(self, delivery: Delivery, timeout: float = DEFAULT_DELIVERY_TIMEOUT) -> None:
        self.delivery = delivery
        self.timeout = timeout

    def targets(self, alert: Alert) -> list[str]:
        """One target per entry: ``webhook`` and ``callback`` expanded by name."""
        targets: list[str] = []
        for action in alert.actions:
            if action in _NOT_TARGETS:
                continue
            if action == "webhook":
                targets += [f"webhook:{name}" for name in self.delivery.webhooks]
            elif action == "callback":
                targets += [f"callback:{name}" for name in self.delivery.callbacks]
            else:
                targets.append(action)
        return targets

    def send(self, alert: Alert, target: str) -> bool:
        """Deliver ``alert`` to ``target`` and wait: True once it got there."""
        before = self.delivery.stats
        self.delivery.deliver(dataclasses.replace(alert, actions=(target,)))
        deadline = time.monotonic() + self.timeout
        stats = self.delivery.stats
        while stats["pending"] and time.monotonic() < deadline:
            time.sleep(0.02)
            stats = self.delivery.stats
        return (
            not stats["pending"]
            and stats["failed"] == before["failed"]
            and stats["dropped"] == before["dropped"]
        )


def stale_run_alert(run: Any, histories: Mapping[str, Sequence], now: float, minutes: float,
                    rule: Rule | None = None, webhooks: bool = False) -> Alert | None:  # fmt: skip
    """``stale_run`` when RUNNING ``run``'s newest step is older than ``minutes`` at ``now``.

    Without a configured ``rule`` the alert is logged, recorded in the run and sent to every
    webhook (``webhooks``).
    """
    rows = rows_by_step(histories)
    last_step = max(rows) if rows else -1
    last_ms = rows[last_step]["_ts"] if rows else int(run.info.start_time or 0)
    idle = now - last_ms / 1000.0
    if idle < minutes * 60.0:
        return None
    default_actions = ("log", "mlflow", *(("webhook",) if webhooks else ()))
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last_ms / 1000.0))
    return Alert(
        rule=rule.name if rule is not None else STALE_RULE,
        kind=STALE_RULE,
        severity=(rule.severity if rule is not None else None) or "warning",
        step=max(last_step, 0),
        message=(
            f"run is RUNNING but logged no step for {idle / 60:.0f} min (last step "
            f"{last_step} at {since}); did its process or host die?"
        ),  # fmt: skip
        details={"minutes_idle": round(idle / 60, 1), "last_step": last_step},
        actions=tuple(rule.actions) if rule is not None else default_actions,
        timestamp=last_ms / 1000.0,
    )


def _points_upto(history: Sequence, step: int) -> int:
    return sum(1 for m in history if m.step <= step)


def alert_for_run(alert: Alert, run: Any) -> Alert:
    """``alert`` with the run named in its message and details (a channel sees many runs)."""
    name = run.info.run_name or run.info.run_id
    details = {**alert.details, "run_id": run.info.run_id, "run_name": name,
               "experiment_id": run.info.experiment_id, "source": "gradwatch monitor"}  # fmt: skip
    return dataclasses.replace(alert, message=f"run {name}: {alert.message}", details=details)
