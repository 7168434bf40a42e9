"""Shared fixtures: one real MLflow tracking server per test session, and the test markers.

Tests that only read and write share ``mlflow_server``; a test that kills or restarts a
server starts its own ``MlflowServer`` (see tests/mlflow_server.py).

Markers: ``slow`` (long end-to-end runs) is set by hand; ``server`` (needs a real MLflow
server or store process) is set here on every test that uses the shared server, and on the
tests below that start their own. ``pytest -m "not slow and not server"`` is the fast subset
(under a minute).
"""

from __future__ import annotations

import os

import pytest

from tests.mlflow_server import MlflowServer

SERVER_FIXTURES = {"mlflow_server", "tracking_uri"}
#: Modules whose every test runs its own servers.
SERVER_MODULES = {"test_stack.py"}
#: Tests that start an embedded store, a shipper or a killed writer of their own (seconds
#: each); better marked in their files with ``@pytest.mark.server``.
SERVER_TESTS = {
    "test_custom_loop_on_the_embedded_store",
    "test_embedded_sqlite_is_the_default",
    "test_embedded_default_store_without_any_server",
    "test_journal_lines_survive_kill9_and_readers_never_see_half_a_line",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        uses_server = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        if "request" in getattr(item, "fixturenames", ()) and not uses_server:
            # `request.getfixturevalue("tracking_uri")` hides the fixture from the scan above:
            # such a test must say @pytest.mark.server itself, or the fast subset starts a server.
            source = getattr(getattr(item, "function", None), "__code__", None)
            asks = source is not None and "getfixturevalue" in source.co_names
            if (
                asks
                and SERVER_FIXTURES & set(source.co_consts)
                and not item.get_closest_marker("server")
            ):
                raise pytest.UsageError(
                    f"{item.nodeid} asks for a server fixture through request.getfixturevalue; "
                    "mark it @pytest.mark.server"
                )
        if uses_server or item.path.name in SERVER_MODULES or item.originalname in SERVER_TESTS:
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
