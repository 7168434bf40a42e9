"""How the shipper groups records into requests, and what it reports it spent shipping them.

A request costs MLflow a fixed amount besides its entities (on the embedded sqlite store a
transaction and a commit, ~2 ms), so while training runs a round woken by "a full batch is
waiting" sends full requests only and leaves a partly filled last one for the round at the
interval, a flush or the close. Against the embedded sqlite store (MLflow's own).
"""

from __future__ import annotations

import os
import time

import mlflow
import pytest

from gradwatch.tracking import ShipperSettings, open_run
from gradwatch.tracking.journal import FORMAT_VERSION, JournalWriter, new_journal_id
from gradwatch.tracking.shipper import Shipper

pytestmark = pytest.mark.server  # each test opens MLflow's sqlite store or starts a shipper

BASE_TS = 1_700_000_000_000


def new_journal(tmp_path, uri: str) -> JournalWriter:
    header = {
        "v": FORMAT_VERSION,
        "id": new_journal_id(),
        "uri": uri,
        "exp": "t-rounds",
        "exp_id": None,
        "name": "rounds",
        "tags": {},
        "user": "tester",
        "run_id": None,
        "attached": False,
        "ts": BASE_TS,
        "pid": os.getpid(),
    }
    return JournalWriter.create(tmp_path / "journal", header)


def loss_steps(uri: str, run_id: str) -> list[int]:
    history = mlflow.MlflowClient(uri).get_metric_history(run_id, "loss")
    return sorted(m.step for m in history)


def test_a_round_for_full_batches_leaves_the_partial_request_for_the_next_round(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    writer = new_journal(tmp_path, uri)
    for step in range(700):  # 1,400 metrics: one full request of 1,000 and a partial one
        writer.append_loss_lr(BASE_TS + step, step, 1.0 / (step + 1), 0.1)
    shipper = Shipper(writer.path, uri)

    assert shipper.step(full_only=True)
    assert shipper.state.metrics == 1000 and not shipper.caught_up()
    assert not shipper.step(full_only=True)  # only the partial request waits: nothing sent
    assert shipper.state.metrics == 1000
    assert shipper.step()  # the round at the interval sends it
    assert shipper.state.metrics == 1400 and shipper.caught_up()

    writer.append_loss_lr(BASE_TS + 700, 700, 0.5, 0.1)
    writer.append({"t": "e", "ts": BASE_TS + 701, "status": "FINISHED"}, final=True)
    writer.close()
    shipper.step(full_only=True)  # a request holding the end record never waits
    assert shipper.finalized and shipper.state.metrics == 1402
    shipper.close()
    assert loss_steps(uri, shipper.run_id) == list(range(701))  # each step exactly once
    assert mlflow.MlflowClient(uri).get_run(shipper.run_id).info.status == "FINISHED"


def test_while_training_the_shipper_process_sends_full_requests_and_the_rest_at_close(tmp_path):
    # A long interval: only "a full batch is waiting" notices (every 1,000 metrics) wake it.
    run = open_run(experiment="t-rounds", settings=ShipperSettings(interval=600.0))
    run.log_params({"batch": 128})
    deadline = time.monotonic() + 60
    while run.shipped < 1 and time.monotonic() < deadline:  # the first round is over
        time.sleep(0.05)
    assert run.shipped == 1
    for step in range(1250):  # 2,500 metrics: two notices
        run.log_metrics(step, {"loss": 1.0 / (step + 1), "lr": 0.1}, timestamp_ms=BASE_TS + step)
    while run.ship_cpu[1] < 2000 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a third request would have been sent by now
    cpu_seconds, metrics = run.ship_cpu
    assert metrics == 2000 and cpu_seconds > 0  # two full requests; 500 metrics wait

    result = run.close(timeout=60)
    assert result.pending == 0 and result.dropped == 0, result.message
    assert run.ship_cpu[1] == 2500 and result.shipped == 1252  # params + 1,250 steps + end
    assert loss_steps(run.tracking_uri, result.run_id) == list(range(1250))


def test_the_shipper_process_log_keeps_what_it_logged_before_it_exits(tmp_path):
    run = open_run(experiment="t-rounds", settings=ShipperSettings(interval=0.2))
    run.log_metrics(0, {"loss": 1.0})
    run.log_metrics(2**70, {"loss": 2.0})  # refused before any request: a warning, then exit
    result = run.close(timeout=60)
    assert result.pending == 0 and result.dropped == 1, result.message
    assert not result.journal_removed  # a dropped value keeps the journal and its ship log
    log = result.journal_path.with_suffix(".ship.log").read_text()
    assert "cannot store step" in log and "Traceback" not in log
