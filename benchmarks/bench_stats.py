"""What distributions cost: a statistics step with norms only, + quantiles, + histograms, and the
hook's overhead with them on. Model: the numpy MLP 784-256-10 of bench_hook.py, batch 128.

    python benchmarks/bench_stats.py                      # all three parts, a few minutes
    python benchmarks/bench_stats.py --steps 2000 --skip-ratios

1. The statistics arithmetic of one step over the MLP's four tensors (ms, best of --repeats):
       norms only        grad/param norms and non-finite counts
       + quantiles       tensor_stats: also |g| p50/p99, |θ| p99 (np.partition), zero fraction
       + histograms      tensor_stats_and_histograms: also log-binned |g| and |θ| (one sort
                         of each |array| gives the histogram and the quantiles)
       (two passes       tensor_stats + histogram_record, for comparison)
2. The hook's whole statistics step: GradWatch(every=None, stats_every=1) against a live
   `mlflow server`, so every step is a statistics step (metrics and histogram line journaled,
   alert feed, update ratio): hook seconds per step with hist_every=0 and 1; then with
   stats_every="auto" over --steps steps, the interval the hook settles on, the statistics
   steps and histogram lines the run logged.
3. wrapped/bare as bench_hook.py measures it (bare and wrapped loops alternating in blocks of
   100 steps in one process, live server): statistics only (every=None) and every=100
   budget=0.05, each with histograms on (hist_every=1, the default) and off (hist_every=0),
   --ratio-runs runs each, alternating. Targets: statistics only <= 1.02, checks <= 1.06.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
from bench_hook import BATCH, Training, interleaved  # noqa: E402
from mlflow_server import MlflowServer  # noqa: E402 (bench_hook put tests/ on the path)

import gradwatch  # noqa: E402
from gradwatch import schema  # noqa: E402
from gradwatch.stats import (  # noqa: E402
    histogram_record,
    norm,
    tensor_stats,
    tensor_stats_and_histograms,
)


def trained_tensors(steps: int = 50) -> tuple[dict, dict]:
    """The MLP's params and grads after a few steps of training (not the initial values)."""
    training = Training()
    training.run(steps)
    mlp, params = training.mlp, training.mlp.params
    _, grads = mlp.loss_and_grads(params, Training.X[:BATCH], Training.y[:BATCH])
    return params, {k: grads["d" + k] for k in params}


def norms_only(params: dict, grads: dict) -> dict:
    out = {}
    for name, p in params.items():
        gn, pn = norm(grads[name]), norm(p)
        bad = 0 if np.isfinite(gn + pn) else int(np.count_nonzero(~np.isfinite(grads[name])))
        out[name] = (gn, pn, bad)
    return out


def best_ms(fn, repeats: int, inner: int = 20) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return 1e3 * best


def part_arithmetic(repeats: int, out: dict) -> None:
    params, grads = trained_tensors()
    rows = [
        ("norms only", lambda: norms_only(params, grads)),
        ("+ quantiles, zero fraction", lambda: tensor_stats(params, grads)),
        ("+ histograms (one sort)", lambda: tensor_stats_and_histograms(0, params, grads)),
        (
            "+ histograms (two passes)",
            lambda: (tensor_stats(params, grads), histogram_record(0, params, grads)),
        ),  # fmt: skip
    ]
    training = Training()
    step_ms = best_ms(lambda: training.run(1), repeats)
    print(f"\n1. statistics arithmetic per statistics step, MLP 784-256-10 "
          f"(one training step: {step_ms:.2f} ms)")  # fmt: skip
    print("| statistics | ms | × norms only |\n|---|---|---|")
    base = None
    for name, fn in rows:
        ms = best_ms(fn, repeats)
        base = base or ms
        out[f"arith {name}"] = ms
        print(f"| {name} | {ms:.3f} | {ms / base:.1f} |", flush=True)
    line = json.dumps(histogram_record(0, params, grads), separators=(",", ":"))
    out["histogram line bytes"] = len(line)
    print(f"one histograms.jsonl line for the MLP: {len(line)} bytes")


def run_hook(uri: str, steps: int, **kwargs) -> tuple[gradwatch.GradWatch, float]:
    """(the watch, seconds of its loop) for one run of ``steps`` steps."""
    training = Training()
    training.run(20)  # warm-up outside the run
    with gradwatch.GradWatch(tracking_uri=uri, experiment="bench-stats", config=False,
                             every=None, **kwargs) as watch:  # fmt: skip
        training.watch = watch
        seconds = training.run(steps)
    return watch, seconds


def logged_counts(uri: str, run_id: str) -> tuple[int, int]:
    """(statistics steps, histogram lines) the run has in MLflow."""
    client = mlflow.MlflowClient(uri)
    stats_steps = len(client.get_metric_history(run_id, schema.GRAD_NORM + "W1"))
    names = {a.path for a in client.list_artifacts(run_id, "gradwatch")}
    if schema.ARTIFACT_HISTOGRAMS not in names:
        return stats_steps, 0
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, schema.ARTIFACT_HISTOGRAMS, tmp)
        return stats_steps, len(Path(path).read_text().splitlines())


def part_hook_step(uri: str, steps: int, repeats: int, out: dict) -> None:
    print("\n2. the hook's statistics step (stats_every=1: every step), live mlflow server")
    print("| hist_every | hook ms per statistics step (median of runs) | of which training step |")
    print("|---|---|---|")
    short = max(200, steps // 10)
    for hist_every in (0, 1):
        per_step = []
        for _ in range(repeats):
            watch, seconds = run_hook(uri, short, stats_every=1, hist_every=hist_every)
            per_step.append(watch.clock.hook_seconds / short)
        ms = 1e3 * statistics.median(per_step)
        out[f"hook stats step ms, hist_every={hist_every}"] = ms
        print(f"| {hist_every} | {ms:.2f} | {1e3 * watch.clock.step_seconds:.2f} |", flush=True)
    print(f"\n   stats_every=auto over {steps} steps")
    print("| hist_every | auto interval at the end | statistics steps | histogram lines | "
          "hook time / loop time |\n|---|---|---|---|---|")  # fmt: skip
    for hist_every in (0, 1):
        watch, _ = run_hook(uri, steps, hist_every=hist_every)
        n_stats, n_hist = logged_counts(uri, watch.run.run_id)
        out[f"auto hist_every={hist_every}"] = [watch.schedule.stats_interval, n_stats, n_hist]
        print(f"| {hist_every} | {watch.schedule.stats_interval} | {n_stats} | {n_hist} | "
              f"{watch.clock.overhead:.4f} |", flush=True)  # fmt: skip


def part_ratios(uri: str, steps: int, runs: int, out: dict) -> None:
    print(f"\n3. wrapped/bare, interleaved blocks of 100 steps, {steps} steps a run, live server")
    variants = [
        ("statistics only (every=None)", {"every": None}),
        ("checks (every=100, budget=0.05)", {"every": 100, "budget": 0.05}),
    ]
    print("| variant | hist_every | wrapped/bare (totals), each run | median | "
          "hook time / loop | stats interval |\n|---|---|---|---|---|---|")  # fmt: skip
    for name, kwargs in variants:
        results: dict[int, list] = {0: [], 1: []}
        for _ in range(runs):
            for hist_every in (1, 0):
                total, _, _, watch, _ = interleaved(
                    uri, steps, 100, hist_every=hist_every, **kwargs
                )
                results[hist_every].append((total, watch.clock.overhead, watch.schedule.stats_interval))  # fmt: skip
        for hist_every in (1, 0):
            totals = [r[0] for r in results[hist_every]]
            median = statistics.median(totals)
            out[f"ratio {name} hist_every={hist_every}"] = totals
            print(f"| {name} | {hist_every} | {', '.join(f'{t:.3f}' for t in totals)} | "
                  f"{median:.3f} | {statistics.median(r[1] for r in results[hist_every]):.4f} | "
                  f"{results[hist_every][-1][2]} |", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=3000, help="steps of the auto and ratio runs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ratio-runs", type=int, default=2)
    ap.add_argument("--skip-ratios", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out: dict = {}
    part_arithmetic(args.repeats, out)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        with MlflowServer(Path(tmp) / "server") as server:
            time.sleep(2)  # let the freshly started server settle before timing
            part_hook_step(server.uri, args.steps, 3, out)
            if not args.skip_ratios:
                part_ratios(server.uri, args.steps, args.ratio_runs, out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
