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
   evaluated too. The baseline run itself is skipped. ``search_runs`` (one call per 1,000
   runs) also gives the latest step of every metric of every run.
2. Read only what changed (:mod:`gradwatch.runs.metric_reads`): the metrics whose latest step
   moved since the last poll, from the first step not read yet, many runs per request. Read
   are the series the hook logs for the rules (loss, lr, norms, ratios, non-finite counts,
   ``gradcheck/*``), plus every metric a rule names (a ``threshold`` rule's ``metric`` glob,
   ``grad_zero_frac/*`` for ``dead_units``, a ``baseline_drift`` rule's ``metrics``), a user's
   own ``val_acc`` too: those reach the rules in ``StepObservation.metrics``, as in the hook.
   A running run's newest step is held back until it is :data:`DEFAULT_SETTLE` seconds old,
   so half-shipped steps are not judged.
3. Feed them, in step order, to one :class:`AlertEngine` per run (the same rules, detectors
   and cooldowns as the hook), kept between polls: each step is fed once.
4. Each new alert is first *claimed* (:mod:`gradwatch.runs.claims`): the monitor writes the
   run's param ``gradwatch.monitor.claim.<rule>.<step>.<generation>`` = its own id. Then it is shown (one line), recorded
   (the ``mlflow`` action, through the same sink as the hook) and sent to each target with
   :meth:`Delivery.send <gradwatch.alerts.Delivery.send>`, which returns once the target took
   it or raises; a target that failed is tried again at the next poll. Once every target has
   it, the run's tag ``gradwatch.monitor.alerted.<rule>`` = step records it, so a restarted
   monitor, which replays each run from step 0 (detectors need the history), skips it.
5. Each ``stale_run`` rule (or ``stale_minutes``): a RUNNING run whose newest step is older
   than its ``minutes`` raises it, once per step it stalled at (a run that logs again and
   stalls again is news): a crashed host whose process never ended the run. ``stale_minutes``
   is the shorthand for a rule ``stale_run`` (actions log, mlflow and every webhook); given
   with ``stale_run`` rules, it sets their ``minutes`` (the command line wins) and keeps
   their names and actions.

Several monitors on one experiment (two hosts, a cron job beside a service): each alert is
delivered once. MLflow has no compare-and-set on tags, but params are write-once: on a
database-backed store (sqlite, PostgreSQL, MySQL: what ``mlflow server`` runs on) the params
table's primary key lets exactly one value of a claim param in, and logging a different value
is refused. The monitor whose id is there delivers; the others count the alert as already sent.
A monitor that stops with a claimed alert undelivered releases it to the next one. Not covered:
a monitor killed (kill -9, host lost) between its claim and the delivery leaves that alert
unsent (never sent twice, but maybe not at all); on MLflow's file store the claim is a
check-then-write, not atomic.

Baseline drift: a ``baseline_drift`` rule compares each run with the baseline run (``--baseline
RUN_ID``, or the newest run of the experiment tagged ``gradwatch.baseline=true``); with no such
rule configured, the monitor adds one whenever a baseline exists.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gradwatch.alert_sink import ClientRecorder, MlflowAlertSink
from gradwatch.alerts import (
    Alert,
    AlertEngine,
    CheckObservation,
    Delivery,
    DeliveryError,
    Rule,
    StepObservation,
    attach_baselines,
    default_rules,
    find_baseline_run,
)
from gradwatch.alerts.delivery import single_line
from gradwatch.alerts.detectors import DETECTORS, REL_ERROR_WARNING
from gradwatch.errors import InputError, TrackingError
from gradwatch.mlflow_access import (
    experiment_id,
    get_client,
    is_missing,
    mlflow_errors,
    search_all,
)
from gradwatch.runs.claims import ClaimError, Claims, claim_param
from gradwatch.runs.metric_reads import NewPoints, Point
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
    "Monitor",
    "PollResult",
    "alert_for_run",
    "check_report",
    "claim_param",
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
TAG_ALERTED = TAG_MONITOR_ALERTED
TAG_STATE = TAG_MONITOR_STATE
BASELINE_TAG = TAG_BASELINE
BASELINE_RULE = "baseline_drift"
STALE_RULE = "stale_run"


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
    already_sent: int = 0  # alerts a previous or concurrent monitor process had taken
    failed: int = 0  # alerts whose delivery failed: tried again at the next poll
    reads: int = 0  # metric-history requests this poll made


@dataclass
class _Pending:
    """An alert this monitor raised and has not delivered everywhere yet."""

    alert: Alert
    targets: list[str]  # the targets that still have to get it
    generation: int | None = None  # of this monitor's claim, once recorded in the run


@dataclass
class _Followed:
    run_id: str
    run_name: str
    engine: AlertEngine
    alerted: dict[str, int]  # rule -> step of the last alert delivered (from the tags)
    cursor: int = -1  # last step fed to the engine
    # metric -> latest step read; its points at steps > cursor, not judged yet
    seen: dict[str, int] = field(default_factory=dict)
    points: dict[str, list] = field(default_factory=dict)
    # (rule, step) -> an alert still to deliver
    undelivered: dict[tuple[str, int], _Pending] = field(default_factory=dict)

    def add(self, key: str, points: list, upto: int) -> list:
        """Keep ``key``'s new points (read up to step ``upto``); returns those at steps already
        judged, which the rules will never see."""
        self.seen[key] = max(upto, *(m.step for m in points)) if points else upto
        behind = [m for m in points if m.step <= self.cursor]
        ahead = [m for m in points if m.step > self.cursor]
        if ahead:
            self.points.setdefault(key, []).extend(ahead)
        return behind

    def advance(self, cursor: int) -> None:
        """Steps up to ``cursor`` are judged: forget their points."""
        self.cursor = max(self.cursor, cursor)
        for key in list(self.points):
            left = [m for m in self.points[key] if m.step > self.cursor]
            if left:
                self.points[key] = left
            else:
                del self.points[key]


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
    ) -> None:
        self.client = get_client(tracking_uri, must_exist=False)
        self.tracking_uri = self.client.tracking_uri
        self.experiment = experiment
        self.delivery = delivery if delivery is not None else Delivery()
        self.baseline_run_id = baseline_run_id
        self.settle = settle
        self.clock = clock
        self.stale_minutes = stale_minutes
        #: Names this process in the claims it records (see the module docstring).
        self.monitor_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.reader = NewPoints(self.client)
        self.claims = Claims(self.client, self.monitor_id)
        self._configured = list(default_rules() if rules is None else rules)
        self._stale_rules = self._with_stale_minutes(stale_minutes)
        self._patterns = rule_metrics(self._configured)
        self._rules: list[Rule] | None = None  # with baselines loaded; built on first poll
        self._baseline_missing = False  # look for a baseline again at the next poll
        self._warned: set[str] = set()
        self._baseline_ids: set[str] = set()
        self._experiment_id: str | None = None
        self._followed: dict[str, _Followed] = {}
        self._searched_followed = False

    # -- rules and baselines ---------------------------------------------------------------

    def _with_stale_minutes(self, minutes: float | None) -> list[Rule]:
        """The enabled ``stale_run`` rules, with ``minutes`` (``--stale-minutes``) applied."""
        rules = [r for r in self._configured if r.type == STALE_RULE and r.enabled]
        if minutes is None:
            return rules
        if not rules:
            targets = ("webhook",) if self.delivery.webhooks else ()
            return [
                Rule(
                    STALE_RULE,
                    STALE_RULE,
                    params={"minutes": minutes},
                    actions=("log", "mlflow", *targets),
                )
            ]
        logger.warning(
            "stale_minutes=%g replaces the minutes of rule(s) %s",
            minutes,
            ", ".join(r.name for r in rules),
        )
        return [dataclasses.replace(r, params={**r.params, "minutes": minutes}) for r in rules]

    def _baseline_for(self, experiment: str | None, key: str, quiet: bool = False) -> str | None:
        try:
            return self.baseline_run_id or find_baseline_run(self.tracking_uri, experiment)
        except TrackingError as err:
            self._baseline_missing = True
            if quiet:  # no rule asked for a baseline: nothing is off, nothing to say
                logger.debug("no baseline run yet: %s", mask_uri(err))
            else:
                self._note(
                    key, "baseline drift (%s) off until a baseline run appears: %s", key, err
                )
            return None

    def _prepare_rules(self) -> list[Rule]:
        """Give ``baseline_drift`` rules their baseline run and load its series."""
        self._baseline_missing = False
        rules = list(self._configured)
        if not any(r.type == BASELINE_RULE for r in rules):
            if self._baseline_for(self.experiment, BASELINE_RULE, quiet=True) is not None:
                targets = ("webhook",) if self.delivery.webhooks else ()
                rules.append(
                    Rule(BASELINE_RULE, BASELINE_RULE, actions=("log", "mlflow", *targets))
                )
        prepared = []
        for rule in rules:
            if rule.type == BASELINE_RULE and rule.enabled and rule.params.get("baseline") is None:
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
        shown = [single_line(mask_uri(a)) if isinstance(a, (Exception, str)) else a for a in args]
        logger.log(level, msg, *shown)
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
        if not self._searched_followed:
            # Runs a monitor was following when it stopped, finished since: judged to the end.
            followed = search_all(self.client, ids, f"tags.`{TAG_STATE}` = 'active'")
            self._searched_followed = True
        else:  # this process knows what it follows: only those that stopped RUNNING
            seen = {r.info.run_id for r in running}
            followed = [self._refetch(run_id) for run_id in self._followed if run_id not in seen]
        runs = {r.info.run_id: r for r in [*followed, *running] if r is not None}
        return [r for r in runs.values() if r.info.run_id not in self._baseline_ids]

    def _refetch(self, run_id: str) -> Any:
        """A followed run that left the RUNNING search; None (and no longer followed) when it
        was deleted."""
        try:
            run = self.client.get_run(run_id)
        except Exception as err:  # noqa: BLE001 - MLflow's not-found comes in several kinds
            if not is_missing(err):
                raise
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            self._followed.pop(run_id, None)
            return None
        return run

    def poll(self) -> PollResult:
        """Evaluate every active run once. Raises TrackingError if MLflow cannot be read."""
        with mlflow_errors(self.tracking_uri):
            return self._poll()

    def _poll(self) -> PollResult:
        calls = self.reader.calls
        runs = self._active_runs()
        if self._rules is None or self._baseline_missing:
            had_rules = self._rules is not None
            self._rules = self._prepare_rules()
            if had_rules and not self._baseline_missing:
                # A baseline appeared: replay every run with it (the alerted tags and the
                # claims keep earlier alerts from being sent again).
                self._followed.clear()
                self._searched_followed = False
            runs = [r for r in runs if r.info.run_id not in self._baseline_ids]
        states = {}
        for run in runs:
            state = self._followed.get(run.info.run_id)
            if state is None:
                state = self._followed[run.info.run_id] = self._follow(run)
            states[run.info.run_id] = state
        # {schema name: MLflow key}: in a run the hook shares with the user, gradwatch/loss -> loss
        names = {run.info.run_id: hook_keys(run.data.metrics, run.data.tags) for run in runs}
        latest = {run.info.run_id: self._latest(run, names[run.info.run_id]) for run in runs}
        wanted = {
            (run_id, key): (states[run_id].seen.get(key, -1) + 1, m.step)
            for run_id, metrics in latest.items()
            for key, m in metrics.items()
            if m.step > states[run_id].seen.get(key, -1)
        }
        # A metric one step further than read: its new point is the latest value the search
        # returned. Only longer moves are read (from the first step not read yet).
        got = {
            (run_id, name): [
                Point(name, latest[run_id][name].value, latest[run_id][name].timestamp, last)
            ]
            for (run_id, name), (first, last) in wanted.items()
            if first == last
        }
        to_read = {(r, names[r][n]): w for (r, n), w in wanted.items() if (r, n) not in got}
        read = self.reader.read(to_read)
        for run_id, name in wanted:
            if (run_id, name) not in got:
                got[(run_id, name)] = read.get((run_id, names[run_id][name]), [])
        for (run_id, key), points in got.items():
            state = states[run_id]
            if state.add(key, points, wanted[(run_id, key)][1]) and not hook_series(key):
                self._note(
                    f"behind:{run_id}:{key}",
                    "run %s: metric %s got new values at steps the rules have already "
                    "judged (up to %d), so they never see them; log it at the training "
                    "step: mlflow.log_metric(%r, value, step=step)",
                    state.run_name,
                    key,
                    state.cursor,
                    key,
                )
        result = _Tally()
        for run in runs:
            self._poll_run(run, states[run.info.run_id], latest[run.info.run_id], result)
        return PollResult(
            len(runs),
            result.fed,
            result.sent,
            result.already,
            result.failed,
            self.reader.calls - calls,
        )

    def _latest(self, run: Any, names: Mapping[str, str]) -> dict[str, Any]:
        """The run's latest point of each metric the rules read (by schema name), from the
        search result."""
        by_key = {m.key: m for m in run.data.to_proto().metrics}
        return {
            name: by_key[key] for name, key in names.items() if key in by_key and self._reads(name)
        }

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
        return _Followed(
            run.info.run_id,
            single_line(run.info.run_name or run.info.run_id),
            AlertEngine(self._rules),
            alerted,
        )

    def _poll_run(
        self, run: Any, state: _Followed, latest: Mapping[str, Any], result: _Tally
    ) -> None:
        for pending in list(state.undelivered.values()):
            self._deliver(run, state, pending, result)
        running = run.info.status == "RUNNING"
        newest = {k: [m] for k, m in latest.items()}  # the latest point of each metric
        upto = settled_upto(newest, running, self.clock(), self.settle)
        obs = observations(state.points, after=state.cursor, upto=upto) if upto is not None else []
        for ob in obs:
            if isinstance(ob, CheckObservation):
                alerts = state.engine.observe_check(ob)
            else:
                alerts = state.engine.observe_step(ob)
            for alert in alerts:
                self._raise(run, state, alert, result)
        result.fed += len(obs)
        if upto is not None:
            state.advance(upto)
        for stale in self._stale_alerts(run, newest) if running else ():
            if (stale.rule, stale.step) not in state.undelivered:
                self._raise(run, state, stale, result)
        result.failed += len(state.undelivered)
        if not running and not state.undelivered:
            # Evaluated to its end: stop following it (and say so, for the next process).
            self.client.set_tag(run.info.run_id, TAG_STATE, "done")
            self._followed.pop(run.info.run_id, None)

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

    def _raise(self, run: Any, state: _Followed, alert: Alert, result: _Tally) -> None:
        """A new alert: claim it, say it (one line), record it, deliver it."""
        if alert.step <= state.alerted.get(alert.rule, -1):
            result.already += 1  # delivered before this process started
            return
        pending = _Pending(alert, self._targets(alert))
        if not self._claim(run, state, pending, result):
            return
        shown = alert_for_run(alert, run)
        if "log" in alert.actions:
            self.delivery.deliver(dataclasses.replace(shown, actions=("log",)))
        else:
            logger.info("%s", single_line(shown.text()))
        if "mlflow" in alert.actions:
            recorder = ClientRecorder(self.client, run.info.run_id)
            MlflowAlertSink(recorder, log_count=False).record(alert)
        self._deliver(run, state, pending, result)

    def _targets(self, alert: Alert) -> list[str]:
        """Where this monitor sends ``alert``. Callbacks are Python functions of the training
        process (``GradWatch(callbacks=...)``): one this monitor was not given is the hook's to
        call, not a failed delivery."""
        return [
            t
            for t in self.delivery.targets(alert)
            if not t.startswith("callback:") or t.partition(":")[2] in self.delivery.callbacks
        ]

    def _claim(self, run: Any, state: _Followed, pending: _Pending, result: _Tally) -> bool:
        """Record in the run that this process delivers ``pending``'s alert; False when another
        monitor has it (or the claim could not be written: tried again at the next poll)."""
        alert = pending.alert
        try:
            pending.generation = self.claims.take(run, alert.rule, alert.step)
        except ClaimError as err:
            state.undelivered[(alert.rule, alert.step)] = pending
            self._note(
                f"claim:{run.info.run_id}",
                "run %s: cannot record the claim of alert %s "
                "(step %d), tried again at the next poll: %s",
                state.run_name,
                alert.rule,
                alert.step,
                mask_uri(err),
            )
            return False
        if pending.generation is None:
            result.already += 1  # another monitor took it
            state.undelivered.pop((alert.rule, alert.step), None)
            logger.debug(
                "alert %s (step %d) of run %s: another monitor has it",
                alert.rule,
                alert.step,
                state.run_name,
            )
            return False
        return True

    def _deliver(self, run: Any, state: _Followed, pending: _Pending, result: _Tally) -> None:
        """Send to each target still owed, here and now; remember the alert once all have it."""
        alert = pending.alert
        key = (alert.rule, alert.step)
        if pending.generation is None and not self._claim(run, state, pending, result):
            return
        shown = alert_for_run(alert, run)
        left = []
        for target in pending.targets:
            try:
                self.delivery.send(shown, target)
            except DeliveryError:  # logged by the delivery, without secrets
                left.append(target)
        if left:
            pending.targets = left
            state.undelivered[key] = pending
            logger.warning(
                "run %s: alert %s (step %d) not delivered to %s; retrying at the next poll",
                state.run_name,
                alert.rule,
                alert.step,
                ", ".join(left),
            )
            return
        state.undelivered.pop(key, None)
        if alert.step > state.alerted.get(alert.rule, -1):
            # Remembered in this process first: a failing tag write must not re-send it.
            state.alerted[alert.rule] = alert.step
            self.client.set_tag(run.info.run_id, f"{TAG_ALERTED}{alert.rule}", str(alert.step))
        result.sent.append((state.run_name, alert))

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
        """Deliver what is queued (within ``timeout`` s); returns alerts left undelivered.

        The alerts this monitor claimed and could not deliver are released to the next monitor
        (the next ``--once``, or another service) so they are not lost with this process.
        """
        left = 0
        for state in self._followed.values():
            for pending in state.undelivered.values():
                left += 1
                if pending.generation is not None:
                    alert = pending.alert
                    try:
                        self.claims.release(
                            state.run_id, alert.rule, alert.step, pending.generation
                        )
                    except Exception as err:  # noqa: BLE001 - closing: say it, go on
                        logger.warning(
                            "run %s: could not hand alert %s (step %d) on to the next monitor: %s",
                            state.run_name,
                            alert.rule,
                            alert.step,
                            single_line(mask_uri(err)),
                        )
        return self.delivery.close(timeout) + left


@dataclass
class _Tally:
    fed: int = 0
    sent: list[tuple[str, Alert]] = field(default_factory=list)
    already: int = 0
    failed: int = 0


def stale_run_alert(
    run: Any,
    histories: Mapping[str, Sequence],
    now: float,
    minutes: float,
    rule: Rule | None = None,
    webhooks: bool = False,
) -> Alert | None:
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
        ),
        details={"minutes_idle": round(idle / 60, 1), "last_step": last_step},
        actions=tuple(rule.actions) if rule is not None else default_actions,
        timestamp=last_ms / 1000.0,
    )


def alert_for_run(alert: Alert, run: Any) -> Alert:
    """``alert`` with the run named in its message and details (a channel sees many runs)."""
    name = run.info.run_name or run.info.run_id
    details = {
        **alert.details,
        "run_id": run.info.run_id,
        "run_name": name,
        "experiment_id": run.info.experiment_id,
        "source": "gradwatch monitor",
    }
    return dataclasses.replace(alert, message=f"run {name}: {alert.message}", details=details)
