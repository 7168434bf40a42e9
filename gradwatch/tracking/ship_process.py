"""Run the shipper in its own process, so shipping never competes with training for the GIL.

A shipper thread inside the training process holds Python's GIL whenever it parses journal
lines, builds requests or (with the embedded sqlite store) runs MLflow's SQL layer; every time
the training loop releases the GIL (each ``os.write``, each numpy call) the thread may keep it
for up to the 5 ms switch interval. On the 1.6 ms/step benchmark MLP that cost the loop 30 %
and more. The journal is already the interface between the two sides, so the shipper runs as
a fresh interpreter running this module's ``main`` on the journal, not a fork: it
shares no locks, sockets, database connections or open files with training, and works the
same on every platform.

The parent talks to the child through the child's stdin, a pipe: ``k`` wakes it to ship now
(flush, close, a full batch waiting), ``q`` tells it to stop after the current request (close
timed out; the rest stays in the journal for ``gradwatch sync``). End of file means the
training process is gone (kill -9, OOM killer, a crash): the child then ships what the journal
holds, ends the run as FAILED with the tag ``gradwatch.incomplete=true`` and exits, giving up
after ``ORPHAN_GRACE`` seconds in any case. The child ignores SIGINT and SIGTERM, which reach
the whole process group (Ctrl-C, a scheduler's SIGTERM): the training process ends the run
as KILLED and the child ships that end record. For as long as it runs, the child holds an
exclusive ``flock`` on ``NAME.ship.lock``, so ``gradwatch sync`` never ships the same journal
at the same time. Its log goes to ``NAME.ship.log`` next to the journal.

    shipper = ProcessShipper.start(journal_path, header, settings)   # in the training process
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gradwatch.tracking.journal import lock_held, scan_lines, state_path
from gradwatch.tracking.shipper import Shipper, ShipperSettings, ShipState

__all__ = ["ORPHAN_GRACE", "ProcessShipper", "ship_lock_path", "ship_log_path", "shipper_running"]

logger = logging.getLogger("gradwatch")

#: Seconds an orphaned shipper may keep working before it leaves the rest of the journal to
#: `gradwatch sync` (which is exactly-once with whatever the child shipped).
ORPHAN_GRACE = 60.0
#: How often the parent re-reads the state file while it waits for a flush or close.
POLL_SECONDS = 0.02


def ship_lock_path(journal_path: str | os.PathLike) -> Path:
    return Path(str(journal_path)).with_suffix(".ship.lock")


def ship_log_path(journal_path: str | os.PathLike) -> Path:
    return Path(str(journal_path)).with_suffix(".ship.log")


def shipper_running(journal_path: str | os.PathLike) -> bool:
    """True while a shipper process holds the journal's ship lock."""
    return lock_held(ship_lock_path(journal_path))


class ProcessShipper:
    """The training process's handle on a shipper process (the interface ``RunTracker`` uses
    of :class:`~gradwatch.tracking.shipper.Shipper`)."""

    def __init__(self, path: Path, header: dict[str, Any], proc: subprocess.Popen) -> None:
        self.path = path
        self.header = header
        self.proc = proc
        self._state_file = state_path(path)
        self._pipe = proc.stdin.fileno() if proc.stdin else -1
        if self._pipe >= 0:
            os.set_blocking(self._pipe, False)

    @classmethod
    def start(cls, path: Path, header: dict[str, Any], settings: ShipperSettings) -> ProcessShipper:
        # The child must import this very gradwatch, installed or not.
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        log = open(ship_log_path(path), "ab")
        try:
            proc = subprocess.Popen(
                # Not `-m gradwatch.tracking.ship_process`: the package imports this module
                # first, and runpy would warn into the ship log about running it twice.
                [sys.executable, "-c", _CHILD_MAIN, str(path),
                 "--settings", json.dumps(asdict(settings))],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log, close_fds=True,
                env=env,
            )  # fmt: skip
        finally:
            log.close()
        return cls(path, header, proc)

    # -- state, from the state file the child replaces atomically ------------------------
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
        return self.proc.poll() is None

    # -- control -------------------------------------------------------------------------
    def _send(self, byte: bytes) -> None:
        try:
            os.write(self._pipe, byte)
        except (BlockingIOError, BrokenPipeError, OSError):
            pass  # a full pipe already holds a wake-up; a dead child is seen by alive()

    def kick(self) -> None:
        self._send(b"k")

    notify_data = kick
    request_close = kick

    def abort(self) -> None:
        """Stop after the current request; what is not shipped stays in the journal."""
        self._send(b"q")

    def join(self, timeout: float) -> None:
        try:
            self.proc.wait(max(0.0, timeout))
        except subprocess.TimeoutExpired:
            pass

    def wait(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout)
        while not predicate():
            if time.monotonic() >= deadline or not self.alive():
                return bool(predicate())
            time.sleep(POLL_SECONDS)
        return True


# ---------------------------------------------------------------------------- the child


def _child(path: Path, settings: ShipperSettings) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    lock = os.open(ship_lock_path(path), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)
    shipper = Shipper(path, settings=settings)
    shipper._closing = True  # leave the loop as soon as the end record is shipped
    thread = threading.Thread(target=shipper._loop, name="gradwatch-shipper", daemon=True)
    thread.start()
    stdin = sys.stdin.fileno()
    orphaned_at: float | None = None
    while thread.is_alive():
        if orphaned_at is None:
            ready, _, _ = select.select([stdin], [], [], 0.2)
            if ready:
                data = os.read(stdin, 4096)
                if not data:  # end of file: the training process is gone
                    orphaned_at = time.monotonic()
                    shipper.kick()
                elif b"q" in data:
                    break
                else:
                    shipper.kick()
            continue
        if _shipped_without_end(shipper):
            # Training died before its end record: stop the loop, then end the run as
            # incomplete from this thread (the store is never used by two threads at once).
            shipper.abort()
            thread.join(30.0)
            try:
                shipper.finalize_incomplete()
            except Exception as err:  # noqa: BLE001 - `gradwatch sync` can still do it
                logger.warning("gradwatch: could not end the orphaned run (%s); "
                               "`gradwatch sync %s` will", err, path)  # fmt: skip
            return 0
        if time.monotonic() - orphaned_at > ORPHAN_GRACE:
            logger.warning("gradwatch: training process gone; leaving the rest of %s to "
                           "`gradwatch sync`", path)  # fmt: skip
            break
        time.sleep(0.2)
    shipper.abort()
    thread.join(5.0)
    return 0


def _shipped_without_end(shipper: Shipper) -> bool:
    if shipper.finalized or shipper.state.end_status is not None:
        return False
    if shipper.failing_since is not None or shipper.state.run_id is None:
        return False
    # Complete lines only: a torn last line (crash mid-write) is never shippable.
    lines, _ = scan_lines(shipper._fd, shipper.state.offset, 1 << 16)
    return not lines


_CHILD_MAIN = "import sys; from gradwatch.tracking.ship_process import main; sys.exit(main())"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="gradwatch's shipper process (started by the hook)")
    ap.add_argument("journal", type=Path)
    ap.add_argument("--settings", default="{}")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    settings = ShipperSettings(**json.loads(args.settings))
    return _child(args.journal.absolute(), settings)


if __name__ == "__main__":
    sys.exit(main())
