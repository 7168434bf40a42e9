"""``GradWatch``: the coordinator of the hook's parts (see the package docstring).

with gradwatch.GradWatch(every=100, experiment="mlp") as watch:
    ...
    watch.step(params, grads, loss=loss, lr=lr, loss_fn=lambda p: forward(p, X_b, Y_b))
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import numbers
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gradwatch import __version__
from gradwatch.alerts import AlertEngine, Rule
from gradwatch.check import CheckReport
from gradwatch.config import Config, load_config
from gradwatch.errors import AlertStop, GradwatchError, InputError
from gradwatch.hook.checks import CheckRunner
from gradwatch.hook.clock import LoopClock
from gradwatch.hook.feed import ALERT_MAX_DELAY, AlertFeed, PendingStep
from gradwatch.hook.layout import TensorLayout
from gradwatch.hook.options import HookOptions
from gradwatch.hook.schedule import Schedule
from gradwatch.hook.sigterm import SigtermGuard
from gradwatch.hook.statistics import StaleParams, Statistics
from gradwatch.params import ENV_SWEEP_ID, TAG_SWEEP_ID

__all__ = ["GradWatch"]

logger = logging.getLogger("gradwatch")
_UNSET: Any = object()
_INT64 = (-(2**63), 2**63 - 1)


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

    Every option is validated here, once (InputError naming it), against the schema the
    ``hook:`` section of gradwatch.yaml uses. A run never closed by the script ends FINISHED
    (FAILED after an uncaught exception) when the interpreter exits.
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
        self.config = _load_config(config)
        given = {
            "every": every, "experiment": experiment, "run_name": run_name,
            "tracking_uri": tracking_uri, "num_samples": num_samples, "mode": mode, "eps": eps,
            "seed": seed, "budget": budget, "stats_every": stats_every, "journal_dir": journal_dir,
            "flush_timeout": flush_timeout, "rank_suffix": rank_suffix,
        }  # fmt: skip
        self.options = HookOptions.resolve({k: v for k, v in given.items() if v is not _UNSET},
                                           self.config)  # fmt: skip
        self.user_params = self._redacted("params") | dict(params or {})
        self.user_tags = {
            str(k): str(v) for k, v in {**self._redacted("tags"), **(tags or {})}.items()
        }
        self.rules = list(rules) if rules is not None else list(self.config.rules)
        self.callbacks = dict(callbacks or {})
        self.rank = int(os.environ.get("RANK", "0") or 0) if rank is None else int(rank)
        self.enabled = self.rank == 0 or self.options.rank_suffix
        self._started = self._closed = self._recording = False
        self._sigterm = SigtermGuard()
        self.run: Any = None
        self.close_result: Any = None
        self._parts: _RunParts | None = None

    def _redacted(self, section: str) -> dict[str, Any]:
        """The config's ``hook.params``/``hook.tags`` with values from ``${VAR}`` masked."""
        values = self.config.hook.get(section) or {}
        return {k: "***" if f"hook.{section}.{k}" in self.config.secrets else v
                for k, v in values.items()}  # fmt: skip

    @property
    def every(self) -> int | None:
        return self.options.every

    # -- what a run has measured (zero before the first run) --------------------------------

    checks = property(lambda self: self._parts.checks.checks if self._parts else 0)
    checks_failed = property(lambda self: self._parts.checks.checks_failed if self._parts else 0)
    check_errors = property(lambda self: self._parts.checks.check_errors if self._parts else 0)
    checks_not_run = property(lambda self: self._parts.checks.checks_not_run if self._parts else 0)
    checks_deferred = property(lambda self: self._parts.schedule.checks_deferred if self._parts else 0)  # fmt: skip
    last_report = property(lambda self: self._parts.checks.last_report if self._parts else None)
    alerts = property(lambda self: self._parts.feed.alerts if self._parts else [])
    clock = property(lambda self: self._parts.clock if self._parts else None,
                     doc="The run's :class:`LoopClock` (loop vs hook seconds), or None.")  # fmt: skip
    schedule = property(lambda self: self._parts.schedule if self._parts else None,
                        doc="The run's :class:`Schedule` (stats interval, check timing), or None.")  # fmt: skip

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> GradWatch:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> bool:
        terminated = self._sigterm.terminated
        if exc_type is None or (issubclass(exc_type, SystemExit) and not terminated
                                and getattr(exc, "code", None) in (0, None)):  # fmt: skip
            status = "FINISHED"  # sys.exit(0) inside the block is a normal end
        elif issubclass(exc_type, KeyboardInterrupt) or issubclass(exc_type, SystemExit):
            status = "KILLED"
        else:
            status = "FAILED"
        self.close(status, error=exc)
        return False

    def start(self) -> GradWatch:
        """Open the MLflow run (or attach to the active one) and reset per-run state."""
        if self._started and not self._closed:
            raise GradwatchError("this GradWatch is already started; close() it before starting again")  # fmt: skip
        self._started, self._closed, self._recording = True, False, False
        self._parts = None
        if not self.enabled:
            return self
        from gradwatch.tracking import open_run  # MLflow is imported only when a run starts

        opts = self.options
        run_name = (
            f"{opts.run_name or 'run'}-rank{self.rank}" if opts.rank_suffix else opts.run_name
        )
        tags = {"gradwatch.version": __version__, **self.user_tags}
        if os.environ.get(ENV_SWEEP_ID):
            tags[TAG_SWEEP_ID] = os.environ[ENV_SWEEP_ID]
        self.run = open_run(tracking_uri=opts.tracking_uri, experiment=opts.experiment,
                            run_name=run_name, tags=tags, journal_dir=opts.journal_dir)  # fmt: skip
        atexit.register(self._close_at_exit)
        try:
            self._start_run_parts()
        except BaseException:
            # Nothing may leave a run open behind a failed start (Ctrl-C during start-up, a
            # baseline that raised): end it, and leave this object closed and restartable.
            self._closed = True
            atexit.unregister(self._close_at_exit)
            self._sigterm.restore()
            self.close_result = self.run.close("FAILED", timeout=min(2.0, opts.flush_timeout))
            raise
        return self

    def _start_run_parts(self) -> None:
        self.run.log_params({**self.user_params, **self.config.loggable_params(),
                             **self.options.loggable()})  # fmt: skip
        masked = self.config.masked_text()
        if masked is not None:
            with tempfile.TemporaryDirectory() as tmp:
                copy = os.path.join(tmp, os.path.basename(self.config.path))
                with open(copy, "w", encoding="utf-8") as fh:
                    fh.write(masked)
                self.run.log_artifact_file(copy, "gradwatch")
        rules = self.rules
        if any(r.type == "baseline_drift" and r.enabled for r in rules):
            # Loads the baseline run's series now (a request at start-up); a baseline that
            # cannot be loaded disables only that rule.
            from gradwatch.alerts import attach_baselines

            rules = attach_baselines(rules, tracking_uri=self.run.tracking_uri)
        self._parts = _RunParts(self.options, self.run, AlertEngine(rules),
                                self.config.delivery(self.callbacks))  # fmt: skip
        self._sigterm.install()
        self._recording = True

    def close(self, status: str = "FINISHED", error: BaseException | None = None):
        """End the run with ``status`` (FINISHED, FAILED or KILLED), flushing with a bounded wait.

        Returns the tracking pipeline's close result (what was shipped, what is still pending
        in the journal and the ``gradwatch sync`` command that lands it later).
        """
        if not self._started or self._closed:
            return self.close_result
        self._closed, self._recording = True, False
        self._sigterm.restore()
        atexit.unregister(self._close_at_exit)
        if self.run is None:
            return None
        parts = self._parts
        try:
            if parts is not None:
                parts.feed.close()
            summary = {"gradwatch.checks": str(self.checks),
                       "gradwatch.checks_failed": str(self.checks_failed),
                       "gradwatch.checks_deferred": str(self.checks_deferred),
                       "gradwatch.alerts": str(parts.feed.count if parts else 0)}  # fmt: skip
            if isinstance(error, AlertStop):
                summary["gradwatch.stop_reason"] = str(error)[:5000]
            elif error is not None and status == "FAILED":
                summary["gradwatch.error"] = f"{type(error).__name__}: {error}"[:5000]
            self.run.set_tags(summary)
            if parts is not None:
                parts.feed.delivery.close(timeout=min(5.0, self.options.flush_timeout))
        finally:
            self.close_result = self.run.close(status, timeout=self.options.flush_timeout)
        return self.close_result

    def _close_at_exit(self) -> None:
        """A script that never called close(): end the run as the interpreter exits."""
        error = getattr(sys, "last_value", None)  # set when an exception went uncaught
        status = "FINISHED" if error is None else "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"  # fmt: skip
        try:
            self.close(status, error=error)
        except Exception as exc:  # noqa: BLE001 - the journal keeps the rest for `gradwatch sync`
            logger.warning("gradwatch: closing the run at exit failed: %s", exc)

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

        Call it after backprop, before the parameter update, with the arrays the model holds
        now. ``params``/``grads`` as for :func:`gradwatch.check_gradients`; they must keep their
        keys and shapes for the whole run. ``loss_fn`` is needed only for checks. Returns the
        check's report on steps that ran one, else ``None``. Raises InputError on a malformed
        argument and :class:`~gradwatch.AlertStop` when a rule with the ``stop`` action fired.
        """
        entered = time.perf_counter()
        if not self._recording:
            if not self._started or self._closed:
                raise GradwatchError("GradWatch.step() called outside a run: use `with GradWatch(...) "
                                     "as watch:` or call watch.start() first")  # fmt: skip
            return None  # not this rank's run
        parts = self._parts
        clock = parts.clock
        clock.enter(entered)
        s = parts.next_step if step is None else _as_step(step)
        parts.next_step = s + 1
        loss_value = float(loss) if isinstance(loss, float) else _as_float(loss, "loss")
        lr_value = float(lr) if isinstance(lr, float) else _as_float(lr, "lr")
        timestamp_ms = int(time.time() * 1000)

        # Most steps write one journal line, queue one record for the alert engine and return:
        # this is the cost every step pays, right after backprop has flushed the CPU caches.
        # Statistics, alerts and checks run every few steps, when their code is warm.
        if s < parts.schedule.quiet_until and (
            loss_value is None or loss_value - loss_value == 0.0
        ):
            parts.layout.verify(params, grads, s)
            if loss_value is not None and lr_value is not None and lr_value - lr_value == 0.0:
                self.run.log_loss_lr(s, loss_value, lr_value, timestamp_ms)
            else:
                self.run.log_metrics(s, _scalars(loss_value, lr_value), timestamp_ms)
            feed = parts.feed
            pending = feed.pending
            pending.append(PendingStep(s, loss_value, lr_value, None, None, timestamp_ms / 1000))
            if len(pending) < feed.batch and entered - feed.fed_at < ALERT_MAX_DELAY:
                clock.left_at = left = time.perf_counter()
                clock.hook_seconds += left - entered
                return None
            feed.flush(entered)
            return self._leave(entered)
        return self._busy_step(s, params, grads, loss_value, lr_value, loss_fn, timestamp_ms, entered)  # fmt: skip

    def _busy_step(self, s, params, grads, loss_value, lr_value, loss_fn, timestamp_ms, entered):
        """A step with statistics, an update ratio, a check or a non-finite loss."""
        parts = self._parts
        parts.observe_tensors(s, params, grads, lr_value)
        loss_bad = loss_value is not None and not math.isfinite(loss_value)
        metrics = _scalars(loss_value, lr_value)
        ratios, stats = parts.measure(s, params, grads, lr_value, loss_bad, metrics)
        self.run.log_metrics(s, metrics, timestamp_ms)
        feed = parts.feed
        feed.pending.append(
            PendingStep(s, loss_value, lr_value, ratios, stats, timestamp_ms / 1000)
        )
        check_due = self._check_due(s, loss_fn, loss_bad)
        if check_due or stats is not None or feed.due(entered):
            feed.flush(entered)
        if stats is not None:
            # This statistics step and the update ratio it causes on the next step are one
            # cost; that ratio is not known yet, so the last one measured stands in for it.
            cost = time.perf_counter() - entered + (parts.statistics.ratio_cost if ratios is None else 0.0)  # fmt: skip
            parts.schedule.adapt_stats_interval(cost, parts.statistics.num_metrics, parts.clock.step_seconds)  # fmt: skip
        report = self._check(s, params, grads, loss_fn, timestamp_ms) if check_due else None
        parts.schedule.plan_after(s, parts.statistics.snapshot is not None or parts.stale.probing)
        return self._leave(entered, report)

    def _check_due(self, s: int, loss_fn, loss_bad: bool) -> bool:
        schedule = self._parts.schedule
        if loss_bad or not schedule.check_due(s):
            return False
        if loss_fn is None:
            schedule.postpone_check(s)
            if not self._parts.warned_no_loss_fn:
                self._parts.warned_no_loss_fn = True
                logger.warning("gradwatch: step() got no loss_fn, so no gradient check can run; "
                               "pass loss_fn=lambda p: forward(p, X_batch, Y_batch)")  # fmt: skip
            return False
        return schedule.budget_allows(s, self._parts.clock)

    def _check(self, s, params, grads, loss_fn, timestamp_ms) -> CheckReport | None:
        parts = self._parts
        parts.schedule.check_started(s)
        if parts.stale.suspect:
            parts.checks.skip_stale(s)  # the gradients belong to other arrays than these
            return None
        t0 = time.perf_counter()
        try:
            return parts.checks.run_check(s, params, grads, loss_fn, timestamp_ms)
        finally:
            parts.schedule.check_finished(time.perf_counter() - t0)

    def _leave(self, entered: float, report: CheckReport | None = None) -> CheckReport | None:
        parts = self._parts
        parts.clock.leave(entered, time.perf_counter())
        if parts.feed.stop_alert is not None:
            alert, parts.feed.stop_alert = parts.feed.stop_alert, None
            self.run.flush(self.options.flush_timeout)
            raise AlertStop(f"stopped by alert rule '{alert.rule}' at step {alert.step}: {alert.message}", alert)  # fmt: skip
        return report

    # -- the decorator form ------------------------------------------------------------------

    def wrap(self, train_step: Callable[..., tuple[Any, Any]],
             lr: float | Callable[[], float] | None = None):  # fmt: skip
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


class _RunParts:
    """The per-run state of one GradWatch run: its parts, and the tensors it watches."""

    def __init__(self, options: HookOptions, run: Any, engine: AlertEngine, delivery: Any) -> None:
        self.clock = LoopClock()
        self.schedule = Schedule(options.every, options.stats_every, options.budget)
        self.feed = AlertFeed(engine, delivery, run)
        self.checks = CheckRunner(options, run, self.feed)
        self.stale = StaleParams()
        self.run = run
        self.layout: TensorLayout | None = None
        self.statistics: Statistics | None = None
        self.next_step = 0
        self.warned_no_loss_fn = False
        self._ratio_grad_norms: dict[str, float] = {}  # grad norms at the snapshot's step

    def observe_tensors(self, s: int, params: Any, grads: Any, lr: float | None) -> None:
        """The first step fixes the layout; later busy steps verify it fully."""
        if self.layout is None:
            self.layout = TensorLayout.of(params, grads)
            self.statistics = Statistics(self.layout)
            return
        self.layout.verify(params, grads, s)
        self.layout.verify_params(params, s)

    def measure(self, s, params, grads, lr, loss_bad, metrics) -> tuple[Any, Any]:
        """The update ratios since the last statistics step, and this step's statistics."""
        statistics, stale = self.statistics, self.stale
        ratios = stats = None
        if statistics.snapshot is not None:
            ratio_step, ratios = statistics.update_ratios(params, time.perf_counter())
            self.run.log_metrics(ratio_step, {f"update_ratio/{k}": v for k, v in ratios.items()})
            stale.observe_ratios(s, ratios, self._ratio_grad_norms, lr)
        first = self.schedule.last_stats_step is None
        if self.schedule.stats_due(s, loss_bad):
            stats = statistics.measure(s, params, grads, metrics)
            self.schedule.stats_done(s)
            self._ratio_grad_norms = stats.grad_norms
        if first and stats is not None:
            stale.start(s, self.layout.named(params), stats.grad_norms, lr)
        elif stale.probing:
            stale.probe(s, self.layout.named(params), lr)
        return ratios, stats


def _load_config(config: Any) -> Config:
    if isinstance(config, Config):
        return config
    if config is False:
        return Config()
    if config is None or config is True:
        return load_config()
    return load_config(config)


def _scalars(loss: float | None, lr: float | None) -> dict[str, float]:
    metrics = {}
    if loss is not None:
        metrics["loss"] = loss
    if lr is not None:
        metrics["lr"] = lr
    return metrics


def _as_step(step: Any) -> int:
    """``step`` as an int that MLflow can store (int64), else InputError."""
    if isinstance(step, numbers.Integral) and not isinstance(step, bool):
        s = int(step)
        if _INT64[0] <= s <= _INT64[1]:
            return s
        raise InputError(f"step={s} is outside the 64-bit integers MLflow stores steps in; "
                         "pass the training step count (or leave step= out to count from 0)")  # fmt: skip
    raise InputError(f"step must be an integer, got {type(step).__name__} {step!r}")


def _as_float(value: Any, what: str) -> float | None:
    """A scalar loss/lr as a float; refuse strings, complex numbers and arrays of several values."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (str, bytes)):
        raise InputError(f"{what} must be a number, got the string {value[:40]!r}; convert it with float()")  # fmt: skip
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - report any unconvertible value the same way
        arr = None
    if arr is None or arr.dtype.kind not in "biuf":
        kind = (
            type(value).__name__ if arr is None else f"{type(value).__name__} of dtype {arr.dtype}"
        )
        hint = " (a complex value has no order: pass its real part if that is the loss)" if arr is not None and arr.dtype.kind == "c" else ""  # fmt: skip
        raise InputError(f"{what} must be a real number (a float or a 0-d array), got {kind}{hint}")
    if arr.size != 1:
        raise InputError(f"{what} must be one number, got an array of shape {arr.shape}: "
                         f"pass the scalar {what} (e.g. {what}=float(batch_{what}.mean()))")  # fmt: skip
    return float(arr.reshape(()))
