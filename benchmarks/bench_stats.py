"""What distributions cost: a statistics step with norms only, + quantiles, + histograms, and the
hook's overhead with them on. Model: the numpy MLP 784-256-10 of bench_hook.py, batch 128.

    python benchmarks/bench_stats.py                      # a few minutes
    python benchmarks/bench_stats.py --steps 2000 --repeats 3 --parts arithmetic,ratios

1. The statistics arithmetic of one step over the MLP's four tensors (CPU ms, best of --repeats):
       norms only        grad/param norms and non-finite counts
       + quantiles       tensor_stats: also |g| p50/p99, |θ| p99 (np.partition), zero fraction
       + histograms      tensor_stats_and_histograms: also log-binned |g| and |θ| (one sort
                         of each |array| gives the histogram and the quantiles)
       (two passes       tensor_stats + histogram_record, for comparison)
2. The hook's whole statistics step: GradWatch(every=None) against a live `mlflow server`,
   CPU seconds of the training process per step with statistics at every step (metrics and
   histogram line journaled, alert feed, update ratio) minus without statistics, for
   hist_every=0 and 1, and the CPU of the run's shipper process (uploading them); then with
   stats_every="auto" over --steps steps, the interval the hook settles on, the statistics
   steps and histogram lines the run logged.
3. The hook's overhead ratio with histograms on (hist_every=1, the default) and off, as
   bench_hook.py measures it (bare and wrapped loops alternating in blocks of 100 steps, in
   one process) but in CPU time of the training process, which contention on a shared
   machine distorts far less than wall time; the shipper process's CPU over the run is
   added in a second column. statistics only (every=None) and every=100 budget=0.05,
   --ratio-runs runs each, alternating. Targets: <= 1.02 and <= 1.06.
bench_hook.py itself takes --hist-every too (wall time; its default is the hook's):

    python benchmarks/bench_hook.py --steps 3000 --stores server --hist-every 1
    python benchmarks/bench_hook.py --steps 3000 --stores server --hist-every 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

# One BLAS thread, so process CPU time is the work done (threads spinning on 2 shared cores
# would count too), as in bench_cost.py.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
from bench_hook import BATCH, Training  # noqa: E402
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
    """CPU milliseconds of one call, best of ``repeats`` (CPU: the machine is shared)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(inner):
            fn()
        best = min(best, (time.process_time() - t0) / inner)
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
        ),
    ]
    training = Training()
    step_ms = best_ms(lambda: training.run(1), repeats)
    print(
        f"\n1. statistics arithmetic per statistics step, MLP 784-256-10 "
        f"(one training step: {step_ms:.2f} ms)"
    )
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


def run_hook(uri: str, steps: int, **kwargs) -> tuple[gradwatch.GradWatch, float, float]:
    """(the watch, CPU seconds of this process over the run's ``steps`` steps, CPU seconds of
    the run's shipper process from start to end)."""
    training = Training()
    training.run(20)  # warm-up outside the run
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    with gradwatch.GradWatch(
        tracking_uri=uri, experiment="bench-stats", config=False, every=None, **kwargs
    ) as watch:
        training.watch = watch
        t0 = time.process_time()
        training.run(steps)
        cpu = time.process_time() - t0
    # The shipper is a child process, waited for when the run closes.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    shipper = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    return watch, cpu, shipper


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
    short = max(300, steps // 6)
    print(
        f"\n2. the hook's statistics step, live mlflow server: CPU of the training process "
        f"per step over {short} steps (median of {repeats} runs, alternating)"
    )
    variants = {
        "no statistics (stats_every=10**6)": {"stats_every": 10**6},
        "statistics every step, hist_every=0": {"stats_every": 1, "hist_every": 0},
        "statistics every step, hist_every=1": {"stats_every": 1, "hist_every": 1},
    }
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    ship: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, kwargs in variants.items():
            _, seconds, shipper = run_hook(uri, short, **kwargs)
            cpu[name].append(1e3 * seconds / short)
            ship[name].append(1e3 * shipper / short)
    print(
        "| variant | training process, CPU ms per step | a statistics step's share (ms) | "
        "shipper process, CPU ms per step (incl. its start-up) |\n|---|---|---|---|"
    )
    base = statistics.median(cpu["no statistics (stats_every=10**6)"])
    for name in variants:
        ms, shipper_ms = statistics.median(cpu[name]), statistics.median(ship[name])
        out[f"cpu ms per step, {name}"] = [ms, shipper_ms]
        extra = f"{ms - base:.2f}" if "every step" in name else "-"
        print(f"| {name} | {ms:.2f} | {extra} | {shipper_ms:.2f} |", flush=True)
    print(f"\n   stats_every=auto over {steps} steps")
    print(
        "| hist_every | auto interval at the end | statistics steps | histogram lines | "
        "hook time / loop time |\n|---|---|---|---|---|"
    )
    for hist_every in (0, 1):
        watch, _, _ = run_hook(uri, steps, hist_every=hist_every)
        n_stats, n_hist = logged_counts(uri, watch.run.run_id)
        out[f"auto hist_every={hist_every}"] = [watch.schedule.stats_interval, n_stats, n_hist]
        print(
            f"| {hist_every} | {watch.schedule.stats_interval} | {n_stats} | {n_hist} | "
            f"{watch.clock.overhead:.4f} |",
            flush=True,
        )


def cpu_run(training: Training, steps: int) -> float:
    """CPU seconds of this process for ``steps`` steps (BLAS single-threaded: the work)."""
    t0 = time.process_time()
    training.run(steps)
    return time.process_time() - t0


def interleaved_cpu(uri: str, steps: int, block: int, **kwargs) -> tuple[float, float, int, float]:
    """bench_hook.py's interleaving, in CPU time: (wrapped/bare CPU of the training process,
    the shipper process's CPU over the run / bare CPU, the auto stats interval at the end, the
    hook's own wall time inside step() / the loop's)."""
    bare = Training()
    bare.run(block)  # warm-up
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    with gradwatch.GradWatch(
        tracking_uri=uri, experiment="bench-stats", config=False, **kwargs
    ) as watch:
        wrapped = Training(watch)
        pairs = [(cpu_run(bare, block), cpu_run(wrapped, block)) for _ in range(steps // block)]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    shipper = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    bare_cpu = sum(b for b, _ in pairs)
    return (
        sum(w for _, w in pairs) / bare_cpu,
        shipper / bare_cpu,
        watch.schedule.stats_interval,
        watch.clock.overhead,
    )


def part_ratios(uri: str, steps: int, runs: int, out: dict) -> None:
    print(
        f"\n3. wrapped/bare in CPU time, bare and wrapped loops alternating in blocks of 100 "
        f"steps (as bench_hook.py, which measures wall time), {steps} steps, live server"
    )
    variants = [
        ("statistics only (every=None)", {"every": None}),
        ("checks (every=100, budget=0.05)", {"every": 100, "budget": 0.05}),
    ]
    print(
        "| variant | hist_every | training process CPU, wrapped/bare: runs | median | "
        "+ shipper process (incl. its start-up) | inside step() / loop (wall) | "
        "stats interval |\n|---|---|---|---|---|---|---|"
    )
    for name, kwargs in variants:
        results: dict[int, list] = {1: [], 0: []}
        for _ in range(runs):
            for hist_every in results:
                results[hist_every].append(
                    interleaved_cpu(uri, steps, 100, hist_every=hist_every, **kwargs)
                )
        for hist_every, rows in results.items():
            ratios = [r[0] for r in rows]
            median = statistics.median(ratios)
            shipper = statistics.median(r[1] for r in rows)
            out[f"cpu ratio {name} hist_every={hist_every}"] = rows
            print(
                f"| {name} | {hist_every} | {', '.join(f'{r:.3f}' for r in ratios)} | "
                f"{median:.3f} | {median + shipper:.3f} | "
                f"{statistics.median(r[3] for r in rows):.4f} | {rows[-1][2]} |",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=3000, help="steps of the auto-interval runs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ratio-runs", type=int, default=3)
    ap.add_argument("--parts", default="arithmetic,hook,ratios")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out: dict = {}
    if "arithmetic" in args.parts:
        part_arithmetic(args.repeats, out)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        with MlflowServer(Path(tmp) / "server") as server:
            time.sleep(2)  # let the freshly started server settle before timing
            if "hook" in args.parts:
                part_hook_step(server.uri, args.steps, 3, out)
            if "ratios" in args.parts:
                part_ratios(server.uri, args.steps, args.ratio_runs, out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
