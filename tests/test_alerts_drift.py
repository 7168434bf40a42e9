"""rel_error_drift: a growing backprop error is flagged before it is large; a correct one never.

Check reports follow the engine's contract: per tensor ``max_rel_error`` is the triage-resolved
error (kinks and round-off resolved by evidence), ``max_raw_rel_error`` the first-pass one; per
probe ``resolved``. Drift reads ``max_rel_error``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradwatch
from gradwatch.alerts import AlertEngine, CheckObservation, Rule
from gradwatch.demo import MLP, make_blobs

CHECK_EVERY = 50


def growing(step: int) -> float:
    """The planted error: 1e-6 at step 0, doubling every 100 steps."""
    return 1e-6 * 2.0 ** (step / 100)


CROSSES_2E5 = math.ceil(100 * math.log2(20))  # step 433


def tensor(err: float, raw: float | None = None, dtype: str = "float64", mismatch=False):
    """A tensor entry shaped like ``TensorReport.to_dict()``."""
    raw = err if raw is None else raw
    verdict = "mismatch" if mismatch else ("kink" if raw > err else "ok")
    probe = {
        "index": [0],
        "analytic": 1.0,
        "numeric": 1.0 + raw,
        "rel_error": raw,
        "resolved": err,
        "verdict": verdict,
    }
    return {
        "shape": [32],
        "dtype": dtype,
        "max_rel_error": err,
        "max_raw_rel_error": raw,
        "verdict": verdict,
        "num_mismatches": int(mismatch),
        "num_clipped": 0,
        "coords": [probe],
        "directions": [],
    }


def engine() -> AlertEngine:
    return AlertEngine(
        [
            Rule("check_failure", "check_failure", cooldown=0),
            Rule("rel_error_drift", "rel_error_drift", cooldown=0),
        ]
    )


def first_flag(reports: list[tuple[int, dict]]) -> tuple[str, int] | None:
    eng = engine()
    for step, per_param in reports:
        alerts = eng.observe_check(CheckObservation(step, {"per_param": per_param}))
        if alerts:
            return alerts[0].rule, step
    return None


@pytest.mark.parametrize("seed", range(6))
def test_error_growing_from_1e6_is_flagged_before_it_crosses_2e5(seed):
    # Each check sees the planted error times a sampling factor in [0.5, 1] (coordinates near
    # zero gradient show less), the arithmetic's own 1e-9..1e-8, and one check in five has a
    # kink whose raw error is 1e-3 (resolved by triage, so max_rel_error stays put).
    rng = np.random.default_rng(seed)
    reports = []
    for step in range(CHECK_EVERY, 2000, CHECK_EVERY):
        err = growing(step) * rng.uniform(0.5, 1.0) + 10 ** rng.uniform(-9, -8)
        raw = 1e-3 if rng.random() < 0.2 else err
        reports.append(
            (
                step,
                {
                    "W1": tensor(10 ** rng.uniform(-9, -8)),
                    "b1": tensor(err, raw, mismatch=err > 1e-4),
                },
            )
        )
    rule, step = first_flag(reports)
    assert rule == "rel_error_drift" and step <= CROSSES_2E5, (rule, step)


def test_correct_network_drifting_from_1e9_to_1e7_raises_nothing():
    rng = np.random.default_rng(0)
    reports = []
    for i, step in enumerate(range(CHECK_EVERY, 10_000, CHECK_EVERY)):
        level = 10 ** (-9 + 2 * i / 200)  # 1e-9 -> 1e-7 over 10 000 steps
        per = {
            name: tensor(
                level * 10 ** rng.uniform(-1, 1), raw=1.0 if rng.random() < 0.1 else None
            )  # kinks, resolved
            for name in ("W1", "b1", "W2", "b2")
        }
        reports.append((step, per))
    assert first_flag(reports) is None


def test_one_spike_is_not_drift_but_a_level_that_stays_up_is():
    base = [(s, {"b1": tensor(1e-6)}) for s in range(50, 500, 50)]
    spike = base[:5] + [(300, {"b1": tensor(1e-4)})] + base[6:]
    assert first_flag(spike) is None
    stays = base[:5] + [(s, {"b1": tensor(5e-6)}) for s in (300, 350, 400)]
    assert first_flag(stays) == ("rel_error_drift", 350)  # two of three checks are up


def test_float32_tensors_have_their_own_floor():
    errs = [1e-5, 1e-5, 1e-5, 5e-5, 6e-5, 8e-5]
    as64 = [(50 * i, {"W": tensor(e)}) for i, e in enumerate(errs, 1)]
    as32 = [(50 * i, {"W": tensor(e, dtype="float32")}) for i, e in enumerate(errs, 1)]
    assert first_flag(as64) == ("rel_error_drift", 300)
    assert first_flag(as32) is None  # float32 checks are good to ~1e-3


def test_clipped_probes_do_not_fail_a_check_but_a_mismatch_beside_them_does():
    clipped = {
        "index": [3],
        "analytic": 5.0,
        "numeric": 19.7,
        "rel_error": 0.75,
        "resolved": 0.75,
        "verdict": "clipped",
    }
    w = {**tensor(1e-9), "coords": [clipped], "num_clipped": 1, "verdict": "clipped"}
    eng = engine()
    assert eng.observe_check(CheckObservation(10, {"per_param": {"Wxh": w}})) == []
    bug = tensor(0.3, mismatch=True)
    (alert,) = eng.observe_check(CheckObservation(20, {"per_param": {"Wxh": w, "by": bug}}))
    assert alert.rule == "check_failure" and alert.details["tensor"] == "by"
    assert list(alert.details["tensors"]) == ["by"]
    assert "1 clipped coordinate(s) in Wxh" in alert.message


# -------------------------------------------------------------------------------------------
# End to end: a real MLP, real checks, a planted backprop error growing in b1.


def planted_run(seed: int, steps: int = 700) -> list[tuple[int, dict]]:
    X, y = make_blobs(n=512, dim=20, classes=3, seed=seed)
    mlp = MLP([20, 32, 3], seed=seed)
    rng = np.random.default_rng(seed)
    reports = []
    for step in range(steps):
        idx = rng.integers(0, len(y), size=64)
        xb, yb = X[idx], y[idx]
        loss, grads = mlp.loss_and_grads(mlp.params, xb, yb)
        grads["db1"] = grads["db1"] * (1.0 + growing(step))
        if step % CHECK_EVERY == 0 and step > 0:
            report = gradwatch.check_gradients(
                lambda p, xb=xb, yb=yb: mlp.loss(p, xb, yb),
                mlp.params,
                grads,
                num_samples=16,
                seed=step,
            )
            reports.append((step, report.to_dict()["per_param"]))
        for k in mlp.params:
            mlp.params[k] -= 0.1 * grads["d" + k]
    return reports


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_real_checks_flag_a_growing_b1_error_before_2e5(seed):
    reports = planted_run(seed)
    flagged = first_flag(reports)
    assert flagged is not None and flagged[1] <= CROSSES_2E5, flagged
    # What drift reads is the error of the tensor at that check: stable, near the planted one.
    errors = {step: per["b1"]["max_rel_error"] for step, per in reports}
    assert growing(flagged[1]) / 3 < errors[flagged[1]] < 3 * growing(flagged[1])


def _engine_reports_resolved_errors() -> bool:
    """The check engine's contract: ``max_rel_error`` resolved, ``max_raw_rel_error`` beside it."""
    X, y = make_blobs(n=8, dim=3, classes=2, seed=0)
    mlp = MLP([3, 2], seed=0)
    _, grads = mlp.loss_and_grads(mlp.params, X, y)
    report = gradwatch.check_gradients(lambda p: mlp.loss(p, X, y), mlp.params, grads)
    return "max_raw_rel_error" in report.to_dict()["per_param"]["W1"]


@pytest.mark.xfail(
    not _engine_reports_resolved_errors(),
    reason="the first-pass max_rel_error of this engine jumps to 5e-3 at checks where b1 has "
    "noise probes, which buries the early baseline; passes once max_rel_error is resolved",
    strict=False,
)
@pytest.mark.slow
def test_mnist_sized_mlp_flags_a_growing_b1_error_before_2e5():
    # The setting: 784-256-10, batches of 128, checks every 50 steps, default samples;
    # seed 2 is a run whose first-pass b1 errors spike at steps 100-200.
    X, y = make_blobs(n=1024, dim=784, classes=10, seed=2)
    mlp = MLP([784, 256, 10], seed=2)
    rng = np.random.default_rng(2)
    reports = []
    for step in range(CROSSES_2E5 + 1):
        idx = rng.integers(0, len(y), size=128)
        _, grads = mlp.loss_and_grads(mlp.params, X[idx], y[idx])
        grads["db1"] = grads["db1"] * (1.0 + growing(step))
        if step % CHECK_EVERY == 0 and step > 0:
            report = gradwatch.check_gradients(
                lambda p, i=idx: mlp.loss(p, X[i], y[i]), mlp.params, grads, seed=step
            )
            reports.append((step, report.to_dict()["per_param"]))
        for k in mlp.params:
            mlp.params[k] -= 0.1 * grads["d" + k]
    flagged = first_flag(reports)
    assert flagged is not None and flagged[1] <= CROSSES_2E5, flagged
