"""``gradwatch monitor`` at a team server's scale: seconds per poll against N running runs.

    python benchmarks/bench_monitor.py                      # 10, 100, 1000 runs x 20 metrics
    python benchmarks/bench_monitor.py --quick              # 10 and 100 runs, short histories
    python benchmarks/bench_monitor.py --runs 1000 --tracking-uri http://127.0.0.1:5000

A real ``mlflow server`` (sqlite store, one worker, started here unless ``--tracking-uri``)
holds N RUNNING runs of one experiment, each with 20 metrics the rules read (``loss``, ``lr``,
``grad_norm/*``, ``param_norm/*`` ...) over ``--steps`` steps, written with ``log_batch``
(1,000 values a call; straight into the server's sqlite database when the server is started
here, which is much faster than through its REST API). Per N, wall seconds (and this process's CPU) of:

- ``first``: the first poll of a fresh monitor (replays every run's whole history);
- ``idle``: a poll with nothing new;
- ``moved``: a poll after every run logged one more step of every metric;
- ``moved10``: a poll after every run logged ten more steps of every metric;
- ``old``: what the monitor did before (every metric history of every run read at every poll),
  the same runs, measured here as the baseline (for N <= ``--old-max``).

``reads`` is the number of metric-history requests of the poll (search_runs pages aside).
Goal (issue 23): 1,000 running runs x 20 metrics in <= 30 s a poll, a poll with nothing new in
a few seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = (
    ["loss", "lr"]
    + [f"grad_norm/W{i}" for i in range(6)]
    + [f"param_norm/W{i}" for i in range(6)]
    + [f"update_ratio/W{i}" for i in range(6)]
)  # 20 series the default rules read


def build(client, experiment: str, runs: int, steps: int) -> list[str]:
    """``runs`` RUNNING runs with ``steps`` steps of every metric, timestamps a minute old."""
    from mlflow.entities import Metric

    exp_id = client.create_experiment(experiment)
    ts = int((time.time() - 120) * 1000)
    ids = []
    for r in range(runs):
        run_id = client.create_run(exp_id, run_name=f"run{r}").info.run_id
        batch = []
        for step in range(steps):
            for i, key in enumerate(METRICS):
                batch.append(Metric(key, 1.0 / (step + 1) + i, ts + step, step))
                if len(batch) == 1000:
                    client.log_batch(run_id, metrics=batch)
                    batch = []
        if batch:
            client.log_batch(run_id, metrics=batch)
        ids.append(run_id)
    return ids


def more_steps(client, run_ids: list[str], first: int, count: int = 1) -> None:
    from mlflow.entities import Metric

    ts = int((time.time() - 60) * 1000)
    for run_id in run_ids:
        metrics = [
            Metric(key, 0.5 + i, ts, step)
            for step in range(first, first + count)
            for i, key in enumerate(METRICS)
        ]
        client.log_batch(run_id, metrics=metrics)


def timed(fn) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def old_poll(client, experiment_id: str) -> int:
    """The previous monitor's reads: every history of every active run, every poll."""
    from gradwatch.mlflow_access import search_all

    reads = 0
    for run in search_all(client, [experiment_id], "attributes.status = 'RUNNING'"):
        for key in run.data.metrics:
            client.get_metric_history(run.info.run_id, key)
            reads += 1
    return reads


def measure(
    uri: str, store: str, runs: int, steps: int, old_max: int, existing: str | None = None
) -> dict:
    from mlflow import MlflowClient

    from gradwatch.runs.monitor import Monitor

    client = MlflowClient(uri)
    writer = MlflowClient(store)  # the server's own database when the server is ours: faster
    t0 = time.perf_counter()
    if existing is None:
        experiment = f"bench-monitor-{runs}-{time.time_ns()}"
        ids = build(writer, experiment, runs, steps)
    else:  # measure again on runs built before (--experiment)
        experiment = existing
        exp_id = client.get_experiment_by_name(experiment).experiment_id
        found = client.search_runs([exp_id], "attributes.status = 'RUNNING'", max_results=1000)
        ids, runs = [r.info.run_id for r in found], len(found)
        steps = 1 + max(int(m.step) for m in found[0].data.to_proto().metrics)
    row: dict = {
        "runs": runs,
        "metrics": len(METRICS),
        "steps": steps,
        "build_s": round(time.perf_counter() - t0, 1),
    }
    monitor = Monitor(uri, experiment, settle=0)
    plan = [("first", 0), ("idle", 0), ("moved", 1), ("moved10", 10)]
    for name, count in plan:
        if count:
            more_steps(writer, ids, steps, count)
            steps += count
        wall, cpu, result = timed(monitor.poll)
        assert result.runs == runs, result
        row[name] = {
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "reads": result.reads,
            "observations": result.observations,
        }
    monitor.close(timeout=5)
    if runs <= old_max:
        exp_id = client.get_experiment_by_name(experiment).experiment_id
        wall, cpu, reads = timed(lambda: old_poll(client, exp_id))
        row["old"] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "reads": reads}
        row["moved_vs_old"] = round(row["old"]["wall_s"] / max(row["moved"]["wall_s"], 1e-9), 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="10,100,1000", help="comma-separated run counts")
    parser.add_argument("--steps", type=int, default=100, help="steps of history per run")
    parser.add_argument("--old-max", type=int, default=100, help="largest N for the old poll")
    parser.add_argument("--quick", action="store_true", help="10 and 100 runs, 20 steps")
    parser.add_argument("--tracking-uri", help="an http(s) MLflow server (default: start one)")
    parser.add_argument("--experiment", help="measure this experiment built before, build none")
    parser.add_argument("--keep", action="store_true", help="keep the server's directory")
    args = parser.parse_args()
    sizes = [int(n) for n in args.runs.split(",")]
    steps = args.steps
    if args.quick:
        sizes, steps = [n for n in sizes if n <= 100] or [10], min(steps, 20)
    server = None
    uri = store = args.tracking_uri
    if uri is None:
        from tests.mlflow_server import MlflowServer

        server = MlflowServer(Path(tempfile.mkdtemp(prefix="bench-monitor-"))).start()
        uri, store = server.uri, server.backend_uri
    try:
        if args.experiment:
            sizes = sizes[:1]
        for runs in sizes:
            row = measure(uri, store, runs, steps, args.old_max, args.experiment)
            print(json.dumps(row), flush=True)
    finally:
        if server is not None:
            server.stop()
            if args.keep:
                print(f"server directory kept: {server.root}", file=sys.stderr)
            else:
                shutil.rmtree(server.root, ignore_errors=True)


if __name__ == "__main__":
    main()
