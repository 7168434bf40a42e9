"""Run the shipper in its own process, so shipping never competes with training for the GIL.

A shipper thread inside the training process holds Python's GIL whenever it parses journal
lines, builds requests or (with the embedded sqlite store) runs MLflow's SQL layer; every time
the training loop releases the GIL (each ``os.write``, each numpy call) the thread may keep it
for up to the 5 ms switch interval. On the 1.6 ms/step benchmark MLP that cost the loop 30 %
and more. The journal is already the interface between the two sides, so the shipper runs as
a fresh interpreter running this module's ``main`` on the journal, not a fork: it
shares no locks, sockets, database connections or open files with training (POSIX: it uses
``flock`` and ``select`` on a pipe). While training runs, its shipping thread runs at a lower
priority (``NICENESS``), so on a busy machine training gets the CPU first; once the run is
closed, a thread at normal priority ships the rest. For an http(s) server it never imports MLflow (rest.py).
The real tracking URI reaches it only through its environment (``SHIP_URI_ENV``); the journal
header, the state file and its log hold the URI with credentials masked.

The parent talks to the child through the child's stdin, a pipe: ``k`` wakes it to ship
everything now (flush), ``d`` says a full batch is waiting (it ships full batches only),
``c`` says the end record is written (the rest is shipped by
a thread at normal priority: training is over), ``q`` tells it to stop after the current request (close
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
import gc
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from gradwatch.secrets import mask_uri
from gradwatch.tracking.journal import remove_journal, state_path
from gradwatch.tracking.locks import lock_held, lock_within, release, try_lock
from gradwatch.tracking.loop import ShipLoop, cpu_seconds
from gradwatch.tracking.shipper import SHIP_URI_ENV, Shipper
from gradwatch.tracking.state import ShipperSettings, ShipState

__all__ = ["ORPHAN_GRACE", "ProcessShipper", "ship_lock_path", "ship_log_path", "shipper_running"]

logger = logging.getLogger("gradwatch")

#: Seconds an orphaned shipper may keep working before it leaves the rest of the journal to
#: `gradwatch sync` (which is exactly-once with whatever the child shipped).
ORPHAN_GRACE = 60.0
#: Shipper processes close() left running in the background (see ``detach``).
_still_running: list[subprocess.Popen] = []
#: How often the parent re-reads the state file while it waits for a flush or close.
POLL_SECONDS = 0.02
#: Niceness added to the shipper process: training gets the CPU first.
NICENESS = 5


def ship_lock_path(journal_path: str | os.PathLike) -> Path:
    return Path(str(journal_path)).with_suffix(".ship.lock")


def ship_log_path(journal_path: str | os.PathLike) -> Path:
    return Path(str(journal_path)).with_suffix(".ship.log")


def shipper_running(journal_path: str | os.PathLike) -> bool:
    """True while a shipper process holds the journal's ship lock."""
    return lock_held(ship_lock_path(journal_path))


def shipper_env(tracking_uri: str, settings: ShipperSettings) -> dict[str, str]:
    """The shipper process's environment: the real URI, fail-fast MLflow HTTP settings."""
    # The child must import this very gradwatch, installed or not.
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env[SHIP_URI_ENV] = tracking_uri
    # Only used where MLflow's own client talks HTTP (auth plugins, non-proxied artifacts):
    # the shipper retries from the journal, so MLflow must not sit minutes in its retries.
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    env["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(settings.request_timeout)))
    # MLflow's client reports usage from a background thread to an outside server; the
    # shipper is gradwatch's machinery, not the user's MLflow session (the user's setting wins).
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


class ProcessShipper:
    """The training process's handle on a shipper process (a ``ShipperHandle``, loop.py)."""

    def __init__(self, path: Path, header: dict[str, Any], proc: subprocess.Popen) -> None:
        self.path = path
        self.header = header
        self.proc = proc
        self._state_file = state_path(path)
        self._pipe = proc.stdin.fileno() if proc.stdin else -1
        if self._pipe >= 0:
            os.set_blocking(self._pipe, False)

    @classmethod
    def start(
        cls, path: Path, header: dict[str, Any], settings: ShipperSettings, tracking_uri: str
    ) -> ProcessShipper:
        log_fd = os.open(
            ship_log_path(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        # The ship lock is taken here and handed to the child (same open file, same lock), so
        # it is held from this moment on: a `gradwatch sync` right after training exits sees
        # the shipper even if that process has not finished starting.
        lock_fd = try_lock(ship_lock_path(path), create=True)
        # The child prints the run's UI link on the training process's stderr once it exists.
        announce_fd = _dup_stderr()
        try:
            proc = subprocess.Popen(
                # Not `-m gradwatch.tracking.ship_process`: the package imports this module
                # first, and runpy would warn into the ship log about running it twice.
                [
                    sys.executable,
                    "-c",
                    _CHILD_MAIN,
                    str(path),
                    "--settings",
                    json.dumps(asdict(settings)),
                    "--lock-fd",
                    str(-1 if lock_fd is None else lock_fd),
                    "--announce-fd",
                    str(announce_fd),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=log_fd,
                close_fds=True,
                pass_fds=tuple(fd for fd in (lock_fd, announce_fd) if fd is not None and fd >= 0),
                env=shipper_env(tracking_uri, settings),
            )
        finally:
            os.close(log_fd)
            release(lock_fd)
            release(announce_fd if announce_fd >= 0 else None)
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

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float | None:
        """The shipper process's CPU so far (Linux), None where it cannot be read."""
        return cpu_seconds(self.proc.pid)

    def detach(self) -> None:
        """close() is done with the child: close the pipe (end of file is the child's cue
        that nobody waits for it any more) and keep the process object until it exits."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        _still_running[:] = [p for p in _still_running if p.poll() is None]
        if self.proc.poll() is None:
            _still_running.append(self.proc)  # reaped later, never warned about as leaked

    def leave_running(self) -> None:
        """close() stops waiting: the child finishes on its own (within ``ORPHAN_GRACE``
        once this process is gone) and then deletes the journal it landed completely."""
        self._send(b"x")

    # -- control -------------------------------------------------------------------------
    def _send(self, byte: bytes) -> None:
        try:
            os.write(self._pipe, byte)
        except OSError:
            pass  # a full pipe already holds a wake-up; a dead child is seen by alive()

    def kick(self) -> None:
        self._send(b"k")

    def notify_data(self) -> None:
        """A full batch is waiting (the child ships full batches only, the rest later)."""
        self._send(b"d")

    def request_close(self) -> None:
        """The end record is written: ship the rest at full priority (training is done)."""
        self._send(b"c")

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


def _dup_stderr() -> int:
    try:
        return os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # no real stderr (a notebook, a daemon)
        return -1


# ---------------------------------------------------------------------------- the child


def _announcer(fd: int | None):
    if fd is None:
        return None

    def announce(text: str) -> None:
        try:
            os.write(fd, mask_uri(text).encode() + b"\n")
        except OSError:
            pass

    return announce


def _child(
    path: Path, settings: ShipperSettings, lock: int | None, announce_fd: int | None = None
) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if lock is None:  # the parent could not take it (a sync holds it): wait for that
        lock = lock_within(ship_lock_path(path), 3600.0, create=True)
    shipper = Shipper(path, settings=settings, announce=_announcer(announce_fd))
    # While training runs, the shipping thread is niced; once the training process closes
    # the run, a fresh thread at normal priority ships the rest (niceness cannot be undone).
    loop = ShipLoop(
        shipper,
        close_when_finalized=True,
        niceness=NICENESS,
        owns_shipper=False,
        on_started=_freeze_startup_heap,
    ).start()
    closing = remove_when_landed = False
    stdin = sys.stdin.fileno()
    orphaned_at: float | None = None
    while loop.alive():
        if orphaned_at is None:
            ready, _, _ = select.select([stdin], [], [], 0.2)
            if ready:
                data = os.read(stdin, 4096)
                if b"x" in data:  # the training process left the rest to this process
                    remove_when_landed = True
                    data = data.replace(b"x", b"") or b"k"
                if not data:  # end of file: the training process is gone
                    orphaned_at = time.monotonic()
                    loop.kick()
                elif b"q" in data:
                    break
                elif not data.strip(b"d"):  # only "a full batch is waiting" notices
                    loop.notify_data()
                elif b"c" in data and not closing:
                    closing = True
                    loop.abort()  # after its current request: never two threads on the store
                    loop.join(ORPHAN_GRACE)
                    if loop.alive():
                        logger.warning(
                            "gradwatch: shipping stuck; leaving the rest of %s to `gradwatch sync`",
                            path,
                        )
                        break
                    # The start-up heap is frozen already; freezing again would keep
                    # whatever garbage exists now for good.
                    loop = ShipLoop(shipper, close_when_finalized=True, owns_shipper=False).start()
                else:
                    loop.kick()
            continue
        if _shipped_without_end(loop):
            # Training died before its end record: stop the loop, then end the run as
            # incomplete from this thread (the store is never used by two threads at once).
            loop.abort()
            loop.join(30.0)
            try:
                shipper.finalize_incomplete()
            except Exception as err:  # noqa: BLE001 - `gradwatch sync` can still do it
                logger.warning(
                    "gradwatch: could not end the orphaned run (%s); `gradwatch sync %s` will",
                    err,
                    path,
                )
            shipper.close()
            return 0
        if time.monotonic() - orphaned_at > ORPHAN_GRACE:
            logger.warning(
                "gradwatch: training process gone; leaving the rest of %s to `gradwatch sync`", path
            )
            break
        time.sleep(0.2)
    loop.abort()
    loop.join(5.0)
    shipper.close()
    state = shipper.state
    if remove_when_landed and shipper.finalized and not state.fatal and not state.dropped:
        remove_journal(path)  # all of it landed after close() stopped waiting
    if lock is not None:
        os.close(lock)
    return 0


def _freeze_startup_heap() -> None:
    """The store is open: move everything allocated so far out of the garbage collector's way.

    Importing MLflow and opening its SQL store allocate ~300,000 objects that live as long as
    the process. With the collector on, every collection of the oldest generation traverses
    them all: during the imports and while shipping (MLflow's sqlite store: ~70 instead of
    ~46 us of CPU a metric in 1,000-metric requests; bench_store_floor.py). So the process
    starts with the collector off (``_CHILD_MAIN``) and, once started, freezes that heap
    (``gc.freeze``: never collected again) and turns the collector on for what shipping
    allocates. The import-time garbage frozen with it is ~1 MB. With ``run()``'s exit, a
    fresh process's MLflow part of a run (import, open an existing store, create and end a
    run) costs 1.2 instead of 2.0-2.2 CPU-s.
    """
    gc.freeze()
    gc.enable()


def _shipped_without_end(loop: ShipLoop) -> bool:
    shipper = loop.shipper
    if shipper.finalized or shipper.state.end_status is not None or shipper.state.fatal:
        return False
    if loop.failing_since is not None or shipper.state.run_id is None:
        return False
    return shipper.caught_up()  # complete lines only: a torn last line is never shippable


class _MaskingFormatter(logging.Formatter):
    """Every line of the ship log with credentials in URIs masked."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_uri(super().format(record))


# The collector is off from the first line: see _freeze_startup_heap.
_CHILD_MAIN = "import gc; gc.disable(); from gradwatch.tracking.ship_process import run; run()"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="gradwatch's shipper process (started by the hook)")
    ap.add_argument("journal", type=Path)
    ap.add_argument("--settings", default="{}")
    ap.add_argument("--lock-fd", type=int, default=-1, help="inherited fd holding the ship lock")
    ap.add_argument("--announce-fd", type=int, default=-1, help="inherited fd for the run's link")
    args = ap.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_MaskingFormatter("%(asctime)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    settings = ShipperSettings(**json.loads(args.settings))

    def fd(n: int) -> int | None:
        return n if n >= 0 else None

    return _child(args.journal.absolute(), settings, fd(args.lock_fd), fd(args.announce_fd))


def run() -> NoReturn:
    """The shipper process's entry point: ``main()``, then exit without tearing down the heap.

    Everything the shipper does is durable before ``main()`` returns (each acknowledgement
    is in the state file, renamed into place; MLflow committed each request; the ship lock
    and the journal are closed), so the interpreter's own shutdown - collecting and freeing
    the ~300,000 objects of MLflow's modules one by one, 0.5-0.7 CPU-s a run - only costs
    CPU. After flushing the log, ``os._exit`` skips it. An exception still ends the process
    the ordinary way, traceback included.
    """
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(code)


if __name__ == "__main__":
    gc.disable()
    run()
