"""Tracking pipeline: training -> append-only journal -> shipper process -> MLflow.

    from gradwatch.tracking import open_run, sync_journal
    run = open_run(experiment="mlp", run_name="baseline")
    run.log_metrics(step, {"loss": loss})            # one journal line, a few microseconds
    result = run.close("FINISHED", timeout=10.0)      # CloseResult; result.pending == 0 if landed
    sync_journal(result.journal_path)                 # later, if the server was down

Nothing here blocks or crashes training when MLflow is slow or down: the journal on disk
is the buffer, the shipper retries, and ``gradwatch sync`` lands what a crash left. The
training process never imports MLflow for this (only if the script already did).

Layout: journal.py (the file), batching.py (records -> requests, pure), store.py + rest.py +
client_store.py (the MLflow side), shipper.py (one journal's shipping), loop.py (its thread
and the handle the tracker uses), ship_process.py (the shipper process), tracker.py (the
facade), sync.py (after the fact), locks.py and backoff.py (shared helpers).
"""

from __future__ import annotations

from gradwatch.tracking.journal import DEFAULT_JOURNAL_DIR, read_header, read_records
from gradwatch.tracking.shipper import INCOMPLETE_TAG, JOURNAL_ID_TAG
from gradwatch.tracking.state import ShipperSettings
from gradwatch.tracking.sync import (
    JournalStatus,
    PruneSummary,
    SyncResult,
    SyncSummary,
    journal_status,
    pending_journals,
    prune_journals,
    sync_all,
    sync_journal,
)
from gradwatch.tracking.tracker import (
    DEFAULT_TRACKING_URI,
    JOURNAL_DROPPED_TAG,
    RUN_STATUSES,
    CloseResult,
    RunTracker,
    open_run,
    resolve_tracking_uri,
)

__all__ = [
    "DEFAULT_JOURNAL_DIR",
    "DEFAULT_TRACKING_URI",
    "INCOMPLETE_TAG",
    "JOURNAL_DROPPED_TAG",
    "JOURNAL_ID_TAG",
    "RUN_STATUSES",
    "CloseResult",
    "JournalStatus",
    "PruneSummary",
    "RunTracker",
    "ShipperSettings",
    "SyncResult",
    "SyncSummary",
    "journal_status",
    "open_run",
    "pending_journals",
    "prune_journals",
    "read_header",
    "read_records",
    "resolve_tracking_uri",
    "sync_all",
    "sync_journal",
]
