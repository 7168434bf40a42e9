"""Histograms of |g| and |θ|: ``hist_every`` statistics steps append one line to the run's
``gradwatch/histograms.jsonl`` (real runs, real MLflow server); the ``hist_every`` and ``report``
options are validated like every hook option; ``log_histogram``'s bins hold exactly what they
say (hypothesis)."""

from __future__ import annotations

import bisect
import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gradwatch
from gradwatch import schema
from gradwatch.config import parse_config
from gradwatch.errors import ConfigError, InputError
from gradwatch.hook import HookOptions
from gradwatch.hook.histograms import HIST_MIN_GAP
from gradwatch.schema import expand_settings
from gradwatch.stats import (
    HIST_BINS,
    HIST_EDGES,
    hist_edges,
    histogram_record,
    log_histogram,
    tensor_stats,
    tensor_stats_and_histograms,
)
from tests.test_hook_stats import HIDDEN, KILL_STEP, KILLED, loss_and_grads, relu_mlp

PARTS = ("counts", "zero", "under", "over", "nonfinite")
NAN_STEP = 30  # a statistics step and a histogram step with stats_every=2, hist_every=3


def histogram_lines(client: mlflow.MlflowClient, run_id: str, tmp_path: Path) -> list[dict]:
    path = client.download_artifacts(run_id, schema.ARTIFACT_HISTOGRAMS, str(tmp_path))
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def artifact_names(client: mlflow.MlflowClient, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, "gradwatch")}


def total(hist: dict) -> int:
    return sum(hist["counts"]) + hist["zero"] + hist["under"] + hist["over"] + hist["nonfinite"]


def train(watch, steps: int) -> dict[int, tuple[dict, dict]]:
    """The ReLU MLP of test_hook_stats (units die at KILL_STEP); at NAN_STEP one gradient entry
    the hook sees is NaN. Returns {step: (params, grads)} as the hook saw them."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(64, 8)), rng.integers(0, 3, 64)
    params = relu_mlp()
    seen = {}
    for s in range(steps):
        if s == KILL_STEP:
            params["b1"][:KILLED] = -1e3
        loss, grads = loss_and_grads(params, X, y)
        shown = {k: g.copy() for k, g in grads.items()}
        if s == NAN_STEP:
            shown["W2"][0, 0] = np.nan
        seen[s] = ({k: p.copy() for k, p in params.items()}, shown)
        watch.step(params, shown, loss=loss, lr=0.05)
        for k in params:
            params[k] -= 0.05 * grads[k]
    return seen


def test_histograms_land_every_hist_every_statistics_step(tracking_uri, tmp_path):
    with gradwatch.GradWatch(
        every=None, stats_every=2, hist_every=3, experiment="hook-hist", config=False
    ) as watch:
        seen = train(watch, 40)
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(watch.run.run_id)
    assert expand_settings(run.data.params)["gradwatch.hist_every"] == "3"
    assert expand_settings(run.data.params)["gradwatch.report"] == "true"
    lines = histogram_lines(client, watch.run.run_id, tmp_path)
    # Statistics at 0, 2, 4, ...; every third of them has histograms.
    assert [r["step"] for r in lines] == list(range(0, 40, 6))
    for record in lines:
        assert record["bins"] == HIST_BINS
        params, grads = seen[record["step"]]
        assert set(record["tensors"]) == set(params)
        for name, p in params.items():
            for part, array in (("grad", grads[name]), ("param", p)):
                hist = record["tensors"][name][part]
                assert len(hist["counts"]) == len(hist_edges(record["bins"])) - 1 == 56
                assert total(hist) == array.size, (record["step"], name, part)
        # Exactly the histograms of what the hook was given at that step.
        assert record == histogram_record(record["step"], params, grads)
    by_step = {r["step"]: r["tensors"] for r in lines}
    # Dead ReLU units pass exactly zero gradient: b1's zeros jump from none to KILLED of HIDDEN.
    assert by_step[18]["b1"]["grad"]["zero"] == 0
    assert by_step[24]["b1"]["grad"]["zero"] == KILLED < HIDDEN
    assert by_step[24]["W2"]["grad"]["zero"] >= KILLED * 3  # their outgoing weights' gradients
    assert by_step[NAN_STEP]["W2"]["grad"]["nonfinite"] == 1
    assert all(
        t[n]["grad"]["nonfinite"] == 0 for s, t in by_step.items() if s != NAN_STEP for n in t
    )


def test_default_is_every_statistics_step_and_zero_writes_none(tracking_uri, tmp_path):
    client = mlflow.MlflowClient(tracking_uri)
    with gradwatch.GradWatch(
        every=None, stats_every=5, experiment="hook-hist", config=False
    ) as watch:
        train(watch, 12)
    assert watch.options.hist_every == 1
    lines = histogram_lines(client, watch.run.run_id, tmp_path)
    assert [r["step"] for r in lines] == [0, 5, 10]
    for off in (0, None, False):
        with gradwatch.GradWatch(
            every=None, stats_every=1, hist_every=off, experiment="hook-hist", config=False
        ) as watch:
            train(watch, 4)
        assert watch.options.hist_every == 0
        names = artifact_names(client, watch.run.run_id)
        assert schema.ARTIFACT_HISTOGRAMS not in names, (off, names)
        assert (
            expand_settings(client.get_run(watch.run.run_id).data.params)["gradwatch.hist_every"]
            == "0"
        )


def test_dense_statistics_get_histograms_at_least_one_percent_of_the_run_apart(
    tracking_uri, tmp_path
):
    """Statistics at every step: histograms at every step while that is 1 % of the run, then
    each at the first statistics step that is 1 % of the run past the last one."""
    with gradwatch.GradWatch(
        every=None, stats_every=1, experiment="hook-hist", config=False
    ) as watch:
        train(watch, 400)
    steps = [
        r["step"]
        for r in histogram_lines(mlflow.MlflowClient(tracking_uri), watch.run.run_id, tmp_path)
    ]
    assert steps[:101] == list(range(101))
    for before, after in zip(steps, steps[1:]):
        assert after - before >= HIST_MIN_GAP * after, (before, after)
        # ...and no statistics step in between would have been far enough already.
        assert after - 1 == before or after - 1 - before < HIST_MIN_GAP * (after - 1)
    assert len(steps) <= 101 + 100 * math.log(399 / 100)  # ~100 per e-fold of the run, at most


def test_odd_tensors_never_stop_training(tracking_uri, tmp_path):
    """float32/float16 params, integer gradients, a 0-d and an empty tensor, Inf and NaN."""
    rng = np.random.default_rng(3)
    params = {
        "f32": rng.normal(size=(6, 5)).astype(np.float32),
        "f16": rng.normal(size=7).astype(np.float16),
        "scalar": np.array(0.5),
        "empty": np.zeros((0, 4)),
    }
    grads_at = {}
    with gradwatch.GradWatch(
        every=None, stats_every=1, experiment="hook-hist", config=False
    ) as watch:
        for s in range(4):
            grads = {
                "f32": rng.integers(-128, 128, (6, 5)).astype(np.int8),
                "f16": (params["f16"] * 1e-9).astype(np.float16),  # float16 underflows to 0
                "scalar": np.array([np.inf, -np.inf, np.nan, 0.0][s]),
                "empty": np.zeros((0, 4)),
            }
            grads["f32"][0, 0] = -128  # abs() of int8 -128 wraps to -128 if taken in int8
            grads_at[s] = grads
            watch.step(params, grads, loss=1.0, lr=0.0)
    lines = histogram_lines(mlflow.MlflowClient(tracking_uri), watch.run.run_id, tmp_path)
    assert [r["step"] for r in lines] == [0, 1, 2, 3]
    for record in lines:
        tensors = record["tensors"]
        for name, p in params.items():
            assert total(tensors[name]["param"]) == p.size
            assert total(tensors[name]["grad"]) == p.size
        grads = grads_at[record["step"]]
        for name in ("f32", "scalar"):
            assert tensors[name]["grad"] == reference_histogram(grads[name]), name
        assert tensors["f32"]["grad"]["zero"] == np.count_nonzero(grads["f32"] == 0)
        assert tensors["f16"]["grad"]["zero"] == 7
    assert [r["tensors"]["scalar"]["grad"]["nonfinite"] for r in lines] == [1, 1, 1, 0]
    assert lines[3]["tensors"]["scalar"]["grad"]["zero"] == 1


# --------------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("hist_every", -1, "must be >= 0, got -1"),
        ("hist_every", True, "expected an integer, got bool True"),
        ("hist_every", 2.5, "expected an integer, got float 2.5"),
        ("hist_every", "3", "expected an integer, got str '3'"),
        ("report", "yes", "expected true or false, got 'yes'"),
        ("report", 1, "expected true or false, got 1"),
        ("report", None, "expected true or false, got None"),
    ],
)
def test_bad_values_are_refused_naming_the_option(option, value, problem):
    with pytest.raises(InputError) as info:
        gradwatch.GradWatch(config=False, **{option: value})
    message = str(info.value)
    assert message.startswith(f"GradWatch({option}={value!r}): `{option}` {problem}"), message
    yaml_value = "null" if value is None else json.dumps(value)  # "3", "yes": strings
    with pytest.raises(ConfigError) as info:
        parse_config(f"hook:\n  every: 10\n  {option}: {yaml_value}\n", "gw.yaml")
    message = str(info.value)
    assert message.startswith(f"gw.yaml:3: key `hook.{option}`:"), message


def test_off_and_on_values():
    assert HookOptions.resolve().hist_every == 1 and HookOptions.resolve().report is True
    for off in (0, None, False, np.int64(0)):
        assert HookOptions.resolve({"hist_every": off}).hist_every == 0
    assert (
        HookOptions.resolve({"hist_every": np.int32(4), "report": False}).as_dict()["hist_every"]
        == 4
    )
    config = parse_config("hook: {hist_every: false, report: false}\n", "gw.yaml")
    options = HookOptions.resolve(config=config)
    assert (options.hist_every, options.report) == (0, False)
    assert options.loggable()["gradwatch.report"] == "false"
    assert parse_config("hook: {hist_every: null}\n").hook["hist_every"] == 0
    assert parse_config("hook: {hist_every: 10}\n").hook["hist_every"] == 10


# --------------------------------------------------------------------------------------------
# log_histogram


def reference_histogram(a: np.ndarray) -> dict:
    """One value at a time, by Python's exact float comparisons against the edges."""
    edges = [float(e) for e in HIST_EDGES]
    out = {"counts": [0] * (len(edges) - 1), "zero": 0, "under": 0, "over": 0, "nonfinite": 0}
    for x in np.asarray(a, dtype=np.float64).reshape(-1).tolist():
        x = abs(x)
        if not math.isfinite(x):
            out["nonfinite"] += 1
        elif x == 0:
            out["zero"] += 1
        elif x < edges[0]:
            out["under"] += 1
        elif x > edges[-1]:
            out["over"] += 1
        else:
            out["counts"][min(bisect.bisect_right(edges, x) - 1, len(edges) - 2)] += 1
    return out


FLOATS = st.sampled_from([np.float64, np.float32, np.float16])


@settings(max_examples=200, deadline=None)
@given(data=st.data(), dtype=FLOATS)
def test_log_histogram_places_every_value_by_its_magnitude(data, dtype):
    elements = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([float(e) for e in HIST_EDGES] + [0.0, -0.0, 1e-10, 1e4, 1e-11, 1e5]),
    )
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
    with np.errstate(over="ignore"):  # above float16's range: Inf
        a = data.draw(hnp.arrays(np.float64, shape, elements=elements)).astype(dtype)
    hist = log_histogram(a)
    assert total(hist) == a.size
    assert hist == reference_histogram(a)
    assert log_histogram(-a) == hist  # |x|: the sign never matters


def test_exact_edges_open_their_bin_and_the_last_closes_it():
    hist = log_histogram(HIST_EDGES)
    assert hist["counts"] == [1] * 55 + [2]
    assert (hist["under"], hist["over"], hist["zero"]) == (0, 0, 0)
    below = np.nextafter(HIST_EDGES, 0)  # just under each edge: the bin before
    hist = log_histogram(-below)
    assert hist["under"] == 1 and hist["counts"] == [1] * 56
    assert log_histogram(np.nextafter(HIST_EDGES[-1], np.inf).reshape(1))["over"] == 1
    assert np.array_equal(hist_edges(HIST_BINS), HIST_EDGES)
    assert log_histogram(np.array(np.nan)) == reference_histogram(np.array([np.nan]))


@settings(max_examples=60, deadline=None)
@given(
    g=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=9),
        elements=st.floats(allow_nan=True, allow_infinity=True),
    ),
    dtype=FLOATS,
)
def test_one_sort_gives_the_same_statistics_as_partition(g, dtype):
    with np.errstate(all="ignore"):
        p = (np.arange(g.size, dtype=np.float64).reshape(g.shape) - 3.5).astype(dtype)
        stats, record = tensor_stats_and_histograms(7, {"t": p}, {"t": g})
        assert repr(stats) == repr(tensor_stats({"t": p}, {"t": g}))  # NaN == NaN in repr
    assert record == histogram_record(7, {"t": p}, {"t": g})
