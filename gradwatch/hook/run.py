"""One GradWatch run's parts and the steps that need more than a journal line.

    parts = RunParts.open(options, run, config, rules, callbacks)   # params, config artifact, alerts
    report = parts.busy_step(s, params, grads, loss, lr, loss_fn, timestamp_ms, entered)
    parts.summary(status, error)                                    # tags for close()

A busy step is one with statistics, an update ratio to measure, a gradient check or a
non-finite loss; every other step takes GradWatch.step()'s inlined fast path.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

from gradwatch import schema
from gradwatch.alerts import AlertEngine, Rule
from gradwatch.check import CheckReport
from gradwatch.config import Config
from gradwatch.errors import AlertStop
from gradwatch.hook.checks import CheckRunner
from gradwatch.hook.clock import LoopClock
from gradwatch.hook.feed import AlertFeed, PendingStep
from gradwatch.hook.histograms import Histograms
from gradwatch.hook.inputs import scalars
from gradwatch.hook.layout import TensorLayout
from gradwatch.hook.options import HookOptions
from gradwatch.hook.schedule import Schedule
from gradwatch.hook.statistics import StaleParams, Statistics, StepStats
from gradwatch.links import run_links, run_path
from gradwatch.params import ENV_PARENT_RUN_ID, ENV_SWEEP_ID

__all__ = ["RunParts", "open_tracking_run", "report_step"]

logger = logging.getLogger("gradwatch")

#: A check postponed by ``budget`` to more than this many times ``every`` steps away is
#: worth a warning (once per run), with the figures of where the budget goes.
LONG_DEFERRAL = 10
#: The longest param value MLflow keeps.
MAX_PARAM_VALUE = 6000


def open_tracking_run(options: HookOptions, rank: int, user_tags: Mapping[str, str]) -> Any:
    """Open the journaled MLflow run (or attach to the active one) for these options."""
    from gradwatch import __version__
    from gradwatch.tracking import open_run  # MLflow is imported only when a run starts

    run_name = options.run_name
    if options.rank_suffix:
        run_name = f"{run_name or 'run'}-rank{rank}"
    tags = {schema.TAG_VERSION: __version__, **user_tags}
    if os.environ.get(ENV_SWEEP_ID):
        tags[schema.TAG_SWEEP_ID] = os.environ[ENV_SWEEP_ID]
    run = open_run(
        tracking_uri=options.tracking_uri,
        experiment=options.experiment,
        run_name=run_name,
        tags=tags,
        journal_dir=options.journal_dir,
        keep_journal=options.keep_journal,
        report=options.report,
        parent_run_id=os.environ.get(ENV_PARENT_RUN_ID) or None,
        shared_prefix=schema.SHARED_PREFIX,
    )
    if run.placement.message:
        # Said once, where the user looks (as MLflow prints its own run links).
        print(run.placement.message, file=sys.stderr)
    return run


def settings_params(config: Config, options: HookOptions, run: Any) -> dict[str, str]:
    """The hook's settings as one param, ``gradwatch.settings`` (JSON), not one param each in
    the user's table. Settings too long for a param (MLflow keeps 6000 characters; a config
    with many rules) go whole into the artifact ``gradwatch/settings.json``; the param then
    holds the hook's options alone."""
    settings = {**config.loggable_params(), **options.loggable()}
    param = schema.settings_param(settings)
    if len(param[schema.PARAM_SETTINGS]) <= MAX_PARAM_VALUE:
        return param
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, os.path.basename(schema.ARTIFACT_SETTINGS))
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(param[schema.PARAM_SETTINGS])
        run.log_artifact_file(path, os.path.dirname(schema.ARTIFACT_SETTINGS))
    return schema.settings_param(options.loggable())


def report_step(run: Any) -> Callable[[str], str | None]:
    """The run's last step before its end record: draw ``gradwatch/report.html`` and
    ``gradwatch/histograms.png`` from the journal and log them as the run's artifacts, so
    they ship (and are retried, and kept for ``gradwatch sync``) like every other record.

        run.close("FINISHED", timeout=10.0, before_end=report_step(run))

    Drawn by the hook's side, in the training process: the tracking pipeline never imports
    the report (a reader of runs). Returns a note for close()'s message when nothing could
    be drawn.
    """

    def draw(status: str) -> str | None:
        from gradwatch.report import REPORT_DIR, write_run_artifacts

        # Beside the journal (its folder is private), gone with this step.
        with tempfile.TemporaryDirectory(dir=run.journal_path.parent) as tmp:
            paths = write_run_artifacts(run.journal_path, tmp, run_id=run.run_id, status=status)
            for path in paths:
                run.log_artifact_file(str(path), REPORT_DIR)
        if paths:
            return None
        return (
            f"The run report could not be drawn (see the warning above); "
            f"`gradwatch report {run.run_id or 'RUN_ID'}` draws it from MLflow"
        )

    return draw


class RunParts:
    """The clock, schedule, statistics, alert feed and check runner of one run."""

    def __init__(self, options: HookOptions, run: Any, engine: AlertEngine, delivery: Any) -> None:
        self.options = options
        self.run = run
        self.clock = LoopClock()
        self.schedule = Schedule(options.every, options.stats_every, options.budget)
        self.feed = AlertFeed(engine, delivery, run)
        self.checks = CheckRunner(options, run, self.feed)
        self.stale = StaleParams()
        self.layout: TensorLayout | None = None  # fixed at the first step
        self._first_step: int | None = None  # the step of the run's first gradients
        self.statistics: Statistics | None = None
        self.next_step = 0
        self.verdict: str | None = None  # the run's verdict, once verdict_tags() read it
        self._warned_no_loss_fn = False
        self._warned_budget = False
        self._ratio_grad_norms: dict[str, float] = {}  # grad norms at the snapshot's step
        self._ratio_cost = 0.0  # seconds the last update ratio took, its journal line included
        self._full_stats = True  # the last statistics step had quantiles and histograms

    @classmethod
    def open(
        cls,
        options: HookOptions,
        run: Any,
        config: Config,
        rules: list[Rule],
        callbacks: Mapping[str, Callable[..., Any]],
        params: Mapping[str, Any],
    ) -> RunParts:
        """Log the run's params and (masked) config file, load baselines, start the alerts."""
        run.log_params({**params, **settings_params(config, options, run)})
        masked = config.masked_text()
        if masked is not None:
            with tempfile.TemporaryDirectory() as tmp:
                copy = os.path.join(tmp, os.path.basename(config.path))
                with open(copy, "w", encoding="utf-8") as fh:
                    fh.write(masked)
                # Under the schema's folder, with the file's own name (a ci.yaml stays ci.yaml).
                run.log_artifact_file(copy, os.path.dirname(schema.ARTIFACT_CONFIG))
        if any(r.type == "baseline_drift" and r.enabled for r in rules):
            # Loads the baseline run's series now (a request at start-up); a baseline that
            # cannot be loaded disables only that rule.
            from gradwatch.alerts import attach_baselines

            rules = attach_baselines(rules, tracking_uri=run.tracking_uri)
        return cls(options, run, AlertEngine(rules), config.delivery(callbacks))

    def verdict_tags(self, wait: float) -> dict[str, str]:
        """The verdict tag and the run's description (markdown), read from the journal just
        before the run's end record (see :mod:`gradwatch.report.verdict`): the report's
        verdict, which is ``gradwatch compare``'s. ``{}`` when that cannot be read; the run
        still ends. Waits up to ``wait`` s for the run to exist (for the report's link)."""
        from gradwatch.report.verdict import verdict_tags

        run = self.run
        link = None
        # The description links the report once the run exists: a short run on a store still
        # starting waits for it here, out of the time close() would wait for it anyway.
        run.wait_for_run(wait)
        if run.run_id and run.experiment_id:  # relative: opens on whatever host shows the UI
            link = run_path(run.experiment_id, run.run_id, schema.ARTIFACT_REPORT)
        placement = getattr(run, "placement", None)
        try:
            tags = verdict_tags(
                run.journal_path,
                link,
                self.options.report,
                run.run_id,
                user_note=bool(placement and placement.user_note),
            )
        except Exception as err:  # noqa: BLE001 - a verdict must never keep the run from ending
            logger.warning(
                "gradwatch: no verdict tag: cannot read the journal (%s: %s)",
                type(err).__name__,
                err,
            )
            return {}
        self.verdict = tags.get(schema.TAG_VERDICT)
        return tags

    def say_where(self, result: Any) -> None:
        """Print the verdict and where to see the run: direct links for a server, the
        ``mlflow ui`` command and the links it will serve for a local store."""
        run = self.run
        run_id = getattr(result, "run_id", None)
        experiment_id = run.experiment_id
        if not run_id or not experiment_id:
            return  # not in MLflow yet: close()'s message says how to sync it
        links = run_links(run.tracking_uri, experiment_id, run_id)
        verdict = f"verdict {self.verdict}; " if self.verdict else ""
        lines = links.lines(report=self.options.report)
        print(f"gradwatch: {verdict}" + "\n    ".join(lines), file=sys.stderr)

    def summary(self, status: str, error: BaseException | None) -> dict[str, str]:
        """The run's closing tags."""
        tags = {
            schema.TAG_CHECKS: str(self.checks.checks),
            schema.TAG_CHECKS_FAILED: str(self.checks.checks_failed),
            schema.TAG_CHECKS_DEFERRED: str(self.schedule.checks_deferred),
            schema.TAG_ALERTS: str(self.feed.count),
        }
        if isinstance(error, AlertStop):
            tags[schema.TAG_STOP_REASON] = str(error)[:5000]
        elif error is not None and status == "FAILED":
            tags[schema.TAG_ERROR] = f"{type(error).__name__}: {error}"[:5000]
        return tags

    # -- busy steps ---------------------------------------------------------------------------

    def busy_step(
        self, s, params, grads, loss, lr, loss_fn, timestamp_ms, entered
    ) -> CheckReport | None:
        """A step with statistics, an update ratio, a check or a non-finite loss."""
        self._observe_tensors(s, params, grads)
        loss_bad = loss is not None and not math.isfinite(loss)
        metrics = scalars(loss, lr)
        ratios, stats = self._measure(s, params, grads, lr, loss_bad, metrics)
        self.run.log_metrics(s, metrics, timestamp_ms)
        feed = self.feed
        feed.pending.append(PendingStep(s, loss, lr, ratios, stats, timestamp_ms / 1000))
        check_due = self._check_due(s, loss_fn, loss_bad)
        if check_due or stats is not None or feed.due(entered):
            feed.flush(entered)
        if stats is not None:
            # What the statistics log is shipped at the budget's expense, every time; a full
            # statistics step (quantiles, histograms) also times the auto interval, counting it
            # and the update ratio it causes on the next step as one cost (that ratio is not
            # known yet, so the last one measured stands in for it).
            shipping = self._charge_shipping(self.statistics.num_metrics)
            if self._full_stats:
                cost = time.perf_counter() - entered + shipping
                cost += self._ratio_cost if ratios is None else 0.0
                self.schedule.adapt_stats_interval(
                    cost, self.statistics.num_metrics, self.clock.step_seconds
                )
        report = self._check(s, params, grads, loss_fn, timestamp_ms, lr) if check_due else None
        self.schedule.plan_after(s, self.statistics.snapshot is not None or self.stale.probing)
        return report

    def leave(self, entered: float) -> None:
        """``step()`` returns: account its time; raise AlertStop if a ``stop`` rule fired."""
        self.clock.leave(entered, time.perf_counter())
        alert = self.feed.stop_alert
        if alert is not None:
            self.feed.stop_alert = None
            self.run.flush(self.options.flush_timeout)
            raise AlertStop(
                f"stopped by alert rule '{alert.rule}' at step {alert.step}: {alert.message}", alert
            )

    def _observe_tensors(self, s: int, params: Any, grads: Any) -> None:
        """The first step fixes the layout; later busy steps verify it fully."""
        if self.layout is None:
            self._first_step = s  # the run's first gradients: none can be stale
            self.layout = TensorLayout.of(params, grads)
            self.statistics = Statistics(self.layout, Histograms(self.options.hist_every, self.run))
            return
        self.layout.verify(params, grads, s)
        self.layout.verify_params(params, s)

    def _measure(
        self, s, params, grads, lr, loss_bad, metrics
    ) -> tuple[dict | None, StepStats | None]:
        """The update ratios since the last statistics step, and this step's statistics."""
        statistics, stale = self.statistics, self.stale
        ratios = stats = None
        if statistics.snapshot is not None:
            t0 = time.perf_counter()
            ratio_step, ratios = statistics.update_ratios(params)
            self.run.log_metrics(
                ratio_step, {schema.UPDATE_RATIO + k: v for k, v in ratios.items()}
            )
            self._ratio_cost = time.perf_counter() - t0  # journal line included
            stale.observe_ratios(s, ratios, self._ratio_grad_norms, lr)
        first = self.schedule.last_stats_step is None
        if self.schedule.stats_due(s, loss_bad):
            full = self.schedule.full_stats_due(s)
            stats = statistics.measure(s, params, grads, metrics, full)
            self.schedule.stats_done(s, full)
            self._full_stats = full
            self._ratio_grad_norms = stats.grad_norms
        if first and stats is not None:
            stale.start(s, self.layout.named(params), stats.grad_norms, lr)
        elif stale.probing:
            stale.probe(s, self.layout.named(params), lr)
        return ratios, stats

    def _check_due(self, s: int, loss_fn: Any, loss_bad: bool) -> bool:
        schedule = self.schedule
        if loss_bad or not schedule.check_due(s):
            return False
        if loss_fn is None:
            schedule.postpone_check(s)
            if not self._warned_no_loss_fn:
                self._warned_no_loss_fn = True
                logger.warning(
                    "gradwatch: step() got no loss_fn, so no gradient check can run; "
                    "pass loss_fn=lambda p: forward(p, X_batch, Y_batch)"
                )
            return False
        shipping = self._shipping_cost(self.feed.scalars_fed)
        if schedule.budget_allows(s, self.clock, shipping):
            return True
        every = schedule.every or 1
        if not self._warned_budget and schedule.check_not_before - s > LONG_DEFERRAL * every:
            self._warned_budget = True
            self._warn_budget(shipping, (schedule.check_not_before - s) // every * every)
        return False

    def _warn_budget(self, shipping: float, wait: int) -> None:
        """Say once, with the figures, why ``budget`` keeps checks far apart: the shipping of
        the every-step loss and lr (never thinned), the hook's own work, or the checks."""
        loop = max(self.clock.loop_seconds, 1e-9)
        hook = self.clock.hook_seconds
        embedded = str(getattr(self.run, "tracking_uri", "")).startswith("sqlite:")
        costly = shipping > 0.5 * (self.options.budget or 0.0) * loop
        advice = (
            "a local `mlflow server` ships a value for a fraction of what the embedded "
            "sqlite store costs; or "
            if embedded and costly
            else ""
        )
        logger.warning(
            "gradwatch: budget=%g holds gradient checks back: the next is due in ~%d steps, "
            "not %d. Of this loop's time, shipping loss and lr every step costs %.1f %% (they "
            "are never thinned), the hook's own work (journal, statistics, the checks so far) "
            "%.1f %%, and one check %.0f ms. To check more often: %sraise budget.",
            self.options.budget,
            wait,
            self.schedule.every or 0,
            100.0 * shipping / loop,
            100.0 * hook / loop,
            1e3 * self.schedule.last_check_cost,
            advice,
        )

    def _check(self, s, params, grads, loss_fn, timestamp_ms, lr=None) -> CheckReport | None:
        self.schedule.check_started(s)
        if self.stale.suspect:
            self.checks.skip_stale(s)  # the gradients belong to other arrays than these
            return None
        t0 = time.perf_counter()
        self.checks.last_num_metrics = 0  # stays 0 when the check cannot run
        try:
            return self.checks.run_check(
                s, params, grads, loss_fn, timestamp_ms, lr, first_step=s == self._first_step
            )
        finally:
            shipping = self._charge_shipping(self.checks.last_num_metrics)
            self.schedule.check_finished(time.perf_counter() - t0 + shipping)

    def _charge_shipping(self, num_metrics: int) -> float:
        """Charge the hook's time with what shipping ``num_metrics`` metrics costs the shipper
        process (its measured CPU per metric) and return that: ``budget`` covers shipping what
        the statistics and checks log, not only their time inside ``step()``. The every-step
        loss and lr are charged when a check asks the budget (``_check_due``)."""
        shipping = self._shipping_cost(num_metrics)
        self.clock.hook_seconds += shipping
        return shipping

    def _shipping_cost(self, num_metrics: int) -> float:
        """CPU seconds the shipper process spends shipping ``num_metrics`` metric values."""
        return num_metrics * getattr(self.run, "ship_cpu_per_metric", 0.0)
