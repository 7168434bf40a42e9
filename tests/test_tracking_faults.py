"""Faults and hostile input in the tracking pipeline: credentials, full disk, odd steps,
permanent refusals, crafted journals, hung servers, orphaned shippers, disk left behind.

Against the session's real MLflow server (and the embedded sqlite store where it matters).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest

from gradwatch.errors import TrackingError
from gradwatch.tracking import (
    JOURNAL_DROPPED_TAG,
    ShipperSettings,
    open_run,
    pending_journals,
    prune_journals,
    sync_all,
    sync_journal,
)
from gradwatch.tracking.journal import JournalWriter
from tests.test_tracking import FAST

REPO = Path(__file__).resolve().parent.parent


def with_password(uri: str, password: str = "S3CRETpw") -> str:
    return uri.replace("http://", f"http://bob:{password}@")


def test_tracking_uri_credentials_never_reach_disk_or_screen(tracking_uri, tmp_path, capfd):
    secret_uri = with_password(tracking_uri)
    run = open_run(tracking_uri=secret_uri, experiment="t-secret", settings=FAST, keep_journal=True)
    run.log_metrics(0, {"loss": 1.0})
    assert run.flush(timeout=30) == 0  # the shipper did get the real URI
    opened = capfd.readouterr()  # the run's UI link shows once it exists, as MLflow's does
    assert (
        f"View run {run.run_id} at: {with_password(tracking_uri, '***')}/#/experiments/"
        in opened.err
    )
    result = run.close(timeout=30)
    assert result.pending == 0, result.message
    journal_dir = result.journal_path.parent
    files = [p for p in journal_dir.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".jsonl", ".json", ".log"}
    for path in files:
        assert b"S3CRETpw" not in path.read_bytes(), path
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} readable by others"
    assert stat.S_IMODE(journal_dir.stat().st_mode) == 0o700
    assert "bob:***@" in json.loads(result.journal_path.read_text().splitlines()[0])["uri"]
    out = capfd.readouterr()
    assert "S3CRETpw" not in opened.out + opened.err + out.out + out.err + result.message
    assert result.url == f"{with_password(tracking_uri, '***')}/#/experiments/" + (
        f"{mlflow.MlflowClient(tracking_uri).get_run(result.run_id).info.experiment_id}/runs/{result.run_id}"
    )


FULL_DISK_CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, 1_500_000))
    from gradwatch.tracking import ShipperSettings, open_run
    run = open_run(tracking_uri=sys.argv[1], experiment="t-full-disk",
                   settings=ShipperSettings(interval=0.2, request_timeout=5.0))
    for step in range(40000):
        run.log_metrics(step, {"loss": 1.0 / (step + 1), "lr": 0.1})
    result = run.close(timeout=60)
    print(json.dumps({"status": result.status, "dropped": result.dropped, "pending": result.pending,
                      "run_id": result.run_id, "message": result.message}))
    """
)


def test_full_disk_is_reported_and_ends_the_run_failed(tracking_uri, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK_CHILD, tracking_uri],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["status"] == "FAILED" and result["pending"] == 0, result
    assert result["dropped"] > 20000
    assert f"{result['dropped']} records were dropped: cannot write journal" in result["message"]
    run = mlflow.MlflowClient(tracking_uri).get_run(result["run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags[JOURNAL_DROPPED_TAG].startswith(f"{result['dropped']} records dropped")


# Both start a store process (a server; a shipper creating a sqlite store): `server` tests.
@pytest.mark.server
@pytest.mark.parametrize("store", ["server", "embedded"])
def test_a_step_outside_int64_is_dropped_and_the_rest_lands(store, request, tmp_path):
    uri = request.getfixturevalue("tracking_uri") if store == "server" else None
    run = open_run(tracking_uri=uri, experiment="t-int64", settings=FAST)
    for step in range(5):
        run.log_metrics(step, {"loss": float(step)})
    run.log_metrics(2**70, {"loss": 9.0})
    run.log_metrics(5, {"loss": 5.0})
    result = run.close(timeout=90)  # before: retried forever on the embedded store
    assert result.pending == 0 and result.dropped == 1, result.message
    client = mlflow.MlflowClient(run.tracking_uri)
    steps = sorted(m.step for m in client.get_metric_history(result.run_id, "loss"))
    assert steps == [0, 1, 2, 3, 4, 5]
    assert client.get_run(result.run_id).info.status == "FINISHED"


def test_deleted_experiment_ends_the_wait_at_once_and_sync_reports_it(tracking_uri):
    client = mlflow.MlflowClient(tracking_uri)
    exp_id = client.create_experiment("t-deleted")
    client.delete_experiment(exp_id)
    run = open_run(experiment="t-deleted", settings=FAST)
    run.log_metrics(0, {"loss": 1.0})
    t = time.monotonic()
    result = run.close(timeout=30)
    assert time.monotonic() - t < 10, "a permanent refusal must not wait out the timeout"
    assert result.pending > 0 and result.error and "deleted" in result.error
    assert "refuses this run" in result.message and "deleted" in result.message
    assert result.journal_path.exists()

    synced = sync_journal(result.journal_path, settings=FAST, timeout=30)
    assert not synced.complete and synced.error and "deleted" in synced.message

    client.restore_experiment(exp_id)
    synced = sync_journal(result.journal_path, settings=FAST, timeout=30)
    assert synced.complete, synced.message
    assert client.get_run(synced.run_id).data.metrics["loss"] == 1.0


def test_sync_refuses_a_file_that_is_not_a_journal_without_leaving_files(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("remember the milk\n")
    with pytest.raises(TrackingError, match="not a gradwatch journal"):
        sync_journal(notes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_crafted_file_record_cannot_upload_files_outside_the_journal(tracking_uri, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("private\n")
    journal_dir = tmp_path / "j"
    header = {"id": "c0ffee" * 5, "uri": tracking_uri, "exp": "t-crafted", "ts": 1700000000000}
    writer = JournalWriter.create(journal_dir, header)
    writer.append({"t": "m", "ts": 1700000000001, "st": 0, "m": {"loss": 1.0}})
    writer.append({"t": "f", "ts": 1700000000002, "src": str(secret), "path": "gradwatch"})
    writer.append({"t": "f", "ts": 1700000000003, "src": "../../secret.txt", "path": "gradwatch"})
    writer.append({"t": "e", "ts": 1700000000004, "status": "FINISHED"})
    writer.close()
    result = sync_journal(writer.path, settings=FAST, timeout=30)
    assert result.complete and result.dropped == 2, result.message
    assert mlflow.MlflowClient(tracking_uri).list_artifacts(result.run_id, "gradwatch") == []


@pytest.mark.slow  # seconds: kept out of the fast subset
def test_sync_timeout_bounds_the_wait_on_a_hung_server(tmp_path):
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)  # accepts connections (in the backlog), never answers
    try:
        uri = f"http://127.0.0.1:{hung.getsockname()[1]}"
        run = open_run(tracking_uri="http://127.0.0.1:9", settings=FAST)
        run.log_metrics(0, {"loss": 1.0})
        journal = run.close(timeout=0.5).journal_path
        t = time.monotonic()
        slow = ShipperSettings(request_timeout=10.0, backoff_initial=0.1, backoff_max=0.5)
        result = sync_journal(journal, tracking_uri=uri, timeout=3, settings=slow)
        took = time.monotonic() - t
    finally:
        hung.close()
    assert not result.complete and 2.5 < took < 5.0, took


ORPHAN_CHILD = textwrap.dedent(
    """
    import os, sys
    from gradwatch.tracking import ShipperSettings, open_run
    run = open_run(tracking_uri=sys.argv[1], journal_dir=sys.argv[2],
                   settings=ShipperSettings(interval=0.2, backoff_max=0.5, request_timeout=1.0))
    for step in range(50):
        run.log_metrics(step, {"loss": 1.0})
    os._exit(0)  # died without closing: its shipper is orphaned, and retries a dead server
    """
)


def test_sync_right_after_training_says_what_it_waits_for_and_fails_if_left(tmp_path):
    journal_dir = tmp_path / "journal"
    dead = "http://127.0.0.1:9"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run(
        [sys.executable, "-c", ORPHAN_CHILD, dead, str(journal_dir)],
        env=env,
        check=True,
        timeout=60,
    )
    (status,) = pending_journals(journal_dir)
    assert status.live and "shipper process" in status.waiting_for
    lines: list[str] = []
    summary = sync_all(journal_dir, timeout=1.0, echo=lines.append)
    assert summary.exit_code == 1
    assert any(
        line.startswith("waiting up to 1 s for") and "shipper process" in line for line in lines
    )
    assert any("not synced" in line for line in lines), lines


def test_landed_journals_are_removed_failed_ones_kept_and_old_ones_pruned(tracking_uri, tmp_path):
    journal_dir = tmp_path / "j"
    landed = open_run(journal_dir=journal_dir, settings=FAST)
    landed.log_metrics(0, {"loss": 1.0})
    result = landed.close(timeout=30)
    assert result.pending == 0 and result.journal_removed
    assert list(journal_dir.iterdir()) == []  # nothing left: journal, state, log, lock, files

    kept = open_run(journal_dir=journal_dir, settings=FAST, keep_journal=True)
    kept.log_metrics(0, {"loss": 1.0})
    kept_result = kept.close(timeout=30)
    assert kept_result.pending == 0 and kept_result.journal_path.exists()

    offline = open_run(tracking_uri="http://127.0.0.1:9", journal_dir=journal_dir, settings=FAST)
    offline.log_metrics(0, {"loss": 1.0})
    offline_result = offline.close(timeout=0.5)
    assert offline_result.pending and offline_result.journal_path.exists()

    (journal_dir / "20200101-000000-deadbeef0000.ship.log").write_text("left by an old version")
    pruned = prune_journals(journal_dir)
    assert pruned.removed == [kept_result.journal_path]
    assert [p for p, _ in pruned.kept] == [offline_result.journal_path]
    remaining = sorted(p.name for p in journal_dir.iterdir())
    assert all(name.startswith(offline_result.journal_path.stem) for name in remaining), remaining


NO_MLFLOW_CHILD = textwrap.dedent(
    """
    import sys
    from gradwatch.tracking import ShipperSettings, open_run
    run = open_run(tracking_uri=sys.argv[1], experiment="t-no-import",
                   settings=ShipperSettings(interval=0.2))
    run.log_metrics(0, {"loss": 1.0})
    result = run.close(timeout=30)
    print(result.run_id, result.pending, "mlflow" in sys.modules)
    """
)


def test_training_process_never_imports_mlflow(tracking_uri, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(NO_MLFLOW_CHILD)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, str(script), tracking_uri],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    run_id, pending, imported = out.stdout.split()
    assert (pending, imported) == ("0", "False"), out.stderr
    tags = mlflow.MlflowClient(tracking_uri).get_run(run_id).data.tags
    assert tags["mlflow.source.name"] == str(tmp_path / "train.py")
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]


NO_CLOSE_CHILD = textwrap.dedent(
    """
    import sys
    from gradwatch.tracking import ShipperSettings, open_run
    run = open_run(tracking_uri=sys.argv[1], experiment="t-no-close",
                   settings=ShipperSettings(interval=0.2))
    run.log_metrics(0, {"loss": 1.0})
    print(run.journal_id, flush=True)
    # no close(): the interpreter exits normally
    """
)


def test_a_script_that_never_closes_ends_its_run_finished_at_exit(tracking_uri, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", NO_CLOSE_CHILD, tracking_uri],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    journal_id = out.stdout.split()[0]
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("t-no-close")
    (run,) = client.search_runs(
        [exp.experiment_id], f"tags.`gradwatch.journal_id` = '{journal_id}'"
    )
    assert run.info.status == "FINISHED" and "gradwatch.incomplete" not in run.data.tags
    assert run.data.metrics["loss"] == 1.0


class BodyLimitProxy:
    """A real HTTP proxy on 127.0.0.1 in front of the MLflow server that answers 413 to any
    artifact upload (PUT) over ``limit`` bytes, as nginx does past its body limit."""

    def __init__(self, upstream: str, limit: int) -> None:
        import threading
        import urllib.parse
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from tests.mlflow_server import forward

        target = urllib.parse.urlsplit(upstream)
        self.refused: list[str] = []
        refused = self.refused

        class Handler(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "PUT" and len(body) > limit:
                    refused.append(self.path)
                    page = b"<html><h1>413 Request Entity Too Large</h1></html>"
                    self.send_response(413)
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                forward(self, target, body, timeout=30)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_artifacts_a_proxy_refuses_as_too_large_never_keep_the_run_from_ending(
    mlflow_server, tmp_path, caplog
):
    import numpy as np

    import gradwatch

    caplog.set_level("WARNING", logger="gradwatch")
    proxy = BodyLimitProxy(mlflow_server.uri, limit=3000)
    try:
        params = {"W": np.ones((6, 5)), "b": np.zeros(5)}

        def loss_fn(p):
            return float(((p["W"].sum(0) + p["b"]) ** 2).sum())

        with gradwatch.GradWatch(
            every=5,
            experiment="t-413",
            tracking_uri=proxy.uri,
            journal_dir=str(tmp_path / "j"),
            config=False,
        ) as watch:
            for _ in range(40):
                grads = {
                    "W": np.tile(2 * (params["W"].sum(0) + params["b"]), (6, 1)),
                    "b": 2 * (params["W"].sum(0) + params["b"]),
                }
                watch.step(params, grads, loss=loss_fn(params), lr=1e-3, loss_fn=loss_fn)
                for k in params:
                    params[k] -= 1e-3 * grads[k]
        result = watch.close_result
    finally:
        proxy.close()
    # checks.jsonl (8 checks) and report.html outgrow 3000 bytes: refused, never retried
    # without end. The run still ends FINISHED with every metric, and close() says what
    # was dropped, keeping the journal.
    assert any("checks.jsonl" in p for p in proxy.refused)
    assert any("report.html" in p for p in proxy.refused)
    client = mlflow.MlflowClient(mlflow_server.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(result.run_id, "loss")) == 40
    assert result.pending == 0 and result.dropped >= 1 and not result.journal_removed
    assert f"refused {result.dropped} value(s) or artifact(s)" in result.message
    ship_log = Path(result.journal_path).with_suffix(".ship.log").read_text()
    assert "gradwatch/checks.jsonl" in ship_log and "413" in ship_log
    # The report's fate, said with the command that draws it again.
    assert "report.html" in ship_log
    assert f"`gradwatch report {result.run_id}` draws it" in result.message
