"""gradwatch compare on runs written by the real hook: clipping is not a backprop bug, a
constant factor is named, a noisy flat run is stalled, and --diff-only shows what differs."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

import gradwatch
from gradwatch.cli import main
from gradwatch.runs.verdicts import check_findings

CLIP = 5.0


def _regression(seed: int = 0):
    """A linear least-squares model whose gradients often exceed the clipping bound."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(64, 5)) * 3
    Y = rng.normal(size=(64, 3)) * 3
    params = {"W": rng.normal(size=(5, 3)), "b": np.zeros(3)}

    def loss_fn(p):
        return float(np.mean(np.sum((X @ p["W"] + p["b"] - Y) ** 2, axis=1)))

    def grads_of(p):
        r = X @ p["W"] + p["b"] - Y
        return {"W": 2 * X.T @ r / len(X), "b": 2 * r.sum(0) / len(X)}

    return params, loss_fn, grads_of


def _train(experiment: str, run_name: str, shape: str, steps: int = 12) -> None:
    """Train through GradWatch with the gradients shaped as a script would hand them over.

    ``clip``: clipped element-wise inside the function that returns them (the char-RNN way);
    ``clip+bug``: the same, plus a real bug in ``b``; ``scaled``: a tenth of the gradient.
    """
    params, loss_fn, grads_of = _regression()
    with gradwatch.GradWatch(
        every=4,
        experiment=experiment,
        run_name=run_name,
        config=False,
        params={"shape": shape, "lr": 0.01},
    ) as watch:
        for _ in range(steps):
            grads = grads_of(params)
            if shape.startswith("clip"):
                grads = {k: np.clip(v, -CLIP, CLIP) for k, v in grads.items()}
            if shape == "clip+bug":
                grads["b"] = grads["b"] * 2.0 + 1.0
            if shape == "scaled":
                grads = {k: 0.1 * v for k, v in grads.items()}
            watch.step(params, grads, loss=loss_fn(params), lr=0.01, loss_fn=loss_fn)
            for k in params:
                params[k] -= 0.01 * grads[k]


def _records(experiment: str) -> dict[str, dict]:
    result = CliRunner().invoke(main, ["compare", "-e", experiment, "--format", "json"])
    assert result.exit_code == 0, result.output
    return {r["run_name"]: r for r in json.loads(result.stdout)}


def test_clipping_inside_the_loss_function_is_not_a_backprop_bug(tracking_uri):
    experiment = f"clip-{time.time_ns()}"
    for shape in ("clip", "clip+bug", "scaled"):
        _train(experiment, shape, shape)
    records = _records(experiment)

    clipped = records["clip"]
    assert clipped["checks"] >= 1 and clipped["checks_failed"] == 0  # clipped probes do not fail
    assert clipped["checks_clipped"] >= 1
    assert "BACKPROP BUG" not in clipped["verdict"] and "clipped" in clipped["verdict"]
    assert clipped["clip_bound"] == CLIP

    # Clipping must never hide a bug elsewhere in the same check.
    assert "BACKPROP BUG" in records["clip+bug"]["verdict"]

    scaled = records["scaled"]
    assert scaled["checks_failed"] >= 1 and "BACKPROP BUG" not in scaled["verdict"]
    assert scaled["grad_scale"] == pytest.approx(0.1, rel=1e-3)

    table = CliRunner().invoke(main, ["compare", "-e", experiment]).stdout
    assert f"clipped element-wise at ±{CLIP:g}" in table
    assert "check the gradients before clipping" in table
    assert "analytic = 0.1 × numeric" in table


def _metric(step: int, value: float) -> Metric:
    return Metric("m", value, 0, step)


def test_the_checks_are_read_as_the_engine_logged_them_never_judged_again():
    passed = [_metric(0, 0.0), _metric(10, 0.0), _metric(20, 1.0), _metric(30, 0.0)]
    findings = [_metric(0, 1.0), _metric(10, 4.0), _metric(20, 0.0)]  # bug, stochastic, passed
    kinds = check_findings(passed, findings, [_metric(30, 0.5)])
    assert kinds[0] == ("bug", None) and kinds[10] == ("stochastic", None)
    assert kinds[20] == ("passed", None)
    # Logged before the finding metric existed: failed with a factor, as the engine said then.
    assert kinds[30] == ("factor", 0.5)


def _log_run(client, exp_id, name, losses, params):
    run = client.create_run(exp_id, run_name=name)
    ts = int(time.time() * 1000)
    metrics = [Metric("loss", float(v), ts, i) for i, v in enumerate(losses)]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run.info.run_id, metrics=metrics[start : start + 1000])
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(run.info.run_id)


def test_noisy_flat_run_is_stalled_and_diff_only_shows_what_differs(tracking_uri):
    """lr=30 at chance: the loss flat around 5.0 with batch noise was reported "ok"."""
    client = MlflowClient(tracking_uri)
    experiment = f"flat-{time.time_ns()}"
    exp_id = client.create_experiment(experiment)
    rng = np.random.default_rng(1)
    flat = 5.0 + rng.normal(0, 0.8, size=600)
    learning = 2.3 * np.exp(-np.arange(600) / 150) + 0.1 + np.abs(rng.normal(0, 0.3, size=600))
    shared = {"batch": "10", "model": "sigmoid-30", "gradwatch.every": "100"}
    _log_run(client, exp_id, "lr=30", flat, {"lr": "30", **shared})
    _log_run(client, exp_id, "lr=3", learning, {"lr": "3", **shared, "gradwatch.every": "50"})
    records = _records(experiment)
    assert records["lr=30"]["stalled"] and records["lr=30"]["verdict"] == "stalled"
    assert records["lr=30"]["best_loss"] < 0.6 * records["lr=30"]["first_loss"]
    assert not records["lr=3"]["stalled"] and records["lr=3"]["verdict"] == "ok"

    diff = CliRunner().invoke(main, ["compare", "-e", experiment, "--diff-only"])
    assert diff.exit_code == 0, diff.output
    header = diff.stdout.splitlines()[0].split()
    assert header == ["run", "lr", "gradwatch.every"]
    as_json = CliRunner().invoke(
        main, ["compare", "-e", experiment, "--diff-only", "--format", "json"]
    )
    assert [r["params"] for r in json.loads(as_json.stdout)] == [
        {"gradwatch.every": "100", "lr": "30"},
        {"gradwatch.every": "50", "lr": "3"},
    ]


def test_a_check_rebuilt_from_metrics_keeps_the_engine_s_inconclusive():
    from gradwatch.schema import check_report_from_metrics

    dropout = check_report_from_metrics({"gradcheck/passed": 0.0, "gradcheck/finding": 4.0})
    assert dropout["status"] == "inconclusive" and dropout["per_param"] == {}
    bug = check_report_from_metrics(
        {"gradcheck/passed": 0.0, "gradcheck/finding": 1.0, "gradcheck/rel_error/W2": 0.3}
    )
    assert bug["per_param"]["W2"]["verdict"] == "mismatch" and not bug["passed"]
