"""Run a training script once per parameter value: one parent MLflow run, a child run each.

    plan = plan_sweep("train.py", {"lr": [1.0, 0.1, 0.01]}, experiment="mlp")
    parent = start_sweep_run(tracking_uri, plan)           # the sweep's own run
    results = run_sweep(with_parent(plan, parent), parallel=2)
    end_parent_run(tracking_uri, parent, results, verdicts)
    # then: gradwatch compare --experiment mlp --sweep <plan.sweep_id>

Each run is a subprocess (``python SCRIPT ARGS...``) whose environment carries the values
(see :mod:`gradwatch.params`): the script reads them with ``gradwatch.param("lr", 0.1)`` and
the hook picks up the experiment, run name, sweep id and parent run by itself. The children
carry ``mlflow.parentRunId`` (the MLflow UI folds them under the parent) and
``gradwatch.sweep_id``; the parent carries ``gradwatch.sweep_parent``, the swept values as
params and, at the end, a description with every child's verdict. Output of each run goes to
``.gradwatch/sweeps/<sweep_id>/<run_name>.log``, so parallel runs do not interleave.
"""

from __future__ import annotations

import dataclasses
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
from gradwatch.params import (
    ENV_EXPERIMENT,
    ENV_PARENT_RUN_ID,
    ENV_RUN_NAME,
    ENV_SWEEP_ID,
    param_env_name,
)
from gradwatch.schema import TAG_NOTE, TAG_SWEEP_PARENT

__all__ = [
    "SweepPlan",
    "SweepResult",
    "SweepRun",
    "end_parent_run",
    "ensure_experiment",
    "new_sweep_id",
    "plan_sweep",
    "run_sweep",
    "start_parent_run",
    "start_sweep_run",
    "with_parent",
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
    script: str = ""
    grid: dict[str, list[object]] = field(default_factory=dict)


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
    return SweepPlan(sweep_id, experiment, runs, script, {n: list(v) for n, v in grid.items()})


def with_parent(plan: SweepPlan, parent_run_id: str) -> SweepPlan:
    """``plan`` with every run a child of ``parent_run_id`` (``GRADWATCH_PARENT_RUN_ID``)."""
    runs = [
        dataclasses.replace(r, env={**r.env, ENV_PARENT_RUN_ID: parent_run_id}) for r in plan.runs
    ]
    return dataclasses.replace(plan, runs=runs)


def start_parent_run(
    tracking_uri: str | None,
    experiment: str,
    sweep_id: str,
    name: str,
    params: Mapping[str, object] | None = None,
    source: str | None = None,
) -> str:
    """Create a sweep's parent run (RUNNING until :func:`end_parent_run`); return its id.

        parent = start_parent_run(uri, "mlp", plan.sweep_id, "sweep train.py", {"lr": "1, 0.1"})

    Tagged ``gradwatch.sweep_parent`` = ``sweep_id``; ``params`` are logged as they are.
    """
    client = get_client(tracking_uri, must_exist=False)
    with mlflow_errors(client.tracking_uri, "cannot create the sweep's parent run"):
        exp_id = experiment_id(client, experiment, create=True)
        tags = {TAG_SWEEP_PARENT: sweep_id}
        if source:
            tags["mlflow.source.name"] = source
        run = client.create_run(exp_id, tags=tags, run_name=name)
        for key, value in (params or {}).items():
            client.log_param(run.info.run_id, key, str(value)[:6000])
    return run.info.run_id


def start_sweep_run(tracking_uri: str | None, plan: SweepPlan) -> str:
    """The parent run of ``plan``: named ``sweep <script> <sweep id>``, one param per swept
    name listing its values (``lr``: ``1.0, 0.1, 0.01``)."""
    name = f"sweep {os.path.basename(plan.script) or 'script'} {plan.sweep_id}"
    params = {n: ", ".join(_fmt_value(v) for v in values) for n, values in plan.grid.items()}
    return start_parent_run(
        tracking_uri,
        plan.experiment,
        plan.sweep_id,
        name,
        params,
        os.path.abspath(plan.script) if plan.script else None,
    )


def end_parent_run(
    tracking_uri: str | None,
    parent_run_id: str,
    results: Sequence[SweepResult | tuple[str, int]],
    verdicts: Mapping[str, str] | None = None,
    interrupted: bool = False,
) -> None:
    """End the parent run: FINISHED when every child succeeded, FAILED when one failed,
    KILLED when the sweep was interrupted; its description lists the children with their
    verdicts (``{run_name: verdict}``, as ``gradwatch compare`` gives them). ``results``:
    the sweep's, or ``(run_name, exit code)`` pairs of children run another way."""
    verdicts = verdicts or {}
    outcomes = [
        (r.run.run_name, r.returncode) if isinstance(r, SweepResult) else r for r in results
    ]
    failed = sum(1 for _, code in outcomes if code != 0)
    lines = [
        f"**gradwatch sweep: {len(outcomes)} run(s)"
        + (f", {failed} failed" if failed else "")
        + "**",
        "",
        "| run | verdict |",
        "|---|---|",
    ]
    for name, code in outcomes:
        outcome = verdicts.get(name) or ("-" if code == 0 else f"script failed (exit {code})")
        lines.append(f"| {_cell(name)} | {_cell(outcome)} |")
    status = "KILLED" if interrupted else ("FAILED" if failed else "FINISHED")
    client = get_client(tracking_uri, must_exist=False)
    with mlflow_errors(client.tracking_uri, "cannot end the sweep's parent run"):
        client.set_tag(parent_run_id, TAG_NOTE, "\n".join(lines)[:8000])
        client.set_terminated(parent_run_id, status)


def _cell(text: str) -> str:
    """``text`` as a markdown table cell (no column breaks)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


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
                run.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
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
