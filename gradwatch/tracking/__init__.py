"""Tracking pipeline: training -> append-only journal -> background shipper -> MLflow.

    from gradwatch.tracking import open_run, sync_journal
    run = open_run(experiment="mlp", run_name="baseline")
    run.log_metrics(step, {"loss": loss})            # one journal line, a few microseconds
    result = run.close("FINISHED", timeout=10.0)      # CloseResult; result.pending == 0 if landed
    sync_journal(result.journal_path)                 # later, if the server was down

Nothing here blocks or crashes training when MLflow is slow or down: the journal on disk
is the buffer, the shipper retries, and ``gradwatch sync`` lands what a crash left.
"""

from __future__ import annotations

from gradwatch.tracking.journal import DEFAULT_JOURNAL_DIR, read_header, read_records
from gradwatch.tracking.shipper import INCOMPLETE_TAG, JOURNAL_ID_TAG, ShipperSettings
from gradwatch.tracking.sync import (
    JournalStatus,
    SyncResult,
    journal_status,
    pending_journals,
    sync_journal,
)
from gradwatch.tracking.tracker import (
    DEFAULT_TRACKING_URI,
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
    "JOURNAL_ID_TAG",
    "RUN_STATUSES",
    "CloseResult",
    "JournalStatus",
    "RunTracker",
    "ShipperSettings",
    "SyncResult",
    "journal_status",
    "open_run",
    "pending_journals",
    "read_header",
    "read_records",
    "resolve_tracking_uri",
    "sync_journal",
]
