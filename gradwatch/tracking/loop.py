"""The shipper's loop in a thread, and the handle interface the tracker depends on.

    loop = ShipLoop(Shipper(journal_path)); loop.start()
    loop.kick(); loop.wait(lambda: loop.finalized, timeout=10); loop.abort(); loop.join(1)

``ShipperHandle`` is all ``RunTracker`` knows of a shipper: ``ShipLoop`` (a thread in the
training process, the fallback) and ``ProcessShipper`` (ship_process.py, the default)
implement it. Failures never reach training: the loop backs off (backoff.py) and retries,
except after a fatal error (``state.fatal``), which ends it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

from gradwatch.tracking.backoff import Backoff
from gradwatch.tracking.shipper import Shipper
from gradwatch.tracking.state import ShipState
from gradwatch.tracking.store_error import StoreError

__all__ = ["ShipLoop", "ShipperHandle", "cpu_seconds"]

logger = logging.getLogger("gradwatch")


def cpu_seconds(pid: int, tid: int | None = None) -> float | None:
    """CPU seconds (user + system) of process ``pid`` (or its thread ``tid``) from /proc;
    None where /proc cannot tell (not Linux, the process is gone)."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    try:
        with open(path, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class ShipperHandle(Protocol):
    """What the tracker uses of a running shipper."""

    @property
    def state(self) -> ShipState: ...
    @property
    def run_id(self) -> str | None: ...
    @property
    def finalized(self) -> bool: ...
    @property
    def pid(self) -> int: ...
    def alive(self) -> bool: ...
    def cpu_seconds(self) -> float | None: ...
    def leave_running(self) -> None: ...
    def detach(self) -> None: ...
    def kick(self) -> None: ...
    def notify_data(self) -> None: ...
    def request_close(self) -> None: ...
    def abort(self) -> None: ...
    def join(self, timeout: float) -> None: ...
    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool: ...


class ShipLoop:
    """Runs ``shipper.step()`` in a daemon thread until closed, aborted or fatally refused."""

    def __init__(
        self,
        shipper: Shipper,
        close_when_finalized: bool = False,
        niceness: int = 0,
        owns_shipper: bool = True,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        """``niceness``: lower this thread's priority by that much (Linux: per thread), so
        training gets the CPU first; ``owns_shipper``: close the shipper when the loop ends;
        ``on_started``: called once after the first round (the store is open, the run exists,
        or the round failed and the loop goes on retrying)."""
        self.shipper = shipper
        self._niceness, self._owns_shipper = niceness, owns_shipper
        self._on_started = on_started
        self.failing_since: float | None = None
        self.last_error: BaseException | None = None
        self._backoff = Backoff(shipper.settings.backoff_initial, shipper.settings.backoff_max)
        self._cv = threading.Condition()
        self._kicked = self._data_ready = self._abort = False
        self._closing = close_when_finalized  # exit once the run is finalized
        self._close_requested = False
        self._thread = threading.Thread(
            target=self._run, name=f"gradwatch-shipper-{shipper.journal_id[:8]}", daemon=True
        )

    # -- the handle interface --------------------------------------------------------
    @property
    def state(self) -> ShipState:
        return self.shipper.state

    @property
    def run_id(self) -> str | None:
        return self.shipper.run_id

    @property
    def finalized(self) -> bool:
        return self.shipper.finalized

    def start(self) -> ShipLoop:
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def pid(self) -> int:
        return os.getpid()

    def cpu_seconds(self) -> float | None:
        """The shipping thread's CPU so far (Linux), None where it cannot be read."""
        tid = self._thread.native_id
        return None if tid is None else cpu_seconds(os.getpid(), tid)

    def leave_running(self) -> None:
        """close() stops waiting: the thread goes on shipping while this process lives."""

    def detach(self) -> None:
        """close() is done with this shipper (the thread ends on its own)."""

    def kick(self) -> None:
        """Try now, even during a backoff (flush/close)."""
        self._set(kicked=True)

    def notify_data(self) -> None:
        """A full batch is waiting: ship now instead of at the next interval."""
        self._set(data=True)

    def request_close(self) -> None:
        """Ship everything including the end record, then let the thread exit."""
        self._closing = self._close_requested = True
        self._set(kicked=True)

    def abort(self) -> None:
        """Stop after the current request; what is not shipped stays in the journal."""
        self._abort = True
        self._set()

    def join(self, timeout: float) -> None:
        if self._thread.ident is not None:
            self._thread.join(max(0.0, timeout))

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds (checked on every round), at most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return bool(predicate())
                self._cv.wait(min(remaining, 0.5))
        return True

    # -- the thread ------------------------------------------------------------------
    def _set(self, kicked: bool = False, data: bool = False) -> None:
        with self._cv:
            self._kicked |= kicked
            self._data_ready |= data
            self._cv.notify_all()

    def _sleep(self, seconds: float, wake_on_data: bool) -> bool:
        """Sleep until kicked, aborted, ``seconds`` passed or (``wake_on_data``) a full batch
        is waiting; True if only that notice woke it."""
        deadline = time.monotonic() + seconds
        with self._cv:
            while not (self._kicked or self._abort or (wake_on_data and self._data_ready)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cv.wait(remaining)
            data_only = self._data_ready and not (self._kicked or self._abort)
            self._kicked = self._data_ready = False
        return data_only

    def _started(self) -> None:
        """After the first round: start-up (imports, store, run) ran at full priority."""
        if self._niceness:
            try:
                here = threading.get_native_id()
                os.setpriority(
                    os.PRIO_PROCESS, here, os.getpriority(os.PRIO_PROCESS, here) + self._niceness
                )
            except (OSError, AttributeError):
                pass
            self._niceness = 0
        if self._on_started is not None:
            on_started, self._on_started = self._on_started, None
            on_started()

    def _run(self) -> None:
        # A round woken only by "a full batch is waiting" ships full batches only; the rest
        # waits for the round at the interval (or a flush, or the close). Each request costs
        # MLflow a fixed amount (a transaction, a commit: ~2 ms on the sqlite store) besides
        # its metrics, so a 4-metric tail sent beside a full batch costs as much as ~40
        # metrics. The interval bounds the delay: it counts from the last complete round.
        full_only = False
        complete_at = time.monotonic()
        try:
            while not self._abort:
                try:
                    progressed = self.shipper.step(full_only=full_only)
                except Exception as err:  # never into training: back off and retry
                    self._note_failure(err)
                    self._started()
                    if self.shipper.state.fatal:
                        logger.error(
                            "gradwatch: %s; shipping stopped, the journal %s keeps the data",
                            self.shipper.state.fatal,
                            self.shipper.path,
                        )
                        return
                    self._sleep(self._backoff.next(), wake_on_data=False)
                    full_only = False
                    continue
                finally:
                    with self._cv:
                        self._cv.notify_all()
                self._note_success()
                self._started()
                if not full_only:
                    complete_at = time.monotonic()
                if progressed and self.shipper.backlog:
                    continue  # catching up: full batches are waiting
                if self._closing and self.shipper.finalized:
                    return
                wait = complete_at + self.shipper.settings.interval - time.monotonic()
                full_only = (
                    self._sleep(max(0.0, wait), wake_on_data=True) and not self._close_requested
                )
        finally:
            if self._owns_shipper:
                self.shipper.close()
            with self._cv:
                self._cv.notify_all()

    def _note_success(self) -> None:
        self._backoff.reset()
        self.shipper.note_failing(None)
        if self.failing_since is not None:
            logger.warning(
                "gradwatch: MLflow at %s reachable again after %.1f s; shipping the backlog",
                self.shipper.shown_uri,
                time.monotonic() - self.failing_since,
            )
            self.failing_since = None

    def _note_failure(self, err: BaseException) -> None:
        self.last_error = err
        text = str(err).strip().splitlines()
        short = f"{type(err).__name__}: {text[0][:200] if text else ''}"
        # A StoreError's text names the request and the cause already.
        self.shipper.note_failing(text[0][:300] if isinstance(err, StoreError) and text else short)
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            logger.warning(
                "gradwatch: cannot ship to MLflow at %s (%s); data kept in %s, retrying",
                self.shipper.shown_uri,
                short,
                self.shipper.path,
            )
        else:
            logger.debug("gradwatch: shipping still failing: %s", short)
