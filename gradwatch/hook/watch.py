"""``GradWatch``: the coordinator of the hook's parts (see the package docstring).

with gradwatch.GradWatch(every=100, experiment="mlp") as watch:
    ...
    watch.step(params, grads, loss=loss, lr=lr, loss_fn=lambda p: forward(p, X_b, Y_b))
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from gradwatch.alerts import Rule
from gradwatch.check import CheckReport
from gradwatch.config import Config, load_config
from gradwatch.errors import GradwatchError
from gradwatch.hook.feed import ALERT_MAX_DELAY, PendingStep
from gradwatch.hook.inputs import as_float, as_step, scalars
from gradwatch.hook.options import HookOptions
from gradwatch.hook.run import RunParts, open_tracking_run, report_step
from gradwatch.hook.sigterm import SigtermGuard
from gradwatch.secrets import mask_uri

__all__ = ["GradWatch"]

logger = logging.getLogger("gradwatch")


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
        check_timeout: seconds after which a check starts no further loss evaluation and ends
            INCONCLUSIVE with what it covered (``None``: no limit; one slow ``loss_fn`` call
            still runs to its end).
        budget: how much slower monitoring may make the loop, as a fraction of the loop's own
            time (e.g. 0.05): everything the hook spends, checks included, and the shipper's CPU
            for what statistics and checks log stay within it, so
            checks run at most every ``every`` steps and only as often as that allows.
            ``None``: no limit.
        stats_every: steps between per-tensor statistics, or ``"auto"`` (at most 0.25% of the
            loop's time and 1000 metrics/s).
        hist_every: statistics steps between histograms of |g| and |θ| per tensor (fixed
            log-spaced bins) appended to the artifact ``gradwatch/histograms.jsonl``; 1 (the
            default): every statistics step; 0 or ``None``: none. Two histogram steps are at
            least 1 % of the run's steps apart (a bounded file however dense the statistics).
            Their cost is part of the statistics step's, which ``stats_every="auto"`` and
            ``budget`` account for.
        report: write ``gradwatch/report.html`` and ``gradwatch/histograms.png`` at the end
            of the run (default True).
        rules: alert rules (default: the config's, else check failure, non-finite, loss
            divergence); ``callbacks``: ``{name: fn(alert)}`` for ``callback:<name>`` actions.
        rank: process rank (default ``RANK`` env, else 0). Only rank 0 checks and logs unless
            ``rank_suffix=True``, which gives every rank its own run named ``<name>-rank<N>``.
        keep_journal: keep the local journal of a run whose records all landed (by default it
            is deleted at close; journals of failed or incomplete runs always stay for sync).
        flush_timeout: seconds ``close()`` waits for MLflow before leaving the rest in the
            journal for ``gradwatch sync``.

    Every option is validated here, once (InputError naming it), against the schema the
    ``hook:`` section of gradwatch.yaml uses. The defaults above are that schema's
    (:data:`gradwatch.hook.options.DEFAULTS`); an option left at its default takes the value
    the config file's ``hook:`` section sets, if any, so ``GradWatch(every=100)`` does not
    override ``hook: {every: 50}`` (pass ``config=False`` to ignore the file). A run never closed by the script ends FINISHED
    (FAILED after an uncaught exception) when the interpreter exits.
    """

    def __init__(
        self,
        every: int | None = 100,
        *,
        experiment: str | None = None,
        run_name: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        tracking_uri: str | None = None,
        config: str | os.PathLike | Config | bool | None = None,
        num_samples: int = 32,
        mode: str = "auto",
        eps: float | None = None,
        seed: int | None = None,
        check_timeout: float | None = None,
        budget: float | None = None,
        stats_every: int | str = "auto",
        hist_every: int | None = 1,
        report: bool = True,
        journal_dir: str | None = None,
        keep_journal: bool = False,
        flush_timeout: float = 10.0,
        rules: list[Rule] | None = None,
        callbacks: Mapping[str, Callable[[Any], Any]] | None = None,
        rank: int | None = None,
        rank_suffix: bool = False,
    ) -> None:
        self.config = _load_config(config)
        given = {
            "every": every,
            "experiment": experiment,
            "run_name": run_name,
            "tracking_uri": tracking_uri,
            "num_samples": num_samples,
            "mode": mode,
            "eps": eps,
            "seed": seed,
            "check_timeout": check_timeout,
            "budget": budget,
            "stats_every": stats_every,
            "hist_every": hist_every,
            "report": report,
            "journal_dir": journal_dir,
            "keep_journal": keep_journal,
            "flush_timeout": flush_timeout,
            "rank_suffix": rank_suffix,
        }
        self.options = HookOptions.resolve(given, self.config)
        # Credentials inside a URI given as a param or tag value are masked like everywhere.
        self.user_params = {
            k: v if isinstance(v, (int, float)) else mask_uri(v)
            for k, v in (self.config.hook_metadata("params") | dict(params or {})).items()
        }
        self.user_tags = {
            str(k): mask_uri(v)
            for k, v in {**self.config.hook_metadata("tags"), **(tags or {})}.items()
        }
        self.rules = list(rules) if rules is not None else list(self.config.rules)
        self.callbacks = dict(callbacks or {})
        self.rank = int(os.environ.get("RANK", "0") or 0) if rank is None else int(rank)
        self.enabled = self.rank == 0 or self.options.rank_suffix
        self._started = self._closed = self._recording = False
        self._sigterm = SigtermGuard()
        self.run: Any = None
        self.close_result: Any = None
        self._parts: RunParts | None = None

    @property
    def every(self) -> int | None:
        return self.options.every

    # -- what a run has measured (zero before the first run) --------------------------------

    checks = property(lambda self: self._parts.checks.checks if self._parts else 0)
    checks_failed = property(lambda self: self._parts.checks.checks_failed if self._parts else 0)
    check_errors = property(lambda self: self._parts.checks.check_errors if self._parts else 0)
    checks_not_run = property(lambda self: self._parts.checks.checks_not_run if self._parts else 0)
    checks_deferred = property(
        lambda self: self._parts.schedule.checks_deferred if self._parts else 0
    )
    verdict = property(
        lambda self: self._parts.verdict if self._parts else None,
        doc="The run's verdict once closed (``ok``, ``BACKPROP BUG`` ..., as "
        "``gradwatch compare`` says), also its tag ``gradwatch.verdict``.",
    )
    last_report = property(lambda self: self._parts.checks.last_report if self._parts else None)
    alerts = property(lambda self: self._parts.feed.alerts if self._parts else [])
    clock = property(
        lambda self: self._parts.clock if self._parts else None,
        doc="The run's :class:`LoopClock` (loop vs hook seconds), or None.",
    )
    schedule = property(
        lambda self: self._parts.schedule if self._parts else None,
        doc="The run's :class:`Schedule` (stats interval, check timing), or None.",
    )

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> GradWatch:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close(_exit_status(exc_type, exc, self._sigterm.terminated), error=exc)
        return False

    def start(self) -> GradWatch:
        """Open the MLflow run (or attach to the active one) and reset per-run state."""
        if self._started and not self._closed:
            raise GradwatchError(
                "this GradWatch is already started; close() it before starting again"
            )
        self._started, self._closed, self._recording = True, False, False
        self._parts = None
        if not self.enabled:
            return self
        opts = self.options
        self.run = open_tracking_run(opts, self.rank, self.user_tags)
        self._pid = os.getpid()
        atexit.register(self._close_at_exit)
        try:
            self._parts = RunParts.open(
                opts, self.run, self.config, self.rules, self.callbacks, self.user_params
            )
            self._sigterm.install()
            self._recording = True
        except BaseException:
            # Nothing may leave a run open behind a failed start (Ctrl-C during start-up, a
            # baseline that raised): end it, and leave this object closed and restartable.
            self._closed = True
            atexit.unregister(self._close_at_exit)
            self._sigterm.restore()
            self.close_result = self.run.close("FAILED", timeout=min(2.0, opts.flush_timeout))
            raise
        return self

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
                self.run.set_tags(parts.summary(status, error))
                parts.feed.delivery.close(timeout=min(5.0, self.options.flush_timeout))
        finally:
            self.close_result = self.run.close(
                status, timeout=self.options.flush_timeout, before_end=self._end_step(parts)
            )
        if parts is not None:
            parts.say_where(self.close_result)
        return self.close_result

    def _end_step(self, parts: RunParts | None) -> Callable[[str], str | None] | None:
        """The run's last records, written once close() has waited for the run to exist (under
        its one bound, flush_timeout without progress): the verdict tag and description, then
        the report, which shows them."""
        if parts is None:
            return None
        draw = report_step(self.run) if self.options.report else None

        def end(status: str) -> str | None:
            self.run.set_tags(parts.verdict_tags(wait=0.0))
            return draw(status) if draw is not None else None

        return end

    def _close_at_exit(self) -> None:
        """A script that never called close(): end the run as the interpreter exits."""
        if os.getpid() != self._pid:
            return  # a forked child exiting: the run belongs to the parent
        error = getattr(sys, "last_value", None)  # set when an exception went uncaught
        try:
            self.close(_exit_status(type(error) if error else None, error, False), error=error)
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
                raise GradwatchError(
                    "GradWatch.step() called outside a run: use `with GradWatch(...) "
                    "as watch:` or call watch.start() first"
                )
            return None  # not this rank's run
        parts = self._parts
        clock = parts.clock
        clock.enter(entered)
        s = parts.next_step if step is None else as_step(step)
        parts.next_step = s + 1
        loss_value = float(loss) if isinstance(loss, float) else as_float(loss, "loss")
        lr_value = float(lr) if isinstance(lr, float) else as_float(lr, "lr")
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
                self.run.log_metrics(s, scalars(loss_value, lr_value), timestamp_ms)
            feed = parts.feed
            pending = feed.pending
            pending.append(PendingStep(s, loss_value, lr_value, None, None, timestamp_ms / 1000))
            if len(pending) < feed.batch and entered - feed.fed_at < ALERT_MAX_DELAY:
                clock.left_at = left = time.perf_counter()
                clock.hook_seconds += left - entered
                return None
            feed.flush(entered)
            parts.leave(entered)
            return None
        report = parts.busy_step(
            s, params, grads, loss_value, lr_value, loss_fn, timestamp_ms, entered
        )
        parts.leave(entered)  # raises AlertStop when a `stop` rule fired
        return report

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
            self.step(
                params,
                grads,
                loss=loss,
                lr=current_lr,
                loss_fn=lambda p: train_step(p, *batch, **kwargs)[0],
            )
            return loss, grads

        return wrapped


def _load_config(config: Any) -> Config:
    if isinstance(config, Config):
        return config
    if config is False:
        return Config()
    if config is None or config is True:
        return load_config()
    return load_config(config)


def _exit_status(exc_type: type | None, exc: BaseException | None, terminated: bool) -> str:
    """The run's status when the ``with`` block ends with ``exc`` (or normally)."""
    if exc_type is None:
        return "FINISHED"
    if (
        issubclass(exc_type, SystemExit)
        and not terminated
        and getattr(exc, "code", None) in (0, None)
    ):
        return "FINISHED"  # sys.exit(0) inside the block is a normal end
    if issubclass(exc_type, KeyboardInterrupt) or (issubclass(exc_type, SystemExit) and terminated):
        return "KILLED"  # Ctrl-C, or SIGTERM (turned into SystemExit by the guard)
    return "FAILED"
