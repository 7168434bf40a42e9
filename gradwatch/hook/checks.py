"""Gradient checks during training: run one, record it in the run and hand it to the alerts.

    runner = CheckRunner(options, run, feed)
    report = runner.run_check(step, params, grads, loss_fn, timestamp_ms, lr=0.1)  # or None

A failing check prints a few lines (verdict and tensors, the worst error, the one hint); the
full probe table is printed once per run, at the first failure, and is always in
``checks.jsonl`` and the run report.

A check that cannot run (loss_fn raised, a non-finite loss near the parameters) is logged
and tagged, never raised: monitoring must not stop training. Malformed params/grads are the
caller's bug and raise InputError at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from gradwatch import schema
from gradwatch.alerts.observations import SEVERITY_LOG_LEVELS
from gradwatch.check import CheckReport, check_gradients
from gradwatch.errors import InputError, LossError
from gradwatch.hook.feed import AlertFeed
from gradwatch.hook.options import HookOptions

__all__ = ["CheckRunner"]

logger = logging.getLogger("gradwatch")
#: Alerts are printed on the logger the delivery's ``log`` action uses.
alert_logger = logging.getLogger("gradwatch.alerts")


class CheckRunner:
    """Runs checks with the run's options and records each: metrics, ``checks.jsonl``,
    alerts, and one log message per failed check."""

    def __init__(self, options: HookOptions, run: Any, feed: AlertFeed) -> None:
        self.options = options
        self.run = run
        self.feed = feed
        self.checks = 0
        self.checks_failed = 0
        self.check_errors = 0
        self.checks_not_run = 0  # skipped: the parameters were stale
        self.last_report: CheckReport | None = None
        self.last_num_metrics = 0  # metrics the last recorded check logged (their shipping cost)
        self._index = 0
        self._table_printed = False  # the full probe table is printed once per run
        self._invariant_named: set[str] = set()  # tensors already named invariant (info)

    def run_check(
        self,
        step: int,
        params: Any,
        grads: Any,
        loss_fn: Callable[[Any], float],
        timestamp_ms: int,
        lr: float | None = None,
        first_step: bool = False,
    ) -> CheckReport | None:
        """Run one check and record it; ``lr`` (a plain SGD step's) lets the engine test
        "step() after the update" when every tensor disagrees; ``first_step``: these are the
        run's first gradients."""
        seed = self.options.seed
        if seed is not None:
            seed = seed + self._index  # reproducible, yet new coordinates each check
        self._index += 1
        try:
            with np.errstate(all="ignore"):  # the engine reports non-finite values itself
                report = check_gradients(
                    loss_fn,
                    params,
                    grads,
                    mode=self.options.mode,
                    num_samples=self.options.num_samples,
                    eps=self.options.eps,
                    seed=seed,
                    lr=lr if lr is not None and math.isfinite(lr) and lr > 0 else None,
                    first_step=first_step,
                    timeout=self.options.check_timeout,
                )
        except InputError as exc:
            # Malformed params/grads are the caller's bug: say so at once. A loss that is not
            # finite near the current parameters is the training's state: log it, go on.
            if not isinstance(exc, LossError):
                raise
            return self.not_run(step, exc)
        except Exception as exc:  # noqa: BLE001 - a check that cannot run must not stop training
            return self.not_run(step, exc)
        return self.record(step, report, timestamp_ms)

    def not_run(self, step: int, reason: BaseException | str) -> None:
        self.check_errors += 1
        logger.warning("gradwatch: gradient check at step %d could not run: %s", step, reason)
        self.run.set_tags({schema.TAG_CHECK_ERROR: f"step {step}: {reason}"[:5000]})
        return None

    def skip_stale(self, step: int) -> None:
        """A check due on parameters that are not the ones the gradients belong to."""
        self.checks_not_run += 1
        self.run.set_tags(
            {
                schema.TAG_CHECK_NOT_RUN: (
                    f"step {step}: the parameter arrays have not changed since the first steps "
                    "(replaced instead of updated in place); pass the current arrays to step()"
                )
            }
        )

    def record(self, step: int, report: CheckReport, timestamp_ms: int) -> CheckReport:
        self.checks += 1
        self.checks_failed += not report.passed
        self.last_report = report
        details = report.to_dict()
        metrics = schema.check_metrics(details)
        self.last_num_metrics = len(metrics)
        self.run.log_metrics(step, metrics, timestamp_ms)
        self.run.append_artifact_line(schema.ARTIFACT_CHECKS, {"step": step, **details})
        logged = self.feed.observe_check(step, details, timestamp_ms / 1000)
        for name, tensor in report.per_param.items():
            if tensor.invariant and name not in self._invariant_named:
                self._invariant_named.add(name)
                logger.info(
                    "gradwatch: step %d: the loss does not depend on '%s' here: its "
                    "numeric and analytic gradients are both ~0 (e.g. a bias feeding a "
                    "batchnorm); not a failure",
                    step,
                    name,
                )
        if not report.passed:
            self._log_failure(step, report, logged)
        else:
            for alert in logged:  # an alert on a passing check (e.g. rel_error_drift)
                alert_logger.log(
                    SEVERITY_LOG_LEVELS[alert.severity],
                    alert.text(),
                    extra={"gradwatch_alert": alert.to_dict()},
                )
        return report

    def _log_failure(self, step: int, report: CheckReport, alerts: list[Any]) -> None:
        """A few lines per failed check (the alert lines if a rule fired, the verdict and
        tensors, the worst error, the hint); the full probe table only at the first one."""
        lines = report.summary_lines()
        if not self._table_printed:
            self._table_printed = True
            lines.extend(report.probe_lines())
            lines.append(
                "(the probe table is printed once per run; every check's is in "
                f"{schema.ARTIFACT_CHECKS} and the run report)"
            )
        text = "\n".join(lines)
        if not alerts:
            logger.warning("gradwatch: step %d: %s", step, text)
            return
        worst = max(alerts, key=lambda a: SEVERITY_LOG_LEVELS[a.severity])
        heads = "\n".join(a.text() for a in alerts)
        alert_logger.log(
            SEVERITY_LOG_LEVELS[worst.severity],
            "%s\n%s",
            heads,
            text,
            extra={"gradwatch_alert": worst.to_dict()},
        )
