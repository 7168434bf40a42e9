"""Append-only JSONL journal: the durable buffer between training and MLflow.

    writer = JournalWriter.create(journal_dir, header)     # one file per run
    writer.append({"t": "m", "ts": 1700000000000, "st": 3, "m": {"loss": 0.5}})
    for rec in read_records(writer.path): ...

Every record is one complete line, in the file's shared memory map (the page cache) before
``append`` returns, so a ``kill -9`` of the training process loses nothing that was
accepted. No fsync per record: the page cache survives a process crash, and an fsync per
training step would cost milliseconds. The file is reserved ahead and zero-filled past the
last record; readers stop at the first zero byte and only ever consume newline-terminated
lines (a crash *during* a write leaves a torn last line without its newline), skipping a
line that does not parse.

Line format (compact JSON, one object per line; ``s`` = sequence number, ``ts`` = the
original wall-clock time in ms, which is also what MLflow stores, so re-sending a record
is recognised as a duplicate):

    {"s":0,"t":"h","v":1,"id":UUID,"uri":..,"exp":..,"exp_id":..,"name":..,"tags":{..},
     "run_id":..,"attached":bool,"ts":..,"pid":..}             header (first line)
    {"s":N,"t":"m","ts":..,"st":STEP,"m":{key: value}}         metrics
    {"s":N,"t":"p","ts":..,"p":{key: "value"}}                 params
    {"s":N,"t":"g","ts":..,"g":{key: "value"}}                 tags
    {"s":N,"t":"a","ts":..,"path":"gradwatch/checks.jsonl","r":{..}}   artifact line
    {"s":N,"t":"f","ts":..,"src":"f/N/name","path":"gradwatch"}       artifact file copy
    {"s":N,"t":"e","ts":..,"status":"FINISHED"}                end of run

Next to ``NAME.jsonl`` live ``NAME.state.json`` (the shipper's acknowledged offset, see
shipper.py) and ``NAME.files/`` (copied artifact files, artifact-line files).

The writer holds an exclusive ``flock`` on the journal for its lifetime; the kernel drops
it when the process dies, which is how ``sync`` tells a crashed run from a live one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import mmap
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gradwatch.tracking.locks import lock_held

__all__ = [
    "private_file",
    "reserve_path",
    "set_aside_reserve",
    "remove_journal",
    "DEFAULT_JOURNAL_DIR",
    "HEADER",
    "METRICS",
    "PARAMS",
    "TAGS",
    "ARTIFACT_LINE",
    "ARTIFACT_FILE",
    "END",
    "JournalWriter",
    "encode_record",
    "files_dir",
    "journal_files",
    "is_live",
    "new_journal_id",
    "read_header",
    "read_records",
    "scan_lines",
    "state_path",
]

DEFAULT_JOURNAL_DIR = ".gradwatch/journal"
FORMAT_VERSION = 1

HEADER, METRICS, PARAMS, TAGS, ARTIFACT_LINE, ARTIFACT_FILE, END = "h", "m", "p", "g", "a", "f", "e"


def _default(obj: Any) -> Any:
    # numpy scalars (np.float32, np.int64, ...) and 0-d arrays have .item(); anything else
    # is stringified rather than failing a training step over a log value.
    item = getattr(obj, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


# The C encoder is used (indent=None); `default` only runs for non-JSON types.
# allow_nan stays on: NaN/Infinity are valid MLflow metric values and json.loads reads them.
_encode = json.JSONEncoder(separators=(",", ":"), default=_default).encode
encode_record = _encode  # compact JSON of one record, as journal lines are written
_json_key = json.JSONEncoder(ensure_ascii=True).encode
_NONFINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
logger = logging.getLogger("gradwatch")


def _json_number(value: float) -> str:
    """``value`` as json.dumps writes it (NaN and Infinity included), without the encoder."""
    value = float(value)  # numpy scalars' repr is not JSON
    if value == value:  # not NaN
        return _NONFINITE.get(value) or repr(value)
    return "NaN"


def new_journal_id() -> str:
    return uuid.uuid4().hex


def state_path(journal_path: str | os.PathLike) -> Path:
    """Sidecar file holding the shipper's acknowledged offset and the run id."""
    p = Path(journal_path)
    return p.with_name(p.stem + ".state.json")


def files_dir(journal_path: str | os.PathLike) -> Path:
    """Folder holding artifact files copied at log time and artifact-line files."""
    p = Path(journal_path)
    return p.with_name(p.stem + ".files")


def journal_files(journal_path: str | os.PathLike) -> list[Path]:
    """The journal and every file beside it that belongs to it (state, ship log and lock,
    copied artifacts)."""
    p = Path(journal_path)
    return [
        p,
        state_path(p),
        reserve_path(p),
        p.with_suffix(".ship.log"),
        p.with_suffix(".ship.lock"),
        files_dir(p),
    ]


def reserve_path(journal_path: str | os.PathLike) -> Path:
    """Space the shipper sets aside for its state file: given back when the disk is full."""
    p = Path(journal_path)
    return p.with_name(p.stem + ".reserve")


#: Bytes set aside beside a journal for its shipper's state file.
RESERVE_BYTES = 1 << 16


def set_aside_reserve(journal_path: str | os.PathLike) -> None:
    """Reserve ``RESERVE_BYTES`` beside a new journal (while the disk has room): when the
    disk fills up, the shipper gives them back to write its state, so the run still ends
    (FAILED, with the dropped records' tag) instead of stalling unseen."""
    path = reserve_path(journal_path)
    try:
        with private_file(path) as f:
            os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES)
    except (OSError, AttributeError):  # already full (or no fallocate): nothing to keep
        path.unlink(missing_ok=True)


def private_file(path: Path, append: bool = False) -> Any:
    """``open(path, "ab" or "wb")`` creating the file 0600 (and its folders 0700) whatever
    the umask and whatever the journal folder's own mode."""
    make_private_dir(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
    return os.fdopen(os.open(path, flags, 0o600), "ab" if append else "wb")


def make_private_dir(directory: Path) -> None:
    """Create ``directory`` (and parents) readable by its owner only (0700)."""
    if not directory.is_dir():
        if not directory.parent.is_dir():
            make_private_dir(directory.parent)
        directory.mkdir(exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask


class JournalWriter:
    """Appends records to one journal file; thread-safe; each record is in the file (the
    page cache) before ``append`` returns.

    Usage: ``w = JournalWriter.create(dir, header); seq = w.append(record); w.close()``.

    The file is written through a shared memory map, reserved ahead in GROW_BYTES pieces
    with ``posix_fallocate``: a training step's line is then a copy into memory, not a
    ``write`` system call (one of which cost about as much as all the rest of ``step()``, see
    BENCHMARKS.md). A ``kill -9`` loses nothing either way: the kernel owns the mapped pages.
    What lies past the last record is zeros; readers stop at the first zero byte (see
    ``scan_lines``), ``close`` trims them. Reserving the blocks up front means a full disk is
    an ``OSError`` at growth time, counted in ``dropped``, never a SIGBUS in the training
    process.
    """

    GROW_BYTES = 1 << 20
    #: Bytes kept free in the map for ``append(..., final=True)``: when the disk fills up,
    #: the run's last records (the "records dropped" tag, the end record) still fit.
    FINAL_RESERVE = 1 << 16

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._lock = threading.Lock()
        self._seq = -1
        self._keys: dict[str, str] = {}  # metric key -> its JSON string, built once
        self._map: mmap.mmap | None = None
        self._writes = False  # True: no map possible here, each line is a pwrite
        self._end = 0  # bytes of records written
        self.dropped = 0
        self.last_error: OSError | None = None

    @classmethod
    def create(cls, directory: str | os.PathLike, header: dict[str, Any]) -> JournalWriter:
        """Create a new journal file in ``directory`` and write ``header`` as its first line."""
        directory = Path(directory)
        make_private_dir(directory)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = directory / f"{stamp}-{header['id'][:12]}.jsonl"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)  # may hold run names, tags, params: owner only
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        writer = cls(path, fd)
        if writer.append(dict(header, t=HEADER)) is None:
            raise OSError(f"cannot write journal header to {path}: {writer.last_error}")
        return writer

    @property
    def last_seq(self) -> int:
        """Sequence number of the last record written (the header is 0)."""
        return self._seq

    def append(self, record: dict[str, Any], final: bool = False) -> int | None:
        """Write ``record`` as one line; return its sequence number (None if the disk failed).

        The JSON is encoded outside the lock; the sequence number is spliced in front of it
        under the lock so that sequence order is file order. ``final``: one of the run's
        last few records, which may use the space kept back for them on a full disk.
        """
        return self._write_body(_encode(record)[1:], final)

    def append_metrics(self, ts: int, step: int, metrics: dict[str, float]) -> int | None:
        """``append({"t": "m", "ts": ts, "st": step, "m": metrics})`` for float values.

        The same line, formatted without the JSON encoder (metric keys are encoded once):
        statistics and checks write through here, inside the training step, right after the
        user's backprop has flushed the CPU caches, where every avoided call is measurable
        (BENCHMARKS.md). Raises ValueError/TypeError for a value ``float()`` rejects.
        """
        keys = self._keys
        items = []
        for k, v in metrics.items():
            jk = keys.get(k)
            if jk is None:
                jk = _json_key(k if isinstance(k, str) else str(k))
                if len(keys) < 100_000:  # names that change every step are not worth keeping
                    keys[k] = jk
            items.append(f"{jk}:{_json_number(v)}")
        body = f'"t":"m","ts":{ts},"st":{step},"m":{{{",".join(items)}}}}}'
        return self._write_body(body)

    def append_loss_lr(self, ts: int, step: int, loss: float, lr: float) -> int | None:
        """``append_metrics(ts, step, {"loss": loss, "lr": lr})`` for two finite floats.

        The line most training steps write, formatted once, under the lock: the cheapest
        path there is (see append_metrics for why every call counts here).
        """
        with self._lock:
            seq = self._seq + 1
            line = (
                f'{{"s":{seq},"t":"m","ts":{ts},"st":{step},"m":{{"loss":{loss!r},"lr":{lr!r}}}}}'
            )
            return self._put(seq, line.encode())

    def _write_body(self, body: str, final: bool = False) -> int | None:
        with self._lock:
            seq = self._seq + 1
            return self._put(seq, f'{{"s":{seq},{body}'.encode(), final)

    def _put(self, seq: int, line: bytes, final: bool = False) -> int | None:
        """Copy ``line`` and its newline into the map as record ``seq`` (lock held)."""
        if self._fd < 0:
            raise ValueError(f"journal {self.path} is closed")
        start = self._end
        end = start + len(line)
        try:
            if self._writes:
                return self._pwrite(seq, line)
            if self._map is None or end + self.FINAL_RESERVE >= len(self._map):
                self._grow(end + 1 + self.FINAL_RESERVE)
        except OSError as err:
            if err.errno not in _DISK_FULL:
                return self._fall_back_to_writes(seq, line, err)
            if not (final and self._map is not None and end < len(self._map)):
                # A full disk must not kill training: count and report it instead.
                self.dropped += 1
                self.last_error = err
                return None
        except Exception as err:  # noqa: BLE001 - no fallocate or mremap here (macOS, ...)
            return self._fall_back_to_writes(seq, line, err)
        # The newline goes in last: a reader sees a line only once it is whole (bytes not
        # yet visible read as zeros, where readers stop).
        self._map[start:end] = line
        self._map[end] = 10
        self._end = end + 1
        self._seq = seq
        return seq

    def _grow(self, needed: int) -> None:
        have = 0 if self._map is None else len(self._map)
        size = (needed // self.GROW_BYTES + 1) * self.GROW_BYTES
        # ENOSPC here, not SIGBUS on a page later (on ext4/xfs/tmpfs; a copy-on-write file
        # system such as btrfs or ZFS may still need space at write-back).
        os.posix_fallocate(self._fd, have, size - have)
        if self._map is None:
            self._map = mmap.mmap(self._fd, size)
        else:
            self._map.resize(size)  # also sets the file's size: the same `size` here

    def _fall_back_to_writes(self, seq: int, line: bytes, err: BaseException) -> int | None:
        """No shared map on this platform or file system: ``pwrite`` every line from now on."""
        logger.warning(
            "gradwatch: journal %s: cannot map it (%s: %s); writing each line instead (slower)",
            self.path,
            type(err).__name__,
            err,
        )
        self._writes = True
        try:
            return self._pwrite(seq, line)
        except OSError as write_err:
            self.dropped += 1
            self.last_error = write_err
            return None

    def _pwrite(self, seq: int, line: bytes) -> int:
        data = line + b"\n"
        written = 0
        while written < len(data):  # one call unless the disk is nearly full
            written += os.pwrite(self._fd, data[written:], self._end + written)
        self._end += len(data)
        self._seq = seq
        return seq

    def forget_fd(self) -> None:
        """In a forked child: close this process's copy of the descriptor and of the map
        (the parent's flock stays) and write nothing more."""
        if self._map is not None:
            try:
                self._map.close()
            except (OSError, ValueError, BufferError):
                pass
            self._map = None
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def close(self) -> None:
        """Trim the reserved tail, unmap, close the descriptor (which releases the flock)."""
        with self._lock:
            if self._fd < 0:
                return
            try:
                if self._map is not None:
                    self._map.close()
                    self._map = None
                os.ftruncate(self._fd, self._end)
            except OSError as err:  # the zeros left behind are harmless to readers
                self.last_error = err
            finally:
                fd, self._fd = self._fd, -1  # never closed twice, even if close fails
                os.close(fd)


def is_live(journal_path: str | os.PathLike) -> bool:
    """True while a process still holds the journal open for writing."""
    return lock_held(journal_path)


def scan_lines(
    fd: int, offset: int, max_bytes: int
) -> tuple[list[tuple[int, dict[str, Any] | None]], int]:
    """Read complete lines from ``offset``: ([(end_offset, record or None if corrupt)], end).

    Reads about ``max_bytes`` (more if a single line is longer). A trailing fragment with
    no newline - a line still being written, or torn by a crash - is left for later.
    """
    size = max_bytes
    while True:
        data = os.pread(fd, size, offset)
        full = len(data) == size
        zero = data.find(b"\0")
        if zero >= 0:  # the end of what the writer has put in its map so far (JournalWriter)
            data, full = data[:zero], False
        cut = data.rfind(b"\n")
        if cut >= 0 or not full:
            break
        size *= 2  # one line longer than the chunk: read more
    if cut < 0:
        return [], offset
    out: list[tuple[int, dict[str, Any] | None]] = []
    pos = 0
    while pos <= cut:
        nl = data.index(b"\n", pos)
        line = data[pos:nl]
        pos = nl + 1
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                rec = None
        except ValueError:
            rec = None
        out.append((offset + pos, rec))
    return out, offset + cut + 1


def read_records(journal_path: str | os.PathLike, offset: int = 0) -> Iterator[dict[str, Any]]:
    """Yield every parseable, newline-terminated record from ``offset`` (torn tail skipped)."""
    fd = os.open(journal_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while True:
            lines, offset_next = scan_lines(fd, offset, 1 << 20)
            if not lines:
                return
            for _, rec in lines:
                if rec is not None:
                    yield rec
            offset = offset_next
    finally:
        os.close(fd)


def read_header(journal_path: str | os.PathLike) -> dict[str, Any]:
    """The journal's header record; ValueError if the first line is not a header."""
    for rec in read_records(journal_path):
        if rec.get("t") == HEADER:
            return rec
        break
    raise ValueError(f"{journal_path}: first line is not a gradwatch journal header")


def remove_journal(journal_path: str | os.PathLike) -> None:
    """Delete a journal and everything beside it that belongs to it."""
    for path in journal_files(journal_path):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
