"""Land what a crashed or offline run left in its journal, exactly once.

    result = sync_journal(".gradwatch/journal/20250101-120000-ab12cd34ef56.jsonl")
    print(result.message)                  # SyncResult; result.complete tells success
    for j in pending_journals(): print(j.path, j.pending, j.live)

``sync_journal`` creates the run if it never was (found again by its journal-id tag if a
previous attempt created it), ships every acknowledged-or-not record from the state file's
offset (re-sending is harmless, see shipper.py), uploads artifacts, and ends the run with
the journal's recorded status - or FAILED with tag ``gradwatch.incomplete=true`` when the
journal has no end record (the process died). A second sync finds nothing to do.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

from gradwatch.errors import TrackingError
from gradwatch.tracking.journal import (
    DEFAULT_JOURNAL_DIR,
    is_live,
    read_header,
    scan_lines,
    state_path,
)
from gradwatch.tracking.ship_process import ship_lock_path, shipper_running
from gradwatch.tracking.shipper import Shipper, ShipperSettings, ShipState
from gradwatch.tracking.tracker import display_path, pending_message

__all__ = ["JournalStatus", "SyncResult", "journal_status", "pending_journals", "sync_journal"]


@dataclass(frozen=True)
class SyncResult:
    """Outcome of ``sync_journal``; ``str(result)`` is the human message."""

    journal_path: Path
    run_id: str | None
    shipped: int  # records shipped by this call (0 on a repeated sync)
    pending: int  # records still not landed (0 = complete)
    status: str | None  # status the run was ended with ("ATTACHED": left to its owner)
    incomplete: bool  # the journal had no end record: the writing process crashed
    already_synced: bool  # nothing was left to do
    dropped: int  # entities MLflow rejected over the journal's lifetime
    message: str

    @property
    def complete(self) -> bool:
        return self.pending == 0 and self.status is not None

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class JournalStatus:
    """One journal as seen on disk, for ``gradwatch sync`` listings."""

    path: Path
    journal_id: str
    tracking_uri: str
    run_id: str | None
    pending: int  # newline-terminated records after the acknowledged offset
    finalized: bool  # the run's end status has been set (or it is an attached run, done)
    live: bool  # a process is still writing it: do not sync it from outside

    @property
    def needs_sync(self) -> bool:
        return not self.live and (self.pending > 0 or not self.finalized)


def _count_lines(journal_path: Path, offset: int) -> int:
    fd = os.open(journal_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        count = 0
        while True:
            lines, offset = scan_lines(fd, offset, 1 << 20)
            if not lines:
                return count
            count += len(lines)
    finally:
        os.close(fd)


def journal_status(journal_path: str | os.PathLike) -> JournalStatus:
    """Read a journal's header and state file (no network)."""
    path = Path(journal_path)
    header = read_header(path)
    state = ShipState.load(state_path(path))
    return JournalStatus(
        path=path,
        journal_id=header["id"],
        tracking_uri=header["uri"],
        run_id=state.run_id or header.get("run_id"),
        pending=_count_lines(path, state.offset),
        finalized=state.finalized is not None,
        live=is_live(path) or shipper_running(path),
    )


def pending_journals(journal_dir: str | os.PathLike | None = None) -> list[JournalStatus]:
    """Journals in ``journal_dir`` (default ``.gradwatch/journal``) not fully landed, oldest first.

    Includes live ones (``live=True``: their own process is shipping them).
    """
    directory = Path(journal_dir or DEFAULT_JOURNAL_DIR).absolute()
    out = []
    for path in sorted(directory.glob("*.jsonl")):
        try:
            status = journal_status(path)
        except (OSError, ValueError, KeyError):
            continue  # not a gradwatch journal
        if status.pending > 0 or not status.finalized:
            out.append(status)
    return out


def sync_journal(
    journal_path: str | os.PathLike,
    tracking_uri: str | None = None,
    timeout: float = 60.0,
    settings: ShipperSettings | None = None,
) -> SyncResult:
    """Ship everything ``journal_path`` holds and end its run; idempotent.

    Usage: ``sync_journal(".gradwatch/journal/X.jsonl").complete``

    tracking_uri: None -> the URI recorded in the journal header.
    timeout: seconds to keep retrying an unreachable server before giving up (the journal
        stays; sync again later).
    Raises TrackingError if the journal is missing, not a journal, or still being written
    by a live process.
    """
    path = Path(journal_path)
    if not path.is_file():
        raise TrackingError(f"sync: journal {journal_path} does not exist; list journals with `gradwatch sync`")  # fmt: skip
    lock_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrackingError(
                f"sync: journal {display_path(path)} is still being written by a live process; "
                "its own shipper is sending it (sync it after that process exits)"
            ) from None
        ship_lock = os.open(ship_lock_path(path), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
        if not _lock_within(ship_lock, SHIP_LOCK_WAIT):
            os.close(ship_lock)
            raise TrackingError(
                f"sync: journal {display_path(path)} is being shipped by its shipper process "
                "right now (it gives up at most a minute after its training process ended); "
                "sync it after that"
            ) from None
        try:
            try:
                shipper = Shipper(path, tracking_uri=tracking_uri, settings=settings)
            except (ValueError, KeyError) as err:
                raise TrackingError(
                    f"sync: {journal_path} is not a gradwatch journal ({err})"
                ) from err
            try:
                return _sync(shipper, timeout)
            finally:
                shipper.close_fd()
        finally:
            os.close(ship_lock)
    finally:
        os.close(lock_fd)


#: A shipper process that has just finished still holds its lock for a moment while it exits.
SHIP_LOCK_WAIT = 5.0


def _lock_within(fd: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _sync(shipper: Shipper, timeout: float) -> SyncResult:
    settings = shipper.settings
    deadline = time.monotonic() + timeout
    shipped_before = shipper.state.shipped
    already = shipper.finalized and _count_lines(shipper.path, shipper.state.offset) == 0
    delay = 0.0
    last_error: BaseException | None = None
    while not already:
        try:
            if shipper.step():
                delay = 0.0
                continue
            if not shipper.finalized:
                shipper.finalize_incomplete()  # no end record after the last line: crashed
            break
        except Exception as err:  # retried until the deadline; reported in the result
            last_error = err
            delay = min(max(delay * 2, settings.backoff_initial), settings.backoff_max)
            if time.monotonic() + delay >= deadline:
                break
            time.sleep(delay)
    st = shipper.state
    pending = _count_lines(shipper.path, st.offset)
    shipped = st.shipped - shipped_before
    shown = display_path(shipper.path)
    if already:
        message = f"gradwatch: {shown} already synced to run {st.run_id}; nothing to do"
    elif pending or not shipper.finalized:
        message = pending_message(max(pending, 1), shipper.path)
        if last_error is not None:
            message += f" (last error: {str(last_error).splitlines()[0][:200]})"
    else:
        how = " (no end record: marked FAILED, gradwatch.incomplete=true)" if st.incomplete else ""
        message = f"gradwatch: synced {shipped} records of {shown} to run {st.run_id}{how}"
    return SyncResult(
        journal_path=shipper.path,
        run_id=st.run_id,
        shipped=shipped,
        pending=pending if shipper.finalized else max(pending, 1),
        status=st.finalized,
        incomplete=st.incomplete,
        already_synced=already,
        dropped=st.dropped,
        message=message,
    )
