"""Every example in examples/ runs as a user would run it (a subprocess, small sizes), and
logs what it says it logs: to the shared real MLflow server, or to the embedded sqlite store.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from gradwatch.schema import expand_settings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, timeout: float = 120) -> str:
    """Run ``python examples/NAME ARGS`` in the test's working directory; return stdout."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def runs_named(client: MlflowClient, experiment: str, run_name: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    return client.search_runs(
        [exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'"
    )


def test_classic_gradient_check_finds_the_two_planted_bugs():
    out = run_example("classic_gradient_check.py")
    buggy, fixed, auto = re.split(r"^== ", out, flags=re.M)[1:4]
    # The exercise's own figure, to 6 significant digits, and the two broken tensors.
    assert re.search(r"difference = 0\.285093", buggy)
    assert "gradient check FAILED (full)" in buggy
    assert "mismatched tensors: b1, W2" in buggy
    for ok in ("W1", "b2", "W3", "b3"):
        assert re.search(rf"^  {ok} .* verdict ok ", buggy, re.M)
    assert "gradient check PASSED (full)" in fixed
    difference = float(re.search(r"difference ([0-9.e+-]+),", fixed).group(1))
    assert difference <= 1e-9
    assert "gradient check FAILED (auto)" in auto and "BACKPROP BUG in b1, W2" in auto
    assert not Path("mlflow.db").exists()  # the check engine alone: nothing tracked


def test_train_mlp_fires_check_failure_once_after_the_bug(tracking_uri):
    out = run_example("train_mlp.py", "--steps", "120", "--bug-at", "100", "--run-name", "t-mlp")
    assert "checks: 3, failed: 1" in out  # steps 0, 50, 100 (every: 50 from gradwatch.yaml)
    assert "alerts via callback: 1" in out
    assert "CRITICAL check_failure at step 100" in out
    client = MlflowClient(tracking_uri)
    (run,) = runs_named(client, "gradwatch-examples", "t-mlp")
    assert run.info.status == "FINISHED"
    passed = client.get_metric_history(run.info.run_id, "gradcheck/passed")
    assert [(m.step, m.value) for m in sorted(passed, key=lambda m: m.step)] == [
        (0, 1.0),
        (50, 1.0),
        (100, 0.0),
    ]
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(120))
    assert "gradwatch.alert.check_failure" in run.data.tags
    assert expand_settings(run.data.params)["gradwatch.every"] == "50"
    assert run.data.params["model"] == "mlp-64-128-10"  # hook.params from the YAML file
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "gradwatch")}
    assert {"gradwatch/checks.jsonl", "gradwatch/alerts.jsonl", "gradwatch/gradwatch.yaml"} <= (
        artifacts
    )
    # The run's story without code: the report and the distributions, drawn at its end.
    assert {"gradwatch/report.html", "gradwatch/histograms.jsonl", "gradwatch/histograms.png"} <= (
        artifacts
    )
    assert "gradwatch/report.html" in out  # the script says where to read it


def test_lr_sweep_flags_the_diverging_run(tracking_uri):
    out = run_example("lr_sweep.py", "--steps", "30", "--experiment", "t-sweep")
    assert "lr=0.5: diverged=False stalled=False verdict=ok" in out
    assert "lr=10: diverged=True stalled=False verdict=DIVERGED" in out
    assert "lr=1e-10: diverged=False stalled=True verdict=stalled" in out
    sweep_id = re.search(r"--sweep (\S+)", out).group(1)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("t-sweep")
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`gradwatch.sweep_id` = '{sweep_id}'"
    )
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"lr=0.5", "lr=10", "lr=1e-10"}
    assert "gradwatch.alert.loss_divergence" in by_name["lr=10"].data.tags
    assert not any(k.startswith("gradwatch.alert.") for k in by_name["lr=0.5"].data.tags)
    assert {r.data.params["lr"] for r in runs} == {"0.5", "10.0", "1e-10"}


def test_custom_loop_on_the_embedded_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = run_example("custom_loop.py", "--steps", "40")
    assert "checks: 4, failed: 0" in out  # every 10 steps, from step 0
    assert "last check: gradient check PASSED (auto)" in out
    client = MlflowClient(f"sqlite:///{Path('mlflow.db').absolute()}")
    (run,) = runs_named(client, "gradwatch-examples", "custom-loop")
    assert run.info.status == "FINISHED"
    lrs = client.get_metric_history(run.info.run_id, "lr")
    assert {m.value for m in lrs} == {0.5, 0.25}  # the schedule, read through wrap(lr=...)
    assert set(run.data.metrics) >= {
        "loss",
        "grad_norm/W1",
        "param_norm/b2",
        "update_ratio/W2",
        "gradcheck/rel_error/b1",
    }


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_has_a_test(name):
    covered = {
        "classic_gradient_check.py",
        "train_mlp.py",
        "lr_sweep.py",
        "custom_loop.py",
        "recipe_optimizer.py",
        "recipe_dropout_batchnorm.py",
    }
    assert name in covered, f"examples/{name} is not run by tests/test_examples.py"


def test_recipe_optimizer_hands_the_gradients_over_before_the_update(tracking_uri):
    out = run_example("recipe_optimizer.py", "--steps", "41")
    assert "adam: checks: 3, failed: 0" in out
    assert "layer-updates: checks: 3, failed: 0" in out


def test_recipe_dropout_and_batchnorm_keep_loss_fn_deterministic(tracking_uri):
    out = run_example("recipe_dropout_batchnorm.py", "--steps", "41")
    for shape in ("dropout-fixed-mask", "dropout-rng-state", "batchnorm"):
        assert f"{shape}: checks: 3, failed: 0" in out
