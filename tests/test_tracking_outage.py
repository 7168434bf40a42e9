"""Outages: server down at start, server SIGKILLed and restarted mid-run, training SIGKILLed.

Each test that kills or restarts a server owns a dedicated ``MlflowServer``; the kill -9 of a
training process uses the shared one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import mlflow
import pytest

from gradwatch.tracking import (
    INCOMPLETE_TAG,
    open_run,
    pending_journals,
    read_records,
    sync_journal,
)
from tests.mlflow_server import MlflowServer
from tests.test_tracking import FAST

REPO = Path(__file__).resolve().parent.parent


def loss_at(step: int) -> float:
    return 1.0 / (1.0 + step) + (step % 7) * 1e-3


def assert_each_step_once(client, run_id: str, steps: range) -> None:
    got = client.get_metric_history(run_id, "loss")
    assert len(got) == len(steps), f"{len(got)} points for {len(steps)} steps"
    by_step = {m.step: m.value for m in got}
    assert sorted(by_step) == list(steps)
    assert all(by_step[s] == loss_at(s) for s in steps)


@pytest.fixture
def dedicated_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("dedicated-mlflow"))
    yield server
    server.stop()


@pytest.mark.slow
def test_server_down_at_start_run_created_late(dedicated_server):
    run = open_run(tracking_uri=dedicated_server.uri, experiment="late", settings=FAST)
    for step in range(300):
        run.log_metrics(step, {"loss": loss_at(step)})
    run.log_params({"gradwatch.every": 5})
    assert run.flush(timeout=0.5) > 0 and run.run_id is None  # nothing listens yet

    dedicated_server.start()
    assert run.flush(timeout=60) == 0
    assert run.run_id is not None
    result = run.close("FINISHED", timeout=30)
    assert result.pending == 0, result.message

    client = mlflow.MlflowClient(dedicated_server.uri)
    got = client.get_run(result.run_id)
    assert got.info.status == "FINISHED" and got.data.params == {"gradwatch.every": "5"}
    assert client.get_experiment(got.info.experiment_id).name == "late"
    assert_each_step_once(client, result.run_id, range(300))


@pytest.mark.slow
def test_server_sigkilled_and_restarted_mid_run_every_step_once(dedicated_server):
    dedicated_server.start()
    client = mlflow.MlflowClient(dedicated_server.uri)
    run = open_run(tracking_uri=dedicated_server.uri, experiment="outage", settings=FAST)
    steps = 2400
    restarter: threading.Thread | None = None
    for step in range(steps):
        run.log_metrics(step, {"loss": loss_at(step), "lr": 0.1})
        if step == 600:
            dedicated_server.kill()  # SIGKILL, probably with a request in flight
        if step == 899:
            pending_in_outage = run.pending  # the journal holds what the server cannot take
        if step == 900:
            # Same port and store; keeps logging while the server boots (~5 s).
            restarter = threading.Thread(target=dedicated_server.start)
            restarter.start()
        time.sleep(0.002)
    assert restarter is not None
    restarter.join()
    assert pending_in_outage >= 250  # records the outage held back (training went on)
    result = run.close("FINISHED", timeout=90)
    assert result.pending == 0 and result.dropped == 0, result.message
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert_each_step_once(client, result.run_id, range(steps))
    assert len(client.get_metric_history(result.run_id, "lr")) == steps


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[3])
    from gradwatch.tracking import ShipperSettings, open_run
    sys.path.insert(0, sys.argv[4])
    from test_tracking_outage import loss_at

    run = open_run(tracking_uri=sys.argv[1], experiment="crash", journal_dir=sys.argv[2],
                   settings=ShipperSettings(interval=0.5))
    print(run.journal_path, flush=True)
    step = 0
    while True:
        run.log_metrics(step, {"loss": loss_at(step)})
        run.append_artifact_line("gradwatch/checks.jsonl", {"step": step}) if step % 500 == 0 else None
        if step % 100 == 0:
            print(step, flush=True)
        step += 1
        time.sleep(0.0005)
    """
)


def _start_and_kill(tracking_uri, journal_dir, whole_group: bool) -> tuple[Path, subprocess.Popen]:
    """Run CHILD until it logged > 2000 steps, then SIGKILL it (and its shipper, if asked)."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            tracking_uri,
            str(journal_dir),
            str(REPO),
            str(REPO / "tests"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        start_new_session=True,
    )
    try:
        journal = Path(child.stdout.readline().strip())
        for line in child.stdout:
            if int(line) >= 2000:
                break
    finally:
        if whole_group:  # the training process and its forked shipper, like a machine crash
            os.killpg(child.pid, signal.SIGKILL)
        else:  # only the training process, like the OOM killer
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    return journal, child


@pytest.mark.slow
def test_training_sigkilled_then_sync_lands_everything_once(tracking_uri, tmp_path):
    journal_dir = tmp_path / "journal"
    journal, _ = _start_and_kill(tracking_uri, journal_dir, whole_group=True)

    logged = [r["st"] for r in read_records(journal) if r.get("t") == "m"]
    assert logged == list(range(len(logged))) and len(logged) > 2000
    (status,) = pending_journals(journal_dir)
    assert status.needs_sync and not status.live and status.pending > 0
    # Whether or not the shipper had created the run before it died, sync finds or makes it.

    result = sync_journal(journal, settings=FAST)
    assert result.complete and result.incomplete and result.status == "FAILED", result.message
    client = mlflow.MlflowClient(tracking_uri)
    got = client.get_run(result.run_id)
    assert got.info.status == "FAILED" and got.data.tags[INCOMPLETE_TAG] == "true"
    assert_each_step_once(client, result.run_id, range(len(logged)))
    checks = {f.path for f in client.list_artifacts(result.run_id, "gradwatch")}
    assert checks == {"gradwatch/checks.jsonl"}

    again = sync_journal(journal, settings=FAST)
    assert again.already_synced and again.shipped == 0
    assert_each_step_once(client, result.run_id, range(len(logged)))
    assert pending_journals(journal_dir) == []


@pytest.mark.slow
def test_orphaned_shipper_lands_everything_when_only_training_is_killed(tracking_uri, tmp_path):
    journal_dir = tmp_path / "journal"
    journal, child = _start_and_kill(tracking_uri, journal_dir, whole_group=False)
    logged = [r["st"] for r in read_records(journal) if r.get("t") == "m"]
    deadline = time.monotonic() + 150  # the shipper's own limit is ORPHAN_GRACE (60 s) of work
    while pending_journals(journal_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = pending_journals(journal_dir)
    assert left == [], f"the orphaned shipper should finish on its own: {left}"
    client = mlflow.MlflowClient(tracking_uri)
    run_id = json.loads(journal.with_suffix(".state.json").read_text())["run_id"]
    got = client.get_run(run_id)
    assert got.info.status == "FAILED" and got.data.tags[INCOMPLETE_TAG] == "true"
    assert_each_step_once(client, run_id, range(len(logged)))
    again = sync_journal(journal, settings=FAST)
    assert again.already_synced and again.shipped == 0
