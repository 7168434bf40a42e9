"""One verdict per check, the engine's, shown alike by the hook, `compare --format json` and the
run report: a bug in the backward path every tensor shares (at the first step and later), a
real call-order slip, one tensor off by 2, every tensor off by the batch size, dropout with
fresh masks (inconclusive), and a bias feeding a batchnorm (the loss does not depend on it).

The networks are written here in the shape small numpy training scripts take: a full-batch
tanh MLP with a softmax cross-entropy, biases as (1, n) rows, SGD by hand.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
from click.testing import CliRunner

import gradwatch
from gradwatch.cli import main
from gradwatch.report import from_mlflow, render_report
from gradwatch.report.html import ReportImages

LR = 0.5
M = 24  # examples in the (full) batch
STEPS, EVERY = 11, 5  # checks at steps 0, 5 and 10


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(M, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int) + (X[:, 2] > 1).astype(int)
    return X, y


def _init(seed: int = 0, hidden: int = 10, batchnorm: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    p = {
        "W1": rng.normal(size=(4, hidden)) / 2.0,
        "b1": rng.normal(size=(1, hidden)) * 0.1,
        "W2": rng.normal(size=(hidden, 3)) / np.sqrt(hidden),
        "b2": np.zeros((1, 3)),
    }
    if batchnorm:
        p["gamma"] = np.ones((1, hidden)) + rng.normal(size=(1, hidden)) * 0.1
        p["beta"] = rng.normal(size=(1, hidden)) * 0.1
    return p


def _softmax_xent(scores, y):
    shifted = scores - scores.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    return float(-np.log(probs[np.arange(len(y)), y]).mean()), probs


def _forward(p, X, mask=None):
    """tanh MLP; with gamma/beta a batchnorm (batch statistics) between W1 and tanh."""
    z = X @ p["W1"] + p["b1"]
    cache = {"X": X, "z": z}
    if "gamma" in p:
        mu, var = z.mean(axis=0), z.var(axis=0)
        zhat = (z - mu) / np.sqrt(var + 1e-5)
        cache.update(zhat=zhat, var=var)
        z = p["gamma"] * zhat + p["beta"]
    h = np.tanh(z)
    cache["h"] = h
    if mask is not None:
        h = h * mask
    cache["h_out"] = h
    return h @ p["W2"] + p["b2"], cache


def _loss(p, X, y, mask=None):
    return _softmax_xent(_forward(p, X, mask)[0], y)[0]


def _backward(p, X, y, bug=None, mask=None):
    scores, c = _forward(p, X, mask)
    loss, probs = _softmax_xent(scores, y)
    onehot = np.eye(3)[y]
    # The shared-path bug: the softmax's delta without the target (every tensor inherits it).
    delta = (probs if bug == "shared" else probs - onehot) / len(y)
    g = {"W2": c["h_out"].T @ delta, "b2": delta.sum(axis=0, keepdims=True)}
    if "gamma" in p:
        g["b2"] = delta.sum(axis=0)  # (3,) for a (1, 3) bias: a harmless numpy habit
    dh = delta @ p["W2"].T
    if mask is not None:
        dh = dh * mask
    dz = dh * (1 - c["h"] ** 2)
    if "gamma" in p:
        g["gamma"] = (dz * c["zhat"]).sum(axis=0, keepdims=True)
        g["beta"] = dz.sum(axis=0, keepdims=True)
        dzhat = dz * p["gamma"]
        m = len(y)
        dz = (m * dzhat - dzhat.sum(0) - c["zhat"] * (dzhat * c["zhat"]).sum(0)) / (
            m * np.sqrt(c["var"] + 1e-5)
        )
    g["W1"] = c["X"].T @ dz
    g["b1"] = dz.sum(axis=0, keepdims=True)
    if bug == "one_x2":
        g["W2"] = g["W2"] * 2
    if bug == "all_xN":
        g = {k: v * len(y) for k, v in g.items()}  # the loss is a mean, these are sums
    return loss, {"d" + k: v for k, v in g.items()}


def _train(uri: str, experiment: str, shape: str) -> str:
    """Train through GradWatch the way the script of ``shape`` does; returns the run id."""
    X, y = _data()
    params = _init(batchnorm=shape == "batchnorm")
    rng = np.random.default_rng(1)
    bug = shape if shape in ("shared", "one_x2", "all_xN") else None
    with gradwatch.GradWatch(
        every=EVERY,
        experiment=experiment,
        run_name=shape,
        config=False,
        seed=0,
        report=False,
        tracking_uri=uri,
    ) as watch:
        for _ in range(STEPS):
            if shape == "dropout":
                # Fresh masks in loss_fn too: a non-deterministic loss.
                mask = (rng.random((M, 10)) > 0.2) / 0.8
                loss, grads = _backward(params, X, y, mask=mask)

                def loss_fn(p):
                    return _loss(p, X, y, (np.random.random((M, 10)) > 0.2) / 0.8)
            else:
                loss, grads = _backward(params, X, y, bug=bug)

                def loss_fn(p):
                    return _loss(p, X, y)

            if shape == "call_order":  # the slip: the update first, then step()
                for k in params:
                    params[k] -= LR * grads["d" + k]
            watch.step(params, grads, loss=loss, lr=LR, loss_fn=loss_fn)
            if shape != "call_order":
                for k in params:
                    params[k] -= LR * grads["d" + k]
    return watch.close_result.run_id


#: shape -> (compare's verdict, the finding's headline, a phrase of its hint)
EXPECTED = {
    "shared": ("BACKPROP BUG", "BACKPROP BUG in", "a bug in a backward path every tensor shares"),
    "call_order": (
        "CALL ORDER",
        "step() called after the update",
        "step() was called after the update",
    ),
    "one_x2": (
        "BACKPROP BUG",
        "BACKPROP BUG in W2 (analytic = 2 × numeric)",
        "a bug in the backward pass of W2",
    ),
    "all_xN": (
        f"grads ×{M}",
        "every tensor's gradient off by one factor (analytic = 24 × numeric)",
        "1/batch size",
    ),
    "dropout": (
        "INCONCLUSIVE",
        "INCONCLUSIVE: the loss is non-deterministic",
        "restore it in loss_fn",
    ),
}


@pytest.fixture(scope="module")
def trained(mlflow_server):
    experiment = f"findings-{time.time_ns()}"
    logs: dict[str, str] = {}
    handler = _Collect()
    logger = logging.getLogger("gradwatch")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        ids = {}
        for shape in [*EXPECTED, "batchnorm"]:
            handler.records.clear()
            ids[shape] = _train(mlflow_server.uri, experiment, shape)
            logs[shape] = "\n".join(handler.records)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return mlflow_server.uri, experiment, ids, logs


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


@pytest.mark.server
@pytest.mark.parametrize("shape", list(EXPECTED))
def test_hook_compare_and_report_give_the_engine_verdict_and_hint(trained, shape):
    uri, experiment, ids, logs = trained
    verdict, headline, hint = EXPECTED[shape]

    # The hook: a few lines per check, the table once.
    log = logs[shape]
    assert headline in log and hint in log
    assert log.count("(the probe table is printed once per run") == 1

    # compare --format json: the same verdict, the engine's words.
    result = CliRunner().invoke(
        main, ["compare", "--runs", ids[shape], "--format", "json", "--tracking-uri", uri]
    )
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)
    # The checks' word comes first; the loss curve may add its own (a wrong gradient stalls).
    assert record["verdict"].split(" + ")[0] == verdict
    assert headline in record["finding"]["headline"] and hint in record["finding"]["hint"]

    # The report's first screen says it in words; the probe tables are collapsed.
    page = render_report(from_mlflow(ids[shape], uri), ReportImages())
    first_screen = page[page.index('id="verdict"') : page.index("<h2")]
    assert f'<div class="word">{verdict}' in first_screen
    assert _plain(headline) in first_screen and _plain(hint) in first_screen
    assert "<details open" not in page and "<details>" in page


def _plain(text: str) -> str:
    from html import escape

    return escape(text, quote=True)


@pytest.mark.server
def test_the_shared_path_hint_holds_at_the_first_step_and_later(trained):
    uri, _, ids, _ = trained
    data = from_mlflow(ids["shared"], uri)
    findings = {c["step"]: c["finding"] for c in data.checks}
    assert sorted(findings) == [0, 5, 10]
    for finding in findings.values():
        assert finding["kind"] == "bug" and len(finding["tensors"]) == 4
        assert "step() after the update is ruled out" in finding["hint"]
        assert "a bug in a backward path every tensor shares" in finding["hint"]


@pytest.mark.server
def test_a_bias_before_batchnorm_is_named_invariant_not_blamed_on_loss_fn(trained):
    uri, _, ids, logs = trained
    data = from_mlflow(ids["batchnorm"], uri)
    assert data.summary().verdict == "ok"
    assert all(c["status"] == "passed" for c in data.checks)
    assert all(c["per_param"]["b1"].get("invariant") for c in data.checks)
    assert "the loss does not depend on 'b1' here" in logs["batchnorm"]
    assert "does loss_fn use the params" not in logs["batchnorm"]
    # db2 is (3,) for a (1, 3) bias: accepted, with one info line.
    assert (
        logs["batchnorm"].count(
            "the gradient of 'b2' has shape (3,) for a parameter of shape (1, 3): accepted"
        )
        == 1
    )


def test_at_the_first_step_without_lr_stale_gradients_are_ruled_out():
    X, y = _data()
    params = _init()
    _, grads = _backward(params, X, y, bug="shared")
    report = gradwatch.check_gradients(
        lambda p: _loss(p, X, y), params, grads, seed=0, first_step=True
    )
    assert report.finding.kind == "bug"
    assert "at the first step, where no gradients can be stale" in report.finding.hint
    assert "pass lr= to step()" in report.finding.hint


def test_a_subset_of_tensors_off_by_one_factor_is_a_bug_naming_them():
    X, y = _data()
    params = _init()
    _, grads = _backward(params, X, y)
    grads = dict(grads, dW1=grads["dW1"] * 3, db1=grads["db1"] * 3)
    report = gradwatch.check_gradients(lambda p: _loss(p, X, y), params, grads, seed=0)
    assert report.finding.kind == "bug" and set(report.finding.tensors) == {"W1", "b1"}
    assert report.finding.factor == pytest.approx(3.0)
    assert "while the other tensors agree" in report.finding.hint


def test_a_smooth_network_gets_no_kink_label():
    X, y = _data()
    params = _init()
    _, grads = _backward(params, X, y, bug="one_x2")
    for seed in range(4):
        report = gradwatch.check_gradients(lambda p: _loss(p, X, y), params, grads, seed=seed)
        probes = [p for t in report.per_param.values() for p in t.probes]
        assert not any(p.verdict == "kink" or "kink:" in p.note for p in probes)


@pytest.mark.server
def test_the_hook_option_check_timeout_bounds_a_check(tracking_uri):
    X, y = _data()
    params = _init()

    def slow_loss(p):
        time.sleep(0.05)
        return _loss(p, X, y)

    with gradwatch.GradWatch(
        every=5, experiment="findings-timeout", config=False, report=False, check_timeout=0.3
    ) as watch:
        loss, grads = _backward(params, X, y)
        report = watch.step(params, grads, loss=loss, lr=LR, loss_fn=slow_loss)
    assert report.status == "inconclusive" and report.finding.kind == "timeout"
    assert report.num_evals <= 0.3 / 0.05 + 1
    data = from_mlflow(watch.close_result.run_id, tracking_uri)
    assert data.params["gradwatch.check_timeout"] == "0.3"
    assert data.summary().verdict.startswith("INCONCLUSIVE")
