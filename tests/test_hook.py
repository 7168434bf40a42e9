"""The training hook against a real MLflow tracking server (no mocks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import mlflow
import numpy as np
import pytest

import gradwatch
from gradwatch import AlertStop, InputError
from gradwatch.alerts import Rule
from gradwatch.demo import MLP, make_blobs
from gradwatch.hook import BUDGET_RESERVE
from gradwatch.schema import expand_settings

X, Y = make_blobs(512, 12, 3, seed=0)


def _train(watch, steps, lr=0.1, bug_from=None, seed=0, fail_at=None, loss_hook=None):
    mlp = MLP([12, 16, 3], seed=seed)
    params = mlp.params
    losses = []
    for s in range(steps):
        b = slice((s * 32) % 512, (s * 32) % 512 + 32)
        loss, grads = mlp.loss_and_grads(params, X[b], Y[b])
        if bug_from is not None and s >= bug_from:
            grads["dW2"] = grads["dW2"] * 2
        if loss_hook:
            loss = loss_hook(s, loss)
        if fail_at is not None and s == fail_at:
            raise RuntimeError("training blew up")
        watch.step(params, grads, loss=loss, lr=lr, loss_fn=lambda p, b=b: mlp.loss(p, X[b], Y[b]))
        losses.append(loss)
        for k in params:
            params[k] -= lr * grads["d" + k]
    return losses


def _run(client, experiment, name=None):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    if name:
        runs = [r for r in runs if r.info.run_name == name]
    assert len(runs) == 1, runs
    return runs[0]


def test_every_step_and_check_lands_in_mlflow(tracking_uri):
    client = mlflow.MlflowClient(tracking_uri)
    with gradwatch.GradWatch(
        every=50, experiment="hook-basic", run_name="lr=0.1", params={"lr": 0.1}, stats_every=10
    ) as watch:
        losses = _train(watch, 230, bug_from=120)
    run = _run(client, "hook-basic")
    assert run.info.status == "FINISHED" and run.info.run_name == "lr=0.1"
    history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(230))
    assert [m.value for m in history] == pytest.approx(losses, rel=1e-12)
    passed = {
        m.step: m.value for m in client.get_metric_history(run.info.run_id, "gradcheck/passed")
    }
    # Checks at the first step and every 50 after; the bug switched on at 120 fails the check at 150.
    assert passed == {0: 1.0, 50: 1.0, 100: 1.0, 150: 0.0, 200: 0.0}
    data = run.data
    assert data.params["lr"] == "0.1" and expand_settings(data.params)["gradwatch.every"] == "50"
    assert data.tags["gradwatch.version"] == gradwatch.__version__
    for name in ("W1", "b1", "W2", "b2"):
        assert f"grad_norm/{name}" in data.metrics and f"param_norm/{name}" in data.metrics
        assert (
            f"update_ratio/{name}" in data.metrics and f"gradcheck/rel_error/{name}" in data.metrics
        )
    stats_steps = [m.step for m in client.get_metric_history(run.info.run_id, "grad_norm/W1")]
    assert stats_steps == list(range(0, 230, 10))
    for key in (
        "gradcheck/max_rel_error",
        "gradcheck/difference",
        "gradcheck/num_evals",
        "gradcheck/seconds",
    ):
        assert key in data.metrics
    path = client.download_artifacts(run.info.run_id, "gradwatch/checks.jsonl")
    checks = [json.loads(line) for line in open(path)]
    assert [c["step"] for c in checks] == [0, 50, 100, 150, 200]
    assert checks[3]["per_param"]["W2"]["verdict"] == "mismatch"
    assert checks[0]["per_param"]["W2"]["coords"][0]["verdict"] in ("ok", "noise", "kink")
    # The default check_failure rule fired, once per cooldown, and shows on the charts.
    assert "gradwatch.alert.check_failure" in data.tags
    assert [m.step for m in client.get_metric_history(run.info.run_id, "alerts/count")][0] == 150


def test_exception_ends_the_run_failed_and_interrupt_killed(tracking_uri):
    client = mlflow.MlflowClient(tracking_uri)
    with pytest.raises(RuntimeError):
        with gradwatch.GradWatch(every=None, experiment="hook-status", run_name="boom") as watch:
            _train(watch, 50, fail_at=20)
    with pytest.raises(KeyboardInterrupt):
        with gradwatch.GradWatch(every=None, experiment="hook-status", run_name="ctrl-c") as watch:
            _train(watch, 10)
            raise KeyboardInterrupt
    boom = _run(client, "hook-status", "boom")
    assert boom.info.status == "FAILED"
    assert "training blew up" in boom.data.tags["gradwatch.error"]
    assert len(client.get_metric_history(boom.info.run_id, "loss")) == 20
    assert _run(client, "hook-status", "ctrl-c").info.status == "KILLED"


def test_sigterm_ends_the_run_killed(tracking_uri, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(f"""
        import time, numpy as np, gradwatch
        with gradwatch.GradWatch(every=None, experiment="hook-sigterm", tracking_uri={tracking_uri!r}) as w:
            p = {{"w": np.ones(3)}}
            for s in range(100000):
                w.step(p, {{"dw": np.ones(3)}}, loss=1.0 / (s + 1))
                if s == 5:
                    print("ready", flush=True)
                time.sleep(0.01)
    """)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, cwd=tmp_path, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    run = _run(mlflow.MlflowClient(tracking_uri), "hook-sigterm")
    assert run.info.status == "KILLED"
    assert (
        len(
            client_history := mlflow.MlflowClient(tracking_uri).get_metric_history(
                run.info.run_id, "loss"
            )
        )
        >= 6
    )
    assert sorted(m.step for m in client_history) == list(range(len(client_history)))


def test_attaches_to_the_run_the_user_started(tracking_uri):
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("hook-attach")
    try:
        with mlflow.start_run(run_name="mine") as active:
            mlflow.log_param("optimizer", "sgd")
            with gradwatch.GradWatch(every=None) as watch:
                _train(watch, 20)
            assert mlflow.active_run().info.run_id == active.info.run_id
            client = mlflow.MlflowClient(tracking_uri)
            assert client.get_run(active.info.run_id).info.status == "RUNNING"  # not ended by us
    finally:
        mlflow.set_tracking_uri(None)
    run = mlflow.MlflowClient(tracking_uri).get_run(active.info.run_id)
    assert run.info.status == "FINISHED"
    # In the user's run the hook's series go under gradwatch/ (never the user's own names).
    history = mlflow.MlflowClient(tracking_uri).get_metric_history(
        run.info.run_id, "gradwatch/loss"
    )
    assert len(history) == 20 and "loss" not in run.data.metrics


def test_budget_limits_how_often_checks_run(tracking_uri):
    def training_work(s, loss):
        # The training work a check's cost is weighed against: 20 ms a step leaves the budget
        # room for several checks in 300 steps even when a loaded host makes each check (and
        # the hook's first step) several times slower than on a quiet one.
        time.sleep(0.02)
        return loss

    with gradwatch.GradWatch(every=1, budget=0.05, experiment="hook-budget") as budgeted:
        _train(budgeted, 300, loss_hook=training_work)
    with gradwatch.GradWatch(every=1, experiment="hook-budget-off") as unlimited:
        _train(unlimited, 20)
    assert unlimited.checks == 20 and unlimited.checks_deferred == 0
    assert 2 <= budgeted.checks < 300 * 0.5
    assert budgeted.checks_deferred > 0
    # Everything the hook spent stays within the budget of the loop's own time (the last
    # check may overshoot by its own cost: it was predicted from the one before).
    usable = 0.05 * (1 - BUDGET_RESERVE)
    clock, schedule = budgeted.clock, budgeted.schedule
    assert clock.hook_seconds <= usable * clock.loop_seconds + schedule.last_check_cost
    run = _run(mlflow.MlflowClient(tracking_uri), "hook-budget")
    assert run.data.tags["gradwatch.checks_deferred"] == str(budgeted.checks_deferred)


def test_every_none_means_statistics_only(tracking_uri):
    with gradwatch.GradWatch(every=None, experiment="hook-nochecks") as watch:
        _train(watch, 30)
    run = _run(mlflow.MlflowClient(tracking_uri), "hook-nochecks")
    assert watch.checks == 0 and not any(k.startswith("gradcheck/") for k in run.data.metrics)
    assert "grad_norm/W1" in run.data.metrics


def test_other_ranks_stay_silent_unless_they_opt_in(tracking_uri, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with gradwatch.GradWatch(every=10, experiment="hook-ranks", run_name="job") as silent:
        _train(silent, 15)
    assert silent.run is None and silent.checks == 0
    with gradwatch.GradWatch(
        every=10, experiment="hook-ranks", run_name="job", rank_suffix=True
    ) as loud:
        _train(loud, 15)
    run = _run(mlflow.MlflowClient(tracking_uri), "hook-ranks")
    assert run.info.run_name == "job-rank1" and loud.checks == 2


def test_wrap_reuses_the_step_function_as_the_loss(tracking_uri):
    mlp = MLP([12, 16, 3], seed=1)

    def train_step(params, xb, yb):
        loss, grads = mlp.loss_and_grads(params, xb, yb)
        grads["db1"] = grads["db1"] * 4  # the classic db1 bug
        return loss, grads

    with gradwatch.GradWatch(every=5, experiment="hook-wrap") as watch:
        step_fn = watch.wrap(train_step, lr=0.05)
        assert step_fn.__name__ == "train_step"
        for _ in range(10):
            loss, grads = step_fn(mlp.params, X[:32], Y[:32])
            for k in mlp.params:
                mlp.params[k] -= 0.05 * grads["d" + k]
    assert watch.checks == 2 and watch.checks_failed == 2
    assert watch.last_report.mismatched_tensors == ["b1"]
    run = _run(mlflow.MlflowClient(tracking_uri), "hook-wrap")
    assert run.data.metrics["lr"] == 0.05


def test_stop_action_raises_after_flushing_and_fails_the_run(tracking_uri):
    rules = [Rule("diverged", "loss_divergence", actions=("log", "mlflow", "stop"))]
    with pytest.raises(AlertStop) as err:
        with gradwatch.GradWatch(every=None, experiment="hook-stop", rules=rules) as watch:
            _train(watch, 200, loss_hook=lambda s, loss: loss * (10.0 ** max(0, s - 30)))
    assert "diverged" in str(err.value)
    run = _run(mlflow.MlflowClient(tracking_uri), "hook-stop")
    assert run.info.status == "FAILED"
    assert "diverged" in run.data.tags["gradwatch.stop_reason"]
    assert (
        len(mlflow.MlflowClient(tracking_uri).get_metric_history(run.info.run_id, "loss"))
        == err.value.alert.step + 1
    )


def test_nan_loss_fires_nonfinite_at_that_step(tracking_uri):
    with gradwatch.GradWatch(every=None, experiment="hook-nan") as watch:
        _train(watch, 40, loss_hook=lambda s, loss: float("nan") if s == 17 else loss)
    fired = [(a.rule, a.step) for a in watch.alerts]
    assert ("nonfinite", 17) in fired


def test_bad_grads_are_a_clear_error_at_the_first_step(tracking_uri):
    with pytest.raises(InputError, match="missing gradients for 'b'"):
        with gradwatch.GradWatch(every=1, experiment="hook-bad") as watch:
            watch.step({"w": np.ones(2), "b": np.ones(1)}, {"dw": np.ones(2)}, loss=1.0)


def test_step_outside_a_run_says_how_to_use_it():
    watch = gradwatch.GradWatch(every=None, tracking_uri="sqlite:///x.db")
    with pytest.raises(gradwatch.GradwatchError, match="with GradWatch"):
        watch.step({"w": np.ones(1)}, {"dw": np.ones(1)}, loss=1.0)


def test_embedded_default_store_without_any_server(tmp_path):
    assert "MLFLOW_TRACKING_URI" not in os.environ
    with gradwatch.GradWatch(every=10, experiment="embedded") as watch:
        _train(watch, 25)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = _run(client, "embedded")
    assert (
        run.info.status == "FINISHED"
        and len(client.get_metric_history(run.info.run_id, "loss")) == 25
    )


def test_a_loss_that_cannot_be_checked_mid_run_is_logged_not_raised(tracking_uri):
    def loss_hook(s, loss):
        return loss

    calls = {"n": 0}
    with gradwatch.GradWatch(every=10, experiment="hook-losserror") as watch:
        mlp = MLP([12, 16, 3], seed=0)
        for s in range(25):
            loss, grads = mlp.loss_and_grads(mlp.params, X[:32], Y[:32])

            def loss_fn(p, s=s):
                calls["n"] += 1
                return float("nan") if s == 10 and calls["n"] > 3 else mlp.loss(p, X[:32], Y[:32])

            watch.step(mlp.params, grads, loss=loss, loss_fn=loss_fn)
    assert watch.check_errors == 1 and watch.checks == 2
    run = _run(mlflow.MlflowClient(tracking_uri), "hook-losserror")
    assert run.info.status == "FINISHED" and "step 10" in run.data.tags["gradwatch.check_error"]


def test_sys_exit_zero_finishes_and_user_sigterm_handler_still_runs(tracking_uri):
    with pytest.raises(SystemExit):
        with gradwatch.GradWatch(every=None, experiment="hook-exit") as watch:
            _train(watch, 5)
            sys.exit(0)
    assert _run(mlflow.MlflowClient(tracking_uri), "hook-exit").info.status == "FINISHED"

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with pytest.raises(SystemExit):
            with gradwatch.GradWatch(every=None, experiment="hook-term-chain") as watch:
                _train(watch, 5)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIGTERM]
    assert _run(mlflow.MlflowClient(tracking_uri), "hook-term-chain").info.status == "KILLED"


def test_secrets_from_the_config_never_reach_mlflow(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("GW_TOKEN", "s3cr3t-token")
    config = tmp_path / "gradwatch.yaml"
    config.write_text(
        textwrap.dedent("""
        hook:
          params: {api_key: "${GW_TOKEN}", width: 16}
          tags: {owner: "${GW_TOKEN}"}
        alerts:
          webhooks:
            slack: {url: "https://hooks.example.invalid/T000/B000/literal-secret"}
    """)
    )
    with gradwatch.GradWatch(every=None, experiment="hook-secrets", config=str(config)) as watch:
        _train(watch, 3)
    client = mlflow.MlflowClient(tracking_uri)
    run = _run(client, "hook-secrets")
    shown = json.dumps([run.data.params, run.data.tags])
    assert "s3cr3t" not in shown and "literal-secret" not in shown
    assert run.data.params["api_key"] == "***" and run.data.params["width"] == "16"
    uploaded = open(client.download_artifacts(run.info.run_id, "gradwatch/gradwatch.yaml")).read()
    assert "literal-secret" not in uploaded and "s3cr3t" not in uploaded and "slack" in uploaded


@pytest.mark.parametrize("keep", [False, True])
def test_a_landed_run_leaves_no_journal_unless_asked(tracking_uri, tmp_path, keep):
    journal_dir = tmp_path / "journals"
    params = {"w": np.ones(3)}
    with gradwatch.GradWatch(
        every=None,
        experiment="keep-journal",
        journal_dir=str(journal_dir),
        keep_journal=keep,
        config=False,
    ) as watch:
        for step in range(5):
            watch.step(params, {"w": np.full(3, 0.1)}, loss=1.0 / (step + 1), lr=0.1)
    assert watch.close_result.pending == 0
    left = sorted(p.name for p in journal_dir.iterdir())
    assert bool([n for n in left if n.endswith(".jsonl")]) == keep, left
