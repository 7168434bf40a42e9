"""Does ``GradWatch()`` with its defaults name the usual training problems, and stay silent on
healthy runs?

    python benchmarks/bench_problems.py            # headline: real GradWatch() runs, defaults
    python benchmarks/bench_problems.py --quick    # fewer seeds
    python benchmarks/bench_problems.py --held-out # seeds and shapes the rules were not tuned on
    python benchmarks/bench_problems.py --feed     # the same hook code on an in-memory run
                                                   # (no MLflow: seconds, for tuning)

Every scenario is a numpy network written here (MLPs of several depths, widths and
activations, softmax cross-entropy on Gaussian blobs, plain minibatch SGD) trained for a few
hundred steps with ``watch.step(params, grads, loss=loss, lr=lr)`` inside
``GradWatch(config=False, report=False)``: the default rules, the default statistics cadence.
``report=False`` only skips the HTML page at the end. Alerts are read back from the run's
``gradwatch/alerts.jsonl`` artifact in a local ``mlflow server`` this benchmark starts.

Problems (the step the problem starts, "onset", in brackets):
- vanishing gradients: deep sigmoid nets, deep tanh nets with too small an init [0]
- exploding gradients: the learning rate raised mid-run until the gradients grow
  geometrically (the run goes NaN a few hundred steps later) [the step lr is raised]
- dead units: a too-large step pushes most first-layer ReLU biases far below 0 [that step]
- saturated units: tanh/sigmoid nets fed unnormalized inputs, or initialized far too large [0]
- stuck loss: a learning rate so large the loss bounces at a high level without diverging [0]
- learning too slow: a learning rate 1000x too small [0]
- NaN/Inf: a batch whose loss is NaN (a log of 0) [that step]

Healthy runs: batch-1 SGD, step and cosine lr schedules, deep tanh with Xavier init, a large
and a small model, runs converging to ~0 loss, a frozen first layer, gradient-norm clipping,
leaky ReLU, sigmoid. Any alert on a healthy run is a false alarm (the ``check_failure`` rule
has nothing to see: no ``loss_fn``, so no gradient check runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import gradwatch  # noqa: E402
from gradwatch.alerts import PROBLEMS  # noqa: E402

Params = dict[str, np.ndarray]

# ------------------------------------------------------------------------------ networks


def _act(name: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Activation and its derivative at ``z``."""
    if name == "relu":
        return np.maximum(z, 0.0), (z > 0).astype(z.dtype)
    if name == "leaky":
        return np.where(z > 0, z, 0.01 * z), np.where(z > 0, 1.0, 0.01)
    if name == "tanh":
        h = np.tanh(z)
        return h, 1.0 - h * h
    h = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid, no overflow warning
    return h, h * (1.0 - h)


@dataclass(frozen=True)
class Net:
    """An MLP ``sizes[0] -> ... -> sizes[-1]`` with softmax cross-entropy."""

    sizes: tuple[int, ...]
    act: str = "relu"
    init: float = 1.0  # hidden layers: x the He (ReLU) / Xavier (tanh, sigmoid) std
    loss: str = "xent"  # xent: softmax cross-entropy; mse: squared error to one-hot targets

    def params(self, rng: np.random.Generator) -> Params:
        p = {}
        for i, (a, b) in enumerate(zip(self.sizes, self.sizes[1:], strict=False), 1):
            std = math.sqrt(2.0 / a) if self.act in ("relu", "leaky") else math.sqrt(1.0 / a)
            if self.act == "sigmoid":
                std *= 4.0  # Xavier for the logistic function
            scale = self.init if i < len(self.sizes) - 1 else 1.0  # the output layer: as usual
            p[f"W{i}"] = rng.normal(0.0, scale * std, (a, b))
            p[f"b{i}"] = np.zeros(b)
        return p

    def loss_grads(self, p: Params, X: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
        layers = len(self.sizes) - 1
        hs, ds = [X], []
        for i in range(1, layers):
            h, d = _act(self.act, hs[-1] @ p[f"W{i}"] + p[f"b{i}"])
            hs.append(h)
            ds.append(d)
        logits = hs[-1] @ p[f"W{layers}"] + p[f"b{layers}"]
        n = len(y)
        if self.loss == "mse":
            delta = logits.copy()
            delta[np.arange(n), y] -= 1.0
            loss = float(0.5 * np.sum(delta * delta) / n)
            return loss, self._backward(p, hs, ds, delta / n)
        logits = logits - logits.max(axis=1, keepdims=True)
        log_prob = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))  # stable
        loss = float(-log_prob[np.arange(n), y].mean())
        delta = np.exp(log_prob)
        delta[np.arange(n), y] -= 1.0
        return loss, self._backward(p, hs, ds, delta / n)

    def _backward(self, p: Params, hs: list, ds: list, delta: np.ndarray) -> Params:
        layers = len(self.sizes) - 1
        grads = {}
        for i in range(layers, 0, -1):
            grads[f"W{i}"] = hs[i - 1].T @ delta
            grads[f"b{i}"] = delta.sum(axis=0)
            if i > 1:
                delta = (delta @ p[f"W{i}"].T) * ds[i - 2]
        return {k: grads[k] for k in p}


def blobs(rng: np.random.Generator, n: int, dim: int, classes: int, spread: float):
    """Gaussian classes; ``spread`` is the noise around the class centers (overlap)."""
    centers = rng.normal(0.0, 1.0, (classes, dim))
    y = rng.integers(0, classes, n)
    return centers[y] + rng.normal(0.0, spread, (n, dim)), y


# ------------------------------------------------------------------------------ scenarios


@dataclass(frozen=True)
class Scenario:
    """One training run: a net, data, SGD with an lr schedule, and what goes wrong when."""

    name: str
    problem: str | None  # a PROBLEMS key; None: healthy
    net: Net
    seed: int
    steps: int = 600
    batch: int = 16
    lr: float = 0.1
    onset: int = 0  # the step the problem starts
    spread: float = 2.0
    x_scale: float = 1.0
    x_offset: float = 0.0  # added to every input feature (raw, unnormalized data)
    n: int = 512
    schedule: str = "constant"  # constant | step | cosine
    lr_at: tuple[int, float] | None = None  # (step, factor): lr x factor from that step
    lr_ramp: tuple[int, float] | None = None  # (step, rate): lr x rate**(s - step) from then
    kill_at: int | None = None  # too large a step: most first-layer biases pushed below 0
    nan_at: int | None = None  # the loss of this step's batch is NaN
    frozen: tuple[str, ...] = ()  # tensors not updated (their gradients are still passed)
    clip: float | None = None  # global gradient-norm clipping
    meta: dict = field(default_factory=dict, compare=False)

    def lr_at_step(self, s: int) -> float:
        lr = self.lr
        if self.schedule == "step":
            lr *= 0.1 ** (s // (self.steps // 3))
        elif self.schedule == "cosine":
            lr *= 0.5 * (1.0 + math.cos(math.pi * s / self.steps))
        if self.lr_at and s >= self.lr_at[0]:
            lr *= self.lr_at[1]
        if self.lr_ramp and s >= self.lr_ramp[0]:
            lr *= self.lr_ramp[1] ** (s - self.lr_ramp[0])
        return lr


def train(sc: Scenario, step: Callable[..., object]) -> Iterator[tuple[int, float, float]]:
    """Run ``sc``, calling ``step(params, grads, loss=, lr=)`` like a user's loop; yields
    ``(step, loss, total gradient norm)``."""
    rng = np.random.default_rng(sc.seed)
    X, y = blobs(rng, sc.n, sc.net.sizes[0], sc.net.sizes[-1], sc.spread)
    X = X * sc.x_scale + sc.x_offset
    params = sc.net.params(rng)
    for s in range(sc.steps):
        if sc.kill_at is not None and s == sc.kill_at:
            hidden = params["b1"].size
            dead = rng.permutation(hidden)[: int(0.8 * hidden)]
            params["b1"][dead] -= 50.0 * (1.0 + np.abs(X).max())
        idx = rng.integers(0, sc.n, sc.batch)
        loss, grads = sc.net.loss_grads(params, X[idx], y[idx])
        if sc.nan_at is not None and s >= sc.nan_at:
            loss = math.nan
        if sc.clip is not None:
            total = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
            if total > sc.clip:
                grads = {k: g * (sc.clip / total) for k, g in grads.items()}
        lr = sc.lr_at_step(s)
        step(params, grads, loss=loss, lr=lr)
        with np.errstate(all="ignore"):
            for k, g in grads.items():
                if k not in sc.frozen:
                    params[k] -= lr * g
            total = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
        yield s, loss, total


def problem_scenarios(seeds: tuple[int, ...], held_out: bool) -> list[Scenario]:
    """Runs of each problem. ``held_out`` changes widths, depths and batch sizes too."""
    w = 48 if held_out else 32  # width
    d = 1 if held_out else 0  # extra depth
    out = []
    for seed in seeds:
        out += [
            Scenario(
                "deep sigmoid",
                "vanishing_gradients",
                Net((20, *[w] * (7 + d), 4), "sigmoid", init=0.25),
                seed,
                lr=0.5,
            ),
            Scenario(
                "deep tanh, tiny init",
                "vanishing_gradients",
                Net((20, *[w] * (6 + d), 4), "tanh", init=0.3),
                seed,
                lr=0.1,
            ),
            Scenario(
                "lr far too high, ReLU",
                "exploding_gradients",
                Net((20, w, 4), "relu"),
                seed,
                lr=3.0 + d,
            ),
            Scenario(
                "lr ramped up mid-run, MSE, tanh",
                "exploding_gradients",
                Net((20, w, w, 4), "tanh", loss="mse"),
                seed,
                lr=0.05,
                lr_ramp=(250, 1.02),
                onset=250,
                batch=64,
            ),
            Scenario(
                "ReLU units killed",
                "dead_units",
                Net((20, w * 2, 4), "relu"),
                seed,
                lr=0.1,
                kill_at=200,
                onset=200,
                batch=32 + 32 * d,
            ),
            Scenario(
                "ReLU units killed, deeper",
                "dead_units",
                Net((20, w, w, 4), "relu"),
                seed,
                lr=0.05,
                kill_at=300,
                onset=300,
            ),
            Scenario(
                "tanh, raw inputs (offset 100)",
                "saturated_units",
                Net((20, w, 4), "tanh"),
                seed,
                lr=0.05,
                x_offset=100.0 + 100 * d,
            ),
            Scenario(
                "sigmoid, raw inputs (offset 300)",
                "saturated_units",
                Net((20, w, w, 4), "sigmoid"),
                seed,
                lr=0.1,
                x_offset=300.0,
            ),
            Scenario(
                "lr far too high, tanh",
                "stuck_loss",
                Net((20, w, w, 4), "tanh"),
                seed,
                lr=5.0 + 5 * d,
            ),
            Scenario(
                "lr far too high, sigmoid", "stuck_loss", Net((20, w, 4), "sigmoid"), seed, lr=100.0
            ),
            Scenario(
                "lr 3000x too small",
                "slow_learning",
                Net((20, w, 4), "relu"),
                seed,
                lr=3e-5,
                batch=8 + 8 * d,
            ),
            Scenario(
                "lr 2000x too small, tanh",
                "slow_learning",
                Net((20, w, w, 4), "tanh"),
                seed,
                lr=5e-5,
            ),
            Scenario("NaN loss", "nonfinite", Net((20, w, 4), "relu"), seed, nan_at=350, onset=350),
        ]
    return out


def healthy_scenarios(seeds: tuple[int, ...], held_out: bool) -> list[Scenario]:
    w = 48 if held_out else 32
    out = []
    for seed in seeds:
        out += [
            Scenario("batch-1 SGD", None, Net((20, w, 4), "relu"), seed, batch=1, lr=0.02),
            Scenario("batch-1 SGD, tanh", None, Net((20, w, 4), "tanh"), seed, batch=1, lr=0.05),
            Scenario(
                "step lr schedule", None, Net((20, w, w, 4), "relu"), seed, lr=0.2, schedule="step"
            ),
            Scenario(
                "cosine lr schedule", None, Net((20, w, 4), "relu"), seed, lr=0.3, schedule="cosine"
            ),
            Scenario("deep tanh, Xavier", None, Net((20, *[w] * 5, 4), "tanh"), seed, lr=0.05),
            Scenario(
                "large model", None, Net((20, 8 * w, 8 * w, 4), "relu"), seed, lr=0.05, batch=64
            ),
            Scenario("small model (softmax regression)", None, Net((20, 4), "relu"), seed, lr=0.1),
            Scenario(
                "converges to ~0 loss",
                None,
                Net((20, w, 4), "relu"),
                seed,
                lr=0.5,
                spread=0.05,
                batch=64,
            ),
            Scenario(
                "frozen first layer",
                None,
                Net((20, w, 4), "relu"),
                seed,
                lr=0.1,
                frozen=("W1", "b1"),
            ),
            Scenario("gradient clipping", None, Net((20, w, w, 4), "relu"), seed, lr=0.2, clip=0.5),
            Scenario(
                "leaky ReLU, noisy classes",
                None,
                Net((20, w, 4), "leaky"),
                seed,
                lr=0.1,
                spread=2.0,
            ),
            Scenario("sigmoid MLP", None, Net((20, w, 4), "sigmoid"), seed, lr=0.5),
            Scenario(
                "batch-1, lr schedule, deep",
                None,
                Net((20, w, w, w, 4), "relu"),
                seed,
                batch=1,
                lr=0.02,
                schedule="cosine",
            ),
        ]
    return out


# ------------------------------------------------------------------------------ running


@dataclass
class Trace:
    """What the training loop itself saw: when the loss first went NaN/Inf, and when the total
    gradient norm first reached 10x its median over the first 100 steps (where an exploding
    run's onset is read, whatever its lr schedule)."""

    first_nonfinite: int | None = None
    exploded_at: int | None = None
    early: list[float] = field(default_factory=list)

    def see(self, s: int, loss: float, total: float) -> None:
        if self.first_nonfinite is None and not (math.isfinite(loss) and math.isfinite(total)):
            self.first_nonfinite = s
        if s < 100:
            self.early.append(total)
        elif self.exploded_at is None and not total < 10.0 * float(np.median(self.early)):
            self.exploded_at = s


def run_loop(sc: Scenario, step: Callable[..., object]) -> Trace:
    trace = Trace()
    for s, loss, total in train(sc, step):
        trace.see(s, loss, total)
    return trace


@dataclass
class Outcome:
    scenario: Scenario
    alerts: list[dict]  # Alert.to_dict() of every alert of the run
    seconds: float
    trace: Trace = field(default_factory=Trace)

    @property
    def onset(self) -> int:
        """The scenario's onset; for a ramped learning rate, when the gradients took off."""
        sc = self.scenario
        if sc.lr_ramp is not None and self.trace.exploded_at is not None:
            return max(sc.onset, self.trace.exploded_at)
        return sc.onset

    @property
    def named(self) -> list[dict]:
        sc = self.scenario
        return [a for a in self.alerts if a["kind"] == sc.problem and a["step"] >= sc.onset]

    @property
    def delay(self) -> int | None:
        named = self.named
        return max(0, min(a["step"] for a in named) - self.onset) if named else None

    @property
    def before_nonfinite(self) -> bool:
        """Named before the loss or a gradient first went NaN/Inf (or it never did)."""
        named, bad = self.named, self.trace.first_nonfinite
        return bool(named) and (bad is None or min(a["step"] for a in named) < bad)


class _MemoryRun:
    """The journaled run's interface, kept in memory (``--feed``: the hook's code, no MLflow)."""

    tracking_uri = "memory:"
    ship_cpu_per_metric = 0.0

    def __init__(self) -> None:
        self.alerts: list[dict] = []

    def log_metrics(self, *args, **kwargs) -> None: ...
    def log_loss_lr(self, *args, **kwargs) -> None: ...
    def log_params(self, *args, **kwargs) -> None: ...
    def set_tags(self, *args, **kwargs) -> None: ...
    def flush(self, *args, **kwargs) -> None: ...
    def log_artifact_file(self, *args, **kwargs) -> None: ...
    def close(self, *args, **kwargs) -> None: ...

    def append_artifact_line(self, path: str, record: dict) -> None:
        if path.endswith("alerts.jsonl"):
            self.alerts.append(record)


def run_feed(sc: Scenario) -> Outcome:
    """The hook's own code (statistics cadence, feed, engine) on an in-memory run."""
    import gradwatch.hook.watch as watch_module

    run = _MemoryRun()
    real = watch_module.open_tracking_run
    watch_module.open_tracking_run = lambda *a, **k: run
    t0 = time.perf_counter()
    try:
        with gradwatch.GradWatch(config=False, report=False) as watch:
            trace = run_loop(sc, watch.step)
    finally:
        watch_module.open_tracking_run = real
    return Outcome(sc, [a.to_dict() for a in watch.alerts], time.perf_counter() - t0, trace)


def run_real(sc: Scenario, tracking_uri: str) -> Outcome:
    """A real ``GradWatch()`` run; its alerts read back from ``gradwatch/alerts.jsonl``."""
    from gradwatch import schema
    from gradwatch.mlflow_access import artifact_records

    t0 = time.perf_counter()
    with gradwatch.GradWatch(
        config=False,
        report=False,
        tracking_uri=tracking_uri,
        experiment="bench-problems",
        run_name=sc.name,
    ) as watch:
        trace = run_loop(sc, watch.step)
    seconds = time.perf_counter() - t0
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    records = artifact_records(client, watch.run.run_id, schema.ARTIFACT_ALERTS) or []
    return Outcome(sc, records, seconds, trace)


# ------------------------------------------------------------------------------ tables


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| problem | runs | named | steps onset -> alert (median / max) | other alerts |",
        "|---|---|---|---|---|",
    ]
    for problem in PROBLEMS:
        runs = [o for o in outcomes if o.scenario.problem == problem]
        if not runs:
            continue
        delays = sorted(o.delay for o in runs if o.delay is not None)
        other = sorted({a["kind"] for o in runs for a in o.alerts if a["kind"] != problem})
        shown = f"{delays[len(delays) // 2]} / {delays[-1]}" if delays else "-"
        if problem == "exploding_gradients":
            early = sum(o.before_nonfinite for o in runs)
            shown += f" (before NaN/Inf in {early} of {len(runs)})"
        rows.append(
            f"| {PROBLEMS[problem]} | {len(runs)} | {len(delays)} "
            f"({100 * len(delays) / len(runs):.0f} %) | {shown} | "
            f"{', '.join(other) or '-'} |"
        )
    healthy = [o for o in outcomes if o.scenario.problem is None]
    alarmed = [o for o in healthy if o.alerts]
    rows.append(
        f"| healthy runs | {len(healthy)} | false alarms: {len(alarmed)} | | "
        f"{', '.join(sorted({a['kind'] for o in alarmed for a in o.alerts})) or '-'} |"
    )
    return "\n".join(rows)


def details(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        sc = o.scenario
        kinds = ", ".join(f"{a['kind']}@{a['step']}" for a in o.alerts) or "-"
        verdict = (
            "ok"
            if (o.delay is not None) == (sc.problem is not None)
            and (sc.problem is not None or not o.alerts)
            else "MISS"
        )
        lines.append(
            f"{verdict:4} {sc.problem or 'healthy':20} {sc.name:36} seed {sc.seed} "
            f"onset {o.onset:3}: {kinds}"
        )
    return "\n".join(lines)


def engine_cost(steps: int = 20_000) -> str:
    """CPU microseconds per observation of the default rules against the three rules that
    were the defaults before the named problems (check_failure, nonfinite, loss_divergence),
    in the same process, on the hook's stream: a loss every step, statistics every 10th step
    and the update ratio on the step after, fed in batches of 32 like the hook feeds them."""
    from gradwatch.alerts import AlertEngine, Rule, StepObservation, default_rules

    rng = np.random.default_rng(0)
    names = ("W1", "b1", "W2", "b2")
    stream = []
    for s in range(steps):
        loss = float(1.0 + rng.random())
        if s % 10 == 0:
            stream.append(
                StepObservation(
                    s,
                    loss=loss,
                    lr=0.1,
                    grad_norms=dict.fromkeys(names, 1.0),
                    param_norms=dict.fromkeys(names, 3.0),
                    nonfinite=dict.fromkeys(names, 0),
                    metrics={f"grad_zero_frac/{n}": 0.1 for n in names},
                )
            )
        elif s % 10 == 1:
            stream.append(
                StepObservation(s, loss=loss, lr=0.1, update_ratios=dict.fromkeys(names, 1e-3))
            )
        else:
            stream.append(StepObservation(s, loss=loss, lr=0.1))
    old = [Rule(k, k) for k in ("check_failure", "nonfinite", "loss_divergence")]
    out = []
    for label, rules in (("three rules (before)", old), ("default rules (now)", default_rules())):
        best = math.inf
        for _ in range(3):
            engine = AlertEngine(rules)
            t0 = time.process_time()
            for i in range(0, len(stream), 32):
                engine.observe_steps(stream[i : i + 32])
            best = min(best, (time.process_time() - t0) / len(stream))
        out.append(f"{label}: {1e6 * best:.2f} us CPU per observation")
    return "; ".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed per scenario")
    ap.add_argument(
        "--held-out",
        action="store_true",
        help="seeds and shapes the default rules were not tuned on",
    )
    ap.add_argument(
        "--feed",
        action="store_true",
        help="the hook's code on an in-memory run instead of MLflow (fast)",
    )
    ap.add_argument("--only", default="", help="run scenarios whose name contains this")
    ap.add_argument("--json", help="write every run's alerts here")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per run")
    ap.add_argument(
        "--engine-cost",
        action="store_true",
        help="only time the alert engine: default rules vs the three before",
    )
    args = ap.parse_args(argv)
    if args.engine_cost:
        print(engine_cost())
        return 0
    # The alerts are read from the runs; their log lines would bury the table.
    logging.getLogger("gradwatch").setLevel(logging.CRITICAL + 1)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    np.seterr(all="ignore")  # overflow is what a diverging run does
    seeds = (10, 11, 12) if args.held_out else (0, 1, 2)
    if args.quick:
        seeds = seeds[:1]
    scenarios = problem_scenarios(seeds, args.held_out) + healthy_scenarios(seeds, args.held_out)
    scenarios = [s for s in scenarios if args.only in s.name]
    t0 = time.perf_counter()
    outcomes = []
    with contextlib.ExitStack() as stack:
        if args.feed:
            runner = run_feed
        else:
            from tests.mlflow_server import MlflowServer

            root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            stack.enter_context(contextlib.chdir(root))
            server = MlflowServer(root / "server").start()
            stack.callback(server.stop)
            runner = lambda sc: run_real(sc, server.uri)  # noqa: E731
        for sc in scenarios:
            outcomes.append(runner(sc))
            if args.verbose:
                print(details(outcomes[-1:]), flush=True)
    mode = "in-memory run (--feed)" if args.feed else "GradWatch() defaults, alerts.jsonl"
    print(
        f"\n{len(outcomes)} runs, {mode}, seeds {seeds}"
        f"{', held-out shapes' if args.held_out else ''}, {time.perf_counter() - t0:.0f} s\n"
    )
    print(table(outcomes))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {
                        "scenario": o.scenario.name,
                        "problem": o.scenario.problem,
                        "seed": o.scenario.seed,
                        "onset": o.scenario.onset,
                        "alerts": o.alerts,
                    }
                    for o in outcomes
                ],
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
