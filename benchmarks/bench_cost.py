"""What the hook really costs: CPU seconds of the training process and every process it starts.

    python benchmarks/bench_cost.py                          # 1,000 and 5,000 steps, both stores
    python benchmarks/bench_cost.py --steps 300,1500 --stores server --json out.json

Each run is a fresh ``python`` process, as a user runs a script: this parent launches it and
reads ``getrusage(RUSAGE_CHILDREN)`` before and after, so the figure holds the training
process and every process it started (the shipper), which the run script waits for before it
exits (a child's CPU is added to its parent's children total only once it has been waited
for). BLAS is single-threaded, so no thread spins. Model: the 784-256-10 MLP on synthetic
blobs, batch 128. Variants:

    bare        the training loop alone
    logging     GradWatch(every=None): loss and lr every step, per-tensor statistics
    checks      GradWatch(every=100, budget=0.05)

Each variant runs at two step counts; the slope between them is the per-step cost (reported
as a ratio to the bare loop's slope) and the intercept the per-run cost (CPU-s over bare).
Wall time of the same runs is reported beside it (contention on a shared machine distorts
it more than CPU). Stores: the embedded sqlite store and a local ``mlflow server``; the
server's own CPU is not counted (it is not started by the training process).

Last, a short fresh-process script (``--script-steps``, default 200) against the server:
wall time with the hook against the same loss/lr points logged with MLflow's own client.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH = 128
KEYS = ("cpu", "wall", "training", "shipper", "metrics", "charged")
VARIANTS = {
    "bare": None,
    "logging": {"every": None},
    "checks": {"every": 100, "budget": 0.05},
}


# ------------------------------------------------------------------------- the run script
def child(variant: str, steps: int, uri: str) -> None:
    """One training run as a user would write it (runs in the fresh process)."""
    t0 = time.perf_counter()
    from gradwatch.demo import MLP, make_blobs

    X, y = make_blobs(4096, 784, 10, seed=0)
    mlp = MLP([784, 256, 10], seed=0)
    params, lr = mlp.params, 0.05
    if variant == "mlflow":
        import mlflow

        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("bench-cost-mlflow")
        ctx = mlflow.start_run()
        log = mlflow.log_metrics
    elif VARIANTS[variant] is not None:
        import gradwatch

        ctx = gradwatch.GradWatch(
            # A long flush timeout: every record must land, or its shipping CPU goes uncounted.
            tracking_uri=uri,
            experiment="bench-cost",
            config=False,
            flush_timeout=600,
            **VARIANTS[variant],
        )
    else:
        import contextlib

        ctx = contextlib.nullcontext()
    with ctx as watch:
        for s in range(steps):
            i = (s * BATCH) % 4096
            xb, yb = X[i : i + BATCH], y[i : i + BATCH]
            loss, grads = mlp.loss_and_grads(params, xb, yb)
            if variant == "mlflow":
                log({"loss": loss, "lr": lr}, step=s)
            elif watch is not None:
                watch.step(
                    params,
                    grads,
                    loss=loss,
                    lr=lr,
                    loss_fn=lambda p, xb=xb, yb=yb: mlp.loss(p, xb, yb),
                )
            for k in params:
                params[k] -= lr * grads["d" + k]
    shipped = {"metrics": 0, "charged": 0.0}
    if watch is not None and variant != "mlflow":
        result = watch.close_result
        if result is not None and result.pending:
            print(f"warning: {result}", file=sys.stderr)
        cpu_seconds, metrics = watch.run.ship_cpu  # what the shipper measured and reported
        shipped = {"metrics": metrics, "charged": cpu_seconds / metrics if metrics else 0.0}
    # Wait for the shipper process: only a waited-for child's CPU reaches RUSAGE_CHILDREN,
    # here and so in the benchmark's parent. (Not for every child: GitPython, which MLflow's
    # context tags use, keeps a `git cat-file` process until the interpreter exits.)
    for pid in shipper_pids():
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    me, kids = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(
        json.dumps(
            {
                "inner_wall": time.perf_counter() - t0,
                "training_cpu": me.ru_utime + me.ru_stime,
                "shipper_cpu": kids.ru_utime + kids.ru_stime,
                **shipped,
            }
        )
    )


def shipper_pids() -> list[int]:
    """This process's children that are gradwatch shippers (Linux /proc)."""
    me = os.getpid()
    try:
        children = Path(f"/proc/{me}/task/{me}/children").read_text().split()
    except OSError:
        return []
    out = []
    for pid in map(int, children):
        try:
            if b"ship_process" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            pass
    return out


# ------------------------------------------------------------------------- the parent
def child_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["GIT_PYTHON_REFRESH"] = "quiet"
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def measure(variant: str, steps: int, uri: str, cwd: Path) -> dict[str, float]:
    """CPU seconds (all processes) and wall seconds of one fresh-process run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--child", variant, str(steps), uri],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{variant} {steps} failed:\n{out.stderr[-3000:]}")
    if out.stderr.strip():
        print(f"  ({variant} {steps}: {out.stderr.strip().splitlines()[-1][:200]})", flush=True)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    split = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "cpu": cpu,
        "wall": wall,
        "training": split["training_cpu"],
        "shipper": split["shipper_cpu"],
        "metrics": split["metrics"],
        "charged": split["charged"],
    }


def fit(points: dict[int, float]) -> tuple[float, float]:
    """(slope per step, intercept) of the line through the two step counts' figures."""
    (n1, v1), (n2, v2) = sorted(points.items())[0], sorted(points.items())[-1]
    slope = (v2 - v1) / (n2 - n1)
    return slope, v1 - slope * n1


def bench_store(
    label: str, uri: str, step_counts: list[int], repeats: int, cwd: Path, out: dict, stat=min
):
    measure("logging", 50, uri, cwd)  # warm-up, not counted: database tables, page cache
    runs: dict[str, dict[int, list[dict[str, float]]]] = {}
    for _ in range(repeats):
        for steps in step_counts:
            for variant in VARIANTS:  # interleaved so a busy minute hits all variants alike
                r = measure(variant, steps, uri, cwd)
                runs.setdefault(variant, {}).setdefault(steps, []).append(r)
                print(
                    f"  {label:8s} {variant:8s} {steps:6d} steps: cpu {r['cpu']:7.2f} s "
                    f"(training {r['training']:.2f}, shipper {r['shipper']:.2f}), "
                    f"wall {r['wall']:7.2f} s, {r['metrics']} metrics shipped",
                    flush=True,
                )
    med = {
        v: {n: {k: stat(r[k] for r in rs) for k in KEYS} for n, rs in by.items()}
        for v, by in runs.items()
    }
    base = {k: fit({n: m[k] for n, m in med["bare"].items()}) for k in KEYS}
    rows = []
    for variant in VARIANTS:
        if variant == "bare":
            continue
        row = {"store": label, "variant": variant}
        for k in KEYS:
            slope, intercept = fit({n: m[k] for n, m in med[variant].items()})
            if k == "shipper":  # the bare script starts no process: absolute figures
                row["shipper_step_us"], row["shipper_run"] = slope * 1e6, intercept
                continue
            if k == "metrics":  # metric values shipped per step
                row["metrics_per_step"] = slope
                continue
            if k == "charged":  # what the hook charged its budget per metric, longest run
                row["charged_us"] = med[variant][max(med[variant])]["charged"] * 1e6
                continue
            row[f"{k}_step_ratio"] = slope / base[k][0]
            row[f"{k}_run_extra"] = intercept - base[k][1]
        row["bare_step_ms_cpu"] = base["cpu"][0] * 1e3
        # The shipper's real CPU per metric: its per-step slope over the metrics per step.
        row["shipper_per_metric_us"] = row["shipper_step_us"] / max(row["metrics_per_step"], 1e-9)
        rows.append(row)
    out.setdefault("rows", []).extend(rows)
    out.setdefault("runs", {})[label] = med


def bench_script(uri: str, steps: int, repeats: int, cwd: Path, out: dict) -> None:
    walls: dict[str, list[float]] = {"logging": [], "checks": [], "mlflow": []}
    for _ in range(repeats):
        for variant in walls:
            walls[variant].append(measure(variant, steps, uri, cwd)["wall"])
    mlflow_wall = statistics.median(walls["mlflow"])
    out["script"] = {
        "steps": steps,
        "mlflow_wall": mlflow_wall,
        **{f"{v}_wall": statistics.median(w) for v, w in walls.items() if v != "mlflow"},
    }
    for variant in ("logging", "checks"):
        w = statistics.median(walls[variant])
        print(
            f"  {steps}-step script, {variant}: {w:.2f} s wall vs MLflow's client "
            f"{mlflow_wall:.2f} s: {w / mlflow_wall:.2f}x",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", default="1000,5000", help="two step counts, comma-separated")
    ap.add_argument("--stores", default="embedded,server")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--script-steps", type=int, default=200, help="0 skips the script test")
    ap.add_argument(
        "--stat",
        choices=("min", "median"),
        default="min",
        help="how repeats are combined: contention only ever adds CPU, so min",
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=3, metavar=("VARIANT", "STEPS", "URI"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        variant, steps, uri = args.child
        return child(variant, int(steps), uri)

    step_counts = [int(s) for s in args.steps.split(",")]
    stat = min if args.stat == "min" else statistics.median
    stores = args.stores.split(",")
    out: dict = {"steps": step_counts, "machine": f"{os.cpu_count()} CPUs, {os.uname().machine}"}
    sys.path.insert(0, str(ROOT / "tests"))
    from mlflow_server import MlflowServer

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        if "embedded" in stores:
            bench_store(
                "embedded",
                f"sqlite:///{tmp}/embedded.db",
                step_counts,
                args.repeats,
                cwd,
                out,
                stat,
            )
        if "server" in stores or args.script_steps:
            os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
            with MlflowServer(cwd / "server") as server:
                time.sleep(2)  # let the freshly started server settle
                if "server" in stores:
                    bench_store("server", server.uri, step_counts, args.repeats, cwd, out, stat)
                if args.script_steps:
                    bench_script(server.uri, args.script_steps, max(args.repeats, 2), cwd, out)
    print(
        f"\nsteps {step_counts}, {args.repeats} repeats ({args.stat}), {out['machine']}; "
        "CPU of all processes (wall beside it)"
    )
    print(
        "| store | variant | per step (CPU) | per run (CPU-s) | per step (wall) | per run (wall s) "
        "| training process: per step, per run | shipper process: per step, per run |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in out.get("rows", []):
        print(
            f"| {r['store']} | {r['variant']} | {r['cpu_step_ratio']:.3f}x | "
            f"{r['cpu_run_extra']:+.2f} | {r['wall_step_ratio']:.3f}x | "
            f"{r['wall_run_extra']:+.2f} | {r['training_step_ratio']:.3f}x, "
            f"{r['training_run_extra']:+.2f} s | {r['shipper_step_us']:.0f} us, "
            f"{r['shipper_run']:.2f} s |"
        )
    print(
        "\nShipping per metric: the shipper process's CPU slope per step over the metrics it "
        "shipped per step, against what it measured and the hook charged its budget"
    )
    print(
        "| store | variant | bare step (CPU) | metrics per step | shipper CPU per metric "
        "(slope) | charged per metric |"
    )
    print("|---|---|---|---|---|---|")
    for r in out.get("rows", []):
        print(
            f"| {r['store']} | {r['variant']} | {r['bare_step_ms_cpu']:.2f} ms | "
            f"{r['metrics_per_step']:.2f} | {r['shipper_per_metric_us']:.0f} us | "
            f"{r['charged_us']:.0f} us |"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
