"""The ``gradwatch`` command: demo, compare, sweep, monitor, report, sync.

    gradwatch demo                         # train small nets over an lr sweep, log to MLflow
    gradwatch compare --experiment mlp --plot runs.png
    gradwatch sweep train.py --lr 1 0.1 0.01 --parallel 2
    gradwatch monitor --experiment mlp --rules gradwatch.yaml --interval 10
    gradwatch report RUN_ID                # the run's HTML report, attached to the run
    gradwatch sync                         # upload journals a crashed run left behind

Every command takes ``--tracking-uri`` (else ``MLFLOW_TRACKING_URI``, else the embedded
``sqlite:///mlflow.db`` in the working directory). This module only parses arguments and
prints: the work is done in gradwatch.runs (compare, sweep, monitor), gradwatch.demo.run and
gradwatch.tracking. For its own process the command makes MLflow's client fail fast
(gradwatch.mlflow_access.FAIL_FAST_SETTINGS) unless the user set those variables.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import click

from gradwatch import __version__
from gradwatch.errors import ConfigError, GradwatchError, InputError, NotFoundError
from gradwatch.mlflow_access import apply_fail_fast_defaults, resolve_tracking_uri, restore_settings
from gradwatch.secrets import mask_uri

__all__ = ["main"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$", re.IGNORECASE)


class GreedyOption(click.Option):
    """An option that takes every following value: ``--lr 1 0.1 0.01``, ``--runs ID ID``.

    Click options take a fixed number of values; this one keeps taking arguments until the
    next option (or, with ``numbers_only``, the first argument that is not a number, so
    ``--lr 1 0.1 train.py`` still leaves ``train.py`` as the script). It may be repeated. Its
    command must be a :class:`GreedyCommand`, which spells the values out for click.
    """

    def __init__(self, *args: Any, numbers_only: bool = False, **kwargs: Any) -> None:
        kwargs["multiple"] = True
        super().__init__(*args, **kwargs)
        self.numbers_only = numbers_only

    def takes(self, arg: str) -> bool:
        """Whether ``arg``, after this option's first value, is one more of its values."""
        if arg == "--" or (arg.startswith("-") and not _NUMBER.match(arg)):
            return False
        return not self.numbers_only or bool(_NUMBER.match(arg))


class GreedyCommand(click.Command):
    """A command with :class:`GreedyOption` s: ``--lr 1 0.1`` is read as ``--lr 1 --lr 0.1``
    before click parses the arguments (nothing after ``--`` is touched)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        greedy = {name: p for p in self.params if isinstance(p, GreedyOption) for name in p.opts}
        spelled: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            spelled.append(arg)
            i += 1
            if arg == "--":
                spelled += args[i:]
                break
            name, equals, _ = arg.partition("=")
            option = greedy.get(name)
            if option is None:
                continue
            if not equals and i < len(args):  # `--lr 1`: the first value, whatever it looks like
                spelled.append(args[i])
                i += 1
            while i < len(args) and option.takes(args[i]):
                spelled += [name, args[i]]
                i += 1
        return super().parse_args(ctx, spelled)


def tracking_uri_option(fn: Callable) -> Callable:
    return click.option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        show_envvar=True,
        metavar="URI",
        help="MLflow tracking URI: a server (http://host:5000) or a store (sqlite:///mlflow.db). "
        "Default: the embedded sqlite:///mlflow.db in the working directory.",
    )(fn)


def _fail_cleanly(fn: Callable) -> Callable:
    """Turn gradwatch's errors into one-line messages (credentials masked) instead of tracebacks.

    One exit code per class of error, the same in every command:

    - 2: bad input: arguments (with the usage line) and config files (``FILE:LINE: key``);
    - 1: the tracking store or the work failed: server unreachable, no such store, experiment
      or run there (NotFoundError), a run or sweep that failed, alerts left undelivered.

    MLflow's own errors reach here already translated (gradwatch.mlflow_access.mlflow_errors).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NotFoundError as err:  # an answer of the store, not a usage mistake
            raise click.ClickException(mask_uri(err)) from None
        except InputError as err:
            raise click.UsageError(mask_uri(err), click.get_current_context()) from None
        except ConfigError as err:
            exc = click.ClickException(mask_uri(err))
            exc.exit_code = 2
            raise exc from None
        except GradwatchError as err:
            raise click.ClickException(mask_uri(err)) from None

    return wrapper


class Progress:
    """Where a long command is: one line on stderr, rewritten in place on a terminal.

        progress = Progress()                          # on sys.stderr
        progress.update("[1/3] lr=0.1: step 40/300")   # a terminal: redrawn at most 10x/s
        progress.finished("[1/3] lr=0.1 ok")           # elsewhere: only these lines print

    Pipes and CI logs get one line per finished item and no control characters.
    """

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._shown = 0.0
        self._dirty = False

    def update(self, text: str) -> None:
        """Show ``text`` as the current state (terminal only; throttled)."""
        if not self.live:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._shown < 0.1:
                return
            self._shown = now
            self._write(text)

    def finished(self, text: str) -> None:
        """Print ``text`` as a line of its own (terminal and elsewhere)."""
        with self._lock:
            if self.live and self._dirty:
                self.stream.write("\r\033[K")
                self._dirty = False
            self.stream.write(text + "\n")
            self.stream.flush()
            self._shown = 0.0  # the next state shows at once, not after the throttle

    def close(self) -> None:
        """Clear the live line."""
        with self._lock:
            if self.live and self._dirty:
                self.stream.write("\r\033[K")
                self.stream.flush()
                self._dirty = False

    def _write(self, text: str) -> None:
        width = max(20, _terminal_width() - 1)
        self.stream.write("\r\033[K" + text[:width])
        self.stream.flush()
        self._dirty = True


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((80, 20)).columns


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="gradwatch")
@click.pass_context
def main(ctx: click.Context) -> None:
    """gradwatch: gradient checks and training monitoring for numpy loops, tracked in MLflow.

    \b
    Start with:   gradwatch demo
    Then:         gradwatch compare --experiment gradwatch-demo --plot runs.png
    """
    # This process is the command's: report an MLflow outage at once instead of retrying
    # for minutes. Undone when the command ends (it may run inside another program).
    added = apply_fail_fast_defaults()
    ctx.call_on_close(lambda: restore_settings(added))


# ----------------------------------------------------------------------------- compare


def _check_plot_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from gradwatch.runs.plot import PLOT_SUFFIXES, require_matplotlib

    if value is None:
        return None
    if not value.lower().endswith(PLOT_SUFFIXES):
        raise click.BadParameter(f"{value!r} must end in {', '.join(PLOT_SUFFIXES)}")
    parent = os.path.dirname(os.path.abspath(value))
    if not os.path.isdir(parent):
        raise click.BadParameter(f"directory {parent} does not exist")
    try:
        require_matplotlib()
    except InputError as err:
        raise click.BadParameter(str(err)) from None
    return value


def _default_experiment() -> str | None:
    return os.environ.get("GRADWATCH_EXPERIMENT") or os.environ.get("MLFLOW_EXPERIMENT_NAME")


def run_compare(
    tracking_uri: str | None,
    experiment: str | None,
    run_ids: tuple[str, ...] = (),
    sweep_id: str | None = None,
    plot: str | None = None,
    output: str = "table",
    progress: bool = True,
    diff_only: bool = False,
) -> list:
    """Print the comparison of the selected runs (shared by compare, sweep and demo)."""
    from gradwatch.mlflow_access import get_client
    from gradwatch.runs import compare

    client = get_client(tracking_uri)
    runs = compare.select_runs(client, experiment, run_ids=run_ids, sweep_id=sweep_id)
    if not runs:
        where = f"experiment {experiment!r}" + (f", sweep {sweep_id}" if sweep_id else "")
        click.echo(f"no runs in {where} at {mask_uri(client.tracking_uri)}", err=True)
        return []
    status = Progress()
    if progress and len(runs) > 1 and status.live:
        count = iter(range(1, len(runs) + 1))

        def step(_run: Any) -> None:
            status.update(f"reading runs {next(count)}/{len(runs)}")

        results = compare.summarize_runs(client, runs, step)
        status.close()
    else:
        results = compare.summarize_runs(client, runs)
    summaries = [s for s, _ in results]
    click.echo(compare.render(summaries, output, diff_only=diff_only))
    if plot:
        from gradwatch.runs.plot import plot_runs

        plot_runs([c for _, c in results], plot)
        click.echo(f"plot written to {plot}", err=True)
    return summaries


@main.command("compare", cls=GreedyCommand, context_settings=CONTEXT)
@click.option("--experiment", "-e", metavar="NAME", help="Experiment whose runs to compare.")
@click.option(
    "--runs", "run_ids", cls=GreedyOption, metavar="ID...", help="Compare these run ids instead."
)
@click.option("--sweep", "sweep_id", metavar="ID", help="Only runs tagged gradwatch.sweep_id=ID.")
@click.option(
    "--plot",
    metavar="FILE.png",
    callback=_check_plot_path,
    help="Also write loss and gradient-check error curves of every run to this image.",
)
@click.option(
    "--format",
    "output",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="table for people; json/csv (one record per run) for scripts.",
)
@click.option(
    "--diff-only", is_flag=True, help="Only the params whose values differ between the runs."
)
@tracking_uri_option
@_fail_cleanly
def compare_cmd(
    experiment: str | None,
    run_ids: tuple[str, ...],
    sweep_id: str | None,
    plot: str | None,
    output: str,
    diff_only: bool,
    tracking_uri: str | None,
) -> None:
    """Compare runs: loss, divergence, gradient checks and alerts, one line per run.

    \b
    Judged on the smoothed loss (medians of the first and last tenth of the run):
    "DIVERGED" when the loss (or a tensor) went non-finite, or rose to 10x its best and
    ended above its start; "stalled" when the end is no lower than the start, within the
    batches' noise. The checks' words are the engine's findings as logged: "BACKPROP BUG"
    (the tensors and the hint below the table), "CALL ORDER" (step() after the update),
    "grads xR" (every tensor off by one factor R), "INCONCLUSIVE" (every check was);
    "clipped" when gradients sat on an element-wise clipping bound.

    \b
      gradwatch compare --experiment gradwatch-demo --plot runs.png
      gradwatch compare --runs 1a2b3c 4d5e6f --format json
      gradwatch compare --experiment mlp --diff-only
    """
    if not experiment and not run_ids:
        experiment = _default_experiment()
        if not experiment:
            raise click.UsageError("give --experiment NAME or --runs ID...")
    run_compare(tracking_uri, experiment, run_ids, sweep_id, plot, output, diff_only=diff_only)


# ------------------------------------------------------------------------------- sweep


def _parse_grid_param(values: tuple[str, ...]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for spec in values:
        name, sep, rest = spec.partition("=")
        name = name.strip()
        if not sep or not name or not rest.strip():
            raise click.BadParameter(f"{spec!r} is not NAME=V1,V2,...", param_hint="--param")
        grid[name] = [_typed(v.strip()) for v in rest.split(",") if v.strip()]
    return grid


def _typed(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@main.command("sweep", cls=GreedyCommand, context_settings=CONTEXT)
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- SCRIPT_ARGS...]")
@click.option(
    "--lr",
    "lrs",
    cls=GreedyOption,
    numbers_only=True,
    type=float,
    metavar="LR...",
    help="Learning rates, one run each (GRADWATCH_PARAM_LR).",
)
@click.option(
    "--param",
    "-p",
    "grid_params",
    multiple=True,
    metavar="NAME=V1,V2",
    help="Sweep another parameter too (GRADWATCH_PARAM_<NAME>); runs cover every combination.",
)
@click.option(
    "--parallel",
    "-j",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Runs at a time.",
)
@click.option("--experiment", "-e", metavar="NAME", help="Default: sweep-<script name>.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds per run.")
@tracking_uri_option
@_fail_cleanly
def sweep_cmd(
    script: str,
    script_args: tuple[str, ...],
    lrs: tuple[float, ...],
    grid_params: tuple[str, ...],
    parallel: int,
    experiment: str | None,
    timeout: float | None,
    tracking_uri: str | None,
) -> None:
    """Run SCRIPT once per learning rate, each as its own MLflow run, then compare them.

    \b
    The script reads the value with gradwatch.param("lr", default) (or the env variable
    GRADWATCH_PARAM_LR); GradWatch picks up the experiment (GRADWATCH_EXPERIMENT), run name
    (GRADWATCH_RUN_NAME) and tags the run gradwatch.sweep_id (GRADWATCH_SWEEP_ID).

    \b
      gradwatch sweep train.py --lr 1 0.1 0.01 --parallel 2
      gradwatch sweep train.py --lr 0.1 0.01 -p batch=32,128 -- --epochs 3
    """
    from gradwatch.runs import sweep

    grid: dict[str, list[Any]] = {}
    if lrs:
        grid["lr"] = list(lrs)
    grid.update(_parse_grid_param(grid_params))
    if not grid:
        raise click.UsageError("give the values to sweep, e.g. --lr 1 0.1 0.01")
    experiment = experiment or "sweep-" + os.path.splitext(os.path.basename(script))[0]
    plan = sweep.plan_sweep(script, grid, experiment, script_args, tracking_uri=tracking_uri)
    exp_id = sweep.ensure_experiment(tracking_uri, experiment)
    parent = sweep.start_sweep_run(tracking_uri, plan)
    plan = sweep.with_parent(plan, parent)
    click.echo(
        f"sweep {plan.sweep_id}: {len(plan.runs)} run(s) of {script} in experiment "
        f"{experiment!r}, {parallel} at a time, children of run {parent}; logs in "
        f"{plan.runs[0].log_path.parent}",
        err=True,
    )
    try:
        results = _run_sweep_with_progress(sweep, plan, parallel, timeout)
    except KeyboardInterrupt:
        sweep.end_parent_run(tracking_uri, parent, [], interrupted=True)
        raise
    failed = [r for r in results if not r.ok]
    for r in failed:
        click.echo(
            f"run {r.run.run_name} failed (exit {r.returncode}); {r.run.log_path}:", err=True
        )
        for line in r.log_tail().splitlines():
            click.echo(f"    {line}", err=True)
    try:
        summaries = run_compare(tracking_uri, experiment, sweep_id=plan.sweep_id, progress=False)
    except InputError as err:  # e.g. every run failed before creating the experiment
        click.echo(f"no summary: {err}", err=True)
        summaries = []
    if len(summaries) < len(results) - len(failed):
        click.echo(
            f"warning: {len(summaries)} run(s) tagged gradwatch.sweep_id={plan.sweep_id} for "
            f"{len(results) - len(failed)} successful script run(s): does the script use "
            "gradwatch.GradWatch?",
            err=True,
        )
    sweep.end_parent_run(tracking_uri, parent, results, {s.run_name: s.verdict for s in summaries})
    _say_where(resolve_tracking_uri(tracking_uri), exp_id, parent, "the sweep's parent run")
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(results)} run(s) failed")


def _say_where(uri: str, experiment_id: str | None, run_id: str | None, what: str) -> None:
    """Print where to see a run (and its experiment's runs) in the MLflow UI."""
    from gradwatch.links import run_links

    if not experiment_id or not run_id:
        return
    links = run_links(uri, experiment_id, run_id)
    if links.command:
        click.echo(f"Open the runs in the MLflow UI: `{links.command}`, then", err=True)
    click.echo(f"    {what}: {links.run}", err=True)
    click.echo(f"    all runs of the experiment: {links.experiment}", err=True)


def _run_sweep_with_progress(sweep: Any, plan: Any, parallel: int, timeout: float | None) -> list:
    """Run the sweep, showing which runs are running and how many have finished."""
    status = Progress()
    total = len(plan.runs)
    lock = threading.Lock()
    running: dict[str, float] = {}
    finished = [0]

    def show() -> None:
        names = ", ".join(running) or "-"
        status.update(f"sweep: {finished[0]}/{total} done; running: {names}")

    def started(run: Any) -> None:
        with lock:
            running[run.run_name] = time.monotonic()
            show()

    def done(result: Any) -> None:
        with lock:
            running.pop(result.run.run_name, None)
            finished[0] += 1
            outcome = "ok" if result.ok else f"FAILED (exit {result.returncode})"
            status.finished(
                f"[{finished[0]}/{total}] {result.run.run_name}: {outcome} "
                f"in {result.seconds:.1f} s"
            )
            show()

    try:
        return sweep.run_sweep(
            plan, parallel=parallel, timeout=timeout, on_done=done, on_start=started
        )
    finally:
        status.close()


# ------------------------------------------------------------------------------- demo


@main.command("demo", context_settings=CONTEXT)
@click.option(
    "--steps",
    type=click.IntRange(min=10),
    default=300,
    show_default=True,
    help="Training steps per run.",
)
@click.option("--quick", is_flag=True, help="Few steps (60): a smoke test in seconds.")
@click.option("--experiment", "-e", default="gradwatch-demo", show_default=True, metavar="NAME")
@tracking_uri_option
@_fail_cleanly
def demo_cmd(steps: int, quick: bool, experiment: str, tracking_uri: str | None) -> None:
    """Train two small networks over an lr sweep, with and without a backprop bug.

    \b
    The classic 3-layer network of the gradient-checking exercise and a small MLP are each
    trained at lr = 0.2 (learns), 10 (diverges) and 1e-10 (barely moves), once with correct
    backprop and once with a planted bug, every run watched by gradwatch.GradWatch and logged
    to MLflow. Ends with the comparison table and the command that opens the MLflow UI.
    """
    from gradwatch.demo import run as demo
    from gradwatch.links import run_links

    uri = resolve_tracking_uri(tracking_uri)
    specs = demo.plan(steps=60 if quick else steps)
    click.echo(
        f"gradwatch demo: {len(specs)} runs -> {mask_uri(uri)}, experiment {experiment!r}", err=True
    )
    status = Progress()
    index = {spec.run_name: i for i, spec in enumerate(specs, start=1)}

    def on_step(spec: Any, step: int) -> None:
        status.update(
            f"[{index[spec.run_name]}/{len(specs)}] {spec.run_name}: step {step}/{spec.steps}"
        )

    def on_run(spec: Any, outcome: Any) -> None:
        loss = "non-finite" if outcome.final_loss is None else f"{outcome.final_loss:.4g}"
        line = f"[{index[spec.run_name]}/{len(specs)}] {spec.run_name}: final loss {loss}"
        if outcome.verdict:
            line += f", verdict {outcome.verdict}"
        if outcome.run_id and outcome.experiment_id:
            line += f" -> {run_links(uri, outcome.experiment_id, outcome.run_id).run}"
        status.finished(line)

    try:
        result = demo.run_demo(
            specs, tracking_uri=uri, experiment=experiment, on_step=on_step, on_run=on_run
        )
    finally:
        status.close()
    click.echo()
    run_compare(uri, experiment, sweep_id=result.sweep_id, progress=False)
    click.echo()
    exp_id = result.experiment_id
    links = (
        run_links(uri, exp_id, result.parent_run_id) if exp_id and result.parent_run_id else None
    )
    if links is None:
        click.echo("Open the runs in the MLflow UI:")
        click.echo(f"    {mask_uri(demo.ui_command(uri, exp_id))}")
    else:
        click.echo(
            f"Open the runs in the MLflow UI{f': `{links.command}`, then' if links.command else ':'}"
        )
        click.echo(f"    all runs of the experiment: {links.experiment}")
        click.echo(f"    the demo's parent run (its description lists every verdict): {links.run}")
        click.echo("    a run's report: its Artifacts tab, gradwatch/report.html (the links above)")
    click.echo("Compare them again, with a plot:")
    again = f"gradwatch compare --experiment {experiment} --sweep {result.sweep_id} --plot demo.png"
    if tracking_uri is not None and tracking_uri != os.environ.get("MLFLOW_TRACKING_URI"):
        again += f" --tracking-uri {mask_uri(uri)}"
    click.echo(f"    {again}")


# ----------------------------------------------------------------------------- monitor


class _StderrLogging:
    """Show gradwatch's log records (alerts, retries) on stderr while a command runs."""

    def __init__(self, level: int) -> None:
        import logging

        self.logger = logging.getLogger("gradwatch")
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
        self.level = level

    def __enter__(self) -> _StderrLogging:
        self.saved = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(self.level)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.saved)


def _poll_line(result: Any) -> str:
    line = f"{result.runs} active run(s), {result.observations} new observation(s)"
    line += f", {len(result.sent)} alert(s) sent"
    if result.already_sent:
        line += f", {result.already_sent} already sent before"
    if result.failed:
        line += f", {result.failed} not delivered (retried at the next poll)"
    return line


@main.command("monitor", context_settings=CONTEXT)
@click.option("--experiment", "-e", required=True, metavar="NAME", help="Experiment to watch.")
@click.option(
    "--rules",
    "rules_path",
    type=click.Path(exists=True, dir_okay=False),
    metavar="FILE",
    help="gradwatch.yaml with alert rules and webhooks. Default: ./gradwatch.yaml if present, "
    "else the default rules (check_failure, nonfinite, loss_divergence).",
)
@click.option(
    "--baseline",
    "baseline_run_id",
    metavar="RUN_ID",
    help="Baseline run for baseline drift. Default: newest run tagged gradwatch.baseline=true.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds between polls.",
)
@click.option("--once", is_flag=True, help="Poll once and exit (for cron).")
@click.option(
    "--settle",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Judge a running run's newest step only once its metrics are this many seconds old.",
)
@click.option(
    "--stale-minutes",
    type=click.FloatRange(min=0, min_open=True),
    metavar="MIN",
    help="Alert (stale_run) when a RUNNING run logged no step for this many minutes; sets "
    "the minutes of the rules file's stale_run rules when it has any.",
)
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and alerts on stderr.")
@tracking_uri_option
@_fail_cleanly
def monitor_cmd(
    experiment: str,
    rules_path: str | None,
    baseline_run_id: str | None,
    interval: float,
    once: bool,
    settle: float,
    stale_minutes: float | None,
    quiet: bool,
    tracking_uri: str | None,
) -> None:
    """Watch an experiment's running runs and raise alerts server-side.

    \b
    Reads the metrics the hook logged, evaluates the same alert rules (plus baseline drift
    against the run tagged gradwatch.baseline=true, or --baseline), and delivers alerts to
    the rules' webhooks. What was sent is remembered in the run's tags
    (gradwatch.monitor.alerted.<rule>), so a restart or the next cron run sends nothing twice.
    MLflow outages are logged and retried; SIGTERM/SIGINT stop it cleanly.

    \b
      gradwatch monitor --experiment mlp --rules gradwatch.yaml --interval 10
      gradwatch monitor --experiment mlp --once        # from cron
    """
    import logging
    import signal
    import threading

    from gradwatch.config import load_config
    from gradwatch.runs.monitor import Monitor

    config = load_config(rules_path)
    uri = resolve_tracking_uri(tracking_uri)
    with _StderrLogging(logging.WARNING if quiet else logging.INFO):
        monitor = Monitor(
            uri,
            experiment,
            rules=config.rules,
            delivery=config.delivery(),
            baseline_run_id=baseline_run_id,
            settle=settle,
            stale_minutes=stale_minutes,
        )
        if once:
            try:
                result = monitor.poll()
            finally:
                left = monitor.close(timeout=30.0)
            click.echo(_poll_line(result), err=True)
            if left:
                raise click.ClickException(
                    f"{left} alert(s) not delivered; see the log (the next run sends them again)"
                )
            return

        stop = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            stop.set()

        saved = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

        def on_poll(result: Any, error: BaseException | None) -> None:
            if result is not None and (result.sent or not quiet):
                click.echo(_poll_line(result), err=True)

        click.echo(
            f"monitoring experiment {experiment!r} at {mask_uri(uri)} every {interval:g}s "
            "(Ctrl-C or SIGTERM to stop)",
            err=True,
        )
        try:
            monitor.run(interval=interval, stop=stop, on_poll=on_poll)
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            left = monitor.close(timeout=10.0)
        click.echo("monitor stopped" + (f"; {left} alert(s) undelivered" if left else ""), err=True)


# ------------------------------------------------------------------------------ report


@main.command("report", context_settings=CONTEXT)
@click.argument("run_id")
@click.option(
    "--output",
    "-o",
    metavar="FILE",
    type=click.Path(dir_okay=False, writable=True),
    help="Where to write the HTML. Default: ./gradwatch-report-RUN_ID.html.",
)
@click.option(
    "--no-upload",
    is_flag=True,
    help="Only write the file; do not upload it (and histograms.png) to the run.",
)
@tracking_uri_option
@_fail_cleanly
def report_cmd(run_id: str, output: str | None, no_upload: bool, tracking_uri: str | None) -> None:
    """Draw a run's report (one HTML file) from MLflow and attach it to the run.

    \b
    The verdict (as `gradwatch compare` gives it), loss and check-error curves, every
    gradient check with its worst coordinates, the alerts, the gradient and weight
    distributions, and the run's settings. Self-contained: no scripts, nothing fetched.
    Uploaded as the run's artifacts gradwatch/report.html and gradwatch/histograms.png
    (when the run logged histograms), where MLflow's artifact viewer shows them.

    \b
      gradwatch report 3f2a9c...                     # writes ./gradwatch-report-3f2a9c....html
      gradwatch report 3f2a9c... -o run.html --no-upload
    """
    import shutil
    import tempfile

    from gradwatch.report import REPORT_DIR, from_mlflow, write_report_files

    data = from_mlflow(run_id, tracking_uri)
    target = output or f"gradwatch-report-{_safe_file_part(run_id)}.html"
    with tempfile.TemporaryDirectory(prefix="gradwatch-report-") as tmp:
        try:
            paths = write_report_files(data, tmp)
            shutil.copyfile(paths[0], target)
        except OSError as err:
            raise InputError(f"cannot write {target}: {err.strerror or err}") from None
        click.echo(f"report written to {target} (verdict: {data.summary().verdict})", err=True)
        if not no_upload:
            _upload_report(tracking_uri, run_id, paths, REPORT_DIR)


def _safe_file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:100]


def _upload_report(tracking_uri: str | None, run_id: str, paths: list, folder: str) -> None:
    from gradwatch.mlflow_access import get_client, mlflow_errors

    client = get_client(tracking_uri)
    with mlflow_errors(client.tracking_uri, f"cannot upload the report to run {run_id}"):
        for path in paths:
            client.log_artifact(run_id, str(path), folder)
    names = ", ".join(f"{folder}/{os.path.basename(str(p))}" for p in paths)
    click.echo(f"uploaded {names} to run {run_id}", err=True)


# -------------------------------------------------------------------------------- sync


@main.command("sync", context_settings=CONTEXT)
@click.argument("journal", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--journal-dir",
    default=os.path.join(".gradwatch", "journal"),
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where to look for journals when none is named.",
)
@click.option(
    "--tracking-uri",
    metavar="URI",
    help="Upload here instead of the tracking URI recorded in each journal.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to keep retrying an unreachable server per journal.",
)
@click.option("--prune", is_flag=True, help="Then delete journals whose records all landed.")
@_fail_cleanly
def sync_cmd(
    journal: str | None, journal_dir: str, tracking_uri: str | None, timeout: float, prune: bool
) -> None:
    """Upload what crashed or offline runs left in their journals (idempotent).

    \b
    With no JOURNAL, syncs every journal in --journal-dir not yet fully landed, waiting (and
    saying so) for a shipper that is still finishing one. Running it twice uploads nothing
    twice. Exits 1 while anything is left; --prune then deletes journals that fully landed.

    \b
      gradwatch sync
      gradwatch sync --prune
      gradwatch sync .gradwatch/journal/20250101-120000-ab12cd34ef56.jsonl
    """
    from gradwatch import tracking

    if journal is not None:
        result = tracking.sync_journal(journal, tracking_uri=tracking_uri, timeout=timeout)
        click.echo(mask_uri(result))
        if prune:
            click.echo(tracking.prune_journals(os.path.dirname(journal) or ".").message)
        if not result.complete:
            raise click.ClickException(
                "the journal is not fully landed; run `gradwatch sync` again later"
            )
        return
    summary = tracking.sync_all(
        journal_dir,
        tracking_uri=tracking_uri,
        timeout=timeout,
        prune=prune,
        echo=lambda line: click.echo(mask_uri(line)),
    )
    if summary.exit_code:
        raise click.ClickException(
            f"{len(summary.left)} journal(s) not fully landed; run `gradwatch sync` again later"
        )
