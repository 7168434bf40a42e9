"""Ship a journal to MLflow: tail from the acknowledged offset, batch, send, acknowledge.

    shipper = Shipper(journal_path)          # tracking URI from the journal header
    shipper.start()                          # daemon thread (live run), or
    while shipper.step(): pass               # inline rounds (``sync``)

The journal on disk is the buffer, so memory stays bounded whatever the outage: each
round reads at most ``chunk_bytes`` of complete lines from the acknowledged offset, turns
them into ``log_batch`` requests within MLflow's limits and, after each request succeeds,
records the new offset in ``NAME.state.json`` (written to a temp file and renamed).

Exactly once: a request whose acknowledgement was lost (server killed mid-request, process
killed before the state file was written) is simply sent again. MLflow's SQL store treats a
metric with the same key, step, timestamp and value as the same row (its IntegrityError path
in ``SqlAlchemyStore._log_metrics_once`` skips rows already present), re-logging a param
with the same value is accepted and tags overwrite - so a replay with the journal's original
timestamps duplicates nothing. The state file needs no fsync for the same reason, and even
its ``run_id`` is only a cache: the run carries the tag ``gradwatch.journal_id`` and is
found again by search instead of being created twice.

Failures never reach training: the thread backs off (0.5 s doubling to ``backoff_max``) and
retries; the shipper's own requests fail fast (see _mlflow.py) so a server that comes back
is noticed within seconds. A request MLflow rejects as invalid is split in halves until the
offending entity is isolated; that entity is logged as a warning and counted in ``dropped``
(a param whose value changed is kept as tag ``gradwatch.param_conflict.<key>`` instead).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException

from gradwatch.errors import TrackingError
from gradwatch.tracking import _mlflow
from gradwatch.tracking._mlflow import (
    MAX_ENTITIES,
    MAX_METRICS,
    MAX_PARAM_VALUE,
    MAX_PARAMS_TAGS,
    MAX_REQUEST_BYTES,
    MAX_TAG_VALUE,
    safe_key,
    truncate_value,
)
from gradwatch.tracking.journal import (
    ARTIFACT_FILE,
    ARTIFACT_LINE,
    END,
    HEADER,
    METRICS,
    PARAMS,
    TAGS,
    _encode,
    files_dir,
    read_header,
    scan_lines,
    state_path,
)

__all__ = ["JOURNAL_ID_TAG", "INCOMPLETE_TAG", "ShipperSettings", "ShipState", "Shipper"]

logger = logging.getLogger("gradwatch")

JOURNAL_ID_TAG = "gradwatch.journal_id"
INCOMPLETE_TAG = "gradwatch.incomplete"
PARAM_CONFLICT_TAG = "gradwatch.param_conflict."
DEFAULT_EXPERIMENT_ID = "0"


@dataclass(frozen=True)
class ShipperSettings:
    """Timing of the shipper; the defaults suit training, tests pass shorter ones.

    interval: seconds between shipping rounds when there is no full batch waiting.
    backoff_initial, backoff_max: retry delay after a failure, doubling up to the max; the
        max bounds how long a server that came back goes unnoticed.
    request_timeout: seconds one HTTP request may take (connect and read).
    artifact_interval: artifact-line files are re-uploaded at most this often (and at end).
    chunk_bytes: journal bytes read per round; bounds memory during catch-up.
    process: ship from a forked child process (the default where ``os.fork`` exists) rather
        than a thread, so shipping never holds the training process's GIL (ship_process.py).
    """

    interval: float = 1.0
    backoff_initial: float = 0.5
    backoff_max: float = 5.0
    request_timeout: float = 10.0
    artifact_interval: float = 30.0
    chunk_bytes: int = 1 << 20
    process: bool = True


@dataclass
class ShipState:
    """What ``NAME.state.json`` remembers; everything in it can be rebuilt by a replay."""

    uri: str | None = None
    run_id: str | None = None
    offset: int = 0  # bytes of the journal acknowledged by MLflow
    acked_seq: int = -1  # sequence number of the last acknowledged record
    shipped: int = 0  # records acknowledged (header not counted)
    dropped: int = 0  # entities MLflow rejected even alone (warned about each)
    last_ts: int | None = None  # timestamp of the last acknowledged record
    end_status: str | None = None  # status of the end record, once acknowledged
    end_ts: int | None = None
    finalized: str | None = None  # status the run was ended with (or "ATTACHED")
    incomplete: bool = False  # ended by sync because the journal had no end record
    artifact_sizes: dict[str, int] = field(default_factory=dict)  # artifact-line files
    artifacts_uploaded: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ShipState:
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return cls()
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, path: Path) -> None:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(asdict(self), separators=(",", ":")))
        os.replace(tmp, path)  # atomic: readers see the old or the new state, never half


class _Request:
    """One log_batch call plus the journal records it completes."""

    __slots__ = (
        "metrics",
        "params",
        "tags",
        "nbytes",
        "kind",
        "end_offset",
        "end_seq",
        "records",
        "last_ts",
        "art_lines",
        "files",
        "end",
    )

    def __init__(self, end_offset: int, end_seq: int) -> None:
        self.metrics: list[tuple[str, float, int, int]] = []  # key, value, timestamp, step
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.nbytes = 0
        self.kind: str | None = None  # "params" requests never mix with metrics/tags
        self.end_offset = end_offset
        self.end_seq = end_seq
        self.records = 0
        self.last_ts: int | None = None
        self.art_lines: list[tuple[str, str]] = []
        self.files: list[dict[str, Any]] = []
        self.end: dict[str, Any] | None = None

    @property
    def entities(self) -> int:
        return len(self.metrics) + len(self.params) + len(self.tags)

    def room(self, nbytes: int, param: bool = False) -> bool:
        if self.entities >= MAX_ENTITIES or self.nbytes + nbytes > MAX_REQUEST_BYTES:
            return False
        if param:
            return len(self.params) < MAX_PARAMS_TAGS
        return len(self.tags) < MAX_PARAMS_TAGS


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _lines_path(base: Path, artifact_path: str) -> tuple[Path, str | None]:
    """Local file for an artifact-line path, and the artifact directory to upload it to."""
    norm = posixpath.normpath("/" + artifact_path).lstrip("/") or "lines.jsonl"
    directory = posixpath.dirname(norm) or None
    return base / "lines" / norm, directory


class Shipper:
    """Ships one journal to MLflow; see the module docstring."""

    def __init__(
        self,
        journal_path: str | os.PathLike,
        tracking_uri: str | None = None,
        settings: ShipperSettings | None = None,
        header: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(journal_path).absolute()
        self.header = header if header is not None else read_header(self.path)
        self.journal_id: str = self.header["id"]
        self.tracking_uri: str = tracking_uri or self.header["uri"]
        self.attached = bool(self.header.get("attached"))
        self.settings = settings or ShipperSettings()
        self.state_file = state_path(self.path)
        self.files = files_dir(self.path)
        self.state = ShipState.load(self.state_file)
        if self.state.uri not in (None, self.tracking_uri):
            # Synced to another server: its run id and offsets mean nothing there.
            self.state = ShipState()
        self.state.uri = self.tracking_uri
        self._restore_artifact_lines()
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._store: Any = None
        self._repo: Any = None
        self._last_artifact_upload = float("-inf")
        self.corrupt_lines = 0
        self.backlog = False
        self.failing_since: float | None = None
        self.last_error: BaseException | None = None
        # Live-mode thread coordination.
        self._cv = threading.Condition()
        self._kicked = False
        self._data_ready = False
        self._closing = False
        self._abort = False
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- store access
    @property
    def store(self) -> Any:
        if self._store is None:
            self._store = _mlflow.make_store(self.tracking_uri, self.settings.request_timeout)
        return self._store

    def _save(self) -> None:
        self.state.save(self.state_file)

    @property
    def run_id(self) -> str | None:
        return self.state.run_id or self.header.get("run_id")

    # ----------------------------------------------------------------- one round
    def step(self) -> bool:
        """Create the run if needed and ship one chunk; True if records were shipped.

        ``self.backlog`` tells afterwards whether a full batch was shipped (so more is
        probably waiting); the live loop then goes on at once instead of sleeping.
        Raises whatever MLflow raised for a transient failure; nothing is lost, the next
        call retries from the acknowledged offset.
        """
        self._ensure_run()
        start = self.state.offset
        lines, end = scan_lines(self._fd, start, self.settings.chunk_bytes)
        requests = self._requests(lines)
        self.backlog = len(requests) > 1 or end - start >= self.settings.chunk_bytes // 2
        for request in requests:
            self._send(request)
            self._ack(request)
        if self.state.end_status is not None and self.state.finalized is None:
            self._finalize(self.state.end_status, self.state.end_ts, incomplete=False)
        elif self.state.finalized is None:
            self._upload_artifact_lines(force=False)
        return bool(lines)

    def finalize_incomplete(self) -> None:
        """End a run whose journal has no end record (crashed process): FAILED + tag."""
        if self.state.finalized is not None:
            return
        self._ensure_run()
        self._log_batch([], [], [(INCOMPLETE_TAG, "true")])
        ts = self.state.last_ts or self.header.get("ts")
        self._finalize("FAILED", ts, incomplete=True)

    @property
    def finalized(self) -> bool:
        return self.state.finalized is not None

    # ----------------------------------------------------------------- run creation
    def _ensure_run(self) -> None:
        if self.state.run_id:
            return
        run_id = self.header.get("run_id") or self._find_or_create_run()
        self.state.run_id = run_id
        self._save()

    def _experiment_id(self) -> str:
        name = self.header.get("exp")
        if not name:
            return str(self.header.get("exp_id") or DEFAULT_EXPERIMENT_ID)
        exp = self.store.get_experiment_by_name(name)
        if exp is None:
            try:
                return str(self.store.create_experiment(name, None, []))
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = self.store.get_experiment_by_name(name)  # another process won the race
        if exp is None:
            raise TrackingError(f"experiment {name!r} could not be found or created")
        return str(exp.experiment_id)

    def _find_or_create_run(self) -> str:
        experiment_id = self._experiment_id()
        # Idempotent create: a run created by an earlier attempt whose response was lost
        # (or by a crashed process whose state file is gone) carries our journal id.
        found = self.store.search_runs(
            experiment_ids=[experiment_id],
            filter_string=f"tags.`{JOURNAL_ID_TAG}` = '{self.journal_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1,
        )
        if found:
            return found[0].info.run_id
        tags = {safe_key(k): truncate_value(str(v), MAX_TAG_VALUE) for k, v in self._run_tags()}
        tags[JOURNAL_ID_TAG] = self.journal_id
        run = self.store.create_run(
            experiment_id=experiment_id,
            user_id=self.header.get("user") or "unknown",
            start_time=self.header.get("ts"),
            tags=[RunTag(k, v) for k, v in tags.items()],
            run_name=self.header.get("name"),
        )
        logger.info("gradwatch: created MLflow run %s for journal %s", run.info.run_id, self.path)
        return run.info.run_id

    def _run_tags(self) -> list[tuple[str, Any]]:
        return list((self.header.get("tags") or {}).items())

    # ----------------------------------------------------------------- batching
    def _requests(self, lines: list[tuple[int, dict[str, Any] | None]]) -> list[_Request]:
        requests: list[_Request] = []
        cur = _Request(self.state.offset, self.state.acked_seq)

        def push() -> _Request:
            requests.append(cur)
            return _Request(cur.end_offset, cur.end_seq)

        for end_offset, rec in lines:
            kind = rec.get("t") if rec is not None else None
            if rec is None or kind is None:
                self.corrupt_lines += 1
                logger.warning("gradwatch: skipping a corrupt line ending at byte %d of %s",
                               end_offset, self.path)  # fmt: skip
            elif kind == METRICS:
                ts, step = int(rec["ts"]), int(rec["st"])
                for key, raw in rec["m"].items():
                    value = _as_float(raw)
                    if value is None:
                        self._drop("metric", key, f"value {raw!r} is not a number")
                        continue
                    mkey = safe_key(key)
                    nbytes = len(mkey) + 60
                    if (
                        cur.kind == "params"
                        or len(cur.metrics) >= MAX_METRICS
                        or cur.nbytes + nbytes > MAX_REQUEST_BYTES
                        or cur.entities >= MAX_ENTITIES
                    ):
                        cur = push()
                    cur.kind = "data"
                    cur.metrics.append((mkey, value, ts, step))
                    cur.nbytes += nbytes
            elif kind == TAGS:
                for key, raw in rec["g"].items():
                    tkey, tval = safe_key(key), truncate_value(str(raw), MAX_TAG_VALUE)
                    nbytes = len(tkey) + len(tval) + 20
                    if cur.kind == "params" or (tkey not in cur.tags and not cur.room(nbytes)):
                        cur = push()
                    cur.kind = "data"
                    cur.tags[tkey] = tval  # the later value of a key wins, as in MLflow
                    cur.nbytes += nbytes
            elif kind == PARAMS:
                for key, raw in rec["p"].items():
                    pkey, pval = safe_key(key), truncate_value(str(raw), MAX_PARAM_VALUE)
                    nbytes = len(pkey) + len(pval) + 20
                    if (
                        cur.kind == "data"
                        or pkey in cur.params  # a repeated key goes to its own request
                        or not cur.room(nbytes, param=True)
                    ):
                        cur = push()
                    cur.kind = "params"
                    cur.params[pkey] = pval
                    cur.nbytes += nbytes
            elif kind == ARTIFACT_LINE:
                cur.art_lines.append((str(rec["path"]), _encode(rec.get("r"))))
            elif kind == ARTIFACT_FILE:
                cur.files.append(rec)
            elif kind == END:
                cur.end = rec
            if rec is not None and kind not in (None, HEADER):
                cur.records += 1
                cur.last_ts = rec.get("ts", cur.last_ts)
            cur.end_offset = end_offset
            if rec is not None and isinstance(rec.get("s"), int):
                cur.end_seq = rec["s"]
        if cur.end_offset != (requests[-1].end_offset if requests else self.state.offset):
            requests.append(cur)
        return requests

    # ----------------------------------------------------------------- sending
    def _send(self, request: _Request) -> None:
        if request.entities:
            self._log_batch(request.metrics, list(request.params.items()), list(request.tags.items()))  # fmt: skip
        for rec in request.files:
            local = self.files / rec["src"]
            if not local.exists():
                self._drop("artifact", str(rec["src"]), f"copied file {local} is missing")
                continue
            _mlflow.upload_artifact(self._artifact_repo(), local, rec.get("path") or None,
                                    self.settings.request_timeout)  # fmt: skip

    def _log_batch(
        self,
        metrics: list[tuple[str, float, int, int]],
        params: list[tuple[str, str]],
        tags: list[tuple[str, str]],
    ) -> None:
        try:
            _mlflow.log_batch(self.store, self.state.run_id, metrics, params, tags)
            return
        except Exception as err:
            if not _mlflow.is_permanent(err):
                raise
            rejection = err
        self._check_run_usable(rejection)
        entities = [("metric", m) for m in metrics]
        entities += [("param", p) for p in params] + [("tag", t) for t in tags]
        if len(entities) == 1:
            self._reject_one(*entities[0], rejection)
            return
        # Bisect: isolate what MLflow rejects instead of losing the whole request.
        half = len(entities) // 2
        for part in (entities[:half], entities[half:]):
            self._log_batch(
                [e for kind, e in part if kind == "metric"],
                [e for kind, e in part if kind == "param"],
                [e for kind, e in part if kind == "tag"],
            )

    def _check_run_usable(self, err: BaseException) -> None:
        """Raise (so the round is retried later) when the run itself is unusable."""
        try:
            run = self.store.get_run(self.state.run_id)
        except MlflowException as get_err:
            raise TrackingError(
                f"MLflow run {self.state.run_id} is not accessible ({get_err}); "
                f"journal {self.path} keeps the data"
            ) from err
        if run.info.lifecycle_stage != "active":
            raise TrackingError(
                f"MLflow run {self.state.run_id} is deleted; restore it to receive the data "
                f"kept in {self.path}"
            ) from err

    def _reject_one(self, kind: str, entity: tuple, err: BaseException) -> None:
        if kind == "param":
            # MLflow refuses to change a logged param: keep the new value as a tag instead.
            key = safe_key(PARAM_CONFLICT_TAG + entity[0])
            logger.warning("gradwatch: param %r already has another value in run %s; "
                           "new value kept as tag %r", entity[0], self.state.run_id, key)  # fmt: skip
            try:
                _mlflow.log_batch(self.store, self.state.run_id, [], [], [(key, entity[1])])
                return
            except Exception as tag_err:
                if not _mlflow.is_permanent(tag_err):
                    raise
                err = tag_err
        self._drop(kind, entity[0], str(err).splitlines()[0][:300])

    def _drop(self, kind: str, key: str, why: str) -> None:
        self.state.dropped += 1
        logger.warning("gradwatch: MLflow cannot store %s %r (%s); dropped it", kind, key, why)

    # ----------------------------------------------------------------- acknowledging
    def _ack(self, request: _Request) -> None:
        for artifact_path, line in request.art_lines:
            self._append_artifact_line(artifact_path, line)
        st = self.state
        st.offset, st.acked_seq = request.end_offset, request.end_seq
        st.shipped += request.records
        if request.last_ts is not None:
            st.last_ts = request.last_ts
        if request.end is not None:
            st.end_status = str(request.end.get("status") or "FINISHED")
            st.end_ts = request.end.get("ts")
        self._save()
        with self._cv:
            self._cv.notify_all()

    def _finalize(self, status: str, end_ts: int | None, incomplete: bool) -> None:
        self._upload_artifact_lines(force=True)
        if self.attached:
            status = "ATTACHED"  # the user's run: they end it, we never do
        else:
            self.store.update_run_info(
                self.state.run_id, RunStatus.from_string(status), end_ts, None
            )
        self.state.finalized = status
        self.state.incomplete = incomplete
        self._save()
        with self._cv:
            self._cv.notify_all()

    # ----------------------------------------------------------------- artifacts
    def _artifact_repo(self) -> Any:
        if self._repo is None:
            run = self.store.get_run(self.state.run_id)
            self._repo = _mlflow.artifact_repo(run.info.artifact_uri, self.tracking_uri)
        return self._repo

    def _restore_artifact_lines(self) -> None:
        # Lines appended after the last saved state belong to records not yet acknowledged
        # and will be appended again: cut the files back to the acknowledged size.
        base = self.files
        for artifact_path, size in self.state.artifact_sizes.items():
            local, _ = _lines_path(base, artifact_path)
            if local.exists() and local.stat().st_size > size:
                with open(local, "r+b") as f:
                    f.truncate(size)
        lines_dir = base / "lines"
        if lines_dir.exists():
            known = {_lines_path(base, p)[0] for p in self.state.artifact_sizes}
            for local in lines_dir.rglob("*"):
                if local.is_file() and local not in known:
                    local.unlink()

    def _append_artifact_line(self, artifact_path: str, line: str) -> None:
        local, _ = _lines_path(self.files, artifact_path)
        local.parent.mkdir(parents=True, exist_ok=True)
        with open(local, "ab") as f:
            f.write(line.encode() + b"\n")
            self.state.artifact_sizes[artifact_path] = f.tell()

    def _upload_artifact_lines(self, force: bool) -> None:
        st = self.state
        dirty = [p for p, n in st.artifact_sizes.items() if st.artifacts_uploaded.get(p) != n]
        if not dirty:
            return
        now = time.monotonic()
        if not force and now - self._last_artifact_upload < self.settings.artifact_interval:
            return
        for artifact_path in dirty:
            local, directory = _lines_path(self.files, artifact_path)
            # The whole file each time: simple, idempotent, and these files stay small.
            _mlflow.upload_artifact(self._artifact_repo(), local, directory,
                                    self.settings.request_timeout)  # fmt: skip
            st.artifacts_uploaded[artifact_path] = st.artifact_sizes[artifact_path]
        self._last_artifact_upload = now
        self._save()

    # ----------------------------------------------------------------- live thread
    def start(self) -> None:
        """Ship in a daemon thread until ``stop``; failures are retried, never raised."""
        self._thread = threading.Thread(
            target=self._loop, name=f"gradwatch-shipper-{self.journal_id[:8]}", daemon=True
        )
        self._thread.start()

    def notify_data(self) -> None:
        """A full batch is waiting: ship now instead of at the next interval."""
        with self._cv:
            self._data_ready = True
            self._cv.notify_all()

    def kick(self) -> None:
        """Try now, even during a backoff (flush/close)."""
        with self._cv:
            self._kicked = True
            self._cv.notify_all()

    def request_close(self) -> None:
        """Ship everything including the end record, then let the thread exit."""
        with self._cv:
            self._closing = True
            self._kicked = True
            self._cv.notify_all()

    def abort(self) -> None:
        """Stop after the current request (close's deadline passed)."""
        with self._cv:
            self._abort = True
            self._cv.notify_all()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(max(0.0, timeout))

    def wait(self, predicate: Any, timeout: float) -> bool:
        """Wait until ``predicate()`` holds (checked on every ack), at most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._thread is not None and not self._thread.is_alive()):
                    return bool(predicate())
                self._cv.wait(min(remaining, 0.5))
        return True

    def _sleep(self, seconds: float, wake_on_data: bool) -> None:
        deadline = time.monotonic() + seconds
        with self._cv:
            while not (self._kicked or self._abort or (wake_on_data and self._data_ready)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cv.wait(remaining)
            self._kicked = False
            self._data_ready = False

    def _loop(self) -> None:
        delay = 0.0
        try:
            while not self._abort:
                try:
                    progressed = self.step()
                except Exception as err:  # never into training: back off and retry
                    self._note_failure(err)
                    delay = min(max(delay * 2, self.settings.backoff_initial),
                                self.settings.backoff_max)  # fmt: skip
                    self._sleep(delay, wake_on_data=False)
                    continue
                if self.failing_since is not None:
                    logger.warning("gradwatch: MLflow at %s reachable again after %.1f s; "
                                   "shipping the backlog", self.tracking_uri,
                                   time.monotonic() - self.failing_since)  # fmt: skip
                    self.failing_since = None
                delay = 0.0
                if progressed and self.backlog:
                    continue  # catching up: full batches are waiting
                if self._closing and self.finalized:
                    break
                self._sleep(self.settings.interval, wake_on_data=True)
        finally:
            os.close(self._fd)
            with self._cv:
                self._cv.notify_all()

    def _note_failure(self, err: BaseException) -> None:
        self.last_error = err
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            logger.warning("gradwatch: cannot ship to MLflow at %s (%s); data kept in %s, "
                           "retrying", self.tracking_uri, _short(err), self.path)  # fmt: skip
        else:
            logger.debug("gradwatch: shipping still failing: %s", _short(err))

    def close_fd(self) -> None:
        """Release the journal descriptor (inline use; the thread closes its own)."""
        if self._thread is None:
            os.close(self._fd)


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"
