"""Run the shipper in a forked child process, so shipping never competes with training.

A shipper thread inside the training process holds Python's GIL whenever it parses journal
lines, builds requests or (with the embedded sqlite store) runs MLflow's SQL layer: every
time the training loop releases the GIL (each ``os.write``, each numpy call) the thread may
keep it for up to the 5 ms switch interval. Measured on the 1.6 ms/step benchmark MLP, that
made the hook cost 30% and more. The journal is already the interface between the two sides,
so the shipper runs in a child process: ``os.fork()`` (the parent has MLflow imported, so
the child starts at once) right after the journal is created, before any other gradwatch
thread exists.

The child:
  - ignores SIGINT (Ctrl-C in the terminal reaches the whole process group; the parent ends
    the run as KILLED and the child ships that end record);
  - wakes on SIGUSR1 (the parent's flush/close) and otherwise ships every ``interval``;
  - exits once the end record is shipped and the run terminated;
  - if the parent dies without an end record (kill -9, OOM killer), ships what the journal
    holds, ends the run as FAILED with tag ``gradwatch.incomplete=true`` and exits; if the
    server is unreachable it gives up after ``ORPHAN_GRACE`` seconds, leaving the journal
    to ``gradwatch sync`` (which is exactly-once with whatever the child shipped).

    proxy = ForkedShipper.start(journal_path, settings, writer_fd)   # in the parent
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from gradwatch.tracking.journal import state_path
from gradwatch.tracking.shipper import Shipper, ShipperSettings, ShipState

__all__ = ["ForkedShipper", "ORPHAN_GRACE", "fork_available"]

logger = logging.getLogger("gradwatch")

#: Seconds an orphaned shipper keeps retrying an unreachable server before leaving the rest
#: of the journal to `gradwatch sync`.
ORPHAN_GRACE = 60.0
#: How often the parent re-reads the state file while waiting for a flush or close.
POLL_SECONDS = 0.02


def fork_available() -> bool:
    return hasattr(os, "fork") and hasattr(signal, "SIGUSR1")


class ForkedShipper:
    """The parent's view of a shipper running in a child process (same interface as
    :class:`~gradwatch.tracking.shipper.Shipper` as far as ``RunTracker`` uses it)."""

    def __init__(self, path: Path, header: dict[str, Any], pid: int) -> None:
        self.path = path
        self.header = header
        self.pid = pid
        self._state_file = state_path(path)
        self._exit_status: int | None = None

    @classmethod
    def start(
        cls, path: Path, header: dict[str, Any], settings: ShipperSettings, writer_fd: int
    ) -> ForkedShipper:
        parent = os.getpid()
        # SIGUSR1 (the parent's wake-up call) would kill a child that has not installed its
        # handler yet: block it across the fork; the child unblocks once its handler is set.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if pid == 0:  # the child: never returns
            code = 1
            try:
                # The writer's descriptor holds the journal's flock, which tells `sync` that a
                # live process still writes it: only the training process may keep it.
                os.close(writer_fd)
                code = _child_main(path, header, settings, parent)
            except BaseException:  # noqa: BLE001 - a child must never unwind into the parent's code
                logger.exception("gradwatch: shipper process failed; the journal keeps everything")
            finally:
                os._exit(code)
        return cls(path, header, pid)

    # -- state, read from the state file the child writes atomically ----------------------
    @property
    def state(self) -> ShipState:
        return ShipState.load(self._state_file)

    @property
    def run_id(self) -> str | None:
        return self.state.run_id or self.header.get("run_id")

    @property
    def finalized(self) -> bool:
        return self.state.finalized is not None

    def alive(self) -> bool:
        if self._exit_status is not None:
            return False
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self._exit_status = -1
            return False
        if pid == 0:
            return True
        self._exit_status = status
        return False

    # -- control -------------------------------------------------------------------------
    def kick(self) -> None:
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass

    notify_data = kick
    request_close = kick

    def abort(self) -> None:
        """Nothing to do: the child finishes on its own (see the module docstring)."""

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        while self.alive() and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)

    def wait(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout)
        while not predicate():
            if time.monotonic() >= deadline or not self.alive():
                return bool(predicate())
            time.sleep(POLL_SECONDS)
        return True


def _child_main(path: Path, header: dict[str, Any], settings: ShipperSettings, parent: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    wake = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: wake.set())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    shipper = Shipper(path, settings=settings, header=header)
    shipper._closing = True  # leave the loop as soon as the end record is shipped
    thread = threading.Thread(target=shipper._loop, name="gradwatch-shipper", daemon=True)
    thread.start()
    orphaned_at: float | None = None
    while thread.is_alive():
        if wake.wait(0.1):
            wake.clear()
            shipper.kick()
        if orphaned_at is None and os.getppid() != parent:
            orphaned_at = time.monotonic()
            shipper.kick()
        if orphaned_at is None:
            continue
        if _journal_shipped_without_end(shipper):
            # The parent died before writing its end record: stop the loop, then end the run
            # as incomplete from this thread (the store is never used by two threads at once).
            shipper.abort()
            thread.join(30.0)
            try:
                shipper.finalize_incomplete()
            except Exception as err:  # noqa: BLE001 - sync can still do it
                logger.warning("gradwatch: could not end the orphaned run (%s); "
                               "`gradwatch sync %s` will", err, path)  # fmt: skip
            return 0
        if time.monotonic() - orphaned_at > ORPHAN_GRACE and shipper.failing_since is not None:
            logger.warning("gradwatch: training process gone and MLflow unreachable; "
                           "run `gradwatch sync %s` later", path)  # fmt: skip
            break
    shipper.abort()
    thread.join(5.0)
    return 0


def _journal_shipped_without_end(shipper: Shipper) -> bool:
    return (
        not shipper.finalized
        and shipper.state.end_status is None
        and shipper.failing_since is None
        and shipper.state.run_id is not None
        and shipper.pending_bytes() == 0
    )
