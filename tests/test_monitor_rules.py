"""gradwatch monitor judges any logged metric: a ``threshold`` rule on a user's own metric
(``val_acc`` logged with ``mlflow.log_metric`` in the hook's run) or on the hook's quantiles
(``grad_abs_p99/*``), and ``dead_units`` on ``grad_zero_frac/*``, server-side, delivered to a
real webhook receiver exactly once."""

from __future__ import annotations

import logging
import time

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.entities import Metric

import gradwatch
from gradwatch.alerts import CheckObservation, Rule, StepObservation
from gradwatch.cli import main
from gradwatch.runs.monitor import TAG_ALERTED, Monitor, observations, rule_metrics
from tests.test_hook_stats import loss_and_grads  # the same ReLU net's backprop
from tests.webhooks import WebhookReceiver, webhook_config

HIDDEN, KILLED = 16, 12  # ReLU units, and how many of them die at KILL_STEP
KILL_STEP, STEPS, VAL_EVERY = 20, 40, 5


@pytest.fixture
def receiver():
    r = WebhookReceiver()
    yield r
    r.close()


def _relu_mlp(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W1": rng.normal(0, 0.5, (8, HIDDEN)),
        "b1": np.full(HIDDEN, 0.1),
        "W2": rng.normal(0, 0.5, (HIDDEN, 3)),
        "b2": np.zeros(3),
    }


def _train_with_user_metric(experiment: str) -> None:
    """A hooked ReLU net whose units die at KILL_STEP; the user logs ``val_acc`` every
    VAL_EVERY steps with MLflow's own API, into the run the hook attached to."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(64, 8)), rng.integers(0, 3, 64)
    params = _relu_mlp()
    with gradwatch.GradWatch(
        every=None, stats_every=1, experiment=experiment, rules=[], config=False
    ) as watch:
        for s in range(STEPS):
            if s == KILL_STEP:  # every input drives these units below 0: no gradient reaches them
                params["b1"][:KILLED] = -1e3
            loss, grads = loss_and_grads(params, X, y)
            watch.step(params, grads, loss=loss, lr=0.05)
            for k in params:
                params[k] -= 0.05 * grads[k]
            if s % VAL_EVERY == 0:
                mlflow.log_metric("val_acc", 0.8 if s < KILL_STEP else 0.4, step=s)
    assert watch.close_result.pending == 0, watch.close_result.message


def test_threshold_and_dead_units_on_any_logged_metric_fire_server_side_once(
    tracking_uri, receiver, tmp_path
):
    experiment = f"monitor-any-{time.time_ns()}"
    config = webhook_config(
        tmp_path / "gradwatch.yaml",
        receiver.url,
        (
            "    - {name: acc-drop, type: threshold, metric: val_acc, below: 0.5, n: 3,"
            " actions: [webhook]}\n"
            "    - {name: acc-floor, type: threshold, metric: val_acc, below: 0.1, actions: [webhook]}\n"
            "    - {name: p99-nonzero, type: threshold, metric: 'grad_abs_p99/*', above: 0.0,"
            " cooldown: 100000, actions: [webhook]}\n"
            "    - {name: p99-huge, type: threshold, metric: 'grad_abs_p99/*', above: 1.0e6,"
            " actions: [webhook]}\n"
            "    - {name: dead, type: dead_units, actions: [webhook]}\n"
        ),
    )
    args = ["monitor", "-e", experiment, "--rules", config, "--once", "--settle", "0"]
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:  # still RUNNING while the monitor polls
        _train_with_user_metric(experiment)
        first = CliRunner().invoke(main, args)
        second = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    alerts = receiver.alerts()
    assert sorted(alerts) == ["acc-drop", "dead", "p99-nonzero"], alerts
    assert all(len(sent) == 1 for sent in alerts.values()), alerts
    # val_acc is 0.4 from step 20 on, logged every 5 steps: the third low value is step 30.
    [acc] = alerts["acc-drop"]
    assert acc["step"] == KILL_STEP + 2 * VAL_EVERY and acc["details"]["metric"] == "val_acc"
    assert acc["details"]["run_id"] == run.info.run_id
    [p99] = alerts["p99-nonzero"]
    assert p99["step"] == 0 and p99["details"]["metric"].startswith("grad_abs_p99/")
    [dead] = alerts["dead"]
    assert KILL_STEP <= dead["step"] <= KILL_STEP + 6  # patience: 5 statistics steps
    assert dead["details"]["tensor"] in {"W1", "b1", "W2"}
    tags = MlflowClient(tracking_uri).get_run(run.info.run_id).data.tags
    assert tags[TAG_ALERTED + "acc-drop"] == str(acc["step"])
    assert second.exit_code == 0 and "3 already sent before" in second.output, second.output
    assert len(receiver.bodies) == 3


def test_threshold_counts_across_polls_of_a_running_monitor(tracking_uri, receiver):
    """Each poll feeds only the new steps; the count of low values carries across polls."""
    from gradwatch.alerts import Delivery, WebhookSpec

    client = MlflowClient(tracking_uri)
    exp_id = client.create_experiment(f"monitor-polls-{time.time_ns()}")
    run_id = client.create_run(exp_id, run_name="polled").info.run_id
    ts = int((time.time() - 60) * 1000)

    def log(steps: range, acc: float) -> None:
        metrics = [Metric("loss", 1.0, ts, s) for s in steps]
        metrics += [Metric("val_acc", acc, ts, s) for s in steps]
        client.log_batch(run_id, metrics=metrics)

    rule = Rule(
        "acc-drop",
        "threshold",
        actions=("webhook",),
        params={"metric": "val_acc", "below": 0.5, "n": 3},
    )
    delivery = Delivery(webhooks={"recv": WebhookSpec(url=receiver.url, timeout=5, retries=0)})
    monitor = Monitor(
        tracking_uri, client.get_experiment(exp_id).name, rules=[rule], delivery=delivery, settle=0
    )
    try:
        log(range(0, 5), 0.9)
        log(range(5, 7), 0.3)
        first = monitor.poll()
        log(range(7, 8), 0.3)
        second = monitor.poll()
        log(range(8, 12), 0.3)
        third = monitor.poll()
    finally:
        assert monitor.close(timeout=5) == 0
    assert first.sent == [] and first.observations == 7
    assert [(a.rule, a.step) for _, a in second.sent] == [("acc-drop", 7)]
    assert second.observations == 1, "only the new step is fed"
    assert third.sent == [] and third.observations == 4  # within the rule's cooldown
    assert [b["alert"]["rule"] for b in receiver.bodies] == ["acc-drop"]


def test_user_metric_behind_judged_steps_is_named_in_a_warning(tracking_uri, caplog):
    client = MlflowClient(tracking_uri)
    exp_id = client.create_experiment(f"monitor-behind-{time.time_ns()}")
    run_id = client.create_run(exp_id, run_name="epochs").info.run_id
    ts = int((time.time() - 60) * 1000)
    client.log_batch(run_id, metrics=[Metric("loss", 1.0, ts, s) for s in range(50)])
    rule = Rule("acc", "threshold", params={"metric": "val_acc", "below": 0.5})
    monitor = Monitor(tracking_uri, client.get_experiment(exp_id).name, rules=[rule], settle=0)
    monitor.poll()
    # Logged at the epoch count (step 1), far behind the 50 training steps already judged.
    client.log_batch(run_id, metrics=[Metric("val_acc", 0.1, ts, 1)])
    with caplog.at_level(logging.WARNING, logger="gradwatch.monitor"):
        result = monitor.poll()
        monitor.poll()
    monitor.close(timeout=5)
    assert result.sent == []
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "val_acc" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings  # once, not at every poll
    assert "run epochs" in warnings[0] and "step=step" in warnings[0]


def test_observations_put_other_metrics_where_the_hook_does():
    ts = int(time.time() * 1000)
    hist = {
        "loss": [Metric("loss", 0.5, ts, 0), Metric("loss", 0.4, ts, 2)],
        "loss_ema": [Metric("loss_ema", 0.45, ts, 2)],  # a user metric, not the loss
        "grad_zero_frac/W1": [Metric("grad_zero_frac/W1", 0.25, ts, 0)],
        "val_acc": [Metric("val_acc", 0.7, ts, 1), Metric("val_acc", 0.8, ts, 3)],
        "gradcheck/passed": [Metric("gradcheck/passed", 1.0, ts, 3)],
    }
    obs = observations(hist)
    assert [(type(o).__name__, o.step) for o in obs] == [
        ("StepObservation", 0),
        ("StepObservation", 1),
        ("StepObservation", 2),
        ("StepObservation", 3),
        ("CheckObservation", 3),
    ]
    assert obs[0].loss == 0.5 and obs[0].metrics == {"grad_zero_frac/W1": 0.25}
    assert obs[1].loss is None and obs[1].metrics == {"val_acc": 0.7}
    assert obs[2].loss == 0.4 and obs[2].metrics == {"loss_ema": 0.45}
    assert obs[3].metrics == {"val_acc": 0.8} and isinstance(obs[4], CheckObservation)
    assert [o.step for o in observations(hist, after=1, upto=2)] == [2]
    assert observations({"loss": hist["loss"]})[0] == StepObservation(
        0, loss=0.5, timestamp=ts / 1000
    )


def test_rule_metrics_names_what_each_rule_reads():
    rules = [
        Rule("acc", "threshold", params={"metric": "val_acc", "below": 0.5}),
        Rule("loss", "threshold", params={"above": 10.0}),  # metric defaults to loss
        Rule("off", "threshold", params={"metric": "never_read", "above": 1.0}, enabled=False),
        Rule("dead", "dead_units"),
        Rule("base", "baseline_drift", params={"metrics": ["grad_abs_p99/*"]}),
        Rule("nan", "nonfinite"),
    ]
    assert rule_metrics(rules) == ("val_acc", "loss", "grad_zero_frac/*", "grad_abs_p99/*")
