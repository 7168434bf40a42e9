"""The gradient-check engine: the classic exercise, the bug zoo, triage, restoration, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradwatch
from gradwatch import InputError, LossError
from gradwatch.demo import ClassicBugs, classic_backward, classic_forward, classic_test_case
from tests.zoo import BUGS, CORRECT

SEEDS = range(20)


def _classic(bugs: ClassicBugs):
    x, y, params = classic_test_case()
    _, cache = classic_forward(x, y, params)
    grads = classic_backward(x, y, cache, bugs)
    return (lambda p: classic_forward(x, y, p)[0]), params, grads


# -- the classic exercise ------------------------------------------------------------------


def test_classic_buggy_network_difference_matches_the_exercise():
    loss_fn, params, grads = _classic(ClassicBugs.planted())
    report = gradwatch.check_gradients(loss_fn, params, grads, mode="full", eps=1e-7)
    assert report.difference == pytest.approx(0.2850931567761624, rel=1e-6)
    assert not report.passed
    assert set(report.mismatched_tensors) == {"W2", "b1"}
    assert report.num_evals >= 2 * 47  # every coordinate, both sides


def test_classic_corrected_network_passes_with_default_step():
    loss_fn, params, grads = _classic(ClassicBugs())
    report = gradwatch.check_gradients(loss_fn, params, grads, mode="full")
    assert report.passed, str(report)
    assert report.difference <= 1e-9
    assert sum(len(t.coords) for t in report.per_param.values()) == 47


def test_each_planted_classic_bug_is_pinned_to_its_tensor():
    for bugs, tensor in [
        (ClassicBugs(dW2_times_two=True), "W2"),
        (ClassicBugs(db1_four_over_m=True), "b1"),
    ]:
        loss_fn, params, grads = _classic(bugs)
        report = gradwatch.check_gradients(loss_fn, params, grads, seed=3)
        assert report.mismatched_tensors == [tensor], str(report)


def test_report_text_names_the_worst_coordinate():
    loss_fn, params, grads = _classic(ClassicBugs(dW2_times_two=True))
    text = str(gradwatch.check_gradients(loss_fn, params, grads, seed=0))
    assert "FAILED" in text
    line = next(line for line in text.splitlines() if "(mismatch)" in line)
    assert line.strip().startswith("W2[") and " analytic " in line and " numeric " in line
    assert " rel " in line


# -- the zoo: every bug flagged, no correct network flagged, for 20 seeds ----------------


@pytest.mark.parametrize("name", sorted(BUGS))
def test_every_bug_is_flagged_for_every_seed(name):
    net = BUGS[name]
    for seed in SEEDS:
        params, X, y = net.make(seed)
        grads = net.backward(params, X, y)
        report = gradwatch.check_gradients(lambda p: net.loss(p, X, y), params, grads, seed=seed)
        assert not report.passed, f"{name} seed {seed} not flagged:\n{report}"
        assert report.num_mismatches > 0


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_no_correct_network_is_flagged_for_any_seed(name):
    net = CORRECT[name]
    for seed in SEEDS:
        params, X, y = net.make(seed)
        grads = net.backward(params, X, y)
        report = gradwatch.check_gradients(lambda p: net.loss(p, X, y), params, grads, seed=seed)
        assert report.passed, f"{name} seed {seed} flagged:\n{report}"


def test_naive_fixed_step_check_misjudges_float32_but_gradwatch_does_not():
    # The classic recipe (eps=1e-7 in the parameters' own precision, threshold 2e-7) calls a
    # correct float32 network broken; gradwatch checks it on float64 copies.
    net = CORRECT["float32"]
    params, X, y = net.make(0)
    grads = net.backward(params, X, y)
    seen_dtypes = set()

    def loss_fn(p):
        seen_dtypes.update(str(v.dtype) for v in p.values())
        return net.loss(p, X, y)

    report = gradwatch.check_gradients(loss_fn, params, grads, seed=0)
    assert report.passed and seen_dtypes == {"float64"}
    naive = []
    for name, value in params.items():
        for i in range(min(value.size, 5)):
            flat = value.reshape(-1)
            old = flat[i].copy()
            flat[i] = old + np.float32(1e-7)
            jp = net.loss(params, X, y)
            flat[i] = old - np.float32(1e-7)
            jm = net.loss(params, X, y)
            flat[i] = old
            naive.append(((jp - jm) / 2e-7, grads["d" + name].reshape(-1)[i]))
    n, a = np.array(naive).T
    assert np.linalg.norm(a - n) / (np.linalg.norm(a) + np.linalg.norm(n)) > 2e-7


# -- triage --------------------------------------------------------------------------------


def test_exact_relu_kinks_are_classified_as_kinks_not_mismatches():
    net = CORRECT["relu_zero_padded_rows"]
    verdicts = []
    for seed in range(5):
        params, X, y = net.make(seed)
        grads = net.backward(params, X, y)
        report = gradwatch.check_gradients(lambda p: net.loss(p, X, y), params, grads, seed=seed)
        assert report.passed
        verdicts += [p.verdict for t in report.per_param.values() for p in t.probes]
    assert "kink" in verdicts
    assert "mismatch" not in verdicts


def test_relu_kink_with_wrong_gradient_is_a_mismatch():
    # f(x) = relu(x) at x = 0: one-sided derivatives 0 and 1; an analytic 5 matches neither.
    x = np.zeros(1)
    report = gradwatch.check_gradients(
        lambda p: float(np.maximum(p[0], 0).sum()), [x], [np.array([5.0])]
    )
    assert not report.passed
    ok = gradwatch.check_gradients(
        lambda p: float(np.maximum(p[0], 0).sum()), [x], [np.array([0.0])]
    )
    assert ok.passed and ok.per_param["0"].verdict == "kink"


def test_single_bad_coordinate_is_localized_by_the_directional_probe():
    net = BUGS["one_coord_large_tensor"]
    params, X, y = net.make(0)
    grads = net.backward(params, X, y)
    bad = np.unravel_index(
        int(np.argmax(np.abs(net.backward(params, X, y)["dW1"] - _clean(net, params, X, y)))),
        params["W1"].shape,
    )
    report = gradwatch.check_gradients(
        lambda p: net.loss(p, X, y), params, grads, mode="directional", num_samples=1, seed=0
    )
    assert not report.passed
    mismatches = [p.index for p in report.per_param["W1"].coords if p.verdict == "mismatch"]
    assert tuple(int(i) for i in bad) in mismatches
    # O(log n) probes: far fewer evaluations than the 2n of a full check of W1.
    assert report.num_evals < 2 * params["W1"].size / 10


def _clean(net, params, X, y):
    clean = type(net)(**{**net.__dict__, "bug": None})
    return clean.backward(params, X, y)["dW1"]


def test_non_deterministic_loss_is_named_not_blamed_on_the_gradient():
    loss_fn, params, grads = _classic(ClassicBugs())
    rng = np.random.default_rng(0)

    def dropout_loss(p):
        return loss_fn(p) * (1 + 0.01 * rng.random())

    report = gradwatch.check_gradients(dropout_loss, params, grads)
    assert report.stochastic_loss and report.status == "inconclusive" and not report.passed
    assert report.num_mismatches == 0
    assert "non-deterministic" in str(report) and "loss_fn" in str(report)


# -- cost, modes, seeds ------------------------------------------------------------------


@pytest.mark.parametrize("num_samples", [8, 32, 64])
@pytest.mark.parametrize("sizes", [(6, 8, 3), (6, 8, 8, 8, 3), (10, 4, 4, 4, 4, 4, 2)])
def test_passing_default_check_stays_within_its_evaluation_budget(num_samples, sizes):
    net = CORRECT["tanh"].__class__(sizes=sizes, act="tanh", loss_kind="mse")
    params, X, y = net.make(1)
    grads = net.backward(params, X, y)
    report = gradwatch.check_gradients(
        lambda p: net.loss(p, X, y), params, grads, num_samples=num_samples
    )
    tensors = len(params)
    assert report.passed
    assert report.num_evals <= 2 * (num_samples + 2 * tensors) + 4


def test_full_mode_is_the_classic_two_evaluations_per_coordinate():
    net = CORRECT["tanh"]
    params, X, y = net.make(2)
    grads = net.backward(params, X, y)
    n = sum(v.size for v in params.values())
    report = gradwatch.check_gradients(lambda p: net.loss(p, X, y), params, grads, mode="full")
    assert report.passed and report.num_evals == 2 * n + 2


def test_every_tensor_biases_included_is_covered_in_sampled_mode():
    net = BUGS["bias_four_over_m"]
    params, X, y = net.make(0)
    grads = net.backward(params, X, y)
    report = gradwatch.check_gradients(
        lambda p: net.loss(p, X, y), params, grads, mode="sampled", num_samples=6
    )
    assert all(len(t.coords) >= 1 for t in report.per_param.values())
    assert "b1" in report.mismatched_tensors


def test_same_seed_same_probes_and_seed_is_recorded():
    net = CORRECT["tanh"]
    params, X, y = net.make(0)
    grads = net.backward(params, X, y)
    run = lambda seed: gradwatch.check_gradients(
        lambda p: net.loss(p, X, y), params, grads, seed=seed
    )  # noqa: E731
    a, b, c = run(7), run(7), run(8)
    assert [t.indices for t in a.per_param.values()] == [t.indices for t in b.per_param.values()]
    assert [d.analytic for t in a.per_param.values() for d in t.directions] == [
        d.analytic for t in b.per_param.values() for d in t.directions
    ]
    assert [t.indices for t in a.per_param.values()] != [t.indices for t in c.per_param.values()]
    unseeded = gradwatch.check_gradients(lambda p: net.loss(p, X, y), params, grads)
    again = run(unseeded.seed)
    assert [t.indices for t in unseeded.per_param.values()] == [
        t.indices for t in again.per_param.values()
    ]


def test_forced_eps_is_used_everywhere():
    loss_fn, params, grads = _classic(ClassicBugs())
    report = gradwatch.check_gradients(loss_fn, params, grads, eps=1e-5, seed=0)
    assert {t.step for t in report.per_param.values()} == {1e-5}


def test_list_params_and_report_serializes():
    w, b = np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([0.1, -0.2])
    loss = lambda p: float(np.sum(np.sin(p[0])) + np.sum(p[1] ** 2))  # noqa: E731
    report = gradwatch.check_gradients(loss, [w, b], [np.cos(w), 2 * b])
    assert report.passed and set(report.per_param) == {"0", "1"}
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] is True and data["per_param"]["0"]["coords"]


# -- nothing corrupted ---------------------------------------------------------------------


def _bits(params):
    return {k: v.tobytes() for k, v in params.items()}


@pytest.mark.parametrize("failure", ["raise", "nan", "interrupt"])
def test_parameters_restored_bit_for_bit_when_the_loss_fails(failure):
    loss_fn, params, grads = _classic(ClassicBugs())
    before, arrays = _bits(params), dict(params)
    view = params["W1"][1:3]
    calls = {"n": 0}

    def flaky(p):
        calls["n"] += 1
        if calls["n"] == 9:
            if failure == "raise":
                raise RuntimeError("boom")
            if failure == "nan":
                return float("nan")
            raise KeyboardInterrupt
        return loss_fn(p)

    expected = {"raise": RuntimeError, "nan": LossError, "interrupt": KeyboardInterrupt}[failure]
    with pytest.raises(expected):
        gradwatch.check_gradients(flaky, params, grads, seed=0)
    assert _bits(params) == before
    assert all(params[k] is arrays[k] for k in params)
    assert view.base is params["W1"] and np.shares_memory(view, params["W1"])


dtypes = st.sampled_from([np.float64, np.float32, np.float16])
shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(shapes, dtypes), min_size=1, max_size=4), st.integers(0, 2**31 - 1))
def test_restoration_is_bit_for_bit_for_any_shapes_and_dtypes(specs, seed):
    rng = np.random.default_rng(seed)
    params = {
        f"p{i}": rng.normal(size=shape).astype(dtype) for i, (shape, dtype) in enumerate(specs)
    }
    params["p0"].reshape(-1)[0] = -0.0  # signed zero must survive too
    before = _bits(params)
    coef = {k: rng.uniform(0.5, 2.0) for k in params}
    loss = lambda p: float(
        sum(coef[k] * np.sum(np.asarray(v, np.float64) ** 2) for k, v in p.items())
    )  # noqa: E731
    grads = {k: (2 * coef[k] * v.astype(np.float64)).astype(v.dtype) for k, v in params.items()}
    report = gradwatch.check_gradients(loss, params, grads, seed=seed)
    assert _bits(params) == before
    assert report.passed, str(report)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 30),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["auto", "sampled", "directional", "full"]),
)
def test_analytic_functions_pass_with_tiny_error(n, seed, mode):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, size=n)
    a, w = rng.uniform(-2, 2, size=n), rng.uniform(0.5, 2, size=n)
    loss = lambda p: float(np.sum(a * p["x"] ** 2) + np.sum(np.sin(w * p["x"])))  # noqa: E731
    grad = 2 * a * x + w * np.cos(w * x)
    report = gradwatch.check_gradients(loss, {"x": x}, {"dx": grad}, mode=mode, seed=seed)
    assert report.passed and report.max_rel_error < 1e-6, str(report)


# -- bad input -----------------------------------------------------------------------------


def _ok_inputs():
    return {"W1": np.ones((2, 3)), "b1": np.zeros(2)}, {"dW1": np.ones((2, 3)), "db1": np.zeros(2)}


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda p, g: g.pop("db1"), ["missing", "'b1'"]),
        (lambda p, g: g.update(dW9=np.ones(1)), ["'dW9'", "no matching parameter"]),
        (lambda p, g: g.update(dW1=np.ones((3, 2))), ["'W1'", "(3, 2)", "(2, 3)"]),
        (lambda p, g: p.update(W1=np.ones((2, 3), dtype=np.int64)), ["'W1'", "int64", "float"]),
        (lambda p, g: p.update(W1=[[1.0, 2.0, 3.0]] * 2), ["'W1'", "list", "numpy array"]),
        (lambda p, g: g.update(W1=np.ones((2, 3))), ["both", "'W1'"]),
    ],
)
def test_bad_params_or_grads_name_the_key_and_the_fix(mutate, words):
    params, grads = _ok_inputs()
    mutate(params, grads)
    calls = []
    with pytest.raises(InputError) as err:
        gradwatch.check_gradients(lambda p: calls.append(1) or 0.0, params, grads)
    for word in words:
        assert word in str(err.value)
    assert not calls, "validation must happen before any evaluation"


@pytest.mark.parametrize(
    "ret, words",
    [
        (np.ones(3), ["shape (3,)", "scalar"]),
        (float("inf"), ["inf", "finite"]),
        ((1.0, {}), ["tuple", "[0]"]),
        ("1.0", ["str"]),
    ],
)
def test_loss_that_is_not_a_finite_scalar_is_a_clear_error(ret, words):
    params, grads = _ok_inputs()
    with pytest.raises(LossError) as err:
        gradwatch.check_gradients(lambda p: ret, params, grads)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    "kwargs", [{"mode": "fast"}, {"num_samples": 0}, {"eps": -1.0}, {"eps": float("nan")}]
)
def test_bad_options_are_rejected(kwargs):
    params, grads = _ok_inputs()
    with pytest.raises(InputError) as err:
        gradwatch.check_gradients(lambda p: 0.0, params, grads, **kwargs)
    assert next(iter(kwargs)) in str(err.value)


def test_list_params_length_mismatch():
    with pytest.raises(InputError, match="2 arrays but grads has 1"):
        gradwatch.check_gradients(lambda p: 0.0, [np.ones(2), np.ones(2)], [np.ones(2)])


def test_strided_views_are_checked_in_place_and_restored():
    base = np.random.default_rng(0).normal(size=(6, 4))
    other = np.random.default_rng(1).normal(size=(6, 4))
    params = {"W": base.T, "v": other[::2, 1]}  # non-contiguous views
    before = base.tobytes() + other.tobytes()
    loss = lambda p: float(np.sum(np.tanh(p["W"]) ** 2) + np.sum(np.sin(p["v"])))
    grads = {"W": 2 * np.tanh(base.T) * (1 - np.tanh(base.T) ** 2), "v": np.cos(other[::2, 1])}
    report = gradwatch.check_gradients(loss, params, grads, seed=0)
    assert report.passed, str(report)
    bad = {"W": grads["W"].copy(), "v": grads["v"]}
    bad["W"][2, 3] += 1.0
    assert gradwatch.check_gradients(
        loss, params, bad, mode="directional", num_samples=2
    ).mismatched_tensors == ["W"]
    assert base.tobytes() + other.tobytes() == before


def test_float32_loss_returning_a_python_float_is_not_blamed_on_the_gradient():
    # The loss casts to float32 inside but returns float(): its precision is measured, not
    # read off the returned type, so the check falls back to float32 tolerances.
    net = CORRECT["float32"]
    calls = []
    for seed in range(10):
        params, X, y = net.make(seed)
        grads = net.backward(params, X, y)

        def loss_fn(p):
            calls.append(1)
            return float(net.loss({k: v.astype(np.float32) for k, v in p.items()}, X, y))

        calls.clear()
        report = gradwatch.check_gradients(loss_fn, params, grads, seed=seed)
        assert report.passed, str(report)
        assert any("float32 tolerances" in n for n in report.notes)
        assert report.num_evals == len(calls)
