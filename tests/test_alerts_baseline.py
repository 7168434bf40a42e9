"""The baseline loader against a real MLflow server, feeding the pure baseline_drift detector."""

from __future__ import annotations

import time
import uuid

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from gradwatch.alerts import AlertEngine, Rule, StepObservation, attach_baselines, load_baseline
from gradwatch.errors import TrackingError


def log_run(uri: str, experiment: str, scale: float, tags: dict[str, str]) -> str:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, tags=tags)
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"grad_norm/{t}", scale * (1.0 + 0.01 * s), now, s)
        for t in ("W1", "b1")
        for s in range(0, 100, 10)
    ]
    metrics.append(Metric("loss", 1.0, now, 0))
    client.log_batch(run.info.run_id, metrics=metrics)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_load_by_run_id_and_latest_tagged(tracking_uri):
    experiment = f"baseline-{uuid.uuid4().hex[:8]}"
    first = log_run(tracking_uri, experiment, 1.0, {"gradwatch.baseline": "true"})
    log_run(tracking_uri, experiment, 5.0, {})  # newer but untagged
    series = load_baseline(first, tracking_uri=tracking_uri)
    assert set(series) == {"grad_norm/W1", "grad_norm/b1"}  # `loss` is not in the default globs
    assert series["grad_norm/W1"][30] == pytest.approx(1.3)
    latest = load_baseline(tracking_uri=tracking_uri, experiment=experiment)
    assert latest == series
    newer = log_run(tracking_uri, experiment, 2.0, {"gradwatch.baseline": "1"})
    assert load_baseline(tracking_uri=tracking_uri, experiment=experiment) == load_baseline(
        newer, tracking_uri=tracking_uri
    )


def test_attach_baselines_feeds_the_detector(tracking_uri):
    experiment = f"baseline-{uuid.uuid4().hex[:8]}"
    log_run(tracking_uri, experiment, 1.0, {"gradwatch.baseline": "true"})
    rules = attach_baselines(
        [Rule("vs-base", "baseline_drift", params={"experiment": experiment}, cooldown=0)],
        tracking_uri=tracking_uri,
    )
    engine = AlertEngine(rules)
    same = engine.observe_step(StepObservation(30, grad_norms={"W1": 1.3, "b1": 1.3}))
    assert same == []
    (alert,) = engine.observe_step(StepObservation(40, grad_norms={"W1": 14.0, "b1": 1.4}))
    assert alert.details["metric"] == "grad_norm/W1" and alert.kind == "baseline_drift"


def test_missing_baseline_disables_only_that_rule(tracking_uri, caplog):
    experiment = f"empty-{uuid.uuid4().hex[:8]}"
    MlflowClient(tracking_uri).create_experiment(experiment)
    with pytest.raises(TrackingError, match="no run tagged gradwatch.baseline"):
        load_baseline(tracking_uri=tracking_uri, experiment=experiment)
    rules = attach_baselines(
        [
            Rule("vs-base", "baseline_drift", params={"experiment": experiment}),
            Rule("nonfinite", "nonfinite"),
        ],
        tracking_uri=tracking_uri,
    )
    assert [r.enabled for r in rules] == [False, True]
    assert "vs-base" in caplog.text and "disabled" in caplog.text
    with pytest.raises(TrackingError, match="cannot load baseline run"):
        load_baseline("0" * 32, tracking_uri=tracking_uri)


def test_unreachable_server_is_one_masked_line_and_disables_the_rule(monkeypatch, caplog):
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://bob:pw-s3cr3t@127.0.0.1:{port}"
    with pytest.raises(TrackingError) as err:
        load_baseline("0" * 32, tracking_uri=uri)
    message = str(err.value)
    assert "s3cr3t" not in message and "\n" not in message
    assert f"http://bob:***@127.0.0.1:{port}" in message and "cannot load baseline run" in message
    rules = attach_baselines([Rule("vs-base", "baseline_drift")], tracking_uri=uri)
    assert [r.enabled for r in rules] == [False]
    assert "vs-base" in caplog.text and "s3cr3t" not in caplog.text


def test_missing_baseline_experiment_names_the_known_ones(tracking_uri):
    experiment = f"known-{uuid.uuid4().hex[:8]}"
    MlflowClient(tracking_uri).create_experiment(experiment)
    with pytest.raises(TrackingError, match=f"no experiment named 'nope'.*{experiment}"):
        load_baseline(tracking_uri=tracking_uri, experiment="nope")
