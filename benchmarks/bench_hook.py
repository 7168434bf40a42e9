"""Cost of the hook on a real training loop, as a ratio to the bare loop in the same run.

    python benchmarks/bench_hook.py                        # embedded store and a live server
    python benchmarks/bench_hook.py --steps 6000 --json out.json
    python benchmarks/bench_hook.py --stores server --hist-every 0   # without histograms

Model: numpy MLP 784-256-10, batch 128 (1.6-3.5 ms a step here, depending on the host's load).
The bare loop and the wrapped loop are two copies of the same training, run alternately in
blocks of --block steps (100 = one check interval) within one process, so both see the same
machine: a host that slows down for a second slows both. The wrapped loop keeps one GradWatch
run across its blocks; the hook counts the gap while the bare block runs as a pause (a few
steps of loop time), so its budget is still measured against its own loop. Reported: the
ratio of total wrapped to total bare loop time, and the median of the per-block ratios.
Variants, against (a) the embedded sqlite store and (b) a live `mlflow server` on loopback:
  gradwatch stats      GradWatch(every=None): loss, lr, per-tensor statistics (with the
                       quantiles and, unless --hist-every 0, the histograms)
  gradwatch checks     GradWatch(every=100, budget=0.05)
  mlflow sync/async    mlflow.log_metrics({"loss", "lr"}) every step (MLflow's own call),
                       whole short runs alternated with bare runs
Opening and closing the run (run creation, the final flush until everything is in MLflow) is
a fixed cost per run, reported separately in seconds.
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


class Training:
    """One copy of the benchmark's training, advanced ``steps`` at a time."""

    X, y = make_blobs(4096, 784, 10, seed=0)

    def __init__(self, watch=None, mlflow_log=None) -> None:
        self.mlp = MLP([784, 256, 10], seed=0)
        self.watch, self.mlflow_log = watch, mlflow_log
        self.s = 0

    def run(self, steps: int) -> float:
        """Advance ``steps`` steps; return the seconds they took."""
        mlp, params, watch, mlflow_log = self.mlp, self.mlp.params, self.watch, self.mlflow_log
        lr = 0.05
        t0 = time.perf_counter()
        for s in range(self.s, self.s + steps):
            i = (s * BATCH) % 4096
            xb, yb = self.X[i : i + BATCH], self.y[i : i + BATCH]
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
        self.s += steps
        return time.perf_counter() - t0


def interleaved(uri: str, steps: int, block: int, **kwargs):
    """(wrapped/bare of the totals, median block ratio, open+close seconds, the watch)."""
    bare = Training()
    bare.run(block)  # warm-up: BLAS, page faults
    t0 = time.perf_counter()
    with gradwatch.GradWatch(tracking_uri=uri, experiment="bench", config=False, **kwargs) as watch:
        opened = time.perf_counter() - t0
        wrapped = Training(watch)
        pairs = []
        for _ in range(steps // block):
            pairs.append((bare.run(block), wrapped.run(block)))
        t1 = time.perf_counter()
    closed = time.perf_counter() - t1
    total = sum(w for _, w in pairs) / sum(b for b, _ in pairs)
    median = statistics.median(w / b for b, w in pairs)
    return total, median, opened + closed, watch, sum(b for b, _ in pairs) / (len(pairs) * block)


def timed_mlflow(uri: str, steps: int, synchronous: bool) -> float:
    """Seconds of ``steps`` steps logging loss and lr with mlflow.log_metrics every step."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bench-mlflow")
    log = lambda m, step: mlflow.log_metrics(m, step=step, synchronous=synchronous)
    with mlflow.start_run():
        return Training(mlflow_log=log).run(steps)


def bench_store(label, uri, steps, block, results, hist_every=None, stats_only=False):
    variants = [
        ("gradwatch stats (every=None)", {"every": None}),
        ("gradwatch checks (every=100, budget=0.05)", {"every": 100, "budget": 0.05}),
    ][: 1 if stats_only else 2]
    extra = {} if hist_every is None else {"hist_every": hist_every}
    for name, kwargs in variants:
        total, median, open_close, watch, bare_step = interleaved(
            uri, steps, block, **kwargs, **extra
        )
        results.append((label, name, steps, total, median))
        print(
            f"{label:9s} {name:42s} wrapped/bare {total:.3f} (median of blocks {median:.3f}); "
            f"inside step() {watch.clock.overhead:.3f} of the loop; "
            f"checks {watch.checks}, deferred {watch.checks_deferred}; stats every "
            f"{watch.schedule.stats_interval} steps (norms every "
            f"{watch.schedule.norms_interval(steps)} at the end); open+close {open_close:.2f} s; "
            f"bare step {1e3 * bare_step:.2f} ms",
            flush=True,
        )
    if stats_only:
        return
    short = max(100, steps // 20)
    for name, sync in [
        ("mlflow.log_metrics per step (sync)", True),
        ("mlflow.log_metrics per step (async)", False),
    ]:
        ratios = []
        for _ in range(3):
            bare = Training().run(short)
            ratios.append(timed_mlflow(uri, short, sync) / bare)
        results.append((label, name, short, statistics.median(ratios), statistics.median(ratios)))
        print(f"{label:9s} {name:42s} wrapped/bare {statistics.median(ratios):.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--block", type=int, default=100)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--stores", default="embedded,server", help="embedded, server or both")
    ap.add_argument(
        "--hist-every",
        type=int,
        default=None,
        help="GradWatch(hist_every=) (default: the hook's, histograms on)",
    )
    ap.add_argument(
        "--stats-only",
        action="store_true",
        help="only the statistics-only variant (no checks, no MLflow baselines)",
    )
    args = ap.parse_args()
    stores = args.stores.split(",")
    results: list[tuple] = []
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        if "embedded" in stores:
            bench_store(
                "embedded",
                f"sqlite:///{tmp}/embedded.db",
                args.steps,
                args.block,
                results,
                args.hist_every,
                args.stats_only,
            )
        os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        if "server" in stores:
            with MlflowServer(Path(tmp) / "server") as server:
                time.sleep(2)  # let the freshly started server settle before timing
                bench_store(
                    "server",
                    server.uri,
                    args.steps,
                    args.block,
                    results,
                    args.hist_every,
                    args.stats_only,
                )
    print("\n| store | variant | steps | wrapped/bare (totals) | median of blocks |")
    print("|---|---|---|---|---|")
    for label, name, steps, total, median in results:
        print(f"| {label} | {name} | {steps} | {total:.3f} | {median:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
