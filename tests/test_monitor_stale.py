"""The ``stale_run`` rule: validated like every rule, judged by ``gradwatch monitor`` (a RUNNING
run with no new step for ``minutes`` fires once, to a real webhook receiver; a finished run
never; a run that logs again re-arms), accepted but never evaluated by the hook."""

from __future__ import annotations

import time

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

import gradwatch
from gradwatch.alerts import AlertEngine, Delivery, Rule, WebhookSpec, validate_rule
from gradwatch.config import load_config
from gradwatch.errors import ConfigError
from gradwatch.runs.monitor import STALE_RULE, TAG_ALERTED, Monitor
from tests.webhooks import WebhookReceiver

MINUTE = 60.0


@pytest.fixture
def receiver():
    r = WebhookReceiver()
    yield r
    r.close()


class Clock:
    """The monitor's injectable clock: tests move it instead of sleeping."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _log_steps(client: MlflowClient, run_id: str, steps: range, at: float) -> None:
    ms = int(at * 1000)
    client.log_batch(run_id, metrics=[Metric("loss", 1.0 / (s + 1), ms, s) for s in steps])


def _monitor(
    uri: str,
    experiment: str,
    rules: list[Rule],
    receiver: WebhookReceiver,
    clock: Clock,
    stale_minutes: float | None = None,
) -> Monitor:
    delivery = Delivery(webhooks={"ops": WebhookSpec(url=receiver.url, timeout=5, retries=0)})
    return Monitor(
        uri,
        experiment,
        rules=rules,
        delivery=delivery,
        settle=0,
        clock=clock,
        stale_minutes=stale_minutes,
    )


HOST_DIED = {"name": "host-died", "type": "stale_run", "minutes": 30, "actions": ["webhook:ops"]}


# -- the rule's schema ------------------------------------------------------------------------


def test_stale_run_rule_is_validated_like_every_rule():
    rule = validate_rule(HOST_DIED, webhooks={"ops"})
    assert rule == Rule(
        "host-died", "stale_run", params={"minutes": 30.0}, actions=("webhook:ops",)
    )
    assert validate_rule({"type": "stale_run"}).params == {}  # minutes: 30 by default
    for minutes, text in [(0, "must be > 0"), (-5, "must be > 0"), ("soon", "expected a number")]:
        with pytest.raises(ConfigError) as err:
            validate_rule({**HOST_DIED, "minutes": minutes}, webhooks={"ops"})
        assert err.value.key == "minutes" and text in str(err.value), str(err.value)
    with pytest.raises(ConfigError) as err:
        validate_rule({**HOST_DIED, "minuts": 5}, webhooks={"ops"})
    assert err.value.key == "minuts" and "did you mean `minutes`?" in str(err.value)
    # The monitor cannot stop a training process it does not run in.
    with pytest.raises(ConfigError) as err:
        validate_rule({**HOST_DIED, "actions": ["webhook:ops", "stop"]}, webhooks={"ops"})
    assert err.value.key == "actions.1" and "cannot stop" in str(err.value)


def test_bad_stale_run_rule_in_yaml_names_file_line_and_key(tmp_path):
    path = tmp_path / "gradwatch.yaml"
    path.write_text(
        "alerts:\n"
        "  webhooks: {ops: {url: 'http://127.0.0.1:9/x'}}\n"
        "  rules:\n"
        "    - name: host-died\n"
        "      type: stale_run\n"
        "      minutes: 0\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "gradwatch.yaml:6" in text and "alerts.rules[0].minutes" in text, text
    assert "must be > 0" in text


def test_hook_accepts_stale_run_and_never_evaluates_it(tracking_uri, tmp_path):
    """In the training process the process itself is what goes stale: the rule is skipped."""
    path = tmp_path / "gradwatch.yaml"
    path.write_text(
        "alerts:\n"
        "  defaults: false\n"
        "  rules:\n"
        "    - {name: host-died, type: stale_run, minutes: 0.0001, actions: [log, mlflow]}\n"
    )
    config = load_config(path)
    assert [r.name for r in config.rules] == ["host-died"]
    assert AlertEngine(config.rules).rules == ()
    params = {"w": np.ones(3)}
    with gradwatch.GradWatch(
        every=None, experiment=f"hook-stale-{time.time_ns()}", config=str(path)
    ) as watch:
        for s in range(5):
            watch.step(params, {"w": np.full(3, 0.1)}, loss=1.0 / (s + 1), lr=0.1)
    assert watch.alerts == []
    run = MlflowClient(tracking_uri).get_run(watch.run.run_id)
    assert run.info.status == "FINISHED"
    assert not [k for k in run.data.tags if k.startswith("gradwatch.alert.")]


# -- the monitor ------------------------------------------------------------------------------


def test_stale_run_rule_fires_once_skips_finished_runs_and_rearms(tracking_uri, receiver):
    client = MlflowClient(tracking_uri)
    exp_id = client.create_experiment(f"stale-rule-{time.time_ns()}")
    experiment = client.get_experiment(exp_id).name
    t0 = time.time()
    crashed = client.create_run(exp_id, run_name="crashed").info.run_id
    _log_steps(client, crashed, range(5), at=t0)
    finished = client.create_run(exp_id, run_name="finished").info.run_id
    _log_steps(client, finished, range(5), at=t0)
    clock = Clock(t0 + 10 * MINUTE)
    rule = validate_rule(HOST_DIED, webhooks={"ops"})
    monitor = _monitor(tracking_uri, experiment, [rule], receiver, clock)
    try:
        assert monitor.poll().sent == []  # 10 min idle: not yet
        client.set_terminated(finished)  # followed while RUNNING, then it ended cleanly
        clock.now = t0 + 31 * MINUTE
        assert [(a.rule, a.step) for _, a in monitor.poll().sent] == [("host-died", 4)]
        clock.now = t0 + 90 * MINUTE
        assert monitor.poll().sent == [], "once per stall, not once per poll"
        # The run logs again, then stalls again: that is news.
        _log_steps(client, crashed, range(5, 10), at=t0 + 100 * MINUTE)
        clock.now = t0 + 110 * MINUTE
        assert monitor.poll().sent == []
        clock.now = t0 + 131 * MINUTE
        assert [(a.rule, a.step) for _, a in monitor.poll().sent] == [("host-died", 9)]
    finally:
        assert monitor.close(timeout=5) == 0
    assert receiver.sent() == [("host-died", "crashed", 4), ("host-died", "crashed", 9)]
    assert "logged no step for 31 min" in receiver.bodies[0]["alert"]["message"]
    assert client.get_run(crashed).data.tags[TAG_ALERTED + "host-died"] == "9"
    assert TAG_ALERTED + "host-died" not in client.get_run(finished).data.tags

    # A restarted monitor (a new process) does not send the same stall again.
    again = _monitor(tracking_uri, experiment, [rule], receiver, clock)
    try:
        result = again.poll()
    finally:
        again.close(timeout=5)
    assert result.sent == [] and len(receiver.bodies) == 2


def test_stale_minutes_sets_the_minutes_of_the_rules_and_is_a_rule_without_them(
    tracking_uri, receiver
):
    client = MlflowClient(tracking_uri)
    exp_id = client.create_experiment(f"stale-flag-{time.time_ns()}")
    experiment = client.get_experiment(exp_id).name
    t0 = time.time()
    run_id = client.create_run(exp_id, run_name="idle").info.run_id
    _log_steps(client, run_id, range(3), at=t0)
    clock = Clock(t0 + 6 * MINUTE)
    rules = [
        validate_rule(HOST_DIED, webhooks={"ops"}),
        Rule("pager", "stale_run", params={"minutes": 120.0}, actions=("webhook:ops",)),
    ]

    # The command line wins: both rules now judge 5 minutes, under their own names and actions.
    flagged = _monitor(tracking_uri, experiment, rules, receiver, clock, stale_minutes=5)
    try:
        sent = flagged.poll().sent
    finally:
        flagged.close(timeout=5)
    assert sorted(a.rule for _, a in sent) == ["host-died", "pager"]

    # Without stale_run rules the flag is the rule `stale_run`, sent to every webhook.
    receiver.bodies.clear()
    other = client.create_run(exp_id, run_name="idle-too").info.run_id
    _log_steps(client, other, range(3), at=t0)
    plain = _monitor(tracking_uri, experiment, [], receiver, clock, stale_minutes=5)
    try:
        plain.poll()
    finally:
        plain.close(timeout=5)
    assert sorted(receiver.sent()) == [(STALE_RULE, "idle", 2), (STALE_RULE, "idle-too", 2)]


def test_each_stale_run_rule_judges_its_own_minutes(tracking_uri, receiver):
    client = MlflowClient(tracking_uri)
    exp_id = client.create_experiment(f"stale-tiers-{time.time_ns()}")
    t0 = time.time()
    run_id = client.create_run(exp_id, run_name="tiers").info.run_id
    _log_steps(client, run_id, range(3), at=t0)
    clock = Clock(t0 + 31 * MINUTE)
    rules = [
        validate_rule(HOST_DIED, webhooks={"ops"}),
        Rule("pager", "stale_run", params={"minutes": 120.0}, actions=("webhook:ops",)),
    ]
    monitor = _monitor(tracking_uri, client.get_experiment(exp_id).name, rules, receiver, clock)
    try:
        first = [a.rule for _, a in monitor.poll().sent]
        clock.now = t0 + 121 * MINUTE
        second = [a.rule for _, a in monitor.poll().sent]
    finally:
        monitor.close(timeout=5)
    assert first == ["host-died"] and second == ["pager"]
