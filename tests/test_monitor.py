"""gradwatch monitor: server-side alert rules over real MLflow runs, delivered to a real
HTTP receiver on loopback, remembered in run tags so nothing is sent twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.entities import Metric

from gradwatch.alerts import AlertEngine, CheckObservation, Rule, StepObservation
from gradwatch.cli import main
from gradwatch.runs.monitor import (
    TAG_ALERTED,
    TAG_STATE,
    Monitor,
    check_report,
    observations,
    settled_upto,
)
from tests.mlflow_server import MlflowServer
from tests.webhooks import WebhookReceiver, webhook_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def receiver():
    r = WebhookReceiver()
    yield r
    r.close()


def _log(client: MlflowClient, run_id: str, series: dict[str, list[float]], age_s: float = 60):
    """Log ``{key: [value per step]}`` with timestamps ``age_s`` in the past (settled)."""
    ts = int((time.time() - age_s) * 1000)
    metrics = [Metric(k, v, ts, step) for k, vals in series.items() for step, v in enumerate(vals)]
    client.log_batch(run_id, metrics=metrics)


def _experiment(client: MlflowClient, name: str) -> str:
    return client.create_experiment(f"{name}-{time.time_ns()}")


def _baseline_and_drifting(client: MlflowClient, exp_id: str) -> tuple[str, str, str]:
    """A finished baseline run, a running run that drifts from it at step 12, a clean one."""
    base = client.create_run(exp_id, run_name="baseline", tags={"gradwatch.baseline": "true"})
    _log(
        client,
        base.info.run_id,
        {"loss": [1.0 / (1 + s) for s in range(1300)], "grad_norm/W1": [1.0] * 1300},
    )
    client.set_terminated(base.info.run_id)
    drift = client.create_run(exp_id, run_name="lr=0.1 drifting")
    _log(
        client,
        drift.info.run_id,
        {
            "loss": [1.0 / (1 + s) for s in range(20)],
            "grad_norm/W1": [1.0] * 12 + [40.0] * 8,
            "grad_norm/b1": [0.1] * 20,
        },
    )
    clean = client.create_run(exp_id, run_name="lr=0.1 clean")
    _log(
        client,
        clean.info.run_id,
        {
            "loss": [1.0 / (1 + s) for s in range(20)],
            "grad_norm/W1": [1.1] * 20,
            "grad_norm/b1": [0.1] * 20,
        },
    )
    return base.info.run_id, drift.info.run_id, clean.info.run_id


def test_once_delivers_baseline_drift_exactly_once_across_invocations(
    tracking_uri, receiver, tmp_path
):
    client = MlflowClient(tracking_uri)
    exp_id = _experiment(client, "monitor-once")
    exp_name = client.get_experiment(exp_id).name
    base_id, drift_id, clean_id = _baseline_and_drifting(client, exp_id)
    config = webhook_config(
        tmp_path / "gradwatch.yaml",
        receiver.url,
        "    - {name: drift, type: baseline_drift, actions: [log, 'webhook:recv'], factor: 3}\n",
    )
    args = ["monitor", "--experiment", exp_name, "--rules", config, "--once"]

    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert receiver.rules() == ["drift"]
    alert = receiver.bodies[0]["alert"]
    assert alert["step"] == 12 and alert["details"]["run_id"] == drift_id
    assert "grad_norm/W1" in receiver.bodies[0]["text"]
    assert client.get_run(drift_id).data.tags[TAG_ALERTED + "drift"] == "12"
    assert client.get_run(clean_id).data.tags[TAG_STATE] == "active"
    assert TAG_ALERTED + "drift" not in client.get_run(clean_id).data.tags

    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert "1 already sent before" in second.output
    assert receiver.rules() == ["drift"], "a second invocation must not re-send"

    # New steps that drift again after the cooldown are news; earlier ones stay quiet.
    ts = int((time.time() - 30) * 1000)
    later = [Metric("grad_norm/W1", 40.0, ts, step) for step in range(20, 1300)]
    client.log_batch(drift_id, metrics=later)
    third = CliRunner().invoke(main, args)
    assert third.exit_code == 0, third.output
    assert [b["alert"]["step"] for b in receiver.bodies] == [12, 1012]


def test_default_baseline_rule_with_explicit_baseline_run(tracking_uri, receiver, tmp_path):
    client = MlflowClient(tracking_uri)
    exp_id = _experiment(client, "monitor-baseline")
    exp_name = client.get_experiment(exp_id).name
    base_id, drift_id, _ = _baseline_and_drifting(client, exp_id)
    client.delete_tag(base_id, "gradwatch.baseline")  # chosen by --baseline instead
    # No baseline_drift rule configured: the monitor adds one that uses every webhook.
    config = webhook_config(tmp_path / "gradwatch.yaml", receiver.url, "    []\n")
    result = CliRunner().invoke(
        main, ["monitor", "-e", exp_name, "--rules", config, "--once", "--baseline", base_id]
    )
    assert result.exit_code == 0, result.output
    assert receiver.rules() == ["baseline_drift"]
    assert receiver.bodies[0]["alert"]["details"]["run_id"] == drift_id
    # The hook's own `mlflow` action tag is written too, so `compare` counts the alert.
    assert "gradwatch.alert.baseline_drift" in client.get_run(drift_id).data.tags


def test_unsettled_newest_step_waits(tracking_uri):
    client = MlflowClient(tracking_uri)
    exp_id = _experiment(client, "monitor-settle")
    run = client.create_run(exp_id, run_name="fresh")
    _log(client, run.info.run_id, {"loss": [1.0, 0.9, 0.8]}, age_s=0)
    histories = {"loss": client.get_metric_history(run.info.run_id, "loss")}
    assert settled_upto(histories, running=True, now=time.time(), settle=30) == 1
    assert settled_upto(histories, running=False, now=time.time(), settle=30) == 2
    assert settled_upto(histories, running=True, now=time.time() + 60, settle=30) == 2


def test_observations_rebuild_steps_and_checks():
    ts = int(time.time() * 1000)
    hist = {
        "loss": [Metric("loss", 0.5, ts, 0), Metric("loss", 0.4, ts, 1)],
        "grad_norm/W1": [Metric("grad_norm/W1", 2.0, ts, 0)],
        "nonfinite/W1": [Metric("nonfinite/W1", 0.0, ts, 0)],
        "gradcheck/passed": [Metric("gradcheck/passed", 0.0, ts, 1)],
        "gradcheck/max_rel_error": [Metric("gradcheck/max_rel_error", 0.3, ts, 1)],
        "gradcheck/rel_error/W1": [Metric("gradcheck/rel_error/W1", 0.3, ts, 1)],
        "gradcheck/rel_error/b1": [Metric("gradcheck/rel_error/b1", 1e-9, ts, 1)],
    }
    obs = observations(hist)
    assert [type(o).__name__ for o in obs] == [
        "StepObservation",
        "StepObservation",
        "CheckObservation",
    ]
    assert obs[0].grad_norms == {"W1": 2.0} and obs[0].nonfinite == {"W1": 0}
    report = obs[2].report
    assert report["passed"] is False
    assert report["per_param"]["W1"]["verdict"] == "mismatch"
    assert report["per_param"]["b1"]["verdict"] == "ok"
    assert [o.step for o in observations(hist, after=0)] == [1, 1]
    # The rebuilt report is what the check_failure detector reads.
    engine = AlertEngine([Rule("cf", "check_failure")])
    assert [a.rule for a in engine.observe_check(obs[2])] == ["cf"]
    assert check_report({"gradcheck/passed": 1.0})["passed"] is True
    bare = check_report({"gradcheck/passed": 0.0, "gradcheck/max_rel_error": 0.2})
    assert [
        a.rule
        for a in AlertEngine([Rule("cf", "check_failure")]).observe_check(
            CheckObservation(step=5, report=bare)
        )
    ] == ["cf"]
    assert engine.observe_step(StepObservation(step=2, loss=0.3)) == []


def test_bad_arguments_are_one_line_usage_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["monitor"])
    assert result.exit_code == 2 and "Usage:" in result.output
    assert "Missing option '--experiment'" in result.output
    result = runner.invoke(main, ["monitor", "-e", "x", "--interval", "0"])
    assert result.exit_code == 2 and "--interval" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("alerts:\n  rules:\n    - {name: x, type: baseline_drift, factr: 3}\n")
    result = runner.invoke(main, ["monitor", "-e", "x", "--rules", str(bad), "--once"])
    assert result.exit_code == 2
    assert "bad.yaml:3" in result.output and "Traceback" not in result.output


@pytest.mark.slow  # restarts a dedicated server: ~15 s on a quiet machine
def test_service_survives_server_restart_and_stops_on_sigterm(tmp_path, receiver):
    server = MlflowServer(tmp_path / "server").start()
    proc = None
    try:
        client = MlflowClient(server.uri)
        exp_id = client.create_experiment("service")
        run_a = client.create_run(exp_id, run_name="a").info.run_id
        _log(client, run_a, {"loss": [1.0, 0.9, float("nan"), 0.5]})
        config = webhook_config(
            tmp_path / "gradwatch.yaml",
            receiver.url,
            "    - {name: nan, type: nonfinite, actions: [log, webhook]}\n",
        )
        env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=server.uri)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from gradwatch.cli import main; main()",
                "monitor",
                "-e",
                "service",
                "--rules",
                config,
                "--interval",
                "0.5",
                "--settle",
                "0",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _wait(lambda: len(receiver.bodies) >= 1, 60, proc)
        assert receiver.bodies[0]["alert"]["details"]["run_id"] == run_a

        server.kill()
        time.sleep(2.0)  # a few polls fail while the server is down
        assert proc.poll() is None, "the monitor must survive the outage"
        server.start()
        run_b = client.create_run(exp_id, run_name="b").info.run_id
        _log(client, run_b, {"loss": [1.0, float("inf")]})
        _wait(lambda: len(receiver.bodies) >= 2, 60, proc)
        time.sleep(1.5)  # more polls: nothing may be sent again
        assert [b["alert"]["details"]["run_id"] for b in receiver.bodies] == [run_a, run_b]

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "poll failed" in out and "monitor stopped" in out
        assert "Traceback" not in out
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        server.stop()


def _wait(cond, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"monitor exited early:\n{proc.stdout.read()}")
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the monitor")


def test_rules_evaluated_on_what_the_hook_really_logged(tracking_uri, receiver, tmp_path):
    """A live hook run with a backprop bug: the monitor rebuilds its checks and fires."""

    import gradwatch
    from gradwatch.demo import MLP, make_blobs

    X, y = make_blobs(n=64, dim=8, classes=3, seed=0)
    mlp = MLP([8, 16, 3], seed=0)
    params = mlp.params
    experiment = f"monitor-hook-{time.time_ns()}"
    watch = gradwatch.GradWatch(every=10, experiment=experiment, run_name="buggy", config=False)
    watch.start()
    try:
        for _ in range(30):
            loss, grads = mlp.loss_and_grads(params, X, y)
            grads["dW2"] = grads["dW2"] * 2.0
            watch.step(params, grads, loss=loss, lr=0.1, loss_fn=lambda p: mlp.loss(p, X, y))
            for k in params:
                params[k] -= 0.1 * grads["d" + k]
        assert watch.run.flush(timeout=30) == 0
        config = webhook_config(
            tmp_path / "gradwatch.yaml",
            receiver.url,
            "    - {name: bug, type: check_failure, actions: [webhook]}\n",
        )
        result = CliRunner().invoke(
            main, ["monitor", "-e", experiment, "--rules", config, "--once", "--settle", "0"]
        )
        assert result.exit_code == 0, result.output
    finally:
        watch.close()
    assert receiver.rules() == ["bug"]  # once: the cooldown covers the later checks
    alert = receiver.bodies[0]["alert"]
    assert alert["step"] == 0 and alert["severity"] == "critical"
    assert "W2" in alert["message"]


def test_one_line_per_alert_and_no_baseline_warning_without_a_baseline_rule(tracking_uri):
    client = MlflowClient(tracking_uri)
    exp_id = _experiment(client, "one-line")
    run_id = client.create_run(exp_id, run_name="nan").info.run_id
    _log(client, run_id, {"loss": [1.0, 0.9, float("nan"), 0.5]})
    name = client.get_experiment(exp_id).name
    result = CliRunner().invoke(main, ["monitor", "-e", name, "--once", "--settle", "0"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "nonfinite" in line]
    assert len(lines) == 1, result.output
    assert "CRITICAL" in lines[0] and "run nan:" in lines[0]
    assert "baseline" not in result.output, result.output
    assert "1 alert(s) sent" in result.output


def test_new_points_read_in_bulk_equal_the_histories(tracking_uri):
    """Every read path of the monitor (whole short histories, a step window of a long one,
    one metric at a time) gives exactly the points ``get_metric_history`` has."""
    import math

    from gradwatch.runs.metric_reads import NewPoints

    client = MlflowClient(tracking_uri)
    exp_id = _experiment(client, "bulk")
    long_run = client.create_run(exp_id, run_name="long").info.run_id
    short_run = client.create_run(exp_id, run_name="short").info.run_id
    _log(client, long_run, {"loss": [1.0 / (1 + s) for s in range(3000)]})
    _log(client, short_run, {"loss": [1.0, float("nan"), float("inf"), 0.5]})
    wanted = {
        (long_run, "loss"): (2990, 2999),  # a window of a long history
        (short_run, "loss"): (1, 3),  # a short history, whole
    }
    reader = NewPoints(client)
    got = reader.read(wanted)
    assert reader.calls == 2, "one request per path"
    for (run_id, key), (first, _) in wanted.items():
        expected = [
            (m.step, m.value) for m in client.get_metric_history(run_id, key) if m.step >= first
        ]
        points = [(m.step, m.value) for m in got[(run_id, key)]]
        assert [s for s, _ in points] == sorted(s for s, _ in expected)
        for (_, a), (_, b) in zip(points, sorted(expected)):
            assert a == b or (math.isnan(a) and math.isnan(b))
    whole = NewPoints(client)
    assert whole.read({(long_run, "loss"): (0, 2999)})[(long_run, "loss")][-1].step == 2999
    assert len(whole.read({(long_run, "loss"): (0, 2999)})[(long_run, "loss")]) == 3000


def test_a_run_shared_with_the_user_is_judged_on_the_hooks_series(tracking_uri):
    """The hook's series under ``gradwatch/`` (a run it shares with the user), the user's own
    ``loss`` beside them: the rules read the hook's, through the incremental reads too."""
    from gradwatch.schema import TAG_METRIC_PREFIX

    client = MlflowClient(tracking_uri)
    exp_id = _experiment(client, "shared")
    run_id = client.create_run(exp_id, run_name="mine", tags={TAG_METRIC_PREFIX: "gradwatch/"})
    run_id = run_id.info.run_id
    _log(client, run_id, {"loss": [1.0] * 6, "gradwatch/loss": [1.0, 0.9, 0.8, 0.7]})
    monitor = Monitor(tracking_uri, client.get_experiment(exp_id).name, settle=0)
    first = monitor.poll()
    _log(client, run_id, {"gradwatch/loss": [1.0, 0.9, 0.8, 0.7, float("nan")]})  # one step on
    second = monitor.poll()
    _log(client, run_id, {"gradwatch/loss": [0.5] * 9})  # four more steps at once: read
    third = monitor.poll()
    monitor.close(timeout=5)
    assert first.observations == 4 and first.sent == []
    assert [(a.rule, a.step) for _, a in second.sent] == [("nonfinite", 4)]
    assert second.observations == 1 and second.reads == 0, "the step came from the search"
    assert third.observations == 4 and third.reads == 1
