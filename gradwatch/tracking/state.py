"""The shipper's settings and the state it keeps beside each journal (``NAME.state.json``).

    state = ShipState.load(state_path(journal)); state.offset; state.save(path)

Everything in the state file can be rebuilt by a replay (see shipper.py); it is written to a
temp file (mode 0600) and renamed, so readers see the old state or the new, never half.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["ShipState", "ShipperSettings"]


@dataclass(frozen=True)
class ShipperSettings:
    """Timing of the shipper; the defaults suit training, tests pass shorter ones.

    interval: seconds between shipping rounds when there is no full batch waiting.
    backoff_initial, backoff_max: retry delay after a failure, doubling up to the max; the
        max bounds how long a server that came back goes unnoticed.
    request_timeout: seconds one HTTP request may take (connect and read).
    artifact_interval: artifact-line files are re-uploaded at most this often (and at end).
    chunk_bytes: journal bytes read per round; bounds memory during catch-up.
    process: ship from a separate low-priority process (ship_process.py) rather than a
        thread, so shipping never holds the training process's GIL.
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

    uri: str | None = None  # the tracking URI shipped to, credentials masked
    run_id: str | None = None
    experiment_id: str | None = None  # of a run the shipper created (for the UI link)
    offset: int = 0  # bytes of the journal acknowledged by MLflow
    acked_seq: int = -1  # sequence number of the last acknowledged record
    shipped: int = 0  # records acknowledged (header not counted)
    dropped: int = 0  # entities MLflow rejected even alone (warned about each)
    last_ts: int | None = None  # timestamp of the last acknowledged record
    end_status: str | None = None  # status of the end record, once acknowledged
    end_ts: int | None = None
    finalized: str | None = None  # status the run was ended with (or "ATTACHED")
    incomplete: bool = False  # ended by sync because the journal had no end record
    fatal: str | None = None  # why MLflow cannot take this run at all (deleted, denied)
    phase: str | None = None  # what the shipper is busy with ("opening the store", ...)
    failing: str | None = None  # the error it keeps meeting while retrying (None: none)
    cpu_seconds: float = 0.0  # the shipper's own CPU spent shipping (its thread's)
    metrics: int = 0  # metric values shipped (cpu_seconds / metrics: the cost of one)
    refused_artifacts: list[str] = field(default_factory=list)  # dropped for good (first 20)
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
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(asdict(self), separators=(",", ":")))
            os.replace(tmp, path)  # atomic: readers see the old or the new state, never half
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk leaves no empty temp file behind
            raise
