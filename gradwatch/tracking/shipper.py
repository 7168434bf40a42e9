"""Ship a journal to MLflow: tail from the acknowledged offset, batch, send, acknowledge.

    shipper = Shipper(journal_path)          # tracking URI from the environment or the header
    while shipper.step(): pass               # inline rounds (``sync``); ShipLoop runs it live

The journal on disk is the buffer, so memory stays bounded whatever the outage: each round
reads at most ``chunk_bytes`` of complete lines from the acknowledged offset, turns them into
``log_batch`` requests within MLflow's limits (batching.py) and, after each request succeeds,
records the new offset in ``NAME.state.json``.

Exactly once: a request whose acknowledgement was lost is simply sent again. MLflow treats a
metric with the same key, step, timestamp and value as the same row, re-logging a param with
the same value is accepted and tags overwrite - so a replay with the journal's original
timestamps duplicates nothing. Even the state file's ``run_id`` is only a cache: the run
carries the tag ``gradwatch.journal_id`` and is found again by search.

A request MLflow rejects is bisected until the offending entity is alone; that entity is
warned about and counted in ``dropped`` (a param whose value changed is kept as tag
``gradwatch.param_conflict.<key>`` instead). An error that makes the run unusable (deleted
experiment or run, permission denied) is recorded as ``state.fatal`` and ends shipping.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradwatch import schema
from gradwatch.secrets import mask_uri
from gradwatch.tracking.batching import (
    MAX_TAG_VALUE,
    Batch,
    BatchPlan,
    plan_batches,
    safe_key,
    send_bisecting,
    truncate_value,
)
from gradwatch.tracking.journal import (
    files_dir,
    private_file,
    read_header,
    reserve_path,
    scan_lines,
    state_path,
)
from gradwatch.tracking.state import ShipperSettings, ShipState
from gradwatch.tracking.store import StoreError, open_store

__all__ = ["INCOMPLETE_TAG", "JOURNAL_ID_TAG", "SHIP_URI_ENV", "Shipper", "run_url"]

logger = logging.getLogger("gradwatch")

JOURNAL_ID_TAG = schema.TAG_JOURNAL_ID
INCOMPLETE_TAG = schema.TAG_INCOMPLETE
PARAM_CONFLICT_TAG = "gradwatch.param_conflict."
#: The real (unmasked) tracking URI reaches a shipper process only through this variable;
#: the journal header and state file hold it with credentials masked.
SHIP_URI_ENV = "GRADWATCH_SHIP_TRACKING_URI"


def _is_rejection(err: BaseException) -> bool:
    return isinstance(err, StoreError) and err.kind == "rejected"


def run_url(tracking_uri: str, experiment_id: str | None, run_id: str | None) -> str | None:
    """The run's page in the MLflow UI for an http(s) server (credentials masked), else None."""
    if not (run_id and experiment_id and tracking_uri.startswith(("http://", "https://"))):
        return None
    return f"{mask_uri(tracking_uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def lines_path(base: Path, artifact_path: str) -> tuple[Path, str | None]:
    """Local file for an artifact-line path, and the artifact directory to upload it to."""
    norm = posixpath.normpath("/" + artifact_path).lstrip("/") or "lines.jsonl"
    return base / "lines" / norm, posixpath.dirname(norm) or None


def _tail_can_wait(plan: BatchPlan) -> bool:
    """True if the plan's last request is only partly filled and may wait for more records.

    Never when the chunk held a corrupt or refused line: those are reported once, in the
    round that acknowledges them (the whole chunk is sent then).
    """
    if not plan.batches or plan.corrupt or plan.rejected:
        return False
    tail = plan.batches[-1]
    return tail.end is None and not tail.full_for(0, "metric")


class Shipper:
    """Ships one journal to MLflow; see the module docstring."""

    def __init__(
        self,
        journal_path: str | os.PathLike,
        tracking_uri: str | None = None,
        settings: ShipperSettings | None = None,
        header: dict[str, Any] | None = None,
        announce: Callable[[str], object] | None = None,
    ) -> None:
        """``announce``: gets the "View run ... at: URL" line once the run is created."""
        self.announce = announce
        self.path = Path(journal_path).absolute()
        self.header = header if header is not None else read_header(self.path)
        self.journal_id: str = self.header["id"]
        self.tracking_uri: str = tracking_uri or os.environ.get(SHIP_URI_ENV) or self.header["uri"]
        self.shown_uri = mask_uri(self.tracking_uri)
        self.attached = bool(self.header.get("attached"))
        #: Before every metric key (the hook's series in a run shared with the user's).
        self.metric_prefix: str = str(self.header.get("metric_prefix") or "")
        self.settings = settings or ShipperSettings()
        self.state_file, self.files = state_path(self.path), files_dir(self.path)
        self._reserve = reserve_path(self.path)  # set aside by open_run (journal.py)
        self.state = ShipState.load(self.state_file)
        if self.state.uri not in (None, self.shown_uri):
            self.state = ShipState()  # synced to another server: its ids mean nothing there
        self.state.uri = self.shown_uri
        self._restore_artifact_lines()
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._store: Any = None
        self._last_artifact_upload = float("-inf")
        self.corrupt_lines = 0
        self._refused: dict[str, str] = {}  # artifact-line files MLflow refused: why
        self.backlog = False

    @property
    def store(self) -> Any:
        if self._store is None:
            self._store = open_store(self.tracking_uri, self.settings.request_timeout)
        return self._store

    def set_request_timeout(self, seconds: float) -> None:
        """Bound every following request (``sync --timeout`` shortens them near its deadline)."""
        self.store.request_timeout = max(0.05, seconds)

    @property
    def run_id(self) -> str | None:
        return self.state.run_id or self.header.get("run_id")

    @property
    def finalized(self) -> bool:
        return self.state.finalized is not None

    def _save(self) -> None:
        try:
            self.state.save(self.state_file)
        except OSError as err:
            if err.errno != errno.ENOSPC or not self._reserve.exists():
                raise
            # The disk is full: give back the space set aside for this moment, so the
            # state (and with it the run's end) can still be written.
            self._reserve.unlink()
            self.state.save(self.state_file)
            logger.warning(
                "gradwatch: disk full at %s; shipping on with the space kept "
                "for the shipper's state",
                self.path.parent,
            )

    # ----------------------------------------------------------------- rounds
    def step(self, full_only: bool = False) -> bool:
        """Create the run if needed and ship one chunk; True if records were shipped.

        ``full_only``: send only full requests and leave a partly filled last one (no end
        record in it) for a later round - a request costs MLflow a fixed amount besides its
        entities. ``self.backlog`` tells afterwards whether more is probably waiting. Raises
        StoreError on failure (nothing is lost; the next call retries from the acknowledged
        offset); a fatal one is also recorded in ``state.fatal``.
        """
        try:
            return self._step(full_only)
        except StoreError as err:
            if err.fatal:
                self.state.fatal = str(err)
                self._save()
            raise

    def _step(self, full_only: bool) -> bool:
        self._ensure_run()
        # This thread's CPU from reading the journal to the last acknowledgement: what
        # shipping costs per metric (``state.cpu_seconds / state.metrics``), for budgets.
        cpu = time.thread_time()
        start = self.state.offset
        lines, end = scan_lines(self._fd, start, self.settings.chunk_bytes)
        plan = plan_batches(lines, start, self.state.acked_seq, self.metric_prefix)
        batches = plan.batches
        held = full_only and _tail_can_wait(plan)
        if held:
            batches = batches[:-1]
        for end_offset in plan.corrupt:
            self.corrupt_lines += 1
            logger.warning(
                "gradwatch: skipping a corrupt line ending at byte %d of %s", end_offset, self.path
            )
        for kind, key, why in plan.rejected:
            self._drop(kind, key, why)
        chunk_full = end - start >= self.settings.chunk_bytes // 2
        self.backlog = bool(batches) and (len(batches) > 1 or chunk_full)
        for batch in batches:
            self._send(batch)
            self.state.metrics += len(batch.metrics)
            now = time.thread_time()
            self.state.cpu_seconds += now - cpu
            cpu = now
            self._ack(batch)
        self.state.cpu_seconds += time.thread_time() - cpu  # the last ack: saved with the next
        if self.state.end_status is not None and not self.finalized:
            self._set_phase("ending the run")
            self._finalize(self.state.end_status, self.state.end_ts, incomplete=False)
        elif not self.finalized:
            self._upload_artifact_lines(force=False)
        return bool(batches) if held else bool(lines)

    def caught_up(self) -> bool:
        """True if no complete journal line waits after the acknowledged offset."""
        lines, _ = scan_lines(self._fd, self.state.offset, 1 << 16)
        return not lines

    def finalize_incomplete(self) -> None:
        """End a run whose journal has no end record (crashed process): FAILED + tag."""
        if self.finalized:
            return
        self._ensure_run()
        self._log_batch([], [], [(INCOMPLETE_TAG, "true")])
        self._finalize("FAILED", self.state.last_ts or self.header.get("ts"), incomplete=True)

    # ----------------------------------------------------------------- the run
    def _ensure_run(self) -> None:
        if self.state.run_id:
            return
        if self._store is None:
            self._set_phase("opening the store")  # importing MLflow, creating/migrating it
            self.store  # noqa: B018 - opened now, so the phase says what takes the time
        self._set_phase("creating the run")
        self.state.run_id = self.header.get("run_id") or self._find_or_create_run()
        self.state.phase = "shipping"
        self._save()

    def _set_phase(self, phase: str) -> None:
        """Say in the state file what the shipper is busy with (``close()`` shows it)."""
        if self.state.phase != phase:
            self.state.phase = phase
            self._save()

    def note_failing(self, why: str | None) -> None:
        """Record (or clear, with None) the error the shipper keeps meeting, for close()."""
        why = mask_uri(why) if why else None
        if self.state.failing != why:
            self.state.failing = why
            try:
                self._save()
            except OSError:
                pass  # a full disk: the failure itself says so

    def _find_or_create_run(self) -> str:
        exp_id = self.store.experiment_id(self.header.get("exp"), self.header.get("exp_id"))
        self.state.experiment_id = exp_id
        # Idempotent create: a run made by an earlier attempt whose response was lost (or by
        # a crashed process whose state file is gone) carries our journal id.
        found = self.store.find_run(exp_id, JOURNAL_ID_TAG, self.journal_id)
        if found:
            return found
        tags = {
            safe_key(k): truncate_value(str(v), MAX_TAG_VALUE)
            for k, v in (self.header.get("tags") or {}).items()
        }
        tags[JOURNAL_ID_TAG] = self.journal_id
        user = self.header.get("user") or "unknown"
        run_id = self.store.create_run(
            exp_id, user, self.header.get("ts"), tags, self.header.get("name")
        )
        logger.info("gradwatch: created MLflow run %s for journal %s", run_id, self.path)
        url = run_url(self.tracking_uri, exp_id, run_id)
        if url and self.announce is not None:  # as MLflow's own client shows a new run
            self.announce(f"\U0001f3c3 View run {self.header.get('name') or run_id} at: {url}")
        return run_id

    # ----------------------------------------------------------------- sending
    def _send(self, batch: Batch) -> None:
        if batch.entities:
            self._log_batch(batch.metrics, batch.param_list(), batch.tag_list())
        base = self.files.resolve()
        for rec in batch.files:
            local = (self.files / str(rec.get("src", ""))).resolve()
            if not local.is_relative_to(base):  # a crafted record must not upload ~/.ssh/...
                self._drop(
                    "artifact", str(rec.get("src")), "source is outside the journal's own folder"
                )
            elif not local.is_file():
                self._drop("artifact", str(rec.get("src")), f"copied file {local} is missing")
            else:
                try:
                    self.store.upload(self.state.run_id, local, rec.get("path") or None)
                except StoreError as err:
                    if not _is_rejection(err):
                        raise  # an outage or a dropped connection: the round is retried
                    # Too large for the server or a proxy: sending it again cannot help.
                    self._drop(
                        "artifact",
                        f"{rec.get('path') or ''}/{local.name}".lstrip("/"),
                        str(err)[:300],
                    )

    def _log_batch(self, metrics: list, params: list, tags: list) -> None:
        try:
            self.store.log_batch(self.state.run_id, metrics, params, tags)
            return
        except StoreError as err:
            if not _is_rejection(err):
                raise
        if self.store.run_lifecycle(self.state.run_id) != "active":
            raise StoreError(
                f"MLflow run {self.state.run_id} is deleted on {self.shown_uri}; "
                f"restore it to receive the data kept in {self.path}",
                "fatal",
                "RUN_DELETED",
            )
        send = lambda m, p, t: self.store.log_batch(self.state.run_id, m, p, t)  # noqa: E731
        for kind, entity, err in send_bisecting(send, metrics, params, tags, _is_rejection):
            self._reject_one(kind, entity, err)

    def _reject_one(self, kind: str, entity: tuple, err: BaseException) -> None:
        if kind == "param":
            # MLflow refuses to change a logged param: keep the new value as a tag instead.
            key = safe_key(PARAM_CONFLICT_TAG + entity[0])
            logger.warning(
                "gradwatch: param %r already has another value in run %s; new value kept as tag %r",
                entity[0],
                self.state.run_id,
                key,
            )
            try:
                self.store.log_batch(self.state.run_id, [], [], [(key, entity[1])])
                return
            except StoreError as tag_err:
                if not _is_rejection(tag_err):
                    raise
                err = tag_err
        self._drop(kind, entity[0], str(err).splitlines()[0][:300])

    def _drop(self, kind: str, key: str, why: str) -> None:
        self.state.dropped += 1
        if kind == "artifact" and len(self.state.refused_artifacts) < 20:
            self.state.refused_artifacts.append(key)  # close() names the report's fate
        logger.warning("gradwatch: MLflow cannot store %s %r (%s); dropped it", kind, key, why)

    # ----------------------------------------------------------------- acknowledging
    def _ack(self, batch: Batch) -> None:
        for artifact_path, line in batch.art_lines:
            self._append_artifact_line(artifact_path, line)
        st = self.state
        st.offset, st.acked_seq = batch.end_offset, batch.end_seq
        st.shipped += batch.records
        if batch.last_ts is not None:
            st.last_ts = batch.last_ts
        if batch.end is not None:
            st.end_status = str(batch.end.get("status") or "FINISHED")
            st.end_ts = batch.end.get("ts")
        self._save()

    def _finalize(self, status: str, end_ts: int | None, incomplete: bool) -> None:
        self._upload_artifact_lines(force=True)
        if self.attached:
            status = "ATTACHED"  # the user's run: they end it, we never do
        else:
            self.store.end_run(self.state.run_id, status, end_ts)
        self.state.finalized, self.state.incomplete = status, incomplete
        self.state.phase = "ended"
        self._save()

    # ----------------------------------------------------------------- artifact lines
    def _restore_artifact_lines(self) -> None:
        # Lines appended after the last saved state belong to records not yet acknowledged
        # and will be appended again: cut the files back to the acknowledged size.
        for artifact_path, size in self.state.artifact_sizes.items():
            local, _ = lines_path(self.files, artifact_path)
            if local.exists() and local.stat().st_size > size:
                with open(local, "r+b") as f:
                    f.truncate(size)
        lines_dir = self.files / "lines"
        if lines_dir.exists():
            known = {lines_path(self.files, p)[0] for p in self.state.artifact_sizes}
            for local in lines_dir.rglob("*"):
                if local.is_file() and local not in known:
                    local.unlink()

    def _append_artifact_line(self, artifact_path: str, line: str) -> None:
        local, _ = lines_path(self.files, artifact_path)
        try:
            with private_file(local, append=True) as f:
                f.write(line.encode() + b"\n")
                self.state.artifact_sizes[artifact_path] = f.tell()
        except OSError as err:  # a full disk: the line is lost, the run still lands
            if local.exists():
                with open(local, "r+b") as f:  # no half line left behind
                    f.truncate(self.state.artifact_sizes.get(artifact_path, 0))
            self._drop("artifact line", artifact_path, f"cannot keep it beside the journal: {err}")

    def _upload_artifact_lines(self, force: bool) -> None:
        st = self.state
        dirty = [p for p, n in st.artifact_sizes.items() if st.artifacts_uploaded.get(p) != n]
        now = time.monotonic()
        if not dirty or (
            not force and now - self._last_artifact_upload < self.settings.artifact_interval
        ):
            return
        for artifact_path in dirty:
            local, directory = lines_path(self.files, artifact_path)
            # The whole file each time: simple and idempotent.
            try:
                self.store.upload(st.run_id, local, directory)
            except StoreError as err:
                if not _is_rejection(err):
                    raise
                self._refused_artifact(artifact_path, err)
            else:
                self._refused.pop(artifact_path, None)
            st.artifacts_uploaded[artifact_path] = st.artifact_sizes[artifact_path]
        if force:
            # The run ends with these versions: one refused for good is a drop, counted and
            # named by close() and sync, never a finalize retried without end.
            for artifact_path, why in self._refused.items():
                self._drop("artifact", artifact_path, why)
            self._refused.clear()
        self._last_artifact_upload = now
        self._save()

    def _refused_artifact(self, artifact_path: str, err: StoreError) -> None:
        # Too large for the server (or a proxy's body limit), say: sending the same file
        # again cannot help. It stays beside the journal; a longer version is tried when the
        # file grows, and at the end of the run.
        if artifact_path not in self._refused:
            logger.warning(
                "gradwatch: MLflow refuses artifact %s (%s); it is kept in %s and "
                "tried again when it changes",
                artifact_path,
                err,
                self.files,
            )
        self._refused[artifact_path] = str(err)

    def close(self) -> None:
        """Release the journal descriptor and the store's connection."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._store is not None:
            self._store.close()
