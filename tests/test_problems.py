"""``GradWatch()`` with its defaults names the usual training problems, and stays silent on
healthy runs.

Each run is a real hook on a real journal: the tracking URI points at a loopback port nobody
listens on, so no store or server process is involved (what the run logged stays in its
journal, as it would while a server is down) and the alerts are read from ``watch.alerts``
and from the journal's ``gradwatch/alerts.jsonl`` lines. The networks and scenarios are those
of ``benchmarks/bench_problems.py``, with seeds the default rules were not tuned on (0-2).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

import gradwatch
from gradwatch.alerts import PROBLEMS
from gradwatch.hook.schedule import NORMS_EVERY, Schedule
from tests.mlflow_server import free_port

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_problems.py"
_spec = importlib.util.spec_from_file_location("bench_problems", _BENCH)
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_problems"] = bench
_spec.loader.exec_module(bench)

SEED = 5  # not one of the seeds the rules were tuned on


def scenario(name: str, held_out: bool = False, **changes) -> bench.Scenario:
    pool = bench.problem_scenarios((SEED,), held_out) + bench.healthy_scenarios((SEED,), held_out)
    (found,) = [s for s in pool if s.name == name]
    return dataclasses.replace(found, **changes)


def run(sc: bench.Scenario):
    """A default GradWatch run of ``sc``; its alerts and its journal's text."""
    with gradwatch.GradWatch(
        config=False,
        report=False,
        tracking_uri=f"http://127.0.0.1:{free_port()}",
        flush_timeout=0,
        keep_journal=True,
    ) as watch:
        trace = bench.run_loop(sc, watch.step)
    journal = "".join(p.read_text() for p in Path(".gradwatch/journal").glob("*.jsonl"))
    return watch.alerts, trace, journal


PROBLEM_CASES = [
    # (scenario, changes, rule, latest alert step)
    ("deep sigmoid", {"steps": 150}, "vanishing_gradients", 100),
    ("deep tanh, tiny init", {"steps": 150}, "vanishing_gradients", 100),
    ("lr far too high, ReLU", {"steps": 150}, "exploding_gradients", 100),
    ("ReLU units killed", {"kill_at": 100, "onset": 100, "steps": 220}, "dead_units", 200),
    ("tanh, raw inputs (offset 100)", {"steps": 150}, "saturated_units", 100),
    ("sigmoid, raw inputs (offset 300)", {"steps": 150}, "saturated_units", 100),
    ("lr far too high, sigmoid", {"steps": 200}, "stuck_loss", 130),
    ("lr 3000x too small", {"steps": 150}, "slow_learning", 100),
    ("NaN loss", {"nan_at": 100, "onset": 100, "steps": 120}, "nonfinite", 100),
]


@pytest.mark.parametrize(
    ("name", "changes", "rule", "latest"), PROBLEM_CASES, ids=[c[0] for c in PROBLEM_CASES]
)
def test_each_problem_is_named_with_its_evidence_and_fix(name, changes, rule, latest):
    sc = scenario(name, **changes)
    alerts, trace, journal = run(sc)
    named = [a for a in alerts if a.rule == rule]
    assert named, [(a.rule, a.step) for a in alerts]
    first = named[0]
    assert sc.onset <= first.step <= latest, (first.step, first.message)
    problem = PROBLEMS[rule]
    assert first.message.startswith(problem), first.message  # the problem, in those words
    assert "Usual fix:" in first.message
    assert first.details.get("problem") == problem
    if rule != "nonfinite":
        assert any(ch.isdigit() for ch in first.message)  # the figures
    if rule == "exploding_gradients":
        bad = trace.first_nonfinite
        assert bad is None or first.step < bad, "named only after the run went NaN/Inf"
    # What the run recorded: the alert is in the journal (gradwatch/alerts.jsonl).
    assert f'"kind": "{rule}"' in journal or f'"kind":"{rule}"' in journal


HEALTHY = [
    ("batch-1 SGD", False),
    ("batch-1, lr schedule, deep", False),
    ("step lr schedule", True),
    ("cosine lr schedule", False),
    ("deep tanh, Xavier", True),
    ("converges to ~0 loss", False),
    ("frozen first layer", True),
    ("gradient clipping", False),
    ("small model (softmax regression)", True),
    ("sigmoid MLP", False),
]


@pytest.mark.parametrize(("name", "held_out"), HEALTHY, ids=[h[0] for h in HEALTHY])
def test_healthy_runs_raise_no_alert(name, held_out):
    alerts, _, _ = run(scenario(name, held_out, steps=300))
    assert not alerts, [(a.rule, a.step, a.message) for a in alerts]


def test_auto_statistics_give_every_rule_50_observations_in_500_steps():
    """However costly the statistics, the cheap ones (norms, zero fractions, update ratios)
    come at least every NORMS_EVERY steps early on; quantiles and histograms are spaced by
    their cost."""
    schedule = Schedule(every=None, stats_every="auto", budget=None)
    cheap = full = 0
    for step in range(500):
        if schedule.stats_due(step):
            is_full = schedule.full_stats_due(step)
            schedule.stats_done(step, is_full)
            cheap += 1
            full += is_full
            if is_full:  # 1 ms of statistics on a 0.1 ms step: far over the 0.25 % allowed
                schedule.adapt_stats_interval(cost=1e-3, num_metrics=40, step_seconds=1e-4)
    assert cheap >= 50 and full < cheap / 4, (cheap, full)
    # Later the interval grows with the run (~50 more per e-fold), never past the auto one.
    assert schedule.norms_interval(100_000) == min(schedule.stats_interval, 100_000 // 50)
    assert schedule.norms_interval(10) == min(schedule.stats_interval, NORMS_EVERY)
    fixed = Schedule(every=None, stats_every=25, budget=None)
    assert fixed.norms_interval(10) == 25 and fixed.full_stats_due(0)


def test_the_update_ratio_of_a_frozen_model_is_not_slow_learning():
    """Nothing moves at all (every tensor frozen): not 'learning too slow' (the stale-array
    check speaks for that), and not any other problem."""
    sc = scenario("small model (softmax regression)", steps=200, frozen=("W1", "b1"))
    alerts, _, _ = run(sc)
    assert not alerts, [(a.rule, a.step, a.message) for a in alerts]


def test_every_named_problem_is_a_default_rule():
    from gradwatch.alerts import default_rules

    assert set(PROBLEMS) <= {r.type for r in default_rules()}


@pytest.mark.slow  # seconds: kept out of the fast subset
def test_the_report_lists_the_diagnosed_problems_first_and_compare_names_them():
    from gradwatch.report.html import render_report
    from gradwatch.report.readers import from_journal

    sc = scenario("ReLU units killed", kill_at=100, onset=100, steps=220)
    alerts, _, _ = run(sc)
    assert any(a.rule == "dead_units" for a in alerts)
    (journal,) = Path(".gradwatch/journal").glob("*.jsonl")
    data = from_journal(journal)
    page = render_report(data)
    first_h2 = page.index("<h2")
    assert page.index('<h2 id="problems">Diagnosed problems') == first_h2
    section = page[first_h2 : page.index("<h2", first_h2 + 1)]
    assert "<b>dead units</b> from step" in section and "Usual fix:" in section
    assert "W1" in section  # the tensors the alert named
    # compare's verdict column says it in the same words.
    summary = data.summary()
    assert "dead units" in summary.problems and "dead units" in summary.verdict
    assert summary.to_record()["problems"] == list(summary.problems)


def test_a_healthy_run_reports_no_problem():
    from gradwatch.report.problems import problems_section
    from gradwatch.report.readers import from_journal
    from gradwatch.runs.compare import diagnosed_problems

    run(scenario("cosine lr schedule", steps=200))
    (journal,) = Path(".gradwatch/journal").glob("*.jsonl")
    data = from_journal(journal)
    assert "None of the known training problems was diagnosed" in problems_section(data)
    assert diagnosed_problems(data.tags) == () and data.summary().verdict == "ok"
