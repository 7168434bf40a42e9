"""The shared ``mlflow`` alert sink, through both writers: the hook's journal run (what the
hook will call) and the monitor's direct client."""

from __future__ import annotations

import json
import time

from mlflow import MlflowClient

from gradwatch.alert_sink import ClientRecorder, MlflowAlertSink
from gradwatch.alerts import Alert
from gradwatch.schema import ALERT_COUNT, ARTIFACT_ALERTS, TAG_ALERT


def _alert(rule: str, step: int) -> Alert:
    return Alert(
        rule=rule,
        kind="nonfinite",
        severity="critical",
        step=step,
        message=f"NaN at step {step}",
        actions=("log", "mlflow"),
        timestamp=time.time(),
    )


def test_sink_through_the_journal_run_records_tag_count_and_jsonl(tracking_uri):
    from gradwatch.tracking import open_run

    run = open_run(tracking_uri=tracking_uri, experiment=f"sink-{time.time_ns()}", run_name="s")
    sink = MlflowAlertSink(run)
    sink.record(_alert("nan", 3), int(time.time() * 1000))
    sink.record(_alert("nan", 9), int(time.time() * 1000))
    closed = run.close("FINISHED", timeout=30)
    assert closed.pending == 0
    run_id = closed.run_id
    client = MlflowClient(tracking_uri)
    data = client.get_run(run_id).data
    assert data.tags[TAG_ALERT + "nan"].endswith("NaN at step 9"), "the latest alert's text"
    history = client.get_metric_history(run_id, ALERT_COUNT)
    assert sorted((m.step, m.value) for m in history) == [(3, 1.0), (9, 2.0)]
    path = client.download_artifacts(run_id, ARTIFACT_ALERTS, str(time.time_ns()))
    with open(path) as fh:
        assert [json.loads(line)["step"] for line in fh] == [3, 9]
    assert sink.count == 2


def test_sink_through_the_client_leaves_the_hooks_count_alone(tracking_uri):
    client = MlflowClient(tracking_uri)
    exp_id = client.create_experiment(f"sink-client-{time.time_ns()}")
    run_id = client.create_run(exp_id).info.run_id
    MlflowAlertSink(ClientRecorder(client, run_id), log_count=False).record(_alert("drift", 4))
    data = client.get_run(run_id).data
    assert data.tags[TAG_ALERT + "drift"].startswith("[gradwatch] CRITICAL drift at step 4")
    assert ALERT_COUNT not in data.metrics
