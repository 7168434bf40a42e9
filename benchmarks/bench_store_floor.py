"""The floor under the embedded store: what MLflow's own sqlite store costs, without gradwatch.

    python benchmarks/bench_store_floor.py                         # both parts
    python benchmarks/bench_store_floor.py --part batch --sizes 2,20,200,1000 --metrics 20000
    python benchmarks/bench_store_floor.py --part open --repeats 3

Part ``batch``: CPU seconds per metric of MLflow's public ``MlflowClient.log_batch`` on a
sqlite store, by batch size. The metrics are what the shipper sends while training: ``loss``
and ``lr`` at every step (two keys per step, consecutive steps), so a batch of N metrics
covers N/2 steps. With ``--keys K`` each step carries K keys instead (statistics steps). Each
size logs into a fresh run of one database, after a warm-up run; CPU is this process's
(``time.process_time``: sqlite runs inside it), so other jobs on the machine barely move it.

Part ``open``: the fixed cost per run of the embedded store, each step in a fresh ``python``
process (CPU of that process, from ``getrusage`` in the parent): the interpreter alone,
``import mlflow``, ``MlflowClient("sqlite:///...")`` plus a first call on a new database and
on an existing one (schema creation or check), and an experiment lookup + run creation +
``set_terminated``. These are MLflow's costs; gradwatch's shipper pays them once per run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# --------------------------------------------------------------------- part 1: per metric
def per_metric(client, run_id: str, batch_size: int, total: int, keys: int, step0: int) -> float:
    """CPU seconds per metric logging ``total`` metrics in batches of ``batch_size``."""
    from mlflow.entities import Metric

    names = ["loss", "lr"] if keys == 2 else [f"k{i}" for i in range(keys)]
    ts = int(time.time() * 1000)
    pending: list = []
    sent = 0
    step = step0
    cpu = 0.0
    while sent < total:
        pending.clear()
        while len(pending) < batch_size:
            for name in names:
                pending.append(Metric(name, 1.0 / (step + 1), ts + step, step))
            step += 1
        t0 = time.process_time()
        client.log_batch(run_id, metrics=pending[:batch_size], synchronous=True)
        cpu += time.process_time() - t0
        sent += batch_size
    return cpu / sent


def part_batch(sizes: list[int], total: int, keys: int) -> dict:
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        client = MlflowClient(f"sqlite:///{tmp}/floor.db")
        exp = client.create_experiment("floor")
        warm = client.create_run(exp).info.run_id
        per_metric(client, warm, 200, 2000, keys, 0)  # tables, caches, the ORM's compiled SQL
        out = {}
        for size in sizes:
            run_id = client.create_run(exp).info.run_id
            n = max(total, size * 20)
            cost = per_metric(client, run_id, size, n, keys, 0)
            out[size] = cost
            print(f"  log_batch of {size:5d} metrics ({keys} keys a step): "
                  f"{cost * 1e6:7.1f} us CPU per metric, {cost * size * 1e3:7.2f} ms per call",
                  flush=True)  # fmt: skip
    return out


# --------------------------------------------------------------------- part 2: per run
_STAGES = {
    "python": "pass",
    "import mlflow": "import mlflow",
    "import mlflow + MlflowClient + first call, new db": (
        "from mlflow import MlflowClient; MlflowClient('{uri}').search_experiments(max_results=1)"
    ),
    "the same, existing db": (
        "from mlflow import MlflowClient; MlflowClient('{uri}').search_experiments(max_results=1)"
    ),
    "the same + experiment lookup, create run, set_terminated": (
        "from mlflow import MlflowClient; c = MlflowClient('{uri}');"
        "e = c.get_experiment_by_name('floor') or c.get_experiment(c.create_experiment('floor'));"
        "r = c.create_run(e.experiment_id); c.set_terminated(r.info.run_id)"
    ),
}


def fresh_cpu(code: str, env: dict[str, str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def part_open(repeats: int) -> dict:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", GIT_PYTHON_REFRESH="quiet")
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage, code in _STAGES.items():
            runs = []
            for r in range(repeats):
                db = Path(tmp) / (f"new{r}.db" if "new db" in stage else "old.db")
                runs.append(fresh_cpu(code.format(uri=f"sqlite:///{db}"), env))
            out[stage] = min(runs)  # contention only ever adds CPU
            print(f"  {stage:58s} {out[stage]:5.2f} CPU-s (min of {repeats})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--part", choices=("batch", "open", "both"), default="both")
    ap.add_argument("--sizes", default="2,20,200,1000")
    ap.add_argument("--metrics", type=int, default=20000, help="metrics logged per batch size")
    ap.add_argument("--keys", type=int, default=2, help="metric keys per step")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import mlflow

    out: dict = {"mlflow": mlflow.__version__, "machine": f"{os.cpu_count()} CPUs, {os.uname().machine}"}  # fmt: skip
    if args.part in ("batch", "both"):
        sizes = [int(s) for s in args.sizes.split(",")]
        out["per_metric_s"] = part_batch(sizes, args.metrics, args.keys)
    if args.part in ("open", "both"):
        out["fresh_process_cpu_s"] = part_open(args.repeats)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
