"""Shared fixtures: one real MLflow tracking server per test session, and the test markers.

Tests that only read and write share ``mlflow_server``; a test that kills or restarts a
server starts its own ``MlflowServer`` (see tests/mlflow_server.py).

Markers: ``slow`` (long end-to-end runs) is set by hand; ``server`` is set here on every test
that uses the shared server. ``pytest -m "not slow and not server"`` is the fast subset.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.mlflow_server import MlflowServer

# Older test modules import their helpers as top-level modules (`from zoo import ...`); until
# they say `from tests.zoo import ...`, the tests directory stays importable that way.
_TESTS_DIR = str(Path(__file__).parent)
if _TESTS_DIR not in sys.path:
    sys.path.append(_TESTS_DIR)

SERVER_FIXTURES = {"mlflow_server", "tracking_uri"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` (sqlite store) on a free loopback port, shared by the session."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tracking_uri(mlflow_server, monkeypatch):
    """The shared server's URI, also exported as MLFLOW_TRACKING_URI for the test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    return mlflow_server.uri


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Run each test in its own directory so journals and sqlite stores never collide."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    yield
