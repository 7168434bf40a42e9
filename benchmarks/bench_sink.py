"""Overhead of gradwatch's tracking pipeline on a ~1.6 ms numpy training step.

    python benchmarks/bench_sink.py [--steps 2000] [--repeats 3] [--metrics 1,10,100]

Starts a dedicated `mlflow server` (sqlite store), then alternates plain steps and steps that
also call ``run.log_metrics`` (journal + background shipper), reporting the per-step
overhead as a median over repeats, the cost of the ``log_metrics`` call itself, and how
long ``close`` took to land the backlog. Also times MLflow's own synchronous
``mlflow.log_metrics`` per step as the baseline to beat. Numbers are noisy on shared 2-core
machines: compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# One BLAS thread: on 2 cores a threaded matmul fights the server and the shipper.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mlflow_server import MlflowServer  # noqa: E402

from gradwatch.tracking import ShipperSettings, open_run  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.standard_normal((256, 128))
W1 = RNG.standard_normal((128, 256)) * 0.05
W2 = RNG.standard_normal((256, 10)) * 0.05


def make_step(iters: int):
    def step() -> float:
        loss = 0.0
        for _ in range(iters):  # fixed work (forward + backward-sized matmuls)
            h = np.tanh(X @ W1)
            out = h @ W2
            g = out.T @ h
            loss = float((out * out).mean() + g[0, 0] * 0.0)
        return loss

    return step


def calibrate(target_s: float = 0.0016) -> int:
    for iters in range(1, 200):
        step = make_step(iters)
        t = time.perf_counter()
        for _ in range(50):
            step()
        if (time.perf_counter() - t) / 50 >= target_s:
            return iters
    return 200


def plain(step, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - t


def tracked(step, n: int, uri: str, width: int) -> tuple[float, float, float]:
    run = open_run(tracking_uri=uri, experiment="bench-sink", settings=ShipperSettings())
    run.flush(30)  # run created: time the steady state, not the start-up
    in_call = 0.0
    keys = ["loss"] + [f"grad_norm/t{i}" for i in range(width - 1)]
    t = time.perf_counter()
    for s in range(n):
        loss = step()
        c = time.perf_counter()
        run.log_metrics(s, dict.fromkeys(keys, loss))
        in_call += time.perf_counter() - c
    total = time.perf_counter() - t
    c = time.perf_counter()
    result = run.close(timeout=120)
    assert result.pending == 0, result.message
    return total, in_call, time.perf_counter() - c


def journal_only(n: int, width: int) -> float:
    """Cost of one log_metrics call with nothing to ship to: the journal write alone (the
    shipper process only retries a closed port, on the other core)."""
    run = open_run(tracking_uri="http://127.0.0.1:9", settings=ShipperSettings(interval=1e6))
    keys = ["loss"] + [f"grad_norm/t{i}" for i in range(width - 1)]
    t = time.perf_counter()
    for s in range(n):
        run.log_metrics(s, dict.fromkeys(keys, 0.5))
    per = (time.perf_counter() - t) / n
    run.close(timeout=0.1)
    return per


def mlflow_sync(step, n: int, uri: str) -> float:
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bench-sink-mlflow")
    with mlflow.start_run():
        t = time.perf_counter()
        for s in range(n):
            mlflow.log_metrics({"loss": step()}, step=s)
        total = time.perf_counter() - t
    mlflow.set_tracking_uri(None)
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--metrics", default="1,10,100")
    args = ap.parse_args()
    widths = [int(w) for w in args.metrics.split(",")]
    iters = calibrate()
    step = make_step(iters)
    n = args.steps
    with tempfile.TemporaryDirectory() as tmp, MlflowServer(Path(tmp) / "srv") as server:
        os.chdir(tmp)
        for width in widths:
            us = journal_only(20000, width) * 1e6
            print(f"journal write alone, {width} metrics/record: {us:.1f} us")
        base = statistics.median(plain(step, n) for _ in range(2)) / n
        print(f"plain step: {base * 1e6:.0f} us ({iters} iterations)")
        for width in widths:
            over, calls, closes = [], [], []
            for _ in range(args.repeats):
                b = plain(step, n) / n
                total, in_call, close_s = tracked(step, n, server.uri, width)
                over.append(total / n - b)
                calls.append(in_call / n)
                closes.append(close_s)
            print(
                f"{width:4d} metrics/step: overhead {statistics.median(over) * 1e6:7.1f} us/step "
                f"(min {min(over) * 1e6:.1f}), log_metrics call {statistics.median(calls) * 1e6:.1f}"
                f" us, close {statistics.median(closes):.2f} s"
            )
        m = min(n, 300)
        sync_s = mlflow_sync(step, m, server.uri) / m
        b = plain(step, m) / m
        print(
            f"mlflow.log_metrics synchronous, 1 metric/step: overhead {(sync_s - b) * 1e6:.0f} us/step"
        )


if __name__ == "__main__":
    main()
