"""Bad input and faults at the check's door: non-finite gradients, hostile loss_fn, odd options."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy as np
import pytest

import gradwatch
from gradwatch import InputError
from gradwatch.check import MODES
from tests.zoo import CORRECT


def _net(seed=0):
    net = CORRECT["tanh"]
    params, X, y = net.make(seed)
    grads = net.backward(params, X, y)
    return net, params, X, y, grads


# -- non-finite analytic gradients -----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_a_non_finite_gradient_entry_fails_the_check_in_every_mode(mode, value):
    net, params, X, y, grads = _net()
    grads["dW1"][4, 3] = value
    calls = []

    def loss_fn(p):
        calls.append(1)
        return net.loss(p, X, y)

    # num_samples=1: the bad coordinate is practically never drawn; it must fail anyway.
    report = gradwatch.check_gradients(loss_fn, params, grads, mode=mode, num_samples=6, seed=0)
    assert not report.passed and report.status == "failed"
    assert report.mismatched_tensors == ["W1"]
    assert not calls  # decided without evaluating the loss
    assert report.max_rel_error == np.inf
    text = str(report)
    assert "'W1'" in text and "W1[4,3]" in text and "1 of 48 entries" in text
    data = report.to_dict()
    assert data["per_param"]["W1"]["coords"][0]["index"] == [4, 3]
    assert data["max_rel_error"] == "inf"


def test_all_nan_gradients_in_directional_mode_do_not_report_zero_error():
    net, params, X, y, grads = _net()
    grads = {k: np.full_like(v, np.nan) for k, v in grads.items()}
    report = gradwatch.check_gradients(
        lambda p: net.loss(p, X, y), params, grads, mode="directional"
    )
    assert not report.passed
    assert report.max_rel_error != 0.0 and "max rel error 0.0" not in str(report)
    assert set(report.mismatched_tensors) == set(params)
    w1 = report.per_param["W1"]
    assert len(w1.coords) == 5  # the first few listed; the note gives the count
    assert "48 of 48 entries" in str(report) and "and 45 more" in str(report)


# -- a loss_fn that rebinds the params it is given ---------------------------------------------


@pytest.mark.parametrize("container", [dict, OrderedDict])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_loss_fn_rebinding_or_adding_keys_leaves_the_callers_mapping_as_it_was(container, dtype):
    net = CORRECT["tanh"]
    raw, X, y = net.make(0)
    params = container((k, v.astype(dtype)) for k, v in raw.items())
    grads = net.backward(params, X, y)
    before = [(k, v, v.tobytes()) for k, v in params.items()]

    def loss_fn(p):
        b2 = p["b2"]
        p["W1"] = p["W1"].astype(np.float64)  # rebinds a key
        p["scratch"] = np.zeros(3)  # adds one
        del p["b2"]  # and removes one
        return net.loss(dict(p, b2=b2), X, y)

    report = gradwatch.check_gradients(loss_fn, params, grads, seed=1)
    assert report.passed, str(report)
    assert list(params) == [k for k, _, _ in before]
    for (key, obj, bits), (key2, value) in zip(before, params.items()):
        assert key == key2 and value is obj and value.tobytes() == bits
    assert type(params) is container


def test_list_params_rebound_inside_loss_fn_are_left_alone():
    w = np.array([0.3, -1.2, 2.0])
    params = [w]

    def loss_fn(p):
        p[0] = p[0] * 1.0
        p.append("junk")
        return float(np.sum(np.sin(p[0])))

    report = gradwatch.check_gradients(loss_fn, params, [np.cos(w)])
    assert report.passed
    assert len(params) == 1 and params[0] is w


# -- namedtuple params -----------------------------------------------------------------------


Params = namedtuple("Params", ["W", "b"])


@pytest.mark.parametrize("grads_as", ["namedtuple", "dict", "list"])
def test_namedtuple_params_are_checked_by_field_name(grads_as):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 4))
    params = Params(rng.normal(size=(4, 3)), rng.normal(size=3))

    def loss_fn(p):
        return float(np.sum(np.tanh(X @ p.W + p.b) ** 2))

    t = np.tanh(X @ params.W + params.b)
    dz = 2 * t * (1 - t**2)
    g_w, g_b = X.T @ dz, dz.sum(0) * 1.5  # b's gradient is wrong
    grads = {
        "namedtuple": Params(g_w, g_b),
        "dict": {"dW": g_w, "db": g_b},
        "list": [g_w, g_b],
    }[grads_as]
    report = gradwatch.check_gradients(loss_fn, params, grads, seed=0)
    assert set(report.per_param) == {"W", "b"}
    assert report.mismatched_tensors == ["b"]


def test_namedtuple_with_float32_fields_is_checked_on_float64_copies():
    rng = np.random.default_rng(1)
    params = Params(rng.normal(size=(3, 3)).astype(np.float32), np.ones(3, np.float32))
    seen = set()

    def loss_fn(p):
        seen.add(type(p).__name__)
        return float(np.sum(p.W**2) + np.sum(p.b**3))

    report = gradwatch.check_gradients(loss_fn, params, Params(2 * params.W, 3 * params.b**2))
    assert report.passed and seen == {"Params"}


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"num_samples": 10**30}, "num_samples"),
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 3.0}, "num_samples"),
        ({"eps": float("nan")}, "eps"),
        ({"mode": "fast"}, "mode"),
    ],
)
def test_bad_options_are_refused_before_any_evaluation(kwargs, word):
    net, params, X, y, grads = _net()
    calls = []

    def loss_fn(p):
        calls.append(1)
        return net.loss(p, X, y)

    with pytest.raises(InputError) as err:
        gradwatch.check_gradients(loss_fn, params, grads, **kwargs)
    assert str(err.value).startswith(word) and not calls
    with pytest.raises(InputError):
        gradwatch.check.validate_options(**kwargs)


def test_large_valid_seed_and_numpy_integers_are_accepted():
    net, params, X, y, grads = _net()
    report = gradwatch.check_gradients(
        lambda p: net.loss(p, X, y),
        params,
        grads,
        seed=np.uint64(2**64 - 1),
        num_samples=np.int64(8),
    )
    assert report.passed and report.seed == 2**64 - 1 and type(report.seed) is int
