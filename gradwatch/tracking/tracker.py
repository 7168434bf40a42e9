"""The facade the hook uses: a run whose every ``log_*`` call is one journal line.

    run = open_run(experiment="mlp", run_name="baseline")
    run.log_params({"gradwatch.every": 100})
    for step in range(n):
        run.log_metrics(step, {"loss": loss})
    result = run.close("FINISHED", timeout=10.0)    # CloseResult; never raises on outage

``log_*`` returns once its line is in the journal file (a copy into a shared memory map); a
shipper (its own process, else a thread) does all MLflow work. See journal.py for the file
format and shipper.py for delivery.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import shutil
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwatch import schema
from gradwatch.errors import InputError, TrackingError
from gradwatch.mlflow_access import DEFAULT_TRACKING_URI, resolve_tracking_uri
from gradwatch.secrets import mask_uri
from gradwatch.tracking.context import context_tags
from gradwatch.tracking.journal import (
    ARTIFACT_FILE,
    ARTIFACT_LINE,
    DEFAULT_JOURNAL_DIR,
    END,
    FORMAT_VERSION,
    METRICS,
    PARAMS,
    TAGS,
    JournalWriter,
    files_dir,
    make_private_dir,
    new_journal_id,
    private_file,
    remove_journal,
    set_aside_reserve,
)
from gradwatch.tracking.loop import ShipLoop, ShipperHandle
from gradwatch.tracking.placement import CHILD, OWN, SHARED, Placement, place_run
from gradwatch.tracking.ship_process import ProcessShipper, ship_log_path
from gradwatch.tracking.shipper import Shipper, run_url
from gradwatch.tracking.state import ShipperSettings, ShipState

__all__ = [
    "DEFAULT_TRACKING_URI",
    "RUN_STATUSES",
    "CloseResult",
    "RunTracker",
    "display_path",
    "open_run",
    "pending_message",
    "remove_journal",
    "resolve_tracking_uri",
    "run_url",
]

logger = logging.getLogger("gradwatch")

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
#: Tag set (and the run ended FAILED) when the journal could not be written (a full disk).
JOURNAL_DROPPED_TAG = schema.TAG_JOURNAL_DROPPED
# A "full batch": wake the shipper early once this many metrics are waiting.
_FULL_BATCH_METRICS = 1000


def display_path(path: str | os.PathLike) -> str:
    """``path`` relative to cwd when it lies under it (what a user would type)."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _is_unreachable(error: str) -> bool:
    return any(
        s in error
        for s in (
            "Connection refused",
            "ConnectionRefused",
            "unreachable",
            "Name or service not known",
            "No route to host",
            "timed out",
            "Timeout",
            "RemoteDisconnected",
            "ConnectionReset",
            "BrokenPipe",
        )
    )


def _is_locked(error: str) -> bool:
    return "database is locked" in error or "busy" in error.lower()


class _Wait:
    """close()'s one bound: wait while the shipper makes progress, give up after
    ``timeout`` seconds without any. Progress is a change in what its state file says
    (records acknowledged, a phase begun or done) or, while it meets no error, CPU it
    spends (opening or migrating a store is one long call)."""

    #: After this many seconds, close() says once what it is waiting for.
    SAY_AFTER = 2.0

    def __init__(self, shipper: ShipperHandle, timeout: float, tracker: RunTracker) -> None:
        self.shipper, self.timeout, self.tracker = shipper, max(0.0, float(timeout)), tracker
        self.started = self.progress_at = time.monotonic()
        self.cpu = shipper.cpu_seconds()
        self.mark: tuple | None = None
        self.said = False
        self.stalled = False

    def until(self, done: Callable[[], bool]) -> bool:
        """Wait until ``done()`` holds; False if the shipper stalled (or stopped) first."""
        while not done():
            if self.stalled or not self.shipper.alive():
                return bool(done())
            self._observe()
            if time.monotonic() - self.progress_at > self.timeout:
                self.stalled = True
                return bool(done())
            self.shipper.wait(done, 0.1)
        return True

    def leave_running(self) -> bool:
        """True if the shipper was at work (started, no error but a locked store) when the
        wait gave up: it finishes on its own."""
        state = self.shipper.state
        if not self.shipper.alive() or state.fatal or state.phase is None:
            return False
        return not state.failing or _is_locked(state.failing)

    def _observe(self) -> None:
        now = time.monotonic()
        state = self.shipper.state
        mark = (state.acked_seq, state.phase, state.run_id, state.finalized, state.failing)
        if mark != self.mark:
            if self.mark is not None and not (state.failing and mark[:4] == self.mark[:4]):
                self.progress_at = now
            self.mark = mark
        # CPU spent since the last look (its clock ticks every 10 ms) while meeting no error:
        # starting up, importing MLflow, creating or migrating a store. A shipper retrying
        # after errors spends a little too, which is no progress.
        cpu = self.shipper.cpu_seconds()
        if cpu is not None and self.cpu is not None and cpu > self.cpu and not state.failing:
            self.progress_at = now
        self.cpu = cpu
        if not self.said and now - self.started >= self.SAY_AFTER:
            self.said = True
            pending = self.tracker.pending
            doing = state.phase or "starting"
            if state.failing:
                doing += f", retrying after: {state.failing}"
            print(
                mask_uri(
                    f"gradwatch: landing the run in {self.tracker.tracking_uri}: "
                    f"{doing}; {pending} records left (shipper pid {self.shipper.pid})"
                ),
                file=sys.stderr,
            )


def pending_message(pending: int, journal_path: str | os.PathLike) -> str:
    shown = display_path(journal_path)
    return (
        f"gradwatch: {pending} records still pending in {shown}; "
        f"run `gradwatch sync {shown}` when the server is back"
    )


@dataclass(frozen=True)
class CloseResult:
    """What ``RunTracker.close`` achieved; ``str(result)`` is the human message."""

    status: str
    run_id: str | None
    shipped: int  # records MLflow acknowledged over the run's lifetime
    pending: int  # records still only in the journal (0 = everything landed)
    dropped: int  # entities MLflow rejected plus records the journal could not store
    journal_path: Path
    message: str
    error: str | None = None  # why MLflow refuses the run altogether (deleted, denied), if so
    journal_removed: bool = False  # everything landed: the journal was deleted
    url: str | None = None  # the run in MLflow's UI (http(s) servers)

    @property
    def complete(self) -> bool:
        return self.pending == 0

    def __str__(self) -> str:
        return self.message


class RunTracker:
    """One MLflow run fed through a journal. Create it with ``open_run``."""

    def __init__(
        self,
        writer: JournalWriter,
        header: dict[str, Any],
        settings: ShipperSettings,
        tracking_uri: str,
        keep_journal: bool = False,
    ) -> None:
        self._writer = writer
        self.header = header
        self.journal_path: Path = writer.path
        self.journal_id: str = header["id"]
        self.tracking_uri: str = tracking_uri  # the real one; the header holds it masked
        self.attached: bool = bool(header.get("attached"))
        #: Where the run went beside the user's active MLflow run (set by ``open_run``).
        self.placement: Placement = Placement(SHARED if self.attached else OWN, tracking_uri)
        self.keep_journal = keep_journal
        self._metrics_since_wake = 0
        self._closed: CloseResult | None = None
        self._final_state: ShipState | None = None
        # Until the shipper has measured itself: MLflow's sqlite store costs the shipper
        # process ~50-65 us of CPU per metric (its heap frozen, bench_store_floor.py), JSON to
        # a server ~10 us.
        self._cost_per_metric = 10e-6 if tracking_uri.startswith(("http://", "https://")) else 65e-6
        self._cost_read_at = float("-inf")
        self._pid = os.getpid()
        self._shipper: ShipperHandle | None = None
        if settings.process:
            try:
                self._shipper = ProcessShipper.start(writer.path, header, settings, tracking_uri)
            except OSError as err:  # no process to spare: a thread still ships everything
                logger.warning(
                    "gradwatch: cannot start a shipper process (%s); using a thread", err
                )
        if self._shipper is None:
            shipper = Shipper(
                writer.path,
                tracking_uri,
                settings=settings,
                header=header,
                announce=lambda text: print(text, file=sys.stderr),
            )
            self._shipper = ShipLoop(shipper).start()

    # ----------------------------------------------------------------- logging
    def log_metrics(
        self, step: int, metrics: dict[str, float], timestamp_ms: int | None = None
    ) -> None:
        """Append one metrics record (all keys share ``step`` and the timestamp)."""
        if not metrics:
            return
        ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        if self._pid != _PID[0]:
            return  # a fork of the training process: the run is not its own (see _append)
        self._check_open()
        try:
            seq = self._writer.append_metrics(ts, int(step), metrics)
        except (TypeError, ValueError):  # a value float() rejects: the encoder stringifies it
            seq = self._writer.append({"t": METRICS, "ts": ts, "st": int(step), "m": metrics})
        if seq is None:
            self._report_dropped()
        self._metrics_since_wake += len(metrics)
        if self._metrics_since_wake >= _FULL_BATCH_METRICS:
            self._metrics_since_wake = 0
            self._shipper.notify_data()

    def log_loss_lr(self, step: int, loss: float, lr: float, timestamp_ms: int) -> None:
        """``log_metrics(step, {"loss": loss, "lr": lr}, timestamp_ms)`` for finite floats:
        the one line most training steps write, with the least work (see append_loss_lr)."""
        loss, lr = float(loss), float(lr)
        if loss - loss != 0.0 or lr - lr != 0.0:  # NaN or Inf: spelled as JSON wants them
            return self.log_metrics(step, {"loss": loss, "lr": lr}, timestamp_ms)
        if self._pid != _PID[0]:
            return  # a fork of the training process: the run is not its own (see _append)
        if self._closed is not None:
            self._check_open()
        if self._writer.append_loss_lr(int(timestamp_ms), int(step), loss, lr) is None:
            self._report_dropped()
        self._metrics_since_wake += 2
        if self._metrics_since_wake >= _FULL_BATCH_METRICS:
            self._metrics_since_wake = 0
            self._shipper.notify_data()

    def log_params(self, params: dict[str, object]) -> None:
        """Append params; values are ``str()``'d (the shipper truncates to 6000 chars)."""
        if params:
            self._append(
                {"t": PARAMS, "ts": _now_ms(), "p": {str(k): str(v) for k, v in params.items()}}
            )

    def set_tags(self, tags: dict[str, str]) -> None:
        """Append tags; values are ``str()``'d (the shipper truncates to 8000 chars)."""
        if tags:
            self._append(
                {"t": TAGS, "ts": _now_ms(), "g": {str(k): str(v) for k, v in tags.items()}}
            )

    def append_artifact_line(self, artifact_path: str, record: dict) -> None:
        """Append ``record`` as one JSON line of the artifact ``artifact_path``.

        The artifact file (e.g. ``gradwatch/checks.jsonl``) is re-uploaded whole at most
        every ``artifact_interval`` seconds and at close.
        """
        self._append(
            {
                "t": ARTIFACT_LINE,
                "ts": _now_ms(),
                "path": _artifact_path(artifact_path),
                "r": record,
            }
        )

    def log_artifact_file(self, local_path: str, artifact_path: str = "gradwatch") -> None:
        """Copy ``local_path`` next to the journal now; the shipper uploads the copy."""
        src = Path(local_path)
        if not src.is_file():
            raise InputError(
                f"log_artifact_file: {local_path!r} is not a file; pass an existing file path"
            )
        self._check_open()
        seq = self._writer.last_seq + 1
        rel = f"f/{seq}-{os.getpid()}/{src.name}"
        dest = files_dir(self.journal_path) / rel
        with open(src, "rb") as source, private_file(dest) as copy:  # 0600 in 0700 folders
            shutil.copyfileobj(source, copy)
        target = artifact_path.strip("/") if artifact_path else ""
        self._append({"t": ARTIFACT_FILE, "ts": _now_ms(), "src": rel, "path": target})

    def _append(self, record: dict[str, Any]) -> None:
        if self._pid != _PID[0]:
            return  # a fork of the training process (a user's worker): the run is not its own
        if self._closed is not None:
            raise TrackingError(
                f"run tracker for {self.journal_path} is closed; open a new run with open_run()"
            )
        if self._writer.append(record) is None:
            self._report_dropped()

    def _report_dropped(self) -> None:
        if self._writer.dropped == 1:
            logger.error(
                "gradwatch: cannot write journal %s (%s); records are being lost",
                self.journal_path,
                self._writer.last_error,
            )

    def _check_open(self) -> None:
        if self._closed is not None:
            raise TrackingError(
                f"run tracker for {self.journal_path} is closed; open a new run with open_run()"
            )

    # ----------------------------------------------------------------- state
    def _state(self) -> ShipState:
        return self._final_state or self._shipper.state

    @property
    def run_id(self) -> str | None:
        """The MLflow run id; None until the run exists on the server."""
        return self._state().run_id or self.header.get("run_id")

    @property
    def experiment_id(self) -> str | None:
        """The run's experiment id once known: the shipper created the run, or the run was
        placed beside the user's active run."""
        return self._state().experiment_id or self.placement.experiment_id

    @property
    def pending(self) -> int:
        """Records written to the journal that MLflow has not acknowledged yet."""
        state = self._state()
        behind = self._writer.last_seq - max(state.acked_seq, 0)
        if self._closed is not None and state.finalized is None:
            behind = max(behind, 1)  # the run's end status has not been set yet
        return max(behind, 0)

    @property
    def ship_cpu_per_metric(self) -> float:
        """CPU seconds the shipper spends per metric value it ships (measured once it has
        shipped a few thousand, an estimate by store kind before). For a budget that covers
        everything logging causes: ``n_metrics * run.ship_cpu_per_metric``."""
        now = time.monotonic()
        if now - self._cost_read_at > 1.0:  # the state file is re-read at most once a second
            self._cost_read_at = now
            state = self._state()
            if state.metrics >= 2000:
                self._cost_per_metric = state.cpu_seconds / state.metrics
        return self._cost_per_metric

    @property
    def ship_cpu(self) -> tuple[float, int]:
        """``(cpu_seconds, metrics)``: the shipper's CPU spent shipping so far and the metric
        values it shipped (``ship_cpu_per_metric`` is their ratio once there are enough)."""
        state = self._state()
        return state.cpu_seconds, state.metrics

    @property
    def shipped(self) -> int:
        return self._state().shipped

    @property
    def dropped(self) -> int:
        return self._state().dropped + self._writer.dropped

    # ----------------------------------------------------------------- flush/close
    def flush(self, timeout: float = 10.0) -> int:
        """Wait up to ``timeout`` s for everything logged so far to land; return pending."""
        target = self._writer.last_seq
        self._shipper.kick()
        self._shipper.wait(lambda: self._shipper.state.acked_seq >= target, timeout)
        return self.pending

    def wait_for_run(self, timeout: float) -> str | None:
        """Wait up to ``timeout`` s until the run exists in MLflow; its id, or None (outage)."""
        if self.run_id is None and self._closed is None:
            self._shipper.kick()
            self._shipper.wait(lambda: self._shipper.state.run_id is not None, timeout)
        return self.run_id

    def close(
        self,
        status: str = "FINISHED",
        timeout: float = 10.0,
        before_end: Callable[[str], str | None] | None = None,
    ) -> CloseResult:
        """End the run: write the end record, wait while the shipper lands it, set ``status``.

            result = run.close("FINISHED", timeout=10.0)   # CloseResult; str(result) says how

        ``status`` is FINISHED, FAILED or KILLED; a run we attached to is not ended. close()
        waits for the work, not for a clock: while the shipper makes progress (opening or
        migrating the store, creating the run, acknowledging records, ending the run) it
        keeps waiting, and says so after ~2 s; it gives up after ``timeout`` seconds without
        progress (that is the one bound). Never raises on an outage: the message names the
        situation (server unreachable, store refusing, store busy, disk full, still shipping
        in the background) and says how what is kept in the journal lands later. If the
        journal lost records (a full disk), the run ends FAILED with tag
        ``gradwatch.journal_dropped``. A journal whose records all landed is deleted unless
        ``keep_journal``. Closing twice returns the first result.

        ``before_end(status)``: called once the run exists (or the wait gave up), before the
        end record, to log the run's last records (the hook draws its report there); what it
        returns (a note for the user) is added to the message.
        """
        if self._closed is not None:
            return self._closed
        if self._pid != _PID[0]:
            raise TrackingError(
                "this run belongs to the process that opened it, not to a fork of it"
            )
        status = str(status).upper()
        if status not in RUN_STATUSES:
            raise InputError(f"close: status {status!r} is not one of {', '.join(RUN_STATUSES)}")
        shipper = self._shipper
        waiting = _Wait(shipper, timeout, self)
        self._close_timeout = waiting.timeout
        lost = self._writer.dropped
        if lost:
            status = "FAILED"
        note = None
        if before_end is not None:
            shipper.kick()  # the run must exist for the report to name it
            waiting.until(lambda: self.run_id is not None or bool(shipper.state.fatal))
            try:
                note = before_end(status)
            except Exception as err:  # noqa: BLE001 - the run must still end
                logger.warning(
                    "gradwatch: the end of run step failed (%s: %s)", type(err).__name__, err
                )
            lost = self._writer.dropped
        if lost:
            why = f"{lost} records dropped: cannot write journal {self.journal_path} ({self._writer.last_error})"
            self._writer.append(
                {"t": TAGS, "ts": _now_ms(), "g": {JOURNAL_DROPPED_TAG: why}}, final=True
            )
            status = "FAILED"
        self._writer.append({"t": END, "ts": _now_ms(), "status": status}, final=True)
        shipper.request_close()
        waiting.until(lambda: shipper.finalized or bool(shipper.state.fatal))
        if shipper.finalized:
            ending = "landed"
            shipper.join(5.0)  # it exits once the run has ended
        elif not shipper.alive():
            ending = "stopped"  # killed, or crashed (its log says why)
        elif waiting.leave_running() and shipper.pid != os.getpid():
            ending = "background"  # busy, not failing: it finishes on its own
            shipper.leave_running()
        else:
            ending = "aborted"  # failing: what is not shipped stays in the journal
            shipper.abort()
            # It stops after its current request; until it has, `gradwatch sync` would
            # find the journal still being shipped.
            shipper.join(5.0)
        shipper.detach()
        self._writer.close()
        self._closed = CloseResult(status, None, 0, 0, 0, self.journal_path, "")  # mark closed
        self._closed = result = self._result(status, lost, ending, note)
        if result.message:
            (logger.warning if result.pending or lost or result.error or note else logger.info)(
                "%s", result.message
            )
        return result

    def _result(self, status: str, lost: int, ending: str, note: str | None) -> CloseResult:
        """``ending``: how the wait ended (landed, stopped, background, aborted)."""
        shipper = self._shipper
        state = shipper.state
        pending = self.pending
        run_id = self.run_id
        self._final_state = state  # what the properties report once the files may be gone
        error = state.fatal
        shown = display_path(self.journal_path)
        if error:
            message = (
                f"gradwatch: MLflow refuses this run: {error}. {pending} records kept in "
                f"{shown}; fix that, then run `gradwatch sync {shown}`"
            )
        elif pending:
            message = self._pending_message(state, pending, ending)
        elif state.dropped:
            # A shipper thread (no process to spare) warned in this process's own log.
            ship_log = ship_log_path(self.journal_path)
            where = display_path(ship_log) if ship_log.exists() else "the warnings above"
            message = (
                f"gradwatch: run {run_id} ended ({state.shipped} records shipped), but "
                f"MLflow refused {state.dropped} value(s) or artifact(s) for good, so "
                f"{shown} is kept; each is named in {where}"
            )
            if any(p.endswith(("report.html", "histograms.png")) for p in state.refused_artifacts):
                message += (
                    f"; the run report among them: `gradwatch report {run_id}` draws "
                    "it from MLflow and tries again"
                )
        else:
            message = f"gradwatch: run {run_id} complete ({state.shipped} records shipped)"
        if lost:
            full = getattr(self._writer.last_error, "errno", None) == errno.ENOSPC
            where = f"disk full at {self.journal_path.parent}: " if full else ""
            message = (
                f"gradwatch: {where}{lost} records were dropped: cannot write journal "
                f"{shown} ({self._writer.last_error}); the run "
                f"ends FAILED with tag {JOURNAL_DROPPED_TAG}. "
            ) + message
        if note:
            if run_id:  # the run may have been created after the note was written
                note = note.replace("`gradwatch report RUN_ID`", f"`gradwatch report {run_id}`")
            message = f"{message}. {note}"
        landed = not pending and not error and not lost and state.dropped == 0 and shipper.finalized
        removed = landed and not self.keep_journal
        if removed:
            remove_journal(self.journal_path)
        return CloseResult(
            status=status,
            run_id=run_id,
            shipped=state.shipped,
            pending=pending,
            dropped=state.dropped + lost,
            journal_path=self.journal_path,
            message=mask_uri(message),
            error=error,
            journal_removed=removed,
            url=run_url(self.tracking_uri, state.experiment_id, run_id),
        )

    def _pending_message(self, state: ShipState, pending: int, ending: str) -> str:
        """What keeps ``pending`` records from landing, named as it is."""
        shown = display_path(self.journal_path)
        uri = mask_uri(self.tracking_uri)
        shipper = self._shipper
        sync = f"run `gradwatch sync {shown}`"
        failing = state.failing or ""
        if ending == "stopped":
            log = ship_log_path(self.journal_path)
            where = f"; see {display_path(log)}" if log.exists() and log.stat().st_size else ""
            return (
                f"gradwatch: the shipper (pid {shipper.pid}) stopped before the run landed"
                f"{where}. {pending} records kept in {shown}; {sync}"
            )
        if "No space left" in failing or "ENOSPC" in failing:
            return (
                f"gradwatch: disk full at {self.journal_path.parent}: the shipper cannot "
                f"write ({failing}). {pending} records kept in {shown}; free some space, "
                f"then {sync}"
            )
        if ending == "background":
            what = f" ({state.phase})" if state.phase else ""
            if _is_locked(failing):
                return (
                    f"gradwatch: the store {uri} is busy (locked by another process: "
                    f"{failing}); still shipping in the background (pid {shipper.pid}){what}, "
                    f"{pending} records left; it finishes on its own. If it does not, {sync}"
                )
            return (
                f"gradwatch: still shipping in the background (pid {shipper.pid}){what}, "
                f"{pending} records left; it finishes on its own and removes {shown}. If it "
                f"does not, {sync}"
            )
        if (
            failing
            and self.tracking_uri.startswith(("http://", "https://"))
            and _is_unreachable(failing)
        ):
            return (
                f"gradwatch: MLflow server {uri} is unreachable ({failing}). {pending} "
                f"records kept in {shown}; {sync} when the server is back"
            )
        if failing:
            return (
                f"gradwatch: the store {uri} refuses the requests ({failing}). {pending} "
                f"records kept in {shown}; once it works again, {sync}"
            )
        return (
            f"gradwatch: the shipper made no progress for {self._close_timeout:g} s"
            f"{f' ({state.phase})' if state.phase else ''}. {pending} records kept in "
            f"{shown}; {sync}"
        )

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("KILLED")
        else:
            self.close("FAILED")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _artifact_path(artifact_path: str) -> str:
    parts = str(artifact_path).replace("\\", "/").strip("/").split("/")
    if not artifact_path or any(p in ("", ".", "..") for p in parts):
        raise InputError(
            f"artifact_path {artifact_path!r} must be a relative path like 'gradwatch/checks.jsonl'"
        )
    return "/".join(parts)


def _default_experiment() -> tuple[str | None, str | None]:
    # mlflow.set_experiment() exports MLFLOW_EXPERIMENT_ID, so this also sees the user's choice.
    exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or None
    name = None if exp_id else (os.environ.get("MLFLOW_EXPERIMENT_NAME") or None)
    return name, exp_id


_open_trackers: weakref.WeakSet[RunTracker] = weakref.WeakSet()
_PID = [os.getpid()]


def _after_fork_in_child() -> None:
    # A user's os.fork()/multiprocessing worker inherits open runs: it must neither write
    # into their journals nor keep their flocks (sync would think the journal is live).
    _PID[0] = os.getpid()
    for tracker in list(_open_trackers):
        tracker._writer.forget_fd()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _close_at_exit() -> None:
    # A script that never called close() ends its run FINISHED at interpreter exit, as MLflow
    # does; only a process that really died leaves an incomplete journal.
    for tracker in list(_open_trackers):
        if not tracker.closed and tracker._pid == _PID[0]:
            try:
                tracker.close("FINISHED", timeout=5.0)
            except Exception:  # noqa: BLE001 - best effort at exit; the journal keeps the rest
                pass


def open_run(
    tracking_uri: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    journal_dir: str | os.PathLike | None = None,
    attach_active: bool = True,
    run_id: str | None = None,
    *,
    settings: ShipperSettings | None = None,
    keep_journal: bool = False,
    report: bool = False,
    parent_run_id: str | None = None,
    shared_prefix: str = "",
) -> RunTracker:
    """Start a journaled MLflow run and its shipper; makes no network call itself.

    Usage: ``run = open_run(experiment="mlp"); run.log_metrics(0, {"loss": 1.0}); run.close()``

    tracking_uri: None -> ``MLFLOW_TRACKING_URI`` -> ``sqlite:///mlflow.db`` (cwd).
    experiment: experiment name, created if missing (None -> MLflow's active/default one).
    run_name, tags: for the run created by the shipper (tags also set on an attached run).
    journal_dir: where ``NAME.jsonl`` goes (default ``.gradwatch/journal`` in cwd; 0700).
    attach_active: place the run beside the user's active MLflow run as MLflow users expect
        (``gradwatch.tracking.placement``): log into it and never end it, or, with a
        ``run_name`` or when a tracker already logged into it, open a child run of it.
        ``run.placement`` says which. An ``experiment`` that is not the active run's raises
        InputError (the only case that makes a request here).
    run_id: log into this existing run instead (also never ended by gradwatch).
    settings: shipper timing (interval, backoff, request timeout); tests shorten them.
    keep_journal: keep the journal after everything landed (default: deleted at close;
        journals of failed or incomplete runs always stay until synced).
    report: recorded in the journal's header: the run's report is wanted (the hook draws
        it before the end record, ``close(before_end=...)``; tracking never draws it).
    parent_run_id: with no active run, create the run as a child of this one (a sweep's).
    shared_prefix: in a run shared with the user's own logging, every metric key gets this
        prefix on its way to MLflow (the hook passes ``gradwatch/``; the journal keeps the
        bare keys) and the run is tagged ``gradwatch.metric_prefix``.
    """
    import gradwatch

    user_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    if run_id is not None:
        placement = Placement(SHARED, resolve_tracking_uri(tracking_uri), run_id=run_id)
    elif attach_active:
        placement = place_run(tracking_uri, experiment, run_name, parent_run_id)
    else:
        uri = resolve_tracking_uri(tracking_uri)
        placement = (
            Placement(CHILD, uri, parent_run_id=parent_run_id)
            if parent_run_id
            else Placement(OWN, uri)
        )
    uri = placement.tracking_uri
    attached = placement.kind == SHARED
    exp_name, exp_id = (experiment, None) if experiment else _default_experiment()
    if placement.experiment_id is not None:
        exp_name, exp_id = None, placement.experiment_id  # a child goes where its parent is
    run_tags = dict(user_tags) if attached else {**context_tags(), **user_tags}
    run_tags.setdefault(schema.TAG_VERSION, gradwatch.__version__)
    if placement.parent_run_id:
        run_tags[schema.TAG_PARENT_RUN] = placement.parent_run_id
    prefix = shared_prefix if attached else ""
    if prefix:
        run_tags[schema.TAG_METRIC_PREFIX] = prefix
    header = {
        "v": FORMAT_VERSION,
        "id": new_journal_id(),
        "uri": mask_uri(uri),  # the real URI reaches the shipper only through its environment
        "exp": exp_name,
        "exp_id": exp_id,
        "name": run_name,
        "tags": run_tags,
        "user": run_tags.get("mlflow.user"),
        "run_id": placement.run_id,
        "attached": attached,
        "ts": _now_ms(),
        "pid": os.getpid(),
        "report": bool(report),
    }
    if prefix:
        header["metric_prefix"] = prefix
    directory = Path(journal_dir or DEFAULT_JOURNAL_DIR).absolute()
    try:
        make_private_dir(directory)
        writer = JournalWriter.create(directory, header)
        set_aside_reserve(writer.path)
    except OSError as err:
        raise TrackingError(
            f"cannot create a journal in {directory} ({err}); pass journal_dir= a writable folder"
        ) from err
    tracker = RunTracker(writer, header, settings or ShipperSettings(), uri, keep_journal)
    tracker.placement = placement
    if attached and run_tags:
        tracker.set_tags(run_tags)  # an existing run gets the tags through the journal
    _open_trackers.add(tracker)
    return tracker
