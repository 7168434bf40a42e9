"""When statistics and gradient checks run: a pure schedule over step numbers and the
:class:`~gradwatch.hook.clock.LoopClock`'s seconds, testable with a fake clock.

    schedule = Schedule(every=100, stats_every="auto", budget=0.05)
    schedule.stats_due(step)                 # statistics at this step?
    schedule.full_stats_due(step)            # ... with quantiles and histograms too?
    schedule.check_due(step)                 # `every` says a check is due (and not postponed)
    schedule.budget_allows(step, clock)      # ... and the budget can pay for it
    schedule.quiet_until                     # steps before this need nothing but the journal line
"""

from __future__ import annotations

import math

from gradwatch.hook.clock import LoopClock

__all__ = [
    "BUDGET_RESERVE",
    "NORMS_EVERY",
    "NORMS_PER_RUN",
    "STATS_MAX_INTERVAL",
    "STATS_MAX_METRICS_PER_SECOND",
    "STATS_TIME_FRACTION",
    "Schedule",
]

#: With ``stats_every="auto"``, statistics may take this fraction of the loop's time...
STATS_TIME_FRACTION = 0.0025
#: ...and may produce at most this many metrics per second: a local MLflow server ingests
#: about 7k metrics/s in all, and a sweep runs several hooks at once.
STATS_MAX_METRICS_PER_SECOND = 1000.0
#: Auto statistics never go further apart than this many steps.
STATS_MAX_INTERVAL = 1000
#: With ``stats_every="auto"``, the cheap statistics (norms, zero fractions, NaN/Inf counts and
#: the update ratio after them) are at least every NORMS_EVERY steps, and later at least
#: NORMS_PER_RUN times per run so far (every step // NORMS_PER_RUN steps): a 500-step run gets
#: 50 observations for the alert rules to judge, a million-step run ~430 in all. Quantiles and
#: histograms keep the time-based interval.
NORMS_EVERY = 10
NORMS_PER_RUN = 50
#: Share of ``budget`` kept for what the hook costs the loop but cannot time: the loop's own
#: code runs slower after a check or a statistics step has evicted its data from the CPU
#: caches (about 1 % of loop time on the benchmark MLP, BENCHMARKS.md).
BUDGET_RESERVE = 0.2


class Schedule:
    """Which steps get statistics, an update ratio or a gradient check."""

    def __init__(self, every: int | None, stats_every: int | str, budget: float | None) -> None:
        self.every = every
        self.budget = budget
        self.auto_stats = stats_every == "auto"
        self.stats_interval = 1 if self.auto_stats else int(stats_every)
        self.last_stats_step: int | None = None
        self.last_full_stats_step: int | None = None  # quantiles and histograms too
        self.last_check_step: int | None = None
        self.last_check_cost = 0.0  # seconds the last check cost, all in
        self.check_not_before = 0  # postponed by the budget or a missing loss_fn
        self.checks_deferred = 0  # times the budget postponed a check `every` made due
        # Steps before this one need no statistics, update ratio or check.
        self.quiet_until: float = -math.inf

    def norms_interval(self, step: int) -> int:
        """Steps between (cheap) statistics at ``step``: the auto interval, capped so that
        every run has about NORMS_PER_RUN observations (see :data:`NORMS_EVERY`)."""
        if not self.auto_stats:
            return self.stats_interval
        return min(self.stats_interval, max(NORMS_EVERY, step // NORMS_PER_RUN))

    def stats_due(self, step: int, loss_bad: bool = False) -> bool:
        return (
            self.last_stats_step is None
            or step - self.last_stats_step >= self.norms_interval(step)
            or loss_bad
        )

    def full_stats_due(self, step: int) -> bool:
        """A statistics step at ``step`` also computes quantiles and histograms."""
        return (
            self.last_full_stats_step is None
            or step - self.last_full_stats_step >= self.stats_interval
        )

    def stats_done(self, step: int, full: bool = True) -> None:
        self.last_stats_step = step
        if full:
            self.last_full_stats_step = step

    def check_due(self, step: int) -> bool:
        """``every`` makes a check due at ``step`` (the first step always), unless postponed."""
        if self.every is None or step < self.check_not_before:
            return False
        return self.last_check_step is None or step - self.last_check_step >= self.every

    def postpone_check(self, step: int) -> None:
        """Ask again in ``every`` steps, not every step (no loss_fn to check with)."""
        self.check_not_before = step + (self.every or 1)

    def budget_allows(self, step: int, clock: LoopClock, shipping: float = 0.0) -> bool:
        """Everything the hook spends, checks included, stays within ``budget`` x the loop's
        own time (wrapped/bare <= 1 + budget, whatever the statistics cost); else postpone
        the check until the loop has run long enough to pay for it. ``shipping``: what the
        shipper process spent on the every-step values so far (not in ``clock``)."""
        if self.budget is None or self.last_check_step is None:
            return True
        usable = self.budget * (1.0 - BUDGET_RESERVE)
        spent = clock.hook_seconds + shipping + self.last_check_cost
        deficit = spent / usable - clock.loop_seconds
        if deficit <= 0:
            return True
        steps = deficit / clock.step_seconds if clock.step_seconds > 0 else 1
        self.check_not_before = step + max(1, min(int(steps), 1_000_000))
        self.checks_deferred += 1
        return False

    def check_started(self, step: int) -> None:
        self.last_check_step = step

    def check_finished(self, cost: float) -> None:
        """The whole cost (evaluations, triage, journal, alerts) predicts the next check's."""
        self.last_check_cost = cost

    def plan_after(self, step: int, next_step_busy: bool = False) -> None:
        """Set :attr:`quiet_until`: the first step after ``step`` that needs more than the
        journal line (statistics, a check, or ``next_step_busy``: an update to measure)."""
        if next_step_busy:
            self.quiet_until = step + 1
            return
        nxt = self.last_stats_step + self.norms_interval(step)
        if self.every is not None:
            due = step + 1 if self.last_check_step is None else self.last_check_step + self.every
            nxt = min(nxt, max(due, self.check_not_before))
        self.quiet_until = nxt

    def adapt_stats_interval(self, cost: float, num_metrics: int, step_seconds: float) -> None:
        """Space auto statistics (measured on a full statistics step) so they take
        STATS_TIME_FRACTION of the loop's time and produce at most
        STATS_MAX_METRICS_PER_SECOND; the cheap ones stay denser (:meth:`norms_interval`)."""
        if not self.auto_stats or step_seconds <= 0:
            return
        by_time = cost / (STATS_TIME_FRACTION * step_seconds)
        by_rate = num_metrics / (STATS_MAX_METRICS_PER_SECOND * step_seconds)
        # At most doubling at a time: one statistics step slowed by the machine (a page
        # fault storm, a preempted core) must not thin out statistics for a thousand steps.
        wanted = min(STATS_MAX_INTERVAL, max(1, math.ceil(max(by_time, by_rate))))
        self.stats_interval = int(min(wanted, 2 * self.stats_interval))
