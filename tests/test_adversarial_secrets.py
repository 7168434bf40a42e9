"""Passwords with odd characters in URIs, drawn at random (hypothesis): the secret never appears
in any output, file, param or tag — masking, the hook's files and run, and the CLI's errors.

A password is drawn as distinctive pieces (``qX<n>`` + letters) glued by the characters that
broke masking before (``@``, ``/``, ``:``, ``%`` ...): the assertions look for every piece, so
a secret cut in two at an ``@`` (the old leak: ``http://alice:***@ssW0rd@host``) is caught.
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradwatch import GradWatch
from gradwatch.cli import main
from gradwatch.secrets import mask_uri, split_userinfo
from tests.mlflow_server import free_port

GLUE = "@/:%?#!$&'()*+,;=[]~"


@st.composite
def passwords(draw) -> tuple[str, list[str]]:
    """``(password, its pieces)``: 1-4 pieces, each glued to the next by 1-3 odd characters."""
    count = draw(st.integers(1, 4))
    pieces = [
        f"qX{i}" + draw(st.text(string.ascii_letters + string.digits, min_size=3, max_size=8))
        for i in range(count)
    ]
    glues = [draw(st.text(GLUE, min_size=1, max_size=3)) for _ in range(count)]
    lead = draw(st.text(GLUE, max_size=2))
    return lead + "".join(p + g for p, g in zip(pieces, glues)), pieces


def _leaks(text: str, pieces: list[str]) -> list[str]:
    return [p for p in pieces if p in text]


URI_FORMS = [
    "http://alice:{pw}@127.0.0.1:5000",
    "https://alice:{pw}@mlflow.example.com/base/path?x=1",
    "postgresql+psycopg2://mlflow:{pw}@db:5432/mlflow",
    "https://{pw}@hooks.example.com/T0/B0",
]


@settings(max_examples=300, deadline=None)
@given(
    passwords(), st.sampled_from(URI_FORMS), st.sampled_from(["{}", "cannot reach {}: x", "'{}'"])
)
def test_masking_hides_every_piece_of_a_random_password(drawn, form, context):
    password, pieces = drawn
    if form.startswith("https://{pw}"):  # a bare token: a ':' in it would start a password
        password = password.replace(":", "")
    uri = form.format(pw=password)
    shown = mask_uri(context.format(uri))
    assert not _leaks(shown, pieces), shown
    assert "***@" in shown
    # The host stays readable, so the message still says which server it is about.
    host = form.split("@")[1].split("/")[0]
    assert host in shown


@settings(max_examples=300, deadline=None)
@given(passwords())
def test_split_userinfo_gives_back_the_password_and_a_uri_without_it(drawn):
    password, pieces = drawn
    bare, user, got = split_userinfo(f"http://alice:{password}@127.0.0.1:5000/x")
    assert (bare, user) == ("http://127.0.0.1:5000/x", "alice")
    assert got == __import__("urllib.parse").parse.unquote(password)
    assert not _leaks(bare, pieces)


def test_masking_examples_from_the_field():
    assert mask_uri("http://alice:p@ssW0rd@127.0.0.1") == "http://alice:***@127.0.0.1"
    assert mask_uri("http://alice:pa/ss@127.0.0.1:5/x") == "http://alice:***@127.0.0.1:5/x"
    assert mask_uri("https://TOKEN@host/x") == "https://***@host/x"
    assert mask_uri("sqlite:///mlflow.db and http://host:5000/x") == (
        "sqlite:///mlflow.db and http://host:5000/x"
    )
    assert mask_uri("a_http://u:p@h") == "a_http://u:***@h"


def _files_text(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(root.rglob("*")) if p.is_file())


@pytest.mark.slow
@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(drawn=passwords())
def test_a_run_through_a_uri_with_a_random_password_leaks_it_nowhere(mlflow_server, capfd, drawn):
    """The hook's journal, state file, ship log, report, params, tags and console output."""
    password, pieces = drawn
    server = mlflow_server.uri.split("://", 1)[1]
    uri = f"http://alice:{password}@{server}"
    with tempfile.TemporaryDirectory() as tmp:
        journal_dir = Path(tmp) / "journal"
        rng = np.random.default_rng(0)
        params = {"w": rng.normal(size=(3, 2))}
        with GradWatch(
            every=2,
            experiment="adv-random-pw",
            tracking_uri=uri,
            journal_dir=str(journal_dir),
            keep_journal=True,
            config=False,
            params={"note": f"mirror {uri}"},
        ) as watch:
            for _ in range(6):
                grads = {"w": params["w"] * 2}
                watch.step(
                    params,
                    grads,
                    loss=float(np.sum(params["w"] ** 2)),
                    loss_fn=lambda q: float(np.sum(q["w"] ** 2)),
                )
        out, err = capfd.readouterr()
        files = _files_text(Path(tmp))
        assert files, "the journal was kept"
        client = mlflow.MlflowClient(mlflow_server.uri)
        run = client.get_run(watch.run.run_id)
        report = Path(client.download_artifacts(run.info.run_id, "gradwatch", tmp))
        recorded = repr(run.data.params) + repr(run.data.tags) + _files_text(report)
        for where, text in {"console": out + err, "files": files, "mlflow": recorded}.items():
            assert not _leaks(text, pieces), (where, pieces)
        assert "alice:***@" in recorded + files


@settings(max_examples=4, deadline=None)
@given(drawn=passwords(), command=st.sampled_from(["compare", "monitor", "report", "sync"]))
def test_cli_errors_with_a_random_password_in_the_uri_leak_nothing(drawn, command):
    password, pieces = drawn
    uri = f"http://alice:{password}@127.0.0.1:{free_port()}"
    args = {
        "compare": ["compare", "-e", "x", "--tracking-uri", uri],
        "monitor": ["monitor", "-e", "x", "--once", "--tracking-uri", uri],
        "report": ["report", "0123abcd", "--no-upload", "--tracking-uri", uri],
        "sync": ["sync", "--timeout", "0", "--tracking-uri", uri],
    }[command]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 or command == "sync", result.output
    assert not _leaks(result.output, pieces), result.output
    assert "Traceback" not in result.output
