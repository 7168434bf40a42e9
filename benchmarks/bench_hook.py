"""Cost of the hook on a real training loop, as a ratio to the bare loop in the same run.

    python benchmarks/bench_hook.py                  # embedded store and a live local server
    python benchmarks/bench_hook.py --steps 2000 --repeats 5 --json out.json

Model: numpy MLP 784-256-10, batch 128 (about 1.6 ms a step here). Variants, each timed in
alternation with the bare loop (median of --repeats), against (a) the embedded sqlite store
and (b) a live `mlflow server` on loopback:
  bare                 no monitoring
  gradwatch stats      GradWatch(every=None): loss, lr, per-tensor statistics
  gradwatch checks     GradWatch(every=100, budget=0.05)
  mlflow sync          mlflow.log_metrics({"loss", "lr"}) every step (MLflow's own call)
  mlflow async         the same with synchronous=False
The ratio is the loop's time; opening and closing the run (run creation, the final flush
until everything is in MLflow) is a fixed cost per run, reported separately in seconds.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import mlflow  # noqa: E402
from mlflow_server import MlflowServer  # noqa: E402

import gradwatch  # noqa: E402
from gradwatch.demo import MLP, make_blobs  # noqa: E402

BATCH = 128


def make_loop(steps: int):
    X, y = make_blobs(4096, 784, 10, seed=0)

    def loop(watch=None, mlflow_log=None):
        mlp = MLP([784, 256, 10], seed=0)
        params = mlp.params
        lr = 0.05
        t0 = time.perf_counter()
        for s in range(steps):
            i = (s * BATCH) % 4096
            xb, yb = X[i : i + BATCH], y[i : i + BATCH]
            loss, grads = mlp.loss_and_grads(params, xb, yb)
            if watch is not None:
                watch.step(
                    params,
                    grads,
                    loss=loss,
                    lr=lr,
                    loss_fn=lambda p, xb=xb, yb=yb: mlp.loss(p, xb, yb),
                )
            if mlflow_log is not None:
                mlflow_log({"loss": loss, "lr": lr}, step=s)
            for k in params:
                params[k] -= lr * grads["d" + k]
        return time.perf_counter() - t0

    return loop


def timed_gradwatch(loop, uri, **kwargs):
    """(loop seconds, seconds to open and close the run, the watch)."""
    t0 = time.perf_counter()
    with gradwatch.GradWatch(tracking_uri=uri, experiment="bench", config=False, **kwargs) as watch:
        in_loop = loop(watch)
    return in_loop, time.perf_counter() - t0 - in_loop, watch


def timed_mlflow(loop, uri, synchronous):
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bench-mlflow")
    t0 = time.perf_counter()
    with mlflow.start_run():
        loop(mlflow_log=lambda m, step: mlflow.log_metrics(m, step=step, synchronous=synchronous))
    return time.perf_counter() - t0


def bench_store(label, uri, steps, check_steps, repeats, results):
    loop = make_loop(steps)
    loop()  # warm-up: BLAS threads, page faults
    # Checks with a budget: the first check (at step 0) always runs, so the 5 % share is
    # reached over a longer loop; check_steps gives that variant its own length.
    long_loop = make_loop(check_steps)
    variants = [
        ("gradwatch stats (every=None)", loop, steps, {"every": None}),
        (
            "gradwatch checks (every=100, budget=0.05)",
            long_loop,
            check_steps,
            {"every": 100, "budget": 0.05},
        ),
    ]
    for name, this_loop, n, kwargs in variants:
        ratios, overheads, checks = [], [], []
        for _ in range(repeats):
            bare = this_loop()
            in_loop, open_close, watch = timed_gradwatch(this_loop, uri, **kwargs)
            ratios.append(in_loop / bare)
            overheads.append(open_close)
            checks.append(watch.checks)
        results.append((label, name, n, statistics.median(ratios), min(ratios), max(ratios)))
        print(
            f"{label:10s} {name:45s} ratio median {statistics.median(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f}); open+close "
            f"{statistics.median(overheads):.2f} s; checks {statistics.median(checks):.0f}; "
            f"bare step {1e3 * bare / n:.2f} ms",
            flush=True,
        )
    short = make_loop(max(100, steps // 10))
    for name, sync in [
        ("mlflow.log_metrics per step (sync)", True),
        ("mlflow.log_metrics per step (async)", False),
    ]:
        ratios = []
        for _ in range(max(1, repeats // 2)):
            bare = short()
            ratios.append(timed_mlflow(short, uri, sync) / bare)
        results.append(
            (
                label,
                name,
                max(100, steps // 10),
                statistics.median(ratios),
                min(ratios),
                max(ratios),
            )
        )
        print(f"{label:10s} {name:45s} ratio median {statistics.median(ratios):.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--check-steps", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results: list[tuple] = []
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        bench_store(
            "embedded",
            f"sqlite:///{tmp}/embedded.db",
            args.steps,
            args.check_steps,
            args.repeats,
            results,
        )
        os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        with MlflowServer(Path(tmp) / "server") as server:
            time.sleep(2)  # let the freshly started server settle before timing
            bench_store("server", server.uri, args.steps, args.check_steps, args.repeats, results)
    print(
        "\n| store | variant | steps | wrapped/bare median | min | max |\n|---|---|---|---|---|---|"
    )
    for label, name, steps, med, lo, hi in results:
        print(f"| {label} | {name} | {steps} | {med:.3f} | {lo:.3f} | {hi:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
