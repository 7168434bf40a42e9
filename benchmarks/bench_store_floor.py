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
``--frozen`` measures it as gradwatch's shipper process runs it: the collector off while
MLflow is imported and the store opened, then ``gc.freeze()`` (see ship_process.py).

Part ``open``: the fixed cost per run of the embedded store, each step in a fresh ``python``
process (CPU of that process, from ``getrusage`` in the parent): the interpreter alone,
``import mlflow``, ``MlflowClient("sqlite:///...")`` plus a first call on a new database and
on an existing one (schema creation or check), and an experiment lookup + run creation +
``set_terminated``. These are MLflow's costs; gradwatch's shipper pays them once per run.
Each stage runs twice: plain, and the way the shipper process runs (collector off from the
first line, ``os._exit`` instead of the interpreter's teardown).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# --------------------------------------------------------------------- part 1: per metric
def per_metric(client, run_id: str, batch_size: int, total: int, keys: int) -> float:
    """CPU seconds per metric logging ``total`` metrics in batches of ``batch_size``."""
    from mlflow.entities import Metric

    names = ["loss", "lr"] if keys == 2 else [f"k{i}" for i in range(keys)]
    ts = int(time.time() * 1000)
    pending: list = []
    sent = step = 0
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


def part_batch(sizes: list[int], total: int, keys: int, frozen: bool) -> dict:
    """Per-metric CPU by batch size, in this process (``frozen``: as the shipper runs)."""
    if frozen:
        gc.disable()
    from mlflow import MlflowClient

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        client = MlflowClient(f"sqlite:///{tmp}/floor.db")
        exp = client.create_experiment("floor")
        warm = client.create_run(exp).info.run_id
        per_metric(client, warm, 200, 2000, keys)  # tables, caches, the ORM's compiled SQL
        if frozen:
            gc.freeze()
            gc.enable()
        for size in sizes:
            run_id = client.create_run(exp).info.run_id
            cost = per_metric(client, run_id, size, max(total, size * 20), keys)
            out[size] = cost
            print(
                f"  log_batch of {size:5d} metrics ({keys} keys a step): "
                f"{cost * 1e6:7.1f} us CPU per metric, {cost * size * 1e3:7.2f} ms per call",
                flush=True,
            )
    return out


# --------------------------------------------------------------------- part 2: per run
_OPEN = "from mlflow import MlflowClient; c = MlflowClient('{uri}'); c.search_experiments(max_results=1)"
_RUN = (
    "; e = c.get_experiment_by_name('floor') or c.get_experiment(c.create_experiment('floor'))"
    "; r = c.create_run(e.experiment_id); c.set_terminated(r.info.run_id)"
)
_STAGES = {
    "python": "pass",
    "import mlflow": "import mlflow",
    "+ MlflowClient(sqlite) + first call, new database": _OPEN,
    "+ MlflowClient(sqlite) + first call, existing database": _OPEN,
    "+ experiment lookup, create_run, set_terminated": _OPEN + _RUN,
}
# What the shipper process does around the same work (ship_process.py): the collector off
# during start-up, and no interpreter teardown at exit.
_SHIPPER_WAY = "import gc; gc.disable(); {code}; import os, sys; sys.stdout.flush(); os._exit(0)"


def fresh_cpu(code: str, env: dict[str, str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def part_open(repeats: int) -> dict:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", GIT_PYTHON_REFRESH="quiet")
    out: dict[str, dict[str, float]] = {}
    print(
        f"  {'fresh process, CPU-s (min of ' + str(repeats) + ')':58s} {'plain':>6s} {'gc off + _exit':>15s}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for stage, code in _STAGES.items():
            row = {}
            for way, template in (("plain", "{code}"), ("shipper", _SHIPPER_WAY)):
                runs = []
                for r in range(repeats):
                    fresh = "new database" in stage
                    db = Path(tmp) / (f"{way}{r}.db" if fresh else "old.db")
                    runs.append(
                        fresh_cpu(template.format(code=code.format(uri=f"sqlite:///{db}")), env)
                    )
                row[way] = min(runs)  # contention only ever adds CPU
            out[stage] = row
            print(f"  {stage:58s} {row['plain']:6.2f} {row['shipper']:15.2f}", flush=True)
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
    ap.add_argument(
        "--frozen",
        action="store_true",
        help="part batch as the shipper runs it: heap frozen after start-up",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from importlib.metadata import version

    out: dict = {
        "mlflow": version("mlflow"),
        "machine": f"{os.cpu_count()} CPUs, {os.uname().machine}",
    }
    if args.part in ("batch", "both"):
        sizes = [int(s) for s in args.sizes.split(",")]
        out["per_metric_s"] = part_batch(sizes, args.metrics, args.keys, args.frozen)
    if args.part in ("open", "both"):
        out["fresh_process_cpu_s"] = part_open(args.repeats)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
