"""Evaluate alert rules server-side, from the metrics runs have logged to MLflow.

    monitor = Monitor("http://127.0.0.1:5000", "mlp", rules=config.rules,
                      delivery=config.delivery())
    monitor.poll()                         # once (cron: ``gradwatch monitor --once``)
    monitor.run(interval=10, stop=event)   # until ``event`` is set (SIGTERM/SIGINT)

Why: training nodes often cannot reach the alert channel, and drift *across* runs (this run
vs a baseline run) can only be judged where all runs are visible.

How it works, per poll:

1. Find the experiment's active runs: ``RUNNING`` ones, plus runs this monitor was following
   (tag ``gradwatch.monitor.state=active``) that have finished since, so their last steps are
   evaluated too. The baseline run itself is skipped.
2. Read their metric histories and rebuild what the hook saw (:func:`observations`):
   a :class:`StepObservation` per step from ``loss``, ``lr``, ``grad_norm/<t>``,
   ``param_norm/<t>``, ``update_ratio/<t>``, ``nonfinite/<t>``; a :class:`CheckObservation`
   per check from ``gradcheck/*`` (:func:`check_report`). A running run's newest step is held
   back until it is :data:`DEFAULT_SETTLE` seconds old, so half-shipped steps are not judged.
3. Feed them, in step order, to one :class:`AlertEngine` per run (the same rules, detectors
   and cooldowns as the hook), resuming after the last step seen.
4. For every alert: record it in the run's tag ``gradwatch.monitor.alerted.<rule>`` = step,
   *then* deliver it. After a restart the monitor replays each run from step 0 (detectors
   need the history) and delivers only alerts at a later step than the tag says, so nothing
   is sent twice; if the tag cannot be written (server down) nothing is sent and the poll
   is retried.

Baseline drift: a ``baseline_drift`` rule compares each run with the baseline run (``--baseline
RUN_ID``, or the newest run of the experiment tagged ``gradwatch.baseline=true``); with no such
rule configured, the monitor adds one whenever a baseline exists.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gradwatch.alerts import (
    Alert,
    AlertEngine,
    CheckObservation,
    Delivery,
    Rule,
    StepObservation,
    default_rules,
)
from gradwatch.alerts.baseline import BASELINE_TAG, find_baseline_run, load_baseline
from gradwatch.alerts.detectors import REL_ERROR_WARNING
from gradwatch.compare import get_client, is_finite, one_line, quick_http
from gradwatch.errors import TrackingError

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_SETTLE",
    "TAG_ALERTED",
    "TAG_STATE",
    "Monitor",
    "PollResult",
    "check_report",
    "observations",
]

logger = logging.getLogger("gradwatch.monitor")

DEFAULT_INTERVAL = 10.0  # seconds between polls
#: A running run's newest step is judged once its metrics are this many seconds old: the
#: hook ships a step's metrics within about a second, so by then they have all landed.
DEFAULT_SETTLE = 5.0
TAG_ALERTED = "gradwatch.monitor.alerted."  # + rule name -> step of the last alert sent
TAG_STATE = "gradwatch.monitor.state"  # "active" while followed, "done" once evaluated to the end
BASELINE_RULE = "baseline_drift"

_STEP_SERIES = {"grad_norm/": "grad_norms", "param_norm/": "param_norms",
                "update_ratio/": "update_ratios", "nonfinite/": "nonfinite"}  # fmt: skip
_CHECK_KEYS = ("gradcheck/passed", "gradcheck/max_rel_error")
_REL_ERROR = "gradcheck/rel_error/"
_WATCHED_PREFIXES = ("loss", "lr", "gradcheck/", *_STEP_SERIES)


# ------------------------------------------------------------------ rebuilding observations


def check_report(values: Mapping[str, float]) -> dict[str, Any]:
    """A ``CheckReport.to_dict()``-shaped dict rebuilt from one check's metrics.

        check_report({"gradcheck/passed": 0.0, "gradcheck/max_rel_error": 0.33,
                      "gradcheck/rel_error/W2": 0.33, "gradcheck/rel_error/W1": 1e-9})

    Metrics carry less than the report: per tensor only its max relative error. When the
    check failed, tensors whose error is at least 1e-4 (the "suspicious" band; the worst one
    if none is) are marked ``mismatch`` with ``num_mismatches`` 1, a lower bound; their
    coordinates are unknown (``coords`` empty). ``reconstructed`` is True.
    """
    passed = values.get("gradcheck/passed")
    failed = passed is not None and not passed >= 0.5
    per: dict[str, float] = {
        key[len(_REL_ERROR) :]: v for key, v in values.items() if key.startswith(_REL_ERROR)
    }
    bad = {name for name, v in per.items() if not is_finite(v) or v >= REL_ERROR_WARNING}
    if failed and not bad and per:
        bad = {max(per, key=lambda n: per[n])}
    per_param = {}
    for name, err in per.items():
        mismatch = failed and name in bad
        per_param[name] = {
            "shape": [],
            "max_rel_error": err,
            "verdict": "mismatch" if mismatch else "ok",
            "num_mismatches": 1 if mismatch else 0,
            "coords": [],
        }
    max_rel = values.get("gradcheck/max_rel_error")
    if max_rel is None and per:
        max_rel = max(per.values())
    if failed and not per_param:
        # No per-tensor errors logged: the failure still has to reach check_failure.
        per_param["(all tensors)"] = {"shape": [], "max_rel_error": max_rel or 0.0,
                                      "verdict": "mismatch", "num_mismatches": 1, "coords": []}  # fmt: skip
    return {
        "passed": not failed,
        "max_rel_error": max_rel,
        "difference": values.get("gradcheck/difference"),
        "num_evals": int(values.get("gradcheck/num_evals") or 0),
        "seconds": values.get("gradcheck/seconds"),
        "per_param": per_param,
        "reconstructed": True,
    }


def _by_step(histories: Mapping[str, Sequence]) -> dict[int, dict[str, Any]]:
    """``{step: {key: value, "_ts": newest timestamp ms}}`` of every history."""
    steps: dict[int, dict[str, Any]] = {}
    for key, history in histories.items():
        for m in history:
            row = steps.setdefault(int(m.step), {"_ts": 0})
            # The newest value of a step wins (sorted by timestamp). MLflow stores +-inf as
            # +-1.797e308: give the detectors their infinity back.
            value = float(m.value)
            row[key] = value if abs(value) < sys.float_info.max else math.copysign(math.inf, value)
            row["_ts"] = max(row["_ts"], int(m.timestamp))
    return steps


def observations(
    histories: Mapping[str, Sequence],
    after: int = -1,
    upto: int | None = None,
) -> list[StepObservation | CheckObservation]:
    """What the hook saw at steps ``after < step <= upto``, rebuilt from metric histories.

        obs = observations({"loss": client.get_metric_history(run_id, "loss")}, after=99)

    ``histories`` maps metric keys to MLflow ``Metric`` lists. Per step: a StepObservation if
    the step has any training metric, then a CheckObservation if a check ran at it (the order
    the hook observes them in).
    """
    out: list[StepObservation | CheckObservation] = []
    rows = _by_step(
        {k: sorted(h, key=lambda m: (m.step, m.timestamp)) for k, h in histories.items()}
    )
    for step in sorted(rows):
        if step <= after or (upto is not None and step > upto):
            continue
        row = rows[step]
        ts = row["_ts"] / 1000.0 or None
        series: dict[str, dict[str, float]] = {}
        for key, value in row.items():
            for prefix, name in _STEP_SERIES.items():
                if key.startswith(prefix):
                    series.setdefault(name, {})[key[len(prefix) :]] = value
        if "loss" in row or "lr" in row or series:
            nonfinite = series.pop("nonfinite", None)
            out.append(
                StepObservation(
                    step=step,
                    loss=row.get("loss"),
                    lr=row.get("lr"),
                    nonfinite={k: int(v) for k, v in nonfinite.items()} if nonfinite else None,
                    timestamp=ts,
                    **series,
                )
            )
        if any(k in row for k in _CHECK_KEYS):
            check = {k: v for k, v in row.items() if k.startswith("gradcheck/")}
            out.append(CheckObservation(step=step, report=check_report(check), timestamp=ts))
    return out


def settled_upto(
    histories: Mapping[str, Sequence], running: bool, now: float, settle: float
) -> int | None:
    """The last step safe to judge: a running run's newest step only once ``settle`` s old."""
    rows = _by_step(histories)
    if not rows:
        return None
    latest = max(rows)
    if running and now * 1000.0 - rows[latest]["_ts"] < settle * 1000.0:
        return latest - 1
    return latest


# ------------------------------------------------------------------------------- monitor


@dataclass(frozen=True)
class PollResult:
    """What one poll did: runs looked at, observations fed, alerts sent and skipped."""

    runs: int = 0
    observations: int = 0
    sent: list[tuple[str, Alert]] = field(default_factory=list)  # (run name, alert)
    already_sent: int = 0  # alerts a previous monitor process had delivered


@dataclass
class _Followed:
    run_id: str
    run_name: str
    engine: AlertEngine
    alerted: dict[str, int]  # rule -> step of the last alert delivered (from the tags)
    cursor: int = -1  # last step fed to the engine


class Monitor:
    """Polls one experiment's active runs and delivers the alerts its rules raise.

        monitor = Monitor(uri, "mlp", rules=load_config("gradwatch.yaml").rules)
        result = monitor.poll()           # raises TrackingError when MLflow is unreachable
        monitor.close()

    ``rules`` default to :func:`default_rules`; ``delivery`` to a log-only ``Delivery()``.
    ``baseline_run_id`` overrides the baseline of every ``baseline_drift`` rule.
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
    ) -> None:
        self.client = get_client(tracking_uri, must_exist=False)
        self.tracking_uri = self.client.tracking_uri
        self.experiment = experiment
        self.delivery = delivery if delivery is not None else Delivery()
        self.baseline_run_id = baseline_run_id
        self.settle = settle
        self.clock = clock
        self._configured = list(default_rules() if rules is None else rules)
        self._rules: list[Rule] | None = None  # with baselines loaded; built on first poll
        self._baseline_missing = False  # look for a baseline again at the next poll
        self._warned: set[str] = set()
        self._baseline_ids: set[str] = set()
        self._experiment_id: str | None = None
        self._followed: dict[str, _Followed] = {}

    # -- rules and baselines ---------------------------------------------------------------

    def _prepare_rules(self) -> list[Rule]:
        """Load baseline series into ``baseline_drift`` rules (once the server answers)."""
        rules = list(self._configured)
        self._baseline_missing = False
        has_baseline_rule = any(r.type == BASELINE_RULE for r in rules)
        if not has_baseline_rule:
            try:
                self.baseline_run_id = self.baseline_run_id or find_baseline_run(
                    self.tracking_uri, self.experiment
                )
            except TrackingError as err:
                self._baseline_missing = True
                self._note("baseline", "baseline drift off until a baseline run appears: %s", err)
            else:
                actions = ("log", "mlflow") + (("webhook",) if self.delivery.webhooks else ())
                rules.append(Rule(BASELINE_RULE, BASELINE_RULE, actions=actions))
        out = []
        for rule in rules:
            if rule.type != BASELINE_RULE or rule.params.get("baseline") is not None:
                out.append(rule)
                continue
            params = dict(rule.params)
            run_id = self.baseline_run_id or params.get("run_id")
            try:
                run_id = run_id or find_baseline_run(
                    self.tracking_uri, params.get("experiment") or self.experiment
                )
                kwargs = {"metrics": params["metrics"]} if "metrics" in params else {}
                params["baseline"] = load_baseline(run_id, tracking_uri=self.tracking_uri, **kwargs)
            except TrackingError as err:
                self._baseline_missing = True
                self._note(rule.name, "rule %r off until its baseline can be loaded: %s",
                           rule.name, err)  # fmt: skip
                out.append(dataclasses.replace(rule, enabled=False))
                continue
            params["run_id"] = run_id
            self._baseline_ids.add(run_id)
            logger.info("rule %r: baseline run %s", rule.name, run_id)
            out.append(dataclasses.replace(rule, params=params))
        return out

    def _note(self, key: str, msg: str, *args: Any) -> None:
        # Retried every poll: say it once, not every 10 s.
        logger.log(logging.DEBUG if key in self._warned else logging.WARNING, msg, *args)
        self._warned.add(key)

    # -- polling ---------------------------------------------------------------------------

    def _experiment(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise TrackingError(
                    f"no experiment named {self.experiment!r} at {self.tracking_uri} (yet)"
                )
            self._experiment_id = exp.experiment_id
        return self._experiment_id

    def _active_runs(self) -> list:
        exp_id = self._experiment()
        running = self.client.search_runs(
            [exp_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
        )
        followed = self.client.search_runs(
            [exp_id], filter_string=f"tags.`{TAG_STATE}` = 'active'", max_results=1000
        )
        runs = {r.info.run_id: r for r in [*followed, *running]}
        return [r for r in runs.values() if r.info.run_id not in self._baseline_ids]

    def poll(self) -> PollResult:
        """Evaluate every active run once. Raises TrackingError if MLflow cannot be read."""
        from mlflow.exceptions import MlflowException

        try:
            with quick_http():
                return self._poll()
        except MlflowException as err:
            raise TrackingError(f"MLflow at {self.tracking_uri}: {one_line(err)}") from None
        except OSError as err:  # requests' ConnectionError and friends
            raise TrackingError(f"MLflow at {self.tracking_uri}: {one_line(err)}") from None

    def _poll(self) -> PollResult:
        runs = self._active_runs()
        if self._rules is None or self._baseline_missing:
            rules = self._prepare_rules()
            if self._rules is not None and not self._baseline_missing:
                # A baseline appeared: replay every run with it (the alerted tags keep
                # earlier alerts from being sent again).
                self._followed.clear()
            self._rules = rules
            runs = [r for r in runs if r.info.run_id not in self._baseline_ids]
        result = PollResult(runs=len(runs))
        fed = already = 0
        for run in runs:
            n, skipped = self._poll_run(run, result.sent)
            fed, already = fed + n, already + skipped
        return dataclasses.replace(result, observations=fed, already_sent=already)

    def _follow(self, run) -> _Followed:
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
        return _Followed(run.info.run_id, run.info.run_name or run.info.run_id,
                         AlertEngine(self._rules), alerted)  # fmt: skip

    def _poll_run(self, run, sent: list[tuple[str, Alert]]) -> tuple[int, int]:
        run_id = run.info.run_id
        state = self._followed.get(run_id)
        if state is None:
            state = self._followed[run_id] = self._follow(run)
        keys = [k for k in run.data.metrics if k.startswith(_WATCHED_PREFIXES)]
        histories = {k: self.client.get_metric_history(run_id, k) for k in keys}
        running = run.info.status == "RUNNING"
        upto = settled_upto(histories, running, self.clock(), self.settle)
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
                self._send(run, state, alert)
                sent.append((state.run_name, alert))
            state.cursor = ob.step
        if upto is not None:
            state.cursor = max(state.cursor, upto)
        if not running:
            # Evaluated to its end: stop following it (and say so, for the next process).
            self.client.set_tag(run_id, TAG_STATE, "done")
            self._followed.pop(run_id, None)
        return len(obs), skipped

    def _send(self, run, state: _Followed, alert: Alert) -> None:
        # Remember first, deliver second: if the tag cannot be written nothing is sent, and
        # the next poll tries again; a restart never sends the same alert twice.
        tags = {f"{TAG_ALERTED}{alert.rule}": str(alert.step)}
        if "mlflow" in alert.actions and f"gradwatch.alert.{alert.rule}" not in run.data.tags:
            tags[f"gradwatch.alert.{alert.rule}"] = alert.text()[:5000]
        for key, value in tags.items():
            self.client.set_tag(run.info.run_id, key, value)
        state.alerted[alert.rule] = alert.step
        logger.info("run %s (%s): %s", state.run_name, run.info.run_id[:8], alert.text())
        self.delivery.deliver(alert_for_run(alert, run))

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
        return self.delivery.close(timeout)


def alert_for_run(alert: Alert, run) -> Alert:
    """``alert`` with the run named in its message and details (a channel sees many runs)."""
    name = run.info.run_name or run.info.run_id
    details = {**alert.details, "run_id": run.info.run_id, "run_name": name,
               "experiment_id": run.info.experiment_id, "source": "gradwatch monitor"}  # fmt: skip
    return dataclasses.replace(alert, message=f"run {name}: {alert.message}", details=details)


__all__ += ["BASELINE_TAG", "alert_for_run", "settled_upto"]
