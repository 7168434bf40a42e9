"""``GradWatch``: the hook that wraps a numpy training loop.

    with gradwatch.GradWatch(every=100, experiment="mlp", run_name="lr=0.1", params={"lr": 0.1}) as watch:
        for step in range(steps):
            loss, grads = forward_backward(params, X[b], Y[b])
            watch.step(params, grads, loss=loss, lr=lr, loss_fn=lambda p: forward(p, X[b], Y[b]))
            for k in params:
                params[k] -= lr * grads[k]

Call ``step()`` after backprop and *before* the update: the check then runs at exactly the
parameters the gradients belong to. Gradients from another point (called after the update,
or from another batch than ``loss_fn`` sees) show up as mismatches in every tensor.

Data flows one way: the hook feeds the check engine and the statistics, hands records to the
tracking journal (shipped to MLflow in the background) and observations to the alert engine.
Monitoring never crashes or stalls training: a tracking outage is journaled and replayed,
webhooks are sent from a background thread, and a check that cannot run is logged, not raised.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gradwatch import __version__
from gradwatch.alerts import AlertEngine, CheckObservation, Rule, StepObservation
from gradwatch.check import CheckReport, check_gradients
from gradwatch.check._inputs import match_gradient_keys, param_items
from gradwatch.config import Config, load_config
from gradwatch.errors import AlertStop, GradwatchError, InputError, LossError
from gradwatch.params import ENV_EXPERIMENT, ENV_RUN_NAME, ENV_SWEEP_ID, TAG_SWEEP_ID
from gradwatch.stats import tensor_stats, update_ratio

__all__ = ["GradWatch", "DEFAULTS"]

logger = logging.getLogger("gradwatch")

#: Hook options and their defaults (explicit arguments > gradwatch.yaml ``hook:`` > these).
DEFAULTS: dict[str, Any] = {
    "every": 100,
    "num_samples": 32,
    "mode": "auto",
    "eps": None,
    "seed": None,
    "budget": None,
    "stats_every": "auto",
    "experiment": None,
    "run_name": None,
    "tracking_uri": None,
    "journal_dir": None,
    "flush_timeout": 10.0,
    "rank_suffix": False,
}
#: With ``stats_every="auto"``, statistics may take this fraction of the loop's wall time...
STATS_TIME_FRACTION = 0.0025
#: ...and may produce at most this many metrics per second: a local MLflow server ingests
#: about 7k metrics/s in all (shared/MLFLOW.md), and a sweep runs several hooks at once.
STATS_MAX_METRICS_PER_SECOND = 1000.0
#: Auto statistics never go further apart than this many steps.
STATS_MAX_INTERVAL = 1000
#: Share of ``budget`` kept for what the hook costs the loop but cannot time: the loop's
#: own code runs slower after a check or a statistics step has evicted its data from the
#: CPU caches (about 1 % of loop time on the benchmark MLP, BENCHMARKS.md).
BUDGET_RESERVE = 0.2
#: Alerts are evaluated in batches of this many steps (at once on statistics, checks and a
#: non-finite loss; every step when a rule can stop training)...
ALERT_BATCH_STEPS = 32
#: ...and at least this often, in seconds.
ALERT_MAX_DELAY = 1.0
#: A gap between two steps longer than this many typical steps is a pause (evaluation,
#: checkpoint): it counts as this many steps of loop time.
PAUSE_STEPS = 4
_UNSET: Any = object()


def _scalars(loss: float | None, lr: float | None) -> dict[str, float]:
    metrics = {}
    if loss is not None:
        metrics["loss"] = loss
    if lr is not None:
        metrics["lr"] = lr
    return metrics


def _as_float(value: Any, what: str) -> float | None:
    if value is None:
        return None
    try:
        return (
            float(np.asarray(value).reshape(-1)[0])
            if not isinstance(value, (int, float))
            else float(value)
        )
    except Exception:  # noqa: BLE001 - report any unconvertible value the same way
        raise InputError(
            f"{what} must be a number (a float or a 0-d array), got {type(value).__name__}"
        ) from None


class GradWatch:
    """Gradient checks, training statistics and alerts for a numpy training loop, in MLflow.

        with GradWatch(every=100, budget=0.05, experiment="mlp") as watch:
            ...
            watch.step(params, grads, loss=loss, lr=lr, loss_fn=loss_fn)

    Args:
        every: steps between gradient checks (a check also runs at the first step);
            ``None`` turns checks off (statistics only).
        experiment, run_name: MLflow names. ``GRADWATCH_EXPERIMENT``/``GRADWATCH_RUN_NAME``,
            set by ``gradwatch sweep`` for the scripts it runs, override both.
        params: your hyper-parameters, logged as MLflow params as they are (``{"lr": 0.1}``).
        tags: extra MLflow tags.
        tracking_uri: MLflow tracking URI; default ``MLFLOW_TRACKING_URI``, else the embedded
            store ``sqlite:///mlflow.db`` in the working directory.
        config: path of a gradwatch.yaml, a :class:`~gradwatch.config.Config`, ``None`` for
            ``./gradwatch.yaml`` if present, or ``False`` for no file.
        num_samples, mode, eps, seed: options of :func:`gradwatch.check_gradients`.
        budget: how much slower monitoring may make the loop, as a fraction of the loop's own
            time (e.g. 0.05): everything the hook spends, checks included, stays within it, so
            checks run at most every ``every`` steps and only as often as that allows.
            ``None``: no limit.
        stats_every: steps between per-tensor statistics, or ``"auto"`` (at most 0.25% of the
            loop's time and 1000 metrics/s).
        rules: alert rules (default: the config's, else check failure, non-finite, loss
            divergence); ``callbacks``: ``{name: fn(alert)}`` for ``callback:<name>`` actions.
        rank: process rank (default ``RANK`` env, else 0). Only rank 0 checks and logs unless
            ``rank_suffix=True``, which gives every rank its own run named ``<name>-rank<N>``.
        flush_timeout: seconds ``close()`` waits for MLflow before leaving the rest in the
            journal for ``gradwatch sync``.
    """

    def __init__(
        self,
        every: int | None = _UNSET,
        *,
        experiment: str | None = _UNSET,
        run_name: str | None = _UNSET,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        tracking_uri: str | None = _UNSET,
        config: str | os.PathLike | Config | bool | None = None,
        num_samples: int = _UNSET,
        mode: str = _UNSET,
        eps: float | None = _UNSET,
        seed: int | None = _UNSET,
        budget: float | None = _UNSET,
        stats_every: int | str = _UNSET,
        journal_dir: str | None = _UNSET,
        flush_timeout: float = _UNSET,
        rules: list[Rule] | None = None,
        callbacks: Mapping[str, Callable[[Any], Any]] | None = None,
        rank: int | None = None,
        rank_suffix: bool = _UNSET,
    ) -> None:
        self.config = self._load_config(config)
        given = {
            "every": every, "experiment": experiment, "run_name": run_name,
            "tracking_uri": tracking_uri, "num_samples": num_samples, "mode": mode, "eps": eps,
            "seed": seed, "budget": budget, "stats_every": stats_every, "journal_dir": journal_dir,
            "flush_timeout": flush_timeout, "rank_suffix": rank_suffix,
        }  # fmt: skip
        env = {
            "experiment": os.environ.get(ENV_EXPERIMENT),
            "run_name": os.environ.get(ENV_RUN_NAME),
        }
        options = dict(DEFAULTS)
        options.update(self.config.hook)
        options.update({k: v for k, v in given.items() if v is not _UNSET})
        # `gradwatch sweep` sets these for the scripts it runs: the sweep decides where its
        # runs go, so they win over the script's own arguments and its gradwatch.yaml.
        options.update({k: v for k, v in env.items() if v})
        self.options = _validate_options(options)
        self.user_params = self._redacted("params") | dict(params or {})
        self.user_tags = {
            str(k): str(v) for k, v in {**self._redacted("tags"), **(tags or {})}.items()
        }
        self.rules = list(rules) if rules is not None else list(self.config.rules)
        self.callbacks = dict(callbacks or {})
        self.rank = int(os.environ.get("RANK", "0") or 0) if rank is None else int(rank)
        self.enabled = self.rank == 0 or bool(self.options["rank_suffix"])
        self._started = False
        self._recording = False  # started, enabled and not closed: step() records
        self._closed = False
        self.run = None
        self.close_result = None

    # -- configuration -----------------------------------------------------------------------

    @staticmethod
    def _load_config(config: Any) -> Config:
        if isinstance(config, Config):
            return config
        if config is False:
            return Config()
        if config is None or config is True:
            return load_config()
        return load_config(config)

    def _redacted(self, section: str) -> dict[str, Any]:
        """The config's ``hook.params``/``hook.tags`` with values from ``${VAR}`` masked."""
        values = self.config.hook.get(section) or {}
        return {
            k: "***" if f"hook.{section}.{k}" in self.config.secrets else v
            for k, v in values.items()
        }

    @property
    def every(self) -> int | None:
        return self.options["every"]

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> GradWatch:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None or (issubclass(exc_type, SystemExit) and not self._terminated
                                and getattr(exc, "code", None) in (0, None)):  # fmt: skip
            status = "FINISHED"  # sys.exit(0) inside the block is a normal end
        elif issubclass(exc_type, KeyboardInterrupt) or (
            issubclass(exc_type, SystemExit) and self._terminated
        ):
            status = "KILLED"
        else:
            status = "FAILED"
        self.close(status, error=exc)
        return False

    def start(self) -> GradWatch:
        """Open the MLflow run (or attach to the active one) and reset per-run state."""
        if self._started and not self._closed:
            raise GradwatchError(
                "this GradWatch is already started; close() it before starting again"
            )
        self._reset_state()
        self._started, self._closed = True, False
        self._recording = False
        if not self.enabled:
            return self
        from gradwatch.tracking import open_run  # MLflow is imported only when a run starts

        run_name = self.options["run_name"]
        if self.options["rank_suffix"]:
            run_name = f"{run_name or 'run'}-rank{self.rank}"
        tags = {"gradwatch.version": __version__, **self.user_tags}
        if os.environ.get(ENV_SWEEP_ID):
            tags[TAG_SWEEP_ID] = os.environ[ENV_SWEEP_ID]
        self.run = open_run(
            tracking_uri=self.options["tracking_uri"],
            experiment=self.options["experiment"],
            run_name=run_name,
            tags=tags,
            journal_dir=self.options["journal_dir"],
        )
        try:
            self._start_run_parts()
        except BaseException:
            # Nothing may leave a run open behind a failed start (Ctrl-C during start-up, a
            # baseline that raised): end it, and leave this object closed and restartable.
            self._closed = True
            self._restore_sigterm()
            self.close_result = self.run.close(
                "FAILED", timeout=min(2.0, self.options["flush_timeout"])
            )
            raise
        return self

    def _start_run_parts(self) -> None:
        self.run.log_params({**self.user_params, **self._loggable_options()})
        if self.config.path:
            self._log_config_file(self.config.path)
        rules = self.rules
        if any(r.type == "baseline_drift" and r.enabled for r in rules):
            # Loads the baseline run's series now (a request at start-up); a baseline that
            # cannot be loaded disables only that rule. `gradwatch monitor` is the better home
            # for baseline drift when the server may be down while training starts.
            from gradwatch.alerts import attach_baselines

            rules = attach_baselines(rules, tracking_uri=self.run.tracking_uri)
        self.engine = AlertEngine(rules)
        # A rule that stops training must see every step as it happens.
        stops = any("stop" in r.actions for r in self.engine.rules)
        self._alert_batch = 1 if stops else ALERT_BATCH_STEPS
        self.delivery = self.config.delivery(self.callbacks)
        self._install_sigterm()
        self._recording = True

    def _log_config_file(self, path: str) -> None:
        """Upload the config file with literal webhook URLs and headers masked (``${VAR}``
        placeholders are kept: they name a variable, not its secret value)."""
        import tempfile

        import yaml

        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
        hooks = (data.get("alerts") or {}).get("webhooks") or {}
        for spec in hooks.values():
            if not isinstance(spec, dict):
                continue
            if isinstance(spec.get("url"), str) and "${" not in spec["url"]:
                spec["url"] = "***"
            if isinstance(spec.get("headers"), dict):
                spec["headers"] = {k: v if isinstance(v, str) and v.startswith("${") else "***"
                                   for k, v in spec["headers"].items()}  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            copy = os.path.join(tmp, os.path.basename(path))
            with open(copy, "w") as fh:
                fh.write(f"# {os.path.basename(path)} as used by this run (secrets masked)\n")
                yaml.safe_dump(data, fh, sort_keys=False)
            self.run.log_artifact_file(copy, "gradwatch")

    def _loggable_options(self) -> dict[str, str]:
        shown = {f"gradwatch.{k}": "none" if v is None else str(v) for k, v in self.options.items()
                 if k in ("every", "num_samples", "mode", "eps", "seed", "budget", "stats_every")}  # fmt: skip
        return {**self.config.loggable_params(), **shown}

    def _reset_state(self) -> None:
        self._next_step = 0
        # Steps before this one need no statistics and no check; the first step never does.
        self._quiet_until: float = -math.inf
        self._check_not_before = 0  # no check before this step (postponed by budget, no loss_fn)
        self._key_map: dict[str, Any] | None = None
        self._stats_interval = (
            1 if self.options["stats_every"] == "auto" else int(self.options["stats_every"])
        )
        self._last_stats_step: int | None = None
        self._snapshot: tuple[int, dict[str, np.ndarray]] | None = None
        self._stats_metrics = 0
        self._ratio_cost = 0.0
        self._left_at: float | None = None  # when step() last returned
        self._step_seconds = 0.0  # EWMA of the loop's own time per step (pauses clipped)
        self._loop_seconds = 0.0  # the loop's own time so far, without the hook's
        self._hook_seconds = 0.0  # time spent inside step(), checks included
        self._pending_steps: list[tuple] = []  # steps the alert engine has not seen yet
        self._alerts_fed_at = time.perf_counter()
        self._last_check_step: int | None = None
        self._last_check_cost = 0.0
        self._check_index = 0
        self.checks = 0
        self.checks_failed = 0
        self.checks_deferred = 0  # times `budget` postponed a check `every` made due
        self.check_errors = 0
        self.last_report: CheckReport | None = None
        self.alerts: list[Any] = []
        self._alert_count = 0
        self._stop_alert = None
        self._warned_no_loss_fn = False
        self._terminated = False
        self._old_sigterm = None

    def close(self, status: str = "FINISHED", error: BaseException | None = None):
        """End the run with ``status`` (FINISHED, FAILED or KILLED), flushing with a bounded wait.

        Returns the tracking pipeline's close result (what was shipped, what is still pending
        in the journal and the ``gradwatch sync`` command that lands it later).
        """
        if not self._started or self._closed:
            return self.close_result
        self._closed = True
        self._recording = False
        self._restore_sigterm()
        if self.run is None:
            return None
        try:
            self._feed_remaining_alerts()
            summary = {"gradwatch.checks": str(self.checks), "gradwatch.checks_failed": str(self.checks_failed),
                       "gradwatch.checks_deferred": str(self.checks_deferred),
                       "gradwatch.alerts": str(self._alert_count)}  # fmt: skip
            if isinstance(error, AlertStop):
                summary["gradwatch.stop_reason"] = str(error)[:5000]
            elif error is not None and status == "FAILED":
                summary["gradwatch.error"] = f"{type(error).__name__}: {error}"[:5000]
            self.run.set_tags(summary)
            if getattr(self, "delivery", None) is not None:
                self.delivery.close(timeout=min(5.0, self.options["flush_timeout"]))
        finally:
            self.close_result = self.run.close(status, timeout=self.options["flush_timeout"])
        return self.close_result

    def _feed_remaining_alerts(self) -> None:
        """At close: the steps since the last alert batch still get their alerts."""
        if not self._pending_steps or getattr(self, "engine", None) is None:
            return
        try:
            self._feed_alerts(time.perf_counter(), int(time.time() * 1000))
        except Exception as exc:  # noqa: BLE001 - closing the run matters more
            logger.warning("gradwatch: alerts for the last steps failed: %s", exc)

    # -- SIGTERM: end the run as KILLED -------------------------------------------------------

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            self._old_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        except (ValueError, OSError):
            self._old_sigterm = None

    def _on_sigterm(self, signum, frame) -> None:
        previous = self._old_sigterm
        if previous is signal.SIG_IGN:
            return  # the program chose to ignore SIGTERM; so do we
        if callable(previous):
            previous(signum, frame)  # e.g. the user's checkpoint-on-preemption handler
        self._terminated = True
        raise SystemExit(128 + signum)

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None:
            try:
                signal.signal(signal.SIGTERM, self._old_sigterm)
            except (ValueError, OSError):
                pass
            self._old_sigterm = None

    # -- the hot path ------------------------------------------------------------------------

    def step(
        self,
        params: Any,
        grads: Any,
        *,
        loss: float | None = None,
        lr: float | None = None,
        loss_fn: Callable[[Any], float] | None = None,
        step: int | None = None,
    ) -> CheckReport | None:
        """Record one training step; run a gradient check when one is due.

            report = watch.step(params, grads, loss=loss, lr=lr, loss_fn=lambda p: forward(p, X, Y))

        Call it after backprop, before the parameter update. ``params``/``grads`` as for
        :func:`gradwatch.check_gradients`. ``loss_fn`` is needed only for checks. Returns
        the check's report on steps that ran one, else ``None``. Raises
        :class:`~gradwatch.AlertStop` when a rule with the ``stop`` action fired.
        """
        entered = time.perf_counter()
        if not self._recording:
            if not self._started or self._closed:
                raise GradwatchError(
                    "GradWatch.step() called outside a run: use `with GradWatch(...) as watch:` "
                    "or call watch.start() first"
                )
            return None  # not this rank's run
        # The loop's own time since step() last returned; a pause (an evaluation pass, a
        # checkpoint) counts as PAUSE_STEPS typical steps. That time, not the wall clock, is
        # what `budget` and the statistics' share are fractions of, so the hook's own time is
        # not counted as the loop's and a pause buys no burst of checks.
        if self._left_at is not None:
            dt = entered - self._left_at
            typical = self._step_seconds
            if typical > 0.0:
                dt = min(dt, PAUSE_STEPS * typical)
                self._step_seconds = 0.9 * typical + 0.1 * dt
            else:
                self._step_seconds = dt
            self._loop_seconds += dt
        s = self._next_step if step is None else int(step)
        self._next_step = s + 1
        loss_value = float(loss) if isinstance(loss, float) else _as_float(loss, "loss")
        lr_value = float(lr) if isinstance(lr, float) else _as_float(lr, "lr")
        timestamp_ms = int(time.time() * 1000)

        # Most steps write one journal line, queue one tuple for the alert engine and return:
        # this is the cost every step pays, right after backprop has flushed the CPU caches.
        # Statistics, alerts and checks run every few steps, when their code is warm.
        if s < self._quiet_until and (loss_value is None or loss_value - loss_value == 0.0):
            if loss_value is not None and lr_value is not None and lr_value - lr_value == 0.0:
                self.run.log_loss_lr(s, loss_value, lr_value, timestamp_ms)
            else:
                self.run.log_metrics(s, _scalars(loss_value, lr_value), timestamp_ms)
            pending = self._pending_steps
            pending.append((s, loss_value, lr_value, None, None, timestamp_ms / 1000))
            if len(pending) < self._alert_batch and entered - self._alerts_fed_at < ALERT_MAX_DELAY:
                self._left_at = left = time.perf_counter()
                self._hook_seconds += left - entered
                return None
            self._feed_alerts(entered, timestamp_ms)
            return self._leave(entered)
        loss_bad = loss_value is not None and not math.isfinite(loss_value)
        metrics = _scalars(loss_value, lr_value)
        return self._full_step(s, params, grads, loss_value, lr_value, metrics, loss_fn,
                               loss_bad, timestamp_ms, entered)  # fmt: skip

    def _full_step(self, s, params, grads, loss_value, lr_value, metrics, loss_fn, loss_bad,
                   timestamp_ms, entered) -> CheckReport | None:  # fmt: skip
        """A step with statistics, an update ratio, a check or a non-finite loss."""
        if self._key_map is None:
            self._key_map = match_gradient_keys(params, grads)

        ratios = self._update_ratios(params) if self._snapshot is not None else None
        stats = None
        if (
            self._last_stats_step is None
            or s - self._last_stats_step >= self._stats_interval
            or loss_bad
        ):
            stats = self._statistics(s, params, grads, metrics)
        self.run.log_metrics(s, metrics, timestamp_ms)
        self._pending_steps.append((s, loss_value, lr_value, ratios, stats, timestamp_ms / 1000))

        check_due = self._check_due(s, loss_fn, loss_bad)
        if (
            check_due
            or stats is not None
            or len(self._pending_steps) >= self._alert_batch
            or entered - self._alerts_fed_at >= ALERT_MAX_DELAY
        ):
            self._feed_alerts(entered, timestamp_ms)
        if stats is not None:
            # This statistics step and the update ratio it causes on the next step are one
            # cost; that ratio is not known yet, so the last one measured stands in for it
            # (unless this step paid one already).
            cost = time.perf_counter() - entered
            if ratios is None:
                cost += self._ratio_cost
            self._adapt_stats_interval(cost, self._stats_metrics)
        report = None
        if check_due:
            report = self._run_check(s, params, grads, loss_fn, timestamp_ms)
        self._quiet_until = self._next_busy_step(s)
        return self._leave(entered, report)

    def _next_busy_step(self, s: int) -> int:
        """The first step after ``s`` that may need statistics, an update ratio or a check."""
        if self._snapshot is not None:
            return s + 1
        nxt = self._last_stats_step + self._stats_interval
        every = self.options["every"]
        if every is not None:
            due = s + 1 if self._last_check_step is None else self._last_check_step + every
            nxt = min(nxt, max(due, self._check_not_before))
        return nxt

    def _leave(self, entered: float, report: CheckReport | None = None) -> CheckReport | None:
        self._left_at = time.perf_counter()
        self._hook_seconds += self._left_at - entered
        if self._stop_alert is not None:
            alert, self._stop_alert = self._stop_alert, None
            self.run.flush(self.options["flush_timeout"])
            raise AlertStop(
                f"stopped by alert rule '{alert.rule}' at step {alert.step}: {alert.message}", alert
            )
        return report

    def _feed_alerts(self, now: float, timestamp_ms: int) -> None:
        """Give the alert engine the steps queued since the last feed; dispatch what fires."""
        self._alerts_fed_at = now
        pending, self._pending_steps = self._pending_steps, []
        observations = []
        for s, loss_value, lr_value, ratios, stats, ts in pending:
            grad_norms = param_norms = nonfinite = None
            if stats is not None:
                grad_norms, param_norms, nonfinite = stats
            observations.append(StepObservation(
                s, loss_value, lr_value, grad_norms, param_norms, ratios, nonfinite, ts
            ))  # fmt: skip
        for alert in self.engine.observe_steps(observations):
            self._dispatch(alert, timestamp_ms)

    def _statistics(self, s, params, grads, metrics):
        named_params = _named(params)
        named_grads = {name: np.asarray(grads[key]) for name, key in self._key_map.items()}
        stats = tensor_stats(named_params, named_grads)
        grad_norms, param_norms, nonfinite = {}, {}, {}
        for name, st in stats.items():
            grad_norms[name] = st.grad_norm
            param_norms[name] = st.param_norm
            nonfinite[name] = st.nonfinite
            metrics[f"grad_norm/{name}"] = st.grad_norm
            metrics[f"param_norm/{name}"] = st.param_norm
            if st.nonfinite:
                metrics[f"nonfinite/{name}"] = float(st.nonfinite)
        # Keep a copy to measure the update the optimizer is about to apply.
        self._snapshot = (s, {name: p.copy() for name, p in named_params.items()})
        self._last_stats_step = s
        self._stats_metrics = 3 * len(stats)
        return grad_norms, param_norms, nonfinite

    def _update_ratios(self, params) -> dict[str, float]:
        t0 = time.perf_counter()
        s_prev, before = self._snapshot
        self._snapshot = None
        ratios = {
            name: update_ratio(before[name], p)
            for name, p in _named(params).items()
            if name in before
        }
        self.run.log_metrics(s_prev, {f"update_ratio/{k}": v for k, v in ratios.items()})
        self._ratio_cost = time.perf_counter() - t0
        return ratios

    def _adapt_stats_interval(self, cost: float, num_metrics: int) -> None:
        """Space statistics so that they take STATS_TIME_FRACTION of the loop's time."""
        if self.options["stats_every"] != "auto" or self._step_seconds <= 0:
            return
        by_time = cost / (STATS_TIME_FRACTION * self._step_seconds)
        by_rate = num_metrics / (STATS_MAX_METRICS_PER_SECOND * self._step_seconds)
        # At most doubling at a time: one statistics step slowed by the machine (a page
        # fault storm, a preempted core) must not thin out statistics for a thousand steps.
        wanted = min(STATS_MAX_INTERVAL, max(1, math.ceil(max(by_time, by_rate))))
        self._stats_interval = int(min(wanted, 2 * self._stats_interval))

    # -- checks ------------------------------------------------------------------------------

    def _check_due(self, s: int, loss_fn, loss_bad: bool) -> bool:
        every = self.options["every"]
        if every is None or loss_bad:
            return False
        due = s >= self._check_not_before and (
            self._last_check_step is None or s - self._last_check_step >= every
        )
        if not due:
            return False
        if loss_fn is None:
            self._check_not_before = s + every  # ask again in `every` steps, not every step
            if not self._warned_no_loss_fn:
                self._warned_no_loss_fn = True
                logger.warning("gradwatch: step() got no loss_fn, so no gradient check can run; "
                               "pass loss_fn=lambda p: forward(p, X_batch, Y_batch)")  # fmt: skip
            return False
        budget = self.options["budget"]
        if budget is not None and self._last_check_step is not None:
            # Everything the hook spends, checks included, stays within budget x the loop's
            # own time: wrapped/bare <= 1 + budget, whatever the statistics cost.
            usable = budget * (1.0 - BUDGET_RESERVE)
            deficit = (self._hook_seconds + self._last_check_cost) / usable - self._loop_seconds
            if deficit > 0:
                # Come back when the loop has run long enough to pay for it, not every step.
                steps = deficit / self._step_seconds if self._step_seconds > 0 else 1
                self._check_not_before = s + max(1, min(int(steps), 1_000_000))
                self.checks_deferred += 1
                return False
        return True

    def _run_check(self, s, params, grads, loss_fn, timestamp_ms) -> CheckReport | None:
        seed = self.options["seed"]
        if seed is not None:
            seed = int(seed) + self._check_index  # reproducible, yet new coordinates each check
        self._check_index += 1
        self._last_check_step = s
        t0 = time.perf_counter()
        try:
            return self._check_and_record(s, params, grads, loss_fn, timestamp_ms, seed)
        finally:
            # The whole cost (evaluations, triage, journal, alerts) predicts the next check's.
            self._last_check_cost = time.perf_counter() - t0

    def _check_and_record(self, s, params, grads, loss_fn, timestamp_ms, seed):
        try:
            report = check_gradients(
                loss_fn, params, grads, mode=self.options["mode"], num_samples=self.options["num_samples"],
                eps=self.options["eps"], seed=seed,
            )  # fmt: skip
        except InputError as exc:
            # Malformed params/grads are the caller's bug: say so at once. A loss that is not
            # finite near the current parameters is the training's state: log it, go on.
            if not isinstance(exc, LossError):
                raise
            return self._check_failed_to_run(s, exc)
        except Exception as exc:  # noqa: BLE001 - a check that cannot run must not stop training
            return self._check_failed_to_run(s, exc)
        return self._record_check(s, report, timestamp_ms)

    def _check_failed_to_run(self, s: int, exc: BaseException) -> None:
        self.check_errors += 1
        logger.warning("gradwatch: gradient check at step %d could not run: %s", s, exc)
        self.run.set_tags({"gradwatch.check_error": f"step {s}: {exc}"[:5000]})
        return None

    def _record_check(self, s: int, report: CheckReport, timestamp_ms: int) -> CheckReport:
        self.checks += 1
        self.checks_failed += not report.passed
        self.last_report = report
        metrics = {
            "gradcheck/max_rel_error": report.max_rel_error,
            "gradcheck/difference": report.difference,
            "gradcheck/passed": 1.0 if report.passed else 0.0,
            "gradcheck/num_evals": float(report.num_evals),
            "gradcheck/seconds": report.seconds,
        }
        for name, tr in report.per_param.items():
            metrics[f"gradcheck/rel_error/{name}"] = tr.max_rel_error
            if tr.num_mismatches:
                metrics[f"gradcheck/mismatches/{name}"] = float(tr.num_mismatches)
        self.run.log_metrics(s, metrics, timestamp_ms)
        details = report.to_dict()
        self.run.append_artifact_line("gradwatch/checks.jsonl", {"step": s, **details})
        for alert in self.engine.observe_check(CheckObservation(s, details, timestamp_ms / 1000)):
            self._dispatch(alert, timestamp_ms)
        if not report.passed:
            hint = ""
            if report.per_param and len(report.mismatched_tensors) == len(report.per_param):
                hint = ("\nhint: every tensor disagrees; is step() called after backprop and before "
                        "the update, with loss_fn on the same batch as the gradients?")  # fmt: skip
            logger.warning("gradwatch: step %d: %s%s", s, report, hint)
        return report

    # -- alerts ------------------------------------------------------------------------------

    def _dispatch(self, alert, timestamp_ms: int) -> None:
        self.alerts.append(alert)
        self.delivery.deliver(alert)
        if "mlflow" in alert.actions:
            self._alert_count += 1
            self.run.set_tags({f"gradwatch.alert.{alert.rule}": alert.text()[:5000]})
            # Stamped with the observed step's time (alerts are evaluated in batches).
            when = int(alert.timestamp * 1000) if alert.timestamp else timestamp_ms
            self.run.log_metrics(alert.step, {"alerts/count": float(self._alert_count)}, when)
            self.run.append_artifact_line("gradwatch/alerts.jsonl", alert.to_dict())
        if "stop" in alert.actions and self._stop_alert is None:
            self._stop_alert = alert

    # -- the decorator form ------------------------------------------------------------------

    def wrap(
        self,
        train_step: Callable[..., tuple[Any, Any]],
        lr: float | Callable[[], float] | None = None,
    ):
        """Wrap ``train_step(params, *batch) -> (loss, grads)`` so every call is a ``step()``.

            train_step = watch.wrap(train_step, lr=0.1)
            loss, grads = train_step(params, X_batch, Y_batch)

        The function itself serves as the loss for checks (its loss output, same batch), so a
        check costs forward *and* backward passes; pass ``loss_fn`` to ``step()`` yourself if
        that matters.
        """

        @functools.wraps(train_step)
        def wrapped(params, *batch, **kwargs):
            loss, grads = train_step(params, *batch, **kwargs)
            current_lr = lr() if callable(lr) else lr
            self.step(params, grads, loss=loss, lr=current_lr,
                      loss_fn=lambda p: train_step(p, *batch, **kwargs)[0])  # fmt: skip
            return loss, grads

        return wrapped


def _validate_options(options: dict[str, Any]) -> dict[str, Any]:
    every = options["every"]
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise InputError(
            f"every must be a positive integer (steps between checks) or None; got {every!r}"
        )
    budget = options["budget"]
    if budget is not None and not (isinstance(budget, (int, float)) and 0 < budget <= 1):
        raise InputError(
            f"budget must be a fraction of wall time in (0, 1], e.g. 0.05; got {budget!r}"
        )
    stats_every = options["stats_every"]
    if stats_every != "auto" and (
        isinstance(stats_every, bool) or not isinstance(stats_every, int) or stats_every < 1
    ):
        raise InputError(f"stats_every must be a positive integer or 'auto'; got {stats_every!r}")
    from gradwatch.check import MODES

    if options["mode"] not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}; got {options['mode']!r}")
    flush = options["flush_timeout"]
    if not isinstance(flush, (int, float)) or flush < 0:
        raise InputError(f"flush_timeout must be seconds >= 0; got {flush!r}")
    return options


def _named(params: Any) -> dict[str, np.ndarray]:
    """``params`` by the names the check engine gives them ("W1", or "0", "1" for lists)."""
    return dict(param_items(params)[0])
