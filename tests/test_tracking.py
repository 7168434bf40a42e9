"""Tracking pipeline against the session's real MLflow server (and the embedded sqlite store).

Tests that kill or restart a server live in test_tracking_outage.py.
"""

from __future__ import annotations

import json
import logging
import math
import os

import mlflow
import pytest

from gradwatch.errors import InputError, TrackingError
from gradwatch.tracking import (
    INCOMPLETE_TAG,
    JOURNAL_ID_TAG,
    ShipperSettings,
    open_run,
    pending_journals,
    read_records,
    sync_journal,
)
from tests.mlflow_server import free_port

FAST = ShipperSettings(
    interval=0.2, backoff_initial=0.1, backoff_max=0.5, request_timeout=5.0, artifact_interval=0.5
)


def history(client: mlflow.MlflowClient, run_id: str, key: str):
    return sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)


def test_records_arrive_with_step_value_timestamp(tracking_uri, tmp_path):
    run = open_run(experiment="t-arrive", run_name="arrive", tags={"team": "gw"}, settings=FAST)
    assert run.tracking_uri == tracking_uri
    run.log_params({"gradwatch.every": 10, "lr": 0.5})
    run.set_tags({"gradwatch.alert.nonfinite": "step 3"})
    base = 1_700_000_000_000
    for step in range(50):
        run.log_metrics(step, {"loss": 1.0 / (step + 1), "lr": 0.5}, timestamp_ms=base + step)
    run.append_artifact_line("gradwatch/checks.jsonl", {"step": 0, "passed": True})
    run.append_artifact_line("gradwatch/checks.jsonl", {"step": 10, "passed": False})
    config = tmp_path / "gradwatch.yaml"
    config.write_text("every: 10\n")
    run.log_artifact_file(str(config))
    result = run.close("FINISHED", timeout=30)

    assert result.pending == 0 and result.dropped == 0, result.message
    assert result.shipped == 56  # 2 param/tag records + 50 steps + 2 lines + 1 file + end
    client = mlflow.MlflowClient(tracking_uri)
    got = client.get_run(result.run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "arrive"
    assert got.data.params == {"gradwatch.every": "10", "lr": "0.5"}
    assert got.data.tags["team"] == "gw"
    assert got.data.tags["gradwatch.alert.nonfinite"] == "step 3"
    assert got.data.tags[JOURNAL_ID_TAG] == run.journal_id
    loss = history(client, result.run_id, "loss")
    assert [m.step for m in loss] == list(range(50))
    assert [m.timestamp for m in loss] == [base + s for s in range(50)]
    assert [m.value for m in loss] == [1.0 / (s + 1) for s in range(50)]
    names = {f.path for f in client.list_artifacts(result.run_id, "gradwatch")}
    assert names == {"gradwatch/checks.jsonl", "gradwatch/gradwatch.yaml"}
    text = client.download_artifacts(result.run_id, "gradwatch/checks.jsonl", str(tmp_path))
    lines = [json.loads(x) for x in open(text).read().splitlines()]
    assert lines == [{"step": 0, "passed": True}, {"step": 10, "passed": False}]


def test_journal_is_complete_before_return(tmp_path):
    """Every log call is on disk when it returns (what kill -9 relies on)."""
    run = open_run(tracking_uri="http://127.0.0.1:9", journal_dir=tmp_path / "j", settings=FAST)
    run.log_metrics(7, {"loss": 0.25})
    records = list(read_records(run.journal_path))
    assert records[0]["t"] == "h" and records[0]["id"] == run.journal_id
    assert records[-1]["st"] == 7 and records[-1]["m"] == {"loss": 0.25}
    assert [r["s"] for r in records] == list(range(len(records)))
    run.close(timeout=0.2)


_WRITER_CHILD = """
import os, resource, signal, sys, time
from gradwatch.tracking.journal import JournalWriter
if len(sys.argv) > 2:  # a file-size limit standing in for a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
w = JournalWriter.create(sys.argv[1], {"id": "0123456789abcdef", "uri": "none"})
print(w.path, flush=True)
for step in range(40000):
    w.append_metrics(1700000000000 + step, step, {"loss": 1.0 / (step + 1), "lr": 0.1})
print(w.dropped, type(w.last_error).__name__, w.last_error and w.last_error.errno, flush=True)
if len(sys.argv) > 2:
    w.close()
else:
    time.sleep(60)  # killed here
"""


def _journal_child(tmp_path, *args):
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-c", _WRITER_CHILD, str(tmp_path), *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_journal_lines_survive_kill9_and_readers_never_see_half_a_line(tmp_path):
    import signal

    child = _journal_child(tmp_path)
    path = child.stdout.readline().strip()
    seen = []  # read while the child writes: only whole lines, in order, none corrupt
    while child.poll() is None and len(seen) < 5:
        records = list(read_records(path))
        assert [r["s"] for r in records] == list(range(len(records)))
        seen.append(len(records))
    assert child.stdout.readline().split()[0] == "0"  # all 40000 written, none dropped
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    records = list(read_records(path))
    assert [r.get("st") for r in records[1:]] == list(range(40000))
    assert records[-1]["m"] == {"loss": 1.0 / 40000, "lr": 0.1}
    # The writer reserves the file ahead; past the last line it is zeros, which readers skip.
    data = open(path, "rb").read()
    end = data.rindex(b"\n") + 1
    assert len(data) > end and data[end:] == bytes(len(data) - end)


def test_journal_on_a_full_disk_drops_and_counts_instead_of_crashing(tmp_path):
    limit = 1_500_000  # bytes: room for about 15000 of the 40000 lines
    child = _journal_child(tmp_path, limit)
    path = child.stdout.readline().strip()
    dropped, error, errno_ = child.stdout.readline().split()
    assert child.wait(timeout=30) == 0  # no SIGBUS, no SIGXFSZ: the process carried on
    assert int(dropped) > 20000 and error == "OSError"
    records = list(read_records(path))
    steps = [r["st"] for r in records[1:]]
    assert steps == list(range(len(steps))) and 10000 < len(steps) == 40000 - int(dropped)
    assert os.path.getsize(path) <= limit


def test_journal_without_shared_maps_falls_back_to_writes(tmp_path, monkeypatch, caplog):
    """File systems that cannot mmap (some FUSE, 9p) and platforms without posix_fallocate."""
    import errno

    from gradwatch.tracking import journal

    def no_map(*args, **kwargs):
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(journal.mmap, "mmap", no_map)
    writer = journal.JournalWriter.create(tmp_path, {"id": "0123456789abcdef", "uri": "none"})
    for step in range(100):
        writer.append_loss_lr(1700000000000 + step, step, 0.5, 0.1)
    writer.append_metrics(1700000000100, 100, {"loss": math.nan, 7: 1.0})
    writer.close()
    records = list(read_records(writer.path))
    assert [r["s"] for r in records] == list(range(102)) and writer.dropped == 0
    assert records[-1]["m"]["7"] == 1.0 and math.isnan(records[-1]["m"]["loss"])
    assert b"\0" not in writer.path.read_bytes()
    assert "writing each line instead" in caplog.text


def test_batch_limits_long_keys_and_values(tracking_uri):
    run = open_run(experiment="t-limits", settings=FAST)
    wide = {f"grad_norm/layer{i}": float(i) for i in range(2500)}  # > 1000 metrics in one step
    long_a, long_b = "a" * 300, "a" * 299 + "b"  # both over 250 chars, must stay distinct
    wide[long_a], wide[long_b] = 1.0, 2.0
    wide["bad key[0]"] = 3.0
    wide["nan"] = math.nan
    run.log_metrics(0, wide)
    run.log_params({f"p{i}": i for i in range(150)})  # > 100 params
    run.log_params({"long": "x" * 7000})
    run.set_tags({f"t{i}": "y" * 9000 for i in range(120)})  # > 100 tags, > 1 MB together
    result = run.close(timeout=60)
    assert result.pending == 0 and result.dropped == 0, result.message

    data = mlflow.MlflowClient(tracking_uri).get_run(result.run_id).data
    assert len(data.metrics) == 2504
    assert data.metrics["grad_norm/layer2499"] == 2499.0
    assert data.metrics["bad key_0_"] == 3.0
    assert math.isnan(data.metrics["nan"])
    long_keys = [k for k in data.metrics if len(k) > 200]
    assert len(long_keys) == 2 and all(len(k) <= 250 for k in long_keys)
    assert sorted(data.metrics[k] for k in long_keys) == [1.0, 2.0]
    assert len([k for k in data.params if k.startswith("p")]) == 150
    assert len(data.params["long"]) == 6000 and data.params["long"].endswith(
        "[truncated by gradwatch]"
    )
    assert len([k for k in data.tags if k.startswith("t") and k[1:].isdigit()]) == 120
    assert all(len(data.tags[f"t{i}"]) == 8000 for i in range(120))


@pytest.mark.parametrize("status", ["FINISHED", "FAILED", "KILLED"])
def test_close_sets_status(tracking_uri, status):
    run = open_run(experiment="t-status", settings=FAST)
    run.log_metrics(0, {"loss": 1.0})
    result = run.close(status, timeout=30)
    assert result.status == status and result.pending == 0
    assert mlflow.MlflowClient(tracking_uri).get_run(result.run_id).info.status == status
    with pytest.raises(TrackingError, match="closed"):
        run.log_metrics(1, {"loss": 1.0})
    assert run.close() is result


def test_close_rejects_unknown_status(tracking_uri):
    run = open_run(settings=FAST)
    with pytest.raises(InputError, match="FINISHED, FAILED, KILLED"):
        run.close("DONE")
    run.close()


def test_param_conflict_kept_as_tag(tracking_uri):
    run = open_run(experiment="t-conflict", settings=FAST)
    run.log_params({"a": 1})
    run.log_params({"a": 2})
    result = run.close(timeout=30)
    assert result.pending == 0 and result.dropped == 0
    data = mlflow.MlflowClient(tracking_uri).get_run(result.run_id).data
    assert data.params["a"] == "1"
    assert data.tags["gradwatch.param_conflict.a"] == "2"


def test_embedded_sqlite_is_the_default(tmp_path, monkeypatch):
    assert "MLFLOW_TRACKING_URI" not in os.environ
    run = open_run(experiment="t-embedded", settings=FAST)
    assert run.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    for step in range(20):
        run.log_metrics(step, {"loss": float(step)})
    run.append_artifact_line("gradwatch/alerts.jsonl", {"rule": "nonfinite"})
    result = run.close(timeout=60)
    assert result.pending == 0, result.message
    client = mlflow.MlflowClient("sqlite:///mlflow.db")
    assert [m.step for m in history(client, result.run_id, "loss")] == list(range(20))
    assert client.get_run(result.run_id).info.status == "FINISHED"
    # MLflow 3.0's list_artifacts finds the run through the default URI, not the client's.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    assert {f.path for f in client.list_artifacts(result.run_id, "gradwatch")} == {
        "gradwatch/alerts.jsonl"
    }


def test_attaches_to_active_run_and_leaves_it_open(tracking_uri):
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run() as active:
            run = open_run(settings=FAST)
            assert run.attached and run.run_id == active.info.run_id
            run.log_metrics(0, {"loss": 2.0})
            result = run.close("FINISHED", timeout=30)
            assert result.pending == 0
            client = mlflow.MlflowClient(tracking_uri)
            got = client.get_run(active.info.run_id)
            assert got.info.status == "RUNNING"
            assert got.data.metrics["loss"] == 2.0
    finally:
        mlflow.set_tracking_uri(None)
    assert client.get_run(active.info.run_id).info.status == "FINISHED"


def test_offline_close_reports_pending_then_sync_lands_once(tracking_uri, caplog):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    run = open_run(tracking_uri=dead, experiment="t-offline", settings=FAST)
    for step in range(120):
        run.log_metrics(step, {"loss": step * 0.5})
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        result = run.close("FINISHED", timeout=1.0)
    assert result.run_id is None and result.pending == 121  # 120 steps + end record
    shown = os.path.relpath(result.journal_path)
    # The situation named as it is: the server is unreachable (masked URI), and how to sync.
    assert result.message.startswith(f"gradwatch: MLflow server {dead} is unreachable (")
    assert "Connection refused" in result.message
    assert result.message.endswith(
        f"121 records kept in {shown}; run `gradwatch sync {shown}` when the server is back"
    )
    assert result.message in caplog.text
    assert [j.path for j in pending_journals()] == [result.journal_path]

    # A torn last line (crash mid-write) must be tolerated.
    with open(result.journal_path, "ab") as f:
        f.write(b'{"s":999,"t":"m","ts":1,"st":')

    synced = sync_journal(result.journal_path, tracking_uri=tracking_uri, settings=FAST)
    assert synced.complete and synced.shipped == 121 and synced.status == "FINISHED"
    torn = len(b'{"s":999,"t":"m","ts":1,"st":')
    assert f"its last line was cut short ({torn} bytes without an end" in synced.message
    assert not synced.incomplete
    client = mlflow.MlflowClient(tracking_uri)
    assert [m.step for m in history(client, synced.run_id, "loss")] == list(range(120))
    assert client.get_run(synced.run_id).info.status == "FINISHED"
    assert pending_journals() == []

    again = sync_journal(result.journal_path, tracking_uri=tracking_uri, settings=FAST)
    assert again.already_synced and again.shipped == 0 and again.run_id == synced.run_id

    # Even with the state file lost, the run is found by its journal id and nothing doubles.
    result.journal_path.with_name(result.journal_path.stem + ".state.json").unlink()
    replay = sync_journal(result.journal_path, tracking_uri=tracking_uri, settings=FAST)
    assert replay.run_id == synced.run_id and replay.complete
    assert len(history(client, synced.run_id, "loss")) == 120
    assert client.get_run(synced.run_id).data.tags.get(INCOMPLETE_TAG) is None


def test_sync_refuses_a_live_journal(tracking_uri):
    run = open_run(settings=FAST)
    with pytest.raises(TrackingError, match="still being written by its training process"):
        sync_journal(run.journal_path)
    run.close(timeout=30)


def test_sync_of_missing_journal_is_a_clear_error(tmp_path):
    with pytest.raises(TrackingError, match="does not exist"):
        sync_journal(tmp_path / "nope.jsonl")
