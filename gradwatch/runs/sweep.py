"""Run a training script once per parameter value, each as its own MLflow run.

    plan = plan_sweep("train.py", {"lr": [1.0, 0.1, 0.01]}, experiment="mlp")
    results = run_sweep(plan, parallel=2)
    # then: gradwatch compare --experiment mlp --sweep <plan.sweep_id>

Each run is a subprocess (``python SCRIPT ARGS...``) whose environment carries the values
(see :mod:`gradwatch.params`): the script reads them with ``gradwatch.param("lr", 0.1)`` and
the hook picks up the experiment, run name and sweep id by itself. Output of each run goes to
``.gradwatch/sweeps/<sweep_id>/<run_name>.log``, so parallel runs do not interleave.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from gradwatch.errors import InputError
from gradwatch.mlflow_access import experiment_id, get_client, mlflow_errors, user_environ
from gradwatch.params import ENV_EXPERIMENT, ENV_RUN_NAME, ENV_SWEEP_ID, param_env_name

__all__ = [
    "SweepPlan",
    "SweepResult",
    "SweepRun",
    "ensure_experiment",
    "new_sweep_id",
    "plan_sweep",
    "run_sweep",
]

DEFAULT_LOG_DIR = os.path.join(".gradwatch", "sweeps")


def new_sweep_id() -> str:
    """A sortable, unique sweep id: ``20250101-120000-1a2b3c``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _fmt_value(value: object) -> str:
    # repr(0.1) is "0.1" and repr(1e-10) is "1e-10": short and exact, unlike str(float32).
    return repr(value) if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class SweepRun:
    """One planned run: its name, parameter values, command and environment additions."""

    run_name: str
    values: dict[str, object]
    command: list[str]
    env: dict[str, str]
    log_path: Path


@dataclass(frozen=True)
class SweepPlan:
    """Every run of a sweep, ready to launch."""

    sweep_id: str
    experiment: str
    runs: list[SweepRun] = field(default_factory=list)


@dataclass(frozen=True)
class SweepResult:
    """How one run ended: ``returncode`` 0 is success."""

    run: SweepRun
    returncode: int
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def log_tail(self, lines: int = 5) -> str:
        """The last ``lines`` lines of the run's output (for error reports)."""
        try:
            text = self.run.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])


def plan_sweep(
    script: str,
    grid: Mapping[str, Sequence[object]],
    experiment: str,
    script_args: Sequence[str] = (),
    sweep_id: str | None = None,
    tracking_uri: str | None = None,
    log_dir: str | os.PathLike[str] = DEFAULT_LOG_DIR,
    python: str = sys.executable,
) -> SweepPlan:
    """Plan one run per combination of ``grid`` values (the cartesian product).

    plan_sweep("train.py", {"lr": [0.1, 0.01]}, experiment="mlp")  # 2 runs
    """
    if not os.path.isfile(script):
        raise InputError(f"training script {script!r} not found")
    if not grid or any(len(values) == 0 for values in grid.values()):
        raise InputError("give at least one value per swept parameter, e.g. --lr 0.1 0.01")
    sweep_id = sweep_id or new_sweep_id()
    names = list(grid)
    # .py files run with this interpreter, so the script sees the same gradwatch; anything
    # else must be executable itself.
    base = [python, script] if script.endswith(".py") else [os.path.abspath(script)]
    runs = []
    seen: set[str] = set()
    for combo in itertools.product(*(grid[n] for n in names)):
        values = dict(zip(names, combo, strict=True))
        run_name = ",".join(f"{n}={_fmt_value(v)}" for n, v in values.items())
        if run_name in seen:
            continue  # --lr 0.1 0.1 would log the same run twice
        seen.add(run_name)
        env = {param_env_name(n): _fmt_value(v) for n, v in values.items()}
        env.update({ENV_EXPERIMENT: experiment, ENV_RUN_NAME: run_name, ENV_SWEEP_ID: sweep_id})
        if tracking_uri:
            env["MLFLOW_TRACKING_URI"] = tracking_uri
        safe = "".join(c if c.isalnum() or c in "=.,-_" else "_" for c in run_name)
        log_path = Path(log_dir) / sweep_id / f"{safe}.log"
        runs.append(SweepRun(run_name, values, [*base, *script_args], env, log_path))
    return SweepPlan(sweep_id, experiment, runs)


def ensure_experiment(tracking_uri: str | None, experiment: str) -> str:
    """Create the sweep's experiment (and a fresh sqlite store) before the runs start.

    Parallel runs would otherwise race to create both: two processes initializing one sqlite
    file, or creating the same experiment, and one of them failing.
    """
    client = get_client(tracking_uri, must_exist=False)
    with mlflow_errors(client.tracking_uri, f"cannot create experiment {experiment!r}"):
        return experiment_id(client, experiment, create=True)


def _launch(run: SweepRun, timeout: float | None) -> SweepResult:
    run.log_path.parent.mkdir(parents=True, exist_ok=True)
    env = user_environ()  # the user's settings, not the ones this command chose for itself
    env.update(run.env)
    start = time.monotonic()
    with open(run.log_path, "wb") as log:
        try:
            proc = subprocess.run(
                run.command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            code = proc.returncode
        except subprocess.TimeoutExpired:
            log.write(f"\n[gradwatch sweep] killed after {timeout} s\n".encode())
            code = -9
        except OSError as err:
            log.write(f"[gradwatch sweep] cannot start {run.command[0]}: {err}\n".encode())
            code = 127
    return SweepResult(run, code, time.monotonic() - start)


def run_sweep(
    plan: SweepPlan,
    parallel: int = 1,
    timeout: float | None = None,
    on_done: Callable[[SweepResult], None] | None = None,
    on_start: Callable[[SweepRun], None] | None = None,
) -> list[SweepResult]:
    """Run every planned run, ``parallel`` at a time; results in plan order.

    ``on_start(run)`` and ``on_done(result)`` are called as each run starts and finishes
    (from worker threads; for a progress line). A failing run does not stop the others;
    look at ``result.ok`` and ``result.log_tail()``.
    """
    if parallel < 1:
        raise InputError(f"parallel must be >= 1, got {parallel}")

    def launch(run: SweepRun) -> SweepResult:
        if on_start is not None:
            on_start(run)
        return _launch(run, timeout)

    results: dict[int, SweepResult] = {}
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(launch, run): i for i, run in enumerate(plan.runs)}
        for fut in as_completed(futures):
            result = fut.result()
            results[futures[fut]] = result
            if on_done is not None:
                on_done(result)
    return [results[i] for i in range(len(plan.runs))]
