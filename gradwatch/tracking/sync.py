"""Land what a crashed or offline run left in its journal, exactly once; prune what landed.

    result = sync_journal(".gradwatch/journal/20250101-120000-ab12cd34ef56.jsonl")
    print(result.message)                  # SyncResult; result.complete tells success
    summary = sync_all(".gradwatch/journal", timeout=60, echo=print)   # what `gradwatch sync` does
    pruned = prune_journals(".gradwatch/journal")                     # delete what fully landed

``sync_journal`` creates the run if it never was (found again by its journal-id tag if a
previous attempt created it), ships every record from the state file's offset (re-sending is
harmless, see shipper.py), uploads artifacts, and ends the run with the journal's recorded
status - or FAILED with tag ``gradwatch.incomplete=true`` when the journal has no end record
(the process died). A second sync finds nothing to do.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gradwatch.errors import TrackingError
from gradwatch.secrets import mask_uri
from gradwatch.tracking.backoff import Backoff
from gradwatch.tracking.journal import (
    DEFAULT_JOURNAL_DIR,
    is_live,
    journal_files,
    read_header,
    scan_lines,
    state_path,
)
from gradwatch.tracking.locks import lock_within, release, try_lock
from gradwatch.tracking.ship_process import ship_lock_path, shipper_running
from gradwatch.tracking.state import ShipperSettings, ShipState
from gradwatch.tracking.tracker import display_path, pending_message, remove_journal

__all__ = [
    "JournalStatus",
    "PruneSummary",
    "SyncResult",
    "SyncSummary",
    "journal_status",
    "pending_journals",
    "prune_journals",
    "sync_all",
    "sync_journal",
]


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
    error: str | None = None  # MLflow refuses the run altogether (deleted, denied)

    @property
    def complete(self) -> bool:
        return self.pending == 0 and self.status is not None and self.error is None

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class JournalStatus:
    """One journal as seen on disk, for ``gradwatch sync`` listings."""

    path: Path
    journal_id: str
    tracking_uri: str  # credentials masked
    run_id: str | None
    pending: int  # newline-terminated records after the acknowledged offset
    finalized: bool  # the run's end status has been set (or it is an attached run, done)
    live: bool  # a process is still writing or shipping it: do not sync it from outside
    waiting_for: str | None = None  # who holds it: "its training process", "its shipper process"
    error: str | None = None  # a fatal refusal recorded by the shipper

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
    waiting_for = None
    if is_live(path):
        waiting_for = f"its training process (pid {header.get('pid')}) is still writing it"
    elif shipper_running(path):
        waiting_for = (
            "its shipper process is still sending it (it stops at most a minute "
            "after its training process ended)"
        )
    return JournalStatus(
        path=path,
        journal_id=header["id"],
        tracking_uri=mask_uri(header["uri"]),
        run_id=state.run_id or header.get("run_id"),
        pending=_count_lines(path, state.offset),
        finalized=state.finalized is not None,
        live=waiting_for is not None,
        waiting_for=waiting_for,
        error=state.fatal,
    )


def _journals(directory: Path) -> list[JournalStatus]:
    out = []
    for path in sorted(directory.glob("*.jsonl")):
        try:
            out.append(journal_status(path))
        except (OSError, ValueError, KeyError):
            continue  # not a gradwatch journal
    return out


def pending_journals(journal_dir: str | os.PathLike | None = None) -> list[JournalStatus]:
    """Journals in ``journal_dir`` (default ``.gradwatch/journal``) not fully landed, oldest first.

    Includes live ones (``live=True``: their own process is shipping them).
    """
    directory = Path(journal_dir or DEFAULT_JOURNAL_DIR).absolute()
    return [s for s in _journals(directory) if s.pending > 0 or not s.finalized]


def _real_uri(header_uri: str, tracking_uri: str | None) -> str:
    """The URI to sync to: given, else the header's - whose credentials were masked, so they
    come back from ``MLFLOW_TRACKING_URI`` when that names the same server."""
    if tracking_uri:
        return tracking_uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and mask_uri(env) == header_uri:
        return env
    return header_uri


def sync_journal(
    journal_path: str | os.PathLike,
    tracking_uri: str | None = None,
    timeout: float = 60.0,
    settings: ShipperSettings | None = None,
) -> SyncResult:
    """Ship everything ``journal_path`` holds and end its run; idempotent.

    Usage: ``sync_journal(".gradwatch/journal/X.jsonl").complete``

    tracking_uri: None -> the URI recorded in the journal header (its credentials masked:
        they come from ``MLFLOW_TRACKING_URI`` or MLflow's credential variables).
    timeout: seconds in all, requests included, to keep retrying an unreachable server
        (the journal stays; sync again later).
    Raises TrackingError if the journal is missing, not a journal, or still being written
    or shipped by a live process.
    """
    deadline = time.monotonic() + timeout
    path = Path(journal_path)
    if not path.is_file():
        raise TrackingError(
            f"sync: journal {journal_path} does not exist; list journals with `gradwatch sync`"
        )
    try:
        header = read_header(path)
        header["id"], header["uri"]
    except (OSError, ValueError, KeyError) as err:  # before any lock file is created beside it
        raise TrackingError(
            f"sync: {display_path(path)} is not a gradwatch journal ({err}); "
            "name a .jsonl file from .gradwatch/journal"
        ) from None
    lock_fd = try_lock(path)
    if lock_fd is None:
        raise TrackingError(
            f"sync: journal {display_path(path)} is still being written by its training "
            "process; its own shipper is sending it (sync it after that process exits)"
        )
    try:
        try:
            ship_lock = lock_within(ship_lock_path(path), min(SHIP_LOCK_WAIT, timeout), create=True)
        except OSError as err:  # a read-only folder: sync must write its state beside it
            raise TrackingError(_unwritable(path, err)) from None
        if ship_lock is None:
            raise TrackingError(
                f"sync: journal {display_path(path)} is being shipped by its shipper process "
                "right now (it stops at most a minute after its training process ended); "
                "sync it after that"
            )
        try:
            from gradwatch.tracking.shipper import Shipper

            shipper = Shipper(
                path,
                tracking_uri=_real_uri(header["uri"], tracking_uri),
                settings=settings,
                header=header,
            )
            try:
                return _sync(shipper, deadline)
            finally:
                shipper.close()
        finally:
            release(ship_lock)
    finally:
        release(lock_fd)


def _unwritable(path: Path, err: OSError) -> str:
    reason = err.strerror or str(err)
    return (
        f"sync: cannot write beside {display_path(path)} ({reason}); sync keeps its "
        f"progress next to the journal: make {display_path(path.parent)} writable, or copy "
        "the journal with its files to a writable folder and sync that copy"
    )


def torn_tail(journal_path: Path) -> int:
    """Bytes of a last line without its newline (a write cut short by kill -9): never
    shipped, since only whole lines are records. 0 when the journal ends cleanly."""
    with open(journal_path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - (1 << 16)))
        tail = f.read().rstrip(b"\0")  # zeros past the last record are reserved space
    if not tail or tail.endswith(b"\n"):
        return 0
    return len(tail) - (tail.rfind(b"\n") + 1)


#: A shipper process that has just finished still holds its lock for a moment while it exits.
SHIP_LOCK_WAIT = 5.0


def _sync(shipper, deadline: float) -> SyncResult:
    settings = shipper.settings
    shipped_before = shipper.state.shipped
    shipper.state.fatal = None  # the user may have fixed it (restored the experiment): try again
    already = shipper.finalized and _count_lines(shipper.path, shipper.state.offset) == 0
    backoff = Backoff(settings.backoff_initial, settings.backoff_max)
    last_error: BaseException | None = None
    while not already:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        shipper.set_request_timeout(min(settings.request_timeout, remaining))
        try:
            if shipper.step():
                backoff.reset()
                continue
            if not shipper.finalized:
                shipper.finalize_incomplete()  # no end record after the last line: crashed
            break
        except Exception as err:  # retried until the deadline; reported in the result
            last_error = err
            if shipper.state.fatal:
                break
            if isinstance(err, OSError):  # the state beside the journal cannot be written
                raise TrackingError(_unwritable(shipper.path, err)) from None
            delay = backoff.next()
            if time.monotonic() + delay >= deadline:
                break
            time.sleep(delay)
    return _result(shipper, shipped_before, already, last_error)


def _result(
    shipper, shipped_before: int, already: bool, last_error: BaseException | None
) -> SyncResult:
    st = shipper.state
    pending = _count_lines(shipper.path, st.offset)
    shipped = st.shipped - shipped_before
    shown = display_path(shipper.path)
    if already:
        message = f"gradwatch: {shown} already synced to run {st.run_id}; nothing to do"
    elif st.fatal:
        message = f"gradwatch: MLflow refuses {shown}: {st.fatal}; the journal keeps its {max(pending, 1)} records"
    elif pending or not shipper.finalized:
        message = pending_message(max(pending, 1), shipper.path)
        if last_error is not None:
            message += f" (last error: {str(last_error).splitlines()[0][:200]})"
    else:
        how = " (no end record: marked FAILED, gradwatch.incomplete=true)" if st.incomplete else ""
        message = f"gradwatch: synced {shipped} records of {shown} to run {st.run_id}{how}"
    torn = torn_tail(shipper.path)
    if torn:
        message += (
            f"; its last line was cut short ({torn} bytes without an end, a write "
            "interrupted by a crash) and is not a record: skipped"
        )
    return SyncResult(
        journal_path=shipper.path,
        run_id=st.run_id,
        shipped=shipped,
        pending=pending if shipper.finalized else max(pending, 1),
        status=st.finalized,
        incomplete=st.incomplete,
        already_synced=already,
        dropped=st.dropped,
        message=mask_uri(message),
        error=st.fatal,
    )


@dataclass
class SyncSummary:
    """What ``sync_all`` did; ``exit_code`` is 0 only if nothing is left to land."""

    results: list[SyncResult] = field(default_factory=list)
    left: list[str] = field(default_factory=list)  # one line per journal not fully landed
    pruned: PruneSummary | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.left else 0


def sync_all(
    journal_dir: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    timeout: float = 60.0,
    prune: bool = False,
    echo: Callable[[str], object] = print,
) -> SyncSummary:
    """``gradwatch sync`` without a journal: land every journal in ``journal_dir``.

    Journals whose shipper process still runs (training just exited) are waited for, up to
    ``timeout`` s, saying so; one still written by a live training process is left, and
    named. ``echo`` gets one line per event; ``prune`` then deletes what fully landed.
    """
    directory = Path(journal_dir or DEFAULT_JOURNAL_DIR).absolute()
    deadline = time.monotonic() + timeout
    summary = SyncSummary()
    for status in pending_journals(directory):
        shown = display_path(status.path)
        if status.live and not is_live(status.path):  # only the orphaned shipper holds it
            echo(f"waiting up to {timeout:g} s for {shown}: {status.waiting_for}")
            lock = lock_within(ship_lock_path(status.path), max(0.0, deadline - time.monotonic()))
            release(lock)
            status = journal_status(status.path)
        if status.live:
            line = f"{shown} not synced: {status.waiting_for}"
            echo(line)
            summary.left.append(line)
            continue
        if not status.needs_sync:
            continue
        try:
            result = sync_journal(status.path, tracking_uri, max(0.0, deadline - time.monotonic()))
        except TrackingError as err:
            summary.left.append(str(err))
            echo(str(err))
            continue
        summary.results.append(result)
        echo(result.message)
        if not result.complete:
            summary.left.append(result.message)
    if not summary.results and not summary.left:
        echo(f"nothing to sync in {display_path(directory)}")
    if prune:
        summary.pruned = prune_journals(directory)
        echo(summary.pruned.message)
    return summary


@dataclass(frozen=True)
class PruneSummary:
    """What ``prune_journals`` deleted and what it kept (and why)."""

    removed: list[Path]
    kept: list[tuple[Path, str]]
    bytes_freed: int

    @property
    def message(self) -> str:
        return (
            f"pruned {len(self.removed)} landed journal(s), {self.bytes_freed / 1e6:.1f} MB; "
            f"kept {len(self.kept)} not fully landed"
        )


def _size(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.exists():
            total += p.stat().st_size
    return total


def prune_journals(journal_dir: str | os.PathLike | None = None) -> PruneSummary:
    """Delete the journals in ``journal_dir`` whose records all landed and whose run ended.

    Usage: ``prune_journals(".gradwatch/journal").message``. Journals of failed, incomplete,
    live or refused runs are kept (``kept`` says why), so are any with dropped entities.
    Sidecar files whose journal is gone (older versions left some) are deleted too.
    """
    directory = Path(journal_dir or DEFAULT_JOURNAL_DIR).absolute()
    removed, kept, freed = [], [], 0
    for status in _journals(directory):
        dropped = ShipState.load(state_path(status.path)).dropped
        why = (
            status.waiting_for
            or status.error
            or (f"{status.pending} records pending" if status.pending else None)
            or (None if status.finalized else "run not ended")
            or (f"{dropped} entities dropped" if dropped else None)
        )
        if why:
            kept.append((status.path, why))
            continue
        freed += _size(journal_files(status.path))
        remove_journal(status.path)
        removed.append(status.path)
    for stray in [
        *directory.glob("*.state.json"),
        *directory.glob("*.ship.*"),
        *directory.glob("*.files"),
    ]:
        stem = stray.name.split(".")[0]
        if not (directory / f"{stem}.jsonl").exists() and not shipper_running(
            directory / f"{stem}.jsonl"
        ):
            freed += _size([stray])
            remove_journal(directory / f"{stem}.jsonl")
    return PruneSummary(removed, kept, freed)
