"""The hook's pure parts, driven without MLflow: the loop clock and the check/statistics
schedule with a fake clock, the options object, the tensor layout."""

from __future__ import annotations

import dataclasses
import inspect
import pydoc

import numpy as np
import pytest

from gradwatch import ConfigError, GradWatch, InputError
from gradwatch.config import HOOK_OPTIONS, Config
from gradwatch.hook import BUDGET_RESERVE, DEFAULTS, PAUSE_STEPS, HookOptions, LoopClock, Schedule
from gradwatch.hook.layout import TensorLayout
from gradwatch.hook.schedule import STATS_MAX_INTERVAL


class FakeLoop:
    """Drives a LoopClock: the loop takes ``loop`` seconds a step, step() takes ``hook``."""

    def __init__(self, clock: LoopClock) -> None:
        self.clock, self.now = clock, 100.0

    def step(self, loop: float, hook: float) -> None:
        self.now += loop
        entered = self.now
        self.clock.enter(entered)
        self.now += hook
        self.clock.leave(entered, self.now)


def test_clock_separates_loop_time_from_hook_time():
    clock = LoopClock()
    loop = FakeLoop(clock)
    for _ in range(10):
        loop.step(loop=0.010, hook=0.001)
    # The first gap (before the first step) is not the loop's: 9 gaps of 10 ms.
    assert clock.loop_seconds == pytest.approx(0.090)
    assert clock.hook_seconds == pytest.approx(0.010)
    assert clock.step_seconds == pytest.approx(0.010)
    assert clock.overhead == pytest.approx(0.010 / 0.090)


def test_clock_counts_a_pause_as_a_few_typical_steps():
    clock = LoopClock()
    loop = FakeLoop(clock)
    for _ in range(20):
        loop.step(loop=0.010, hook=0.0)
    before = clock.loop_seconds
    loop.step(loop=30.0, hook=0.0)  # an evaluation pass
    assert clock.loop_seconds - before == pytest.approx(PAUSE_STEPS * 0.010)
    assert clock.step_seconds < 0.02  # the typical step barely moved


def test_schedule_checks_at_the_first_step_then_every():
    schedule = Schedule(every=10, stats_every=5, budget=None)
    clock = LoopClock()
    checked, stats = [], []
    for s in range(35):
        if s >= schedule.quiet_until:
            if schedule.stats_due(s):
                schedule.stats_done(s)
                stats.append(s)
            if schedule.check_due(s) and schedule.budget_allows(s, clock):
                schedule.check_started(s)
                checked.append(s)
            schedule.plan_after(s)
    assert checked == [0, 10, 20, 30]
    assert stats == [0, 5, 10, 15, 20, 25, 30]


def test_schedule_without_loss_fn_asks_again_after_every_steps():
    schedule = Schedule(every=10, stats_every=1000, budget=None)
    assert schedule.check_due(0)
    schedule.postpone_check(0)
    assert not schedule.check_due(5) and schedule.check_due(10)


def test_budget_postpones_checks_until_the_loop_paid_for_them():
    clock = LoopClock()
    loop = FakeLoop(clock)
    schedule = Schedule(every=1, stats_every=1000, budget=0.05)
    checked = []
    for s in range(2000):
        due = schedule.check_due(s) and schedule.budget_allows(s, clock)
        if due:
            schedule.check_started(s)
            schedule.check_finished(0.050)  # a check costs 50 ms
            checked.append(s)
        loop.step(loop=0.010, hook=0.050 if due else 0.0001)
    # Everything the hook spent stays within the usable budget of the loop's time, give or
    # take the one check that was predicted from the one before.
    usable = 0.05 * (1 - BUDGET_RESERVE)
    assert clock.hook_seconds <= usable * clock.loop_seconds + 0.050
    assert 10 <= len(checked) <= 2000 * 0.010 * usable / 0.050 + 2
    assert schedule.checks_deferred > 0
    assert checked[0] == 0  # the first check is never deferred


def test_budget_none_never_defers():
    clock = LoopClock()
    schedule = Schedule(every=1, stats_every=1, budget=None)
    schedule.check_started(0)
    schedule.check_finished(100.0)
    assert schedule.budget_allows(1, clock) and schedule.checks_deferred == 0


def test_auto_statistics_spread_out_at_most_doubling():
    schedule = Schedule(every=None, stats_every="auto", budget=None)
    assert schedule.stats_interval == 1
    intervals = []
    for _ in range(12):  # statistics cost 1 ms on a 10 ms step: far over 0.25 %
        schedule.adapt_stats_interval(cost=0.001, num_metrics=12, step_seconds=0.010)
        intervals.append(schedule.stats_interval)
    assert intervals[:4] == [2, 4, 8, 16] and intervals[-1] == 40  # 1 ms / (0.25 % of 10 ms)
    fixed = Schedule(every=None, stats_every=7, budget=None)
    fixed.adapt_stats_interval(cost=1.0, num_metrics=10**6, step_seconds=0.001)
    assert fixed.stats_interval == 7
    schedule.adapt_stats_interval(cost=100.0, num_metrics=1, step_seconds=0.001)
    assert schedule.stats_interval <= STATS_MAX_INTERVAL


def test_plan_after_keeps_the_next_step_busy_when_an_update_is_to_be_measured():
    schedule = Schedule(every=100, stats_every=50, budget=None)
    schedule.stats_done(0)
    schedule.check_started(0)
    schedule.plan_after(0, next_step_busy=True)
    assert schedule.quiet_until == 1
    schedule.plan_after(1)
    assert schedule.quiet_until == 50


# --------------------------------------------------------------------------------------------
# Options


def test_options_are_one_frozen_object_from_the_yaml_schema():
    fields = [f.name for f in dataclasses.fields(HookOptions)]
    assert fields == [k for k in HOOK_OPTIONS if k not in ("params", "tags")] == list(DEFAULTS)
    options = HookOptions.resolve()
    assert options.as_dict() == DEFAULTS
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.every = 5


def test_option_precedence_env_over_arguments_over_config():
    config = Config(hook={"every": 7, "experiment": "from-file", "mode": "sampled"})
    options = HookOptions.resolve(
        {"every": 9, "experiment": "from-arg"}, config, environ={"GRADWATCH_EXPERIMENT": "sweep"}
    )
    assert (options.every, options.mode, options.experiment) == (9, "sampled", "sweep")


def test_gradwatch_signature_shows_the_real_defaults():
    """help(GradWatch) shows the schema's defaults, not a sentinel."""
    signature = inspect.signature(GradWatch.__init__).parameters
    assert {k: signature[k].default for k in DEFAULTS} == DEFAULTS
    text = pydoc.render_doc(GradWatch, renderer=pydoc.plaintext)
    assert "object at 0x" not in text and "every: 'int | None' = 100" in text


def test_an_argument_at_its_default_leaves_the_config_files_value():
    config = Config(hook={"every": 50, "mode": "sampled", "eps": 1e-6})
    given = {"every": 100, "mode": "auto", "eps": None, "num_samples": 32}  # all at defaults
    options = HookOptions.resolve(given, config)
    assert (options.every, options.mode, options.eps) == (50, "sampled", 1e-6)
    options = HookOptions.resolve({"every": None, "mode": "full", "eps": 1e-5}, config)
    assert (options.every, options.mode, options.eps) == (None, "full", 1e-5)
    with pytest.raises(InputError, match="seed"):  # a bad value is refused even if the file sets it
        HookOptions.resolve({"seed": -1}, Config(hook={"seed": 3}))


def test_bad_values_name_their_source():
    with pytest.raises(InputError, match=r"GradWatch\(seed=-1\): `seed` must be >= 0"):
        HookOptions.resolve({"seed": -1})
    with pytest.raises(InputError, match="unknown GradWatch option 'evry'"):
        HookOptions.resolve({"evry": 3})
    with pytest.raises(ConfigError, match="cfg.yaml: key `hook.num_samples`"):
        HookOptions.resolve(config=Config(hook={"num_samples": 10**30}, path="cfg.yaml"))


def test_loggable_options():
    shown = HookOptions.resolve({"every": 50, "budget": 0.05}).loggable()
    assert shown["gradwatch.every"] == "50" and shown["gradwatch.budget"] == "0.05"
    assert shown["gradwatch.seed"] == "none" and "gradwatch.tracking_uri" not in shown


# --------------------------------------------------------------------------------------------
# Layout


def test_layout_names_and_matches_gradients():
    p = {"W1": np.ones((2, 3)), "b1": np.ones(3)}
    layout = TensorLayout.of(p, {"dW1": np.ones((2, 3)), "b1": np.ones(3)})
    assert layout.names == ("W1", "b1") and layout.grad_keys == ("dW1", "b1")
    assert list(layout.named(p)) == ["W1", "b1"]
    with pytest.raises(InputError, match="grads has both 'W1' and 'dW1'"):
        TensorLayout.of(p, {"dW1": np.ones((2, 3)), "W1": np.ones((2, 3)), "b1": np.ones(3)})
    with pytest.raises(InputError, match="has shape \\(3, 2\\) but the parameter has shape"):
        TensorLayout.of(p, {"dW1": np.ones((3, 2)), "b1": np.ones(3)})
    with pytest.raises(InputError, match="not a numpy array"):
        TensorLayout.of({"w": [1.0, 2.0]}, {"dw": np.ones(2)})


def test_layout_verify_accepts_fresh_containers_with_the_same_layout():
    layout = TensorLayout.of({"w": np.ones(3)}, {"dw": np.ones(3)})
    layout.verify({"w": np.zeros(3)}, {"dw": np.zeros(3)}, step=5)
    with pytest.raises(InputError, match="step 5: params is a list"):
        layout.verify([np.zeros(3)], [np.zeros(3)], step=5)


# --------------------------------------------------------------------------------------------
# Layering


def test_hook_package_imports_only_public_names_and_never_mlflow():
    import ast
    from pathlib import Path

    import gradwatch.hook

    folder = Path(gradwatch.hook.__file__).parent
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
                parts = node.module.split(".")
                outside = parts[:2] != ["gradwatch", "hook"]
                assert not (outside and any(p.startswith("_") for p in parts)), (path, node.module)
                private = [
                    a.name
                    for a in node.names
                    if a.name.startswith("_") and not a.name.endswith("__")
                ]
                assert not (outside and private), (path, private)
                assert parts[0] != "mlflow", path
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "mlflow" for a in node.names), path


def test_layout_names_tensors_as_the_check_engine_does():
    from collections import namedtuple

    import gradwatch

    Params = namedtuple("Params", ["W", "b"])
    params = Params(np.ones((2, 3)), np.zeros(3))
    grads = {"dW": np.ones((2, 3)), "db": np.ones(3)}
    layout = TensorLayout.of(params, grads)
    report = gradwatch.check_gradients(lambda p: float(p.W.sum() + p.b.sum()), params, grads)
    assert layout.names == tuple(report.per_param) == ("W", "b")
    assert set(layout.named_grads(grads)) == {"W", "b"}
