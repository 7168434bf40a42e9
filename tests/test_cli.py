"""The gradwatch command end to end against a real MLflow server: demo -> compare verdicts,
sweep of a real training script, sync of a journal left offline, and argument errors."""

from __future__ import annotations

import io
import json
import os
import re
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

import gradwatch
from gradwatch.cli import main
from gradwatch.demo.run import plan, ui_command
from gradwatch.errors import InputError
from gradwatch.params import param, param_env_name, sweep_params
from tests.mlflow_server import free_port

REPO = Path(__file__).resolve().parents[1]


def test_help_everywhere():
    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    for command in ("demo", "compare", "sweep", "monitor", "sync"):
        assert command in top.output
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "Usage: " in result.output, command
    assert gradwatch.__version__ in runner.invoke(main, ["--version"]).output


def test_demo_runs_are_compared_with_the_right_verdicts(tracking_uri):
    experiment = f"demo-{time.time_ns()}"
    result = CliRunner().invoke(main, ["demo", "--quick", "--experiment", experiment])
    assert result.exit_code == 0, result.output
    exp_id = MlflowClient(tracking_uri).get_experiment_by_name(experiment).experiment_id
    assert (
        f"all runs of the experiment: {tracking_uri}/#/experiments/{exp_id}/runs" in result.output
    )
    # Progress: one line per finished run, with its verdict and its link (stderr is no
    # terminal here: no redraws).
    run_link = rf"{re.escape(tracking_uri)}/#/experiments/{exp_id}/runs/\w+"
    assert re.search(
        rf"\[1/12\] classic lr=0\.2: final loss \d\S*, verdict ok -> {run_link}\n", result.stderr
    )
    assert re.search(
        r"\[6/12\] classic lr=1e-10 BUG: final loss \d\S*, verdict BACKPROP BUG \+ stalled ",
        result.stderr,
    )
    # The MLP's planted bug is one tensor's gradient x2: a bug in that tensor, not a convention
    # factor every tensor shares.
    assert re.search(
        r"\[12/12\] mlp lr=1e-10 BUG: final loss \d\S*, verdict BACKPROP BUG \+ stalled ",
        result.stderr,
    )
    assert "\r" not in result.stderr
    assert "gradwatch: verdict" not in result.stderr  # the hook's own lines: folded into those
    sweep = re.search(r"--sweep (\S+)", result.output).group(1)
    # Every run landed whole before the table was printed: no journal is left behind.
    assert not list(Path(".gradwatch/journal").glob("*.jsonl"))
    # One parent run, its description listing every run's verdict; the runs its children.
    parent_id = (
        re.search(rf"parent run \(its description lists every verdict\): {run_link}", result.output)
        .group(0)
        .rsplit("/", 1)[1]
    )
    parent = MlflowClient(tracking_uri).get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["gradwatch.sweep_parent"] == sweep
    children = MlflowClient(tracking_uri).search_runs(
        [exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    assert len(children) == 12
    for child in children:
        verdict = child.data.tags["gradwatch.verdict"]
        assert f"| {child.info.run_name} | {verdict} |" in parent.data.tags["mlflow.note.content"]

    out = CliRunner().invoke(
        main, ["compare", "-e", experiment, "--sweep", sweep, "--format", "json"]
    )
    assert out.exit_code == 0, out.output
    records = {r["run_name"]: r for r in json.loads(out.stdout)}
    assert set(records) == {spec.run_name for spec in plan()}
    for name, rec in records.items():
        lr = float(rec["params"]["lr"])
        bug = name.endswith("BUG")
        assert rec["checks"] >= 1, name
        if bug:
            assert rec["checks_failed"] == rec["checks"], f"{name}: the planted bug must fail"
            assert rec["max_rel_error"] > 1e-2 and "check_failure" in rec["alert_rules"]
            # The same verdict as the full demo's: a factor in dW2 alone is a bug.
            assert rec["verdict"].startswith("BACKPROP BUG"), rec["verdict"]
        else:
            assert rec["checks_failed"] == 0, f"{name}: correct backprop must pass"
            assert rec["max_rel_error"] < 1e-4
        if lr == 10:
            assert rec["diverged"], f"{name} must be flagged diverged"
        else:
            assert not rec["diverged"], name
        if lr == 1e-10:
            assert rec["stalled"], f"{name} barely moves"
        if lr == 0.2:
            # It learns, bug or not: the loss alone would not give the bug away.
            assert not rec["stalled"]
            assert rec["final_loss"] < records[name.replace("0.2", "1e-10")]["final_loss"] / 2


def test_ui_command_names_the_store(tmp_path):
    path = os.path.abspath("mlflow.db")
    assert ui_command("sqlite:///mlflow.db") == f"mlflow ui --backend-store-uri sqlite:///{path}"
    assert ui_command("http://127.0.0.1:5000/", "3") == "open http://127.0.0.1:5000/#/experiments/3"


TRAIN = textwrap.dedent(
    """
    import numpy as np
    import gradwatch

    lr = gradwatch.param("lr", 0.1)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 3)), rng.normal(size=64)
    params = {"w": np.zeros(3)}

    def loss_fn(p):
        return float(np.mean((X @ p["w"] - y) ** 2))

    with gradwatch.GradWatch(every=5, params={"lr": lr}, config=False) as watch:
        for step in range(20):
            grads = {"w": 2 * X.T @ (X @ params["w"] - y) / len(y)}
            watch.step(params, grads, loss=loss_fn(params), lr=lr, loss_fn=loss_fn)
            params["w"] = params["w"] - lr * grads["w"]
    """
)


def test_sweep_runs_the_script_once_per_lr(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    experiment = f"sweep-{time.time_ns()}"
    result = CliRunner().invoke(
        main,
        [
            "sweep",
            str(script),
            "--lr",
            "0.1",
            "0.01",
            "1e-10",
            "--parallel",
            "2",
            "--experiment",
            experiment,
        ],
    )
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    everything = client.search_runs([exp.experiment_id])
    # One parent run for the sweep, one child run per value (the MLflow UI folds them).
    (parent,) = [r for r in everything if "gradwatch.sweep_parent" in r.data.tags]
    runs = [r for r in everything if r is not parent]
    assert sorted(r.info.run_name for r in runs) == ["lr=0.01", "lr=0.1", "lr=1e-10"]
    assert {r.data.tags.get("mlflow.parentRunId") for r in runs} == {parent.info.run_id}
    sweep_ids = {r.data.tags.get("gradwatch.sweep_id") for r in runs}
    assert sweep_ids == {parent.data.tags["gradwatch.sweep_parent"]}
    assert sweep_ids.pop() in result.output
    for r in runs:
        assert r.data.params["lr"] == r.info.run_name.split("=")[1]
        assert r.info.status == "FINISHED"
    assert parent.info.status == "FINISHED" and parent.data.params == {"lr": "0.1, 0.01, 1e-10"}
    assert parent.data.metrics == {}  # nothing of the children merged into it
    # The summary table at the end lists all three; the parent's description their verdicts.
    note = parent.data.tags["mlflow.note.content"]
    for r in runs:
        assert r.info.run_name in result.stdout
        assert f"| {r.info.run_name} | {r.data.tags['gradwatch.verdict']} |" in note
    assert (
        f"the sweep's parent run: {tracking_uri}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}"
        in result.output
    )


def test_sweep_reports_failing_runs(tmp_path, tracking_uri):
    script = tmp_path / "boom.py"
    script.write_text("import sys\nprint('exploding now')\nsys.exit(3)\n")
    result = CliRunner().invoke(main, ["sweep", str(script), "--lr", "1", "2"])
    assert result.exit_code == 1
    assert "2 of 2 run(s) failed" in result.output and "exploding now" in result.output
    assert "Traceback" not in result.output
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("sweep-boom")
    (parent,) = client.search_runs([exp.experiment_id])
    assert parent.info.status == "FAILED"
    assert "| lr=1.0 | script failed (exit 3) |" in parent.data.tags["mlflow.note.content"]


def test_sweep_argument_errors(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("pass\n")
    runner = CliRunner()
    for args, needle in [
        (["sweep", str(script)], "give the values to sweep"),
        (["sweep", str(script), "--lr", "abc"], "'abc' is not a valid float"),
        (["sweep", str(script), "--lr", "0.1", "--parallel", "0"], "--parallel"),
        (["sweep", str(tmp_path / "missing.py"), "--lr", "0.1"], "does not exist"),
        (["sweep", str(script), "-p", "batch"], "is not NAME=V1,V2"),
    ]:
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Usage: " in result.output and needle in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_param_reads_typed_values(monkeypatch):
    assert param("lr", 0.1) == 0.1
    monkeypatch.setenv("GRADWATCH_PARAM_LR", "1e-3")
    monkeypatch.setenv("GRADWATCH_PARAM_EPOCHS", "7")
    monkeypatch.setenv("GRADWATCH_PARAM_SHUFFLE", "off")
    monkeypatch.setenv("GRADWATCH_PARAM_HIDDEN_SIZE", "12")
    assert gradwatch.param("lr", 0.1) == 1e-3
    assert param("epochs", 3) == 7 and isinstance(param("epochs", 3), int)
    assert param("shuffle", True) is False
    assert param("hidden-size", 8) == 12 and param_env_name("hidden-size").endswith("HIDDEN_SIZE")
    assert param("lr", None) == "1e-3"
    monkeypatch.setenv("GRADWATCH_PARAM_EPOCHS", "three")
    with pytest.raises(InputError, match="GRADWATCH_PARAM_EPOCHS='three'"):
        param("epochs", 3)
    assert sweep_params()["lr"] == "1e-3"


def test_sync_lands_an_offline_journal_once(tracking_uri, tmp_path):
    from gradwatch.tracking import open_run

    dead = f"http://127.0.0.1:{free_port()}"
    run = open_run(tracking_uri=dead, experiment=f"sync-{time.time_ns()}", run_name="offline")
    for step in range(5):
        run.log_metrics(step, {"loss": 1.0 / (step + 1)})
    closed = run.close("FINISHED", timeout=0.5)
    assert closed.pending > 0

    runner = CliRunner()
    listing = runner.invoke(main, ["sync", "--tracking-uri", tracking_uri])
    assert listing.exit_code == 0, listing.output
    assert "synced" in listing.output
    again = runner.invoke(main, ["sync", "--tracking-uri", tracking_uri])
    assert again.exit_code == 0 and "nothing to sync" in again.output

    client = MlflowClient(tracking_uri)
    [landed] = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="attributes.run_name = 'offline'",
    )
    assert [m.step for m in client.get_metric_history(landed.info.run_id, "loss")] == list(range(5))

    missing = runner.invoke(main, ["sync", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_live_on_a_terminal_and_one_line_per_item_elsewhere():
    from gradwatch.cli import Progress

    pipe = io.StringIO()
    progress = Progress(pipe)
    progress.update("[1/2] lr=0.1: step 10/300")
    progress.finished("[1/2] lr=0.1: final loss 0.3")
    progress.close()
    assert pipe.getvalue() == "[1/2] lr=0.1: final loss 0.3\n", "no control characters in logs"

    tty = _Terminal()
    progress = Progress(tty)
    progress.update("[1/2] lr=0.1: step 10/300")
    progress.finished("[1/2] lr=0.1: final loss 0.3")
    progress.update("[2/2] lr=1: step 1/300")
    progress.close()
    out = tty.getvalue()
    assert out.startswith("\r\x1b[K[1/2] lr=0.1: step 10/300")
    assert "\r\x1b[K[1/2] lr=0.1: final loss 0.3\n" in out and out.endswith("\r\x1b[K")


def test_sweep_says_which_run_finished(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    result = CliRunner().invoke(main, ["sweep", str(script), "--lr", "0.1", "0.01"])
    assert result.exit_code == 0, result.output
    assert re.search(r"\[1/2\] lr=0\.1: ok in \d+\.\d s", result.stderr)
    assert re.search(r"\[2/2\] lr=0\.01: ok in \d+\.\d s", result.stderr)
    assert "\r" not in result.stderr, "not a terminal: no progress redraws"


def test_demo_reports_each_step_of_a_run(tracking_uri):
    from gradwatch.demo.run import DemoRun, train

    seen = []
    spec = DemoRun("mlp", 0.2, False, steps=12)
    train(spec, tracking_uri, f"steps-{time.time_ns()}", "s", on_step=lambda s, n: seen.append(n))
    assert seen == list(range(1, 13))


# --------------------------------------------------------------------------------------------
# One exit code per class of error; the examples' configs load without a warning


@pytest.mark.server  # an embedded store of its own
def test_exit_codes_are_one_per_class_of_error_in_every_command(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text("alerts:\n  rules:\n    - {type: nonfinite, sevrity: critical}\n")
    usage = {  # bad input: 2
        "compare": ["compare", "--format", "xml", "-e", "x"],
        "monitor": ["monitor", "-e", "x", "--rules", str(bad), "--once"],
        "report": ["report"],
        "sync": ["sync", str(tmp_path / "nope.jsonl")],
        "sweep": ["sweep", str(bad), "-p", "batch"],
    }
    for name, args in usage.items():
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (name, result.output)
    # The store has no such thing: 1, like an unreachable server, and no usage banner.
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(store).search_experiments()  # creates the store
    missing = {
        "compare": ["compare", "-e", "nope", "--tracking-uri", store],
        "compare --runs": ["compare", "--runs", "0123abcd", "--tracking-uri", store],
        "monitor": ["monitor", "-e", "nope", "--once", "--tracking-uri", store],
        "report": ["report", "0123abcd", "--no-upload", "--tracking-uri", store],
    }
    for name, args in missing.items():
        result = runner.invoke(main, args)
        assert result.exit_code == 1, (name, result.output)
        assert "Usage:" not in result.output and "Traceback" not in result.output, result.output
    down = f"http://127.0.0.1:{free_port()}"
    for args in (["compare", "-e", "x"], ["monitor", "-e", "x", "--once"], ["report", "ab"]):
        result = runner.invoke(main, [*args, "--tracking-uri", down])
        assert result.exit_code == 1, (args, result.output)


@pytest.mark.server  # an embedded store of its own
@pytest.mark.parametrize("example", ["gradwatch.yaml", "alerts.yaml"])
def test_the_examples_configs_load_in_the_monitor_without_a_warning(tmp_path, example):
    from mlflow.entities import Metric

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    exp_id = client.create_experiment("healthy")
    run_id = client.create_run(exp_id, run_name="ok").info.run_id
    ts = int((time.time() - 60) * 1000)
    client.log_batch(run_id, metrics=[Metric("loss", 1.0 / (1 + s), ts, s) for s in range(30)])
    config = Path(__file__).resolve().parents[1] / "examples" / example
    result = CliRunner().invoke(
        main,
        ["monitor", "-e", "healthy", "--once", "--rules", str(config), "--tracking-uri", store],
    )
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.output and "unknown" not in result.output, result.output
    assert "1 active run(s), 30 new observation(s), 0 alert(s) sent" in result.output


def test_a_database_uri_without_its_driver_is_one_line_naming_the_driver():
    """``compare`` on a PostgreSQL URI whose driver is not installed: exit 1 and one line that
    names the driver and the extra, no traceback, the password masked."""
    pytest.importorskip("sqlalchemy")
    try:
        import psycopg  # noqa: F401

        pytest.skip("psycopg (v3) is installed: its absence is the subject")
    except ImportError:
        pass
    uri = "postgresql+psycopg://alice:s3cr3t@127.0.0.1:1/db"
    result = CliRunner().invoke(main, ["compare", "-e", "x", "--tracking-uri", uri])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "s3cr3t" not in result.output
    assert "driver 'psycopg' is not installed" in result.output
