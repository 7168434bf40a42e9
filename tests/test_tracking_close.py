"""The end of a run (issue 22, issue 25 items 3-4): close() waits for the work, not a clock,
and says what really happened; a fresh sqlite store is never migrated by two processes.

Everything against real parts: MLflow servers started and stopped here, a slow relay in
front of one, a sqlite store that does not exist yet, a shipper process killed with SIGKILL.

    python -m pytest -q tests/test_tracking_close.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest

from gradwatch.secrets import mask_uri
from gradwatch.tracking import ShipperSettings, open_run, sync_journal
from gradwatch.tracking.tracker import display_path
from tests.mlflow_server import MlflowServer, RelayProxy

REPO = Path(__file__).resolve().parents[1]
FAST = ShipperSettings(interval=0.1, backoff_initial=0.1, backoff_max=0.5, request_timeout=5.0)

pytestmark = pytest.mark.server


def artifact_names(tracking_uri: str, run_id: str) -> set[str]:
    """The run's artifacts under gradwatch/, read by a plain MlflowClient."""
    # MLflow 3.0's list_artifacts finds the run through the default tracking URI, not the
    # client's (fixed in later releases): name the same server there.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    try:
        client = mlflow.MlflowClient(tracking_uri)
        return {f.path for f in client.list_artifacts(run_id, "gradwatch")}
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def _shipper_pids() -> list[int]:
    """This process's shipper children (ship_process.py), from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"ship_process" in cmdline:
            pids.append(int(entry.name))
    return pids


def test_server_stopped_for_good_at_close_says_unreachable_and_how_to_sync(tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    try:
        # Credentials in the URI: the message names the server with them masked.
        uri = server.uri.replace("http://", "http://alice:s3cret-pw@")
        run = open_run(tracking_uri=uri, experiment="t-gone", settings=FAST)
        run.log_metrics(0, {"loss": 1.0})
        assert run.flush(60) == 0
        server.stop()
        for step in range(1, 50):
            run.log_metrics(step, {"loss": 1.0 / step})
        result = run.close(timeout=2.0)
        shown = display_path(result.journal_path)
        assert result.pending == 50 and not result.journal_removed  # 49 steps + end record
        assert f"MLflow server {mask_uri(uri)} is unreachable (" in result.message
        assert "s3cret-pw" not in result.message
        assert result.message.endswith(f"run `gradwatch sync {shown}` when the server is back")

        server.start()
        synced = sync_journal(result.journal_path, tracking_uri=uri, settings=FAST, timeout=60)
        assert synced.complete and synced.status == "FINISHED"
        client = mlflow.MlflowClient(server.uri)
        assert len(client.get_metric_history(result.run_id, "loss")) == 50
        assert client.get_run(result.run_id).info.status == "FINISHED"
    finally:
        server.stop()


def test_a_slow_server_is_waited_for_past_the_timeout_and_everything_lands(mlflow_server, capfd):
    proxy = RelayProxy(mlflow_server.uri, delay=0.5)
    try:
        run = open_run(tracking_uri=proxy.uri, experiment="t-slow", settings=FAST)
        for step in range(6000):  # 12,000 values: 12 requests of 1,000, each 0.5 s late
            run.log_metrics(step, {"a": float(step), "b": -float(step)})
        started = time.monotonic()
        result = run.close(timeout=3.0)
        took = time.monotonic() - started
    finally:
        proxy.close()
    assert result.complete and result.journal_removed, result.message
    assert result.message.startswith(f"gradwatch: run {result.run_id} complete")
    # The shipper kept acknowledging requests, so close() waited past its 3 s: the bound is
    # 3 s without progress, not 3 s in all (12 requests alone take 6 s).
    assert took > 3.0 and proxy.requests >= 12
    assert "gradwatch: landing the run in" in capfd.readouterr().err  # said after ~2 s
    client = mlflow.MlflowClient(mlflow_server.uri)
    assert len(client.get_metric_history(result.run_id, "b")) == 6000
    assert client.get_run(result.run_id).info.status == "FINISHED"


def test_a_keep_alive_connection_the_server_dropped_is_reopened_at_once(mlflow_server, tmp_path):
    # MLflow's server (uvicorn) closes a keep-alive connection idle for 5 s. The next
    # request on it meets a closed socket: it is sent again on a fresh connection, so the
    # upload after a long pause (the report's, once) neither fails nor waits for a retry.
    run = open_run(tracking_uri=mlflow_server.uri, experiment="t-keepalive", settings=FAST)
    run.log_metrics(0, {"loss": 1.0})
    assert run.flush(60) == 0
    time.sleep(7.0)
    page = tmp_path / "report.html"
    page.write_text("<html>" + "x" * 200_000 + "</html>")
    run.log_artifact_file(str(page), "gradwatch")
    result = run.close(timeout=30)
    assert result.complete and result.journal_removed, result.message
    ship_log = Path(result.journal_path).with_suffix(".ship.log")
    log = ship_log.read_text() if ship_log.exists() else ""
    assert "cannot ship" not in log, log
    assert artifact_names(mlflow_server.uri, result.run_id) == {"gradwatch/report.html"}


def test_a_shipper_killed_while_uploading_the_report_is_named_and_sync_lands_it(
    mlflow_server, tmp_path
):
    import numpy as np

    import gradwatch

    killed = []

    def kill_the_shipper_at_the_report_upload(method: str, path: str) -> None:
        if method == "PUT" and path.endswith("/report.html") and not killed:
            for pid in _shipper_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    proxy = RelayProxy(mlflow_server.uri, on_request=kill_the_shipper_at_the_report_upload)
    try:
        params = {"W": np.ones((4, 3))}
        grads = {"W": np.full((4, 3), 0.5)}
        with gradwatch.GradWatch(
            experiment="t-killed",
            tracking_uri=proxy.uri,
            every=10,
            journal_dir=str(tmp_path / "j"),
            config=False,
        ) as watch:
            for step in range(30):
                watch.step(params, grads, loss=float(30 - step), lr=0.1)
        result = watch.close_result
    finally:
        proxy.close()
    assert killed, "the report was never uploaded"
    assert not result.complete and not result.journal_removed and result.journal_path.exists()
    shown = display_path(result.journal_path)
    assert f"the shipper (pid {killed[0]}) stopped before the run landed" in result.message
    assert result.message.endswith(f"run `gradwatch sync {shown}`")
    synced = sync_journal(
        result.journal_path, tracking_uri=mlflow_server.uri, settings=FAST, timeout=60
    )
    assert synced.complete, synced.message
    client = mlflow.MlflowClient(mlflow_server.uri)
    assert client.get_run(synced.run_id).info.status == "FINISHED"
    names = artifact_names(mlflow_server.uri, synced.run_id)
    assert {"gradwatch/report.html", "gradwatch/histograms.png"} <= names


FRESH_STORE_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, mlflow, gradwatch
    uri = "sqlite:///" + sys.argv[1]
    params = {"W": np.ones((6, 5)), "b": np.zeros(5)}
    def loss_fn(p):
        return float(((p["W"].sum(0) + p["b"]) ** 2).sum())
    with gradwatch.GradWatch(every=50, experiment="fresh", tracking_uri=uri, config=False) as watch:
        for _ in range(300):
            g = 2 * (params["W"].sum(0) + params["b"])
            grads = {"W": np.tile(g, (6, 1)), "b": g}
            watch.step(params, grads, loss=loss_fn(params), lr=1e-3, loss_fn=loss_fn)
            for k in params:
                params[k] -= 1e-3 * grads[k]
    client = mlflow.MlflowClient(uri)  # right after the with block, a plain client
    run = client.get_run(watch.close_result.run_id)
    history = client.get_metric_history(run.info.run_id, "loss")
    names = sorted(f.path for f in client.list_artifacts(run.info.run_id, "gradwatch"))
    print("RESULT", run.info.status, len(history), ",".join(names))
    print("MESSAGE", watch.close_result.message)
    """
)


@pytest.mark.slow
def test_a_fresh_sqlite_store_is_readable_right_after_the_with_block_under_load(tmp_path):
    # Three busy processes a core's worth each: the first run on a fresh machine, loaded.
    burners = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(3)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    outcomes = []
    try:
        for attempt in range(10):
            workdir = tmp_path / f"fresh{attempt}"
            workdir.mkdir()
            db = workdir / "not-yet" / "mlflow.db"  # neither the file nor its folder exist
            out = subprocess.run(
                [sys.executable, "-c", FRESH_STORE_SCRIPT, str(db)],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            result = [line for line in out.stdout.splitlines() if line.startswith("RESULT")]
            message = [line for line in out.stdout.splitlines() if line.startswith("MESSAGE")]
            outcomes.append((out.returncode, result, message, out.stderr))
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    for returncode, result, message, stderr in outcomes:
        assert returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
        status, points, names = result[0].split()[1:]
        assert (status, points) == ("FINISHED", "300")
        assert {"gradwatch/report.html", "gradwatch/histograms.png"} <= set(names.split(","))
        assert "complete" in message[0]
        for word in ("pending", "server", "unreachable", "alembic"):
            assert word not in message[0] + stderr.lower().replace("alembic.runtime", ""), stderr
    # No journal left behind by any run.
    assert not list(tmp_path.glob("fresh*/.gradwatch/journal/*.jsonl"))


DISK_FULL_CHILD = textwrap.dedent(
    """
    import json, sys
    from gradwatch.tracking import ShipperSettings, open_run
    run = open_run(tracking_uri=sys.argv[1], experiment="t-disk-full", journal_dir=sys.argv[2],
                   settings=ShipperSettings(interval=0.2, request_timeout=5.0))
    for step in range(40000):
        run.log_metrics(step, {"loss": 1.0 / (step + 1), "lr": 0.1})
        if step == 5000:  # another program fills the disk to the last byte, mid-run
            with open(sys.argv[3], "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"x" * 4096)
                        f.flush()
                except OSError:
                    pass
    run.append_artifact_line("gradwatch/alerts.jsonl", {"rule": "r", "step": 1})
    result = run.close(timeout=30)
    print(json.dumps({"status": result.status, "dropped": result.dropped, "pending": result.pending,
                      "run_id": result.run_id, "message": result.message}))
    """
)


def test_a_disk_that_fills_up_mid_run_ends_the_run_failed_in_mlflow_and_says_disk_full(
    tracking_uri, tmp_path
):
    # A real 2 MB tmpfs for the journal when this process may mount one (root); otherwise
    # test_tracking_faults.py's file-size limit stands in for it.
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                DISK_FULL_CHILD,
                tracking_uri,
                str(disk / "j"),
                str(disk / "filler"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["status"] == "FAILED" and result["pending"] == 0, result
    assert result["dropped"] > 10000  # the disk filled up at step 5000
    assert result["message"].startswith(f"gradwatch: disk full at {disk / 'j'}: ")
    assert "server" not in result["message"]
    run = mlflow.MlflowClient(tracking_uri).get_run(result["run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["gradwatch.journal_dropped"].startswith(f"{result['dropped']} records")
    assert "Traceback" not in out.stderr


def test_sync_of_a_read_only_journal_says_so_in_one_line(tmp_path):
    dead = "http://127.0.0.1:9"  # discard port: nothing answers, the journal stays
    journal_dir = tmp_path / "ro"
    run = open_run(tracking_uri=dead, experiment="t-ro", journal_dir=journal_dir, settings=FAST)
    run.log_metrics(0, {"loss": 1.0})
    result = run.close(timeout=1.0)
    assert result.pending > 0
    for path in journal_dir.iterdir():  # what the shipper left besides the journal itself
        if path != result.journal_path and path.is_file():
            path.unlink()
    # Read-only for root too: a read-only bind mount of the folder.
    mounts = [
        ["mount", "--bind", str(journal_dir), str(journal_dir)],
        ["mount", "-o", "remount,ro,bind", str(journal_dir)],
    ]
    if any(subprocess.run(m, capture_output=True).returncode for m in mounts):
        subprocess.run(["umount", str(journal_dir)], capture_output=True)
        os.chmod(journal_dir, 0o500)  # not root (or no mount): the mode does it
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "gradwatch",
                "sync",
                str(result.journal_path),
                "--tracking-uri",
                dead,
                "--timeout",
                "5",
            ],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            timeout=120,
        )
    finally:
        subprocess.run(["umount", str(journal_dir)], capture_output=True)
        os.chmod(journal_dir, 0o700)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    assert (
        f"cannot write beside {result.journal_path}" in out.stderr
        or "cannot write beside" in out.stderr
    )
    assert "make" in out.stderr and "writable" in out.stderr


def test_every_file_the_hook_writes_is_private_even_in_a_folder_open_to_others(
    tracking_uri, tmp_path
):
    import stat

    import numpy as np

    import gradwatch

    journal_dir = tmp_path / "shared"
    journal_dir.mkdir(mode=0o755)
    os.chmod(journal_dir, 0o755)  # a folder others may read: the files must not be
    params = {"W": np.ones((4, 3))}

    def loss_fn(p):
        return float((p["W"] ** 2).sum())

    with gradwatch.GradWatch(
        experiment="t-private",
        tracking_uri=tracking_uri,
        every=5,
        journal_dir=str(journal_dir),
        keep_journal=True,
        config=False,
    ) as watch:
        for _ in range(20):
            watch.step(
                params, {"W": 2 * params["W"]}, loss=loss_fn(params), lr=0.01, loss_fn=loss_fn
            )
            params["W"] -= 0.01 * 2 * params["W"]
    assert watch.close_result.complete, watch.close_result.message
    written = list(journal_dir.rglob("*"))
    files = [p for p in written if p.is_file()]
    assert any(p.suffix == ".jsonl" for p in files)
    assert any(p.parent.name != "shared" for p in files)  # in <journal>.files/: copies, lines
    for path in written:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}: readable by others"


@pytest.mark.parametrize("opened", ["own", "users_run", "nested"])
def test_a_landed_journal_is_removed_however_the_run_was_opened(opened, tracking_uri, tmp_path):
    import numpy as np

    import gradwatch

    journal_dir = tmp_path / "j"
    mlflow.set_tracking_uri(tracking_uri)
    active = []
    try:
        if opened != "own":
            active.append(mlflow.start_run())
        if opened == "nested":
            active.append(mlflow.start_run(nested=True))
        params = {"W": np.ones((3, 2))}
        with gradwatch.GradWatch(
            experiment=None if active else "t-removed",
            every=None,
            tracking_uri=tracking_uri,
            journal_dir=str(journal_dir),
            config=False,
        ) as watch:
            for _ in range(5):
                watch.step(params, {"W": params["W"] * 0.1}, loss=1.0, lr=0.1)
                params["W"] -= 0.01
    finally:
        for _ in active:
            mlflow.end_run()
        mlflow.set_tracking_uri(None)
    result = watch.close_result
    assert result.complete and result.journal_removed, result.message
    assert not list(journal_dir.glob("*.jsonl")) and not list(journal_dir.iterdir())
    if active:
        assert result.run_id == active[-1].info.run_id
    names = artifact_names(tracking_uri, result.run_id)
    assert "gradwatch/report.html" in names


def test_runs_one_after_another_leave_no_file_open(tracking_uri):
    import gc
    import warnings

    import numpy as np

    import gradwatch

    params = {"W": np.ones((3, 2))}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            with gradwatch.GradWatch(
                experiment="t-files",
                tracking_uri=tracking_uri,
                every=None,
                report=False,
                config=False,
            ) as watch:
                watch.step(params, {"W": params["W"]}, loss=1.0, lr=0.1)
            assert watch.close_result.complete, watch.close_result.message
            del watch
            gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []
