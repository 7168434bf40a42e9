"""Statistics steps: |g| and |θ| quantiles and the zero-gradient fraction land in MLflow, and the
alert rules see them (a ReLU layer whose units die fires ``dead_units``; ``threshold`` reads any
metric the hook logs)."""

from __future__ import annotations

import ast
from pathlib import Path

import mlflow
import numpy as np
import pytest

import gradwatch
from gradwatch import schema
from gradwatch.alerts import Rule
from gradwatch.stats import abs_quantiles

HIDDEN, KILLED = 16, 12  # ReLU units, and how many of them die at KILL_STEP
KILL_STEP, STEPS = 20, 40


def relu_mlp(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "W1": rng.normal(0, 0.5, (8, HIDDEN)),
        "b1": np.full(HIDDEN, 0.1),
        "W2": rng.normal(0, 0.5, (HIDDEN, 3)),
        "b2": np.zeros(3),
    }


def loss_and_grads(p, X, y):
    z = X @ p["W1"] + p["b1"]
    h = np.maximum(z, 0.0)
    logits = h @ p["W2"] + p["b2"]
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.log(prob[np.arange(n), y]).mean())
    d = prob.copy()
    d[np.arange(n), y] -= 1.0
    d /= n
    dh = d @ p["W2"].T * (z > 0)
    grads = {"W1": X.T @ dh, "b1": dh.sum(0), "W2": h.T @ d, "b2": d.sum(0)}
    return loss, grads


def train(watch, params, X, y, lr=0.05):
    seen = {}
    for s in range(STEPS):
        if s == KILL_STEP:
            # Killed units: a pre-activation far below 0 for every input, so ReLU passes no
            # gradient to them (what too large a learning rate does to a real network).
            params["b1"][:KILLED] = -1e3
        loss, grads = loss_and_grads(params, X, y)
        seen[s] = {k: g.copy() for k, g in grads.items()}
        watch.step(params, grads, loss=loss, lr=lr)
        for k in params:
            params[k] -= lr * grads[k]
    return seen


def test_dead_units_fire_and_quantiles_land_in_mlflow(tracking_uri):
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(64, 8)), rng.integers(0, 3, 64)
    params = relu_mlp()
    rules = [
        Rule("dead", "dead_units"),
        Rule("zeros", "threshold", params={"metric": "grad_zero_frac/*", "above": 0.7, "n": 2}),
    ]
    with gradwatch.GradWatch(
        every=None, stats_every=1, experiment="hook-stats", rules=rules, config=False
    ) as watch:
        seen = train(watch, params, X, y)
    fired = {(a.rule, a.step) for a in watch.alerts}
    dead = sorted(step for rule, step in fired if rule == "dead")
    assert dead and KILL_STEP <= dead[0] <= KILL_STEP + 6, fired  # patience 5: fires by 25
    assert {a.details.get("tensor") for a in watch.alerts if a.rule == "dead"} & {"W1", "b1"}
    zeros = sorted(step for rule, step in fired if rule == "zeros")
    assert zeros and zeros[0] == KILL_STEP + 1, fired  # n=2: the second step over 0.7
    assert not [a for a in watch.alerts if a.step < KILL_STEP], "no alert before the units die"

    client = mlflow.MlflowClient(tracking_uri)
    run_id = watch.run.run_id

    def history(key):
        return {m.step: m.value for m in client.get_metric_history(run_id, key)}

    for tensor in ("W1", "b1", "W2", "b2"):
        for prefix in (
            schema.GRAD_ABS_P50,
            schema.GRAD_ABS_P99,
            schema.GRAD_ZERO_FRAC,
            schema.PARAM_ABS_P99,
        ):
            assert sorted(history(prefix + tensor)) == list(range(STEPS)), prefix + tensor
    zero_frac = history("grad_zero_frac/b1")
    assert zero_frac[KILL_STEP - 1] < 0.5 and zero_frac[KILL_STEP] == KILLED / HIDDEN
    assert history("grad_zero_frac/W2")[KILL_STEP + 3] >= KILLED / HIDDEN
    # The logged quantiles are |g|'s order statistics (rank round(q * (n - 1)) of a full sort).
    g = np.sort(np.abs(seen[3]["W2"]).ravel())
    assert history("grad_abs_p99/W2")[3] == g[round(0.99 * (g.size - 1))]
    assert history("grad_abs_p50/W2")[3] == g[round(0.5 * (g.size - 1))]


def test_abs_quantiles_match_a_full_sort():
    rng = np.random.default_rng(0)
    for shape in [(1,), (7,), (33, 5), (2, 3, 4)]:
        a = rng.standard_cauchy(shape).astype(np.float32)
        ranked = np.sort(np.abs(a).ravel())
        n = ranked.size
        expect = tuple(float(ranked[round(q * (n - 1))]) for q in (0.5, 0.99, 0.0))
        assert abs_quantiles(a, (0.5, 0.99, 0.0)) == expect
    assert abs_quantiles(np.zeros((0, 3)), (0.5,)) == (0.0,)


HOOK_DIR = Path(gradwatch.__file__).parent / "hook"
RUN_NAME_PREFIXES = (
    "gradcheck/",
    "grad_",
    "param_",
    "update_ratio/",
    "nonfinite/",
    "alerts/",
    "gradwatch/",
    "gradwatch.",
)


@pytest.mark.parametrize("path", sorted(HOOK_DIR.glob("*.py")), ids=lambda p: p.name)
def test_hook_takes_every_run_name_from_the_schema(path):
    """No metric, tag or artifact name is spelled out in the hook: all come from gradwatch.schema
    (docstrings and the logger names excepted)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    loggers = {
        id(arg)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "getLogger"
        for arg in node.args
    }
    spelled = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings | loggers
        and node.value.startswith(RUN_NAME_PREFIXES)
    ]
    assert spelled == [], f"{path.name}: take these names from gradwatch.schema"


def test_failed_check_log_explains_every_tensor_disagreeing_once(tracking_uri, caplog):
    """The engine's finding explains it, printed once (no second hint beside it)."""
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(64, 8)), rng.integers(0, 3, 64)
    params = relu_mlp()
    with gradwatch.GradWatch(every=1, experiment="hook-notes", config=False) as watch:
        _, grads = loss_and_grads(params, X[:32], y[:32])
        # loss_fn on another batch than the gradients: every tensor disagrees.
        report = watch.step(
            params, grads, loss=1.0, lr=0.1, loss_fn=lambda p: loss_and_grads(p, X[32:], y[32:])[0]
        )
    assert report is not None and not report.passed
    assert report.finding.hint.startswith("every tensor disagrees"), report.finding
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("gradwatch"))
    assert logged.count("every tensor disagrees") == 1 and logged.count("hint:") == 1


def test_clipped_probes_are_logged_per_tensor(tracking_uri):
    """check metrics come from schema.check_metrics: clipped probes land as gradcheck/clipped/<t>."""
    params = {"w": np.array([1.0, 2.0, -3.0, 0.01, -0.02, 4.0])}

    def loss_fn(p):
        return float(10.0 * (p["w"] ** 2).sum())

    grads = {"w": np.clip(20.0 * params["w"], -1.0, 1.0)}  # clipped inside "backprop"
    with gradwatch.GradWatch(every=1, mode="full", experiment="hook-clip", config=False) as watch:
        report = watch.step(params, grads, loss=loss_fn(params), loss_fn=loss_fn)
    assert report.per_param["w"].num_clipped == 4, report
    client = mlflow.MlflowClient(tracking_uri)
    metrics = client.get_run(watch.run.run_id).data.metrics
    assert metrics["gradcheck/clipped/w"] == 4.0
