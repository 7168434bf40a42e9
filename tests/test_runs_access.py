"""The MLflow access layer through the CLI: one-line errors with credentials masked, fail-fast
settings scoped to the command, lookups written once; and matplotlib as an optional extra."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from gradwatch.cli import main
from gradwatch.errors import InputError, TrackingError
from gradwatch.mlflow_access import (
    FAIL_FAST_SETTINGS,
    experiment_id,
    get_client,
    mlflow_errors,
    quick_http,
    resolve_tracking_uri,
)
from tests.mlflow_server import free_port

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "S3cretPW"


@pytest.fixture
def secret_dead_uri(monkeypatch):
    """A tracking URI with a password, on a port where nothing listens."""
    uri = f"http://bob:{PASSWORD}@127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _assert_one_masked_error(result) -> None:
    assert result.exit_code == 1, result.output
    assert PASSWORD not in result.output
    assert "bob:***@127.0.0.1" in result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output


def test_compare_monitor_sweep_mask_credentials_and_fail_fast(secret_dead_uri, tmp_path):
    for key in FAIL_FAST_SETTINGS:
        assert key not in os.environ
    started = time.monotonic()
    compare = CliRunner().invoke(main, ["compare", "-e", "mlp"])
    _assert_one_masked_error(compare)
    assert "server unreachable" in compare.output
    assert time.monotonic() - started < 30, "an outage is reported, not retried for minutes"

    monitor = CliRunner().invoke(main, ["monitor", "-e", "mlp", "--once"])
    _assert_one_masked_error(monitor)

    script = tmp_path / "train.py"
    script.write_text("pass\n")
    sweep = CliRunner().invoke(main, ["sweep", str(script), "--lr", "0.1"])
    _assert_one_masked_error(sweep)
    # The command's fail-fast settings end with the command (it ran inside this process).
    for key in FAIL_FAST_SETTINGS:
        assert key not in os.environ


def test_sync_output_masks_credentials(secret_dead_uri, tmp_path):
    from gradwatch.tracking import open_run

    run = open_run(tracking_uri=secret_dead_uri, experiment="secret", run_name="offline")
    run.log_metrics(0, {"loss": 1.0})
    run.close("FINISHED", timeout=0.5)
    result = CliRunner().invoke(main, ["sync", "--timeout", "1"])
    assert PASSWORD not in result.output, result.output
    assert "Traceback" not in result.output


def test_sweep_children_get_the_users_environment(tracking_uri, tmp_path, monkeypatch):
    """The command's own MLflow settings do not leak into the scripts it runs."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")  # the user's own choice
    script = tmp_path / "env.py"
    out = tmp_path / "env.txt"
    script.write_text(
        "import os\n"
        f"open({str(out)!r}, 'w').write(repr((os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES'),"
        " os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT'))))\n"
    )
    result = CliRunner().invoke(main, ["sweep", str(script), "--lr", "0.1", "-e", "env-check"])
    assert result.exit_code == 0, result.output
    assert out.read_text() == repr((None, "77"))


def test_lookups_and_errors_at_one_boundary(tracking_uri, tmp_path):
    client = get_client(tracking_uri)
    name = f"exists-{time.time_ns()}"
    created = experiment_id(client, name, create=True)
    assert experiment_id(client, name) == created == experiment_id(client, name, create=True)
    with pytest.raises(InputError, match=f"no experiment named 'nope'.*known: .*{name}"):
        experiment_id(client, "nope")
    with pytest.raises(TrackingError, match="cannot read: MLflow at http://127.0.0.1"):
        with mlflow_errors(client.tracking_uri, "cannot read"):
            MlflowClient(tracking_uri).get_run("0123456789abcdef")
    # A malformed run id is MLflow's error, reported as one line, not a traceback.
    result = CliRunner().invoke(main, ["compare", "--runs", "../../etc"])
    assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output


def test_tracking_uri_resolution_and_quick_http_leave_the_environment_alone(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{os.path.abspath('mlflow.db')}"
    assert (
        resolve_tracking_uri("sqlite:///runs/x.db") == f"sqlite:///{os.path.abspath('runs/x.db')}"
    )
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://h:5000")
    assert resolve_tracking_uri(None) == "http://h:5000"
    before = dict(os.environ)
    with quick_http():
        assert dict(os.environ) == before, "other threads must not see a changed environment"


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_plot_without_matplotlib_names_the_extra(tmp_path):
    blocked = "import sys; sys.modules['matplotlib'] = None\n"
    proc = _run_python(
        blocked + "from gradwatch.cli import main\n"
        f"main(['compare', '-e', 'x', '--plot', {str(tmp_path / 'a.png')!r}])\n"
    )
    assert proc.returncode == 2, proc.stderr
    assert "pip install gradwatch[plot]" in proc.stderr and "Traceback" not in proc.stderr


def test_plot_leaves_the_process_backend_alone(tmp_path):
    out = tmp_path / "runs.png"
    proc = _run_python(
        "import sys, matplotlib\n"
        "matplotlib.use('pdf')\n"
        "from gradwatch.runs.compare import RunCurves\n"
        "from gradwatch.runs.plot import plot_runs\n"
        f"plot_runs([RunCurves('a', [(0, 1.0), (1, 0.5)], [(0, 1e-9)])], {str(out)!r})\n"
        "assert matplotlib.get_backend().lower() == 'pdf', matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
