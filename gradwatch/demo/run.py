"""``gradwatch demo``: two small networks, three learning rates, with and without a bug.

    specs = plan(steps=300)                 # 12 runs: {classic, mlp} x {0.2, 10, 1e-10} x {ok, bug}
    result = run_demo(specs, tracking_uri="sqlite:///mlflow.db", experiment="gradwatch-demo")
    print(ui_command("sqlite:///mlflow.db"))

The three learning rates are the three regimes of gradient descent from the course notes:
0.2 learns, 10 diverges (the loss blows up or goes NaN within a few steps) and 1e-10 barely
moves. At 0.2 the buggy runs learn too, their loss curves look fine: only the gradient checks
give the bug away, which is the point of keeping them on. Each model is trained once with correct backprop and once with a planted bug:

- ``classic``: the 3-layer LINEAR-RELU-LINEAR-RELU-LINEAR-SIGMOID network of the exercise on a
  seeded 2-class set of 4 features, the bug being the exercise's own (dW2 twice too large,
  db1 with 4/m): :meth:`ClassicBugs.planted`.
- ``mlp``: a 20-32-3 ReLU MLP (softmax cross-entropy) on seeded blobs, the bug a wrapper that
  doubles dW2.

Features are left unnormalized (about 10x unit scale, like raw measurements): that is what
makes lr=10 diverge rather than merely oscillate. Full-batch gradient descent, so each
check's loss is deterministic. Every run goes through :class:`gradwatch.GradWatch` and is
tagged ``gradwatch.sweep_id`` so ``gradwatch compare --sweep`` finds exactly this demo's runs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from gradwatch.demo.classic import CLASSIC_SHAPES, ClassicBugs, classic_backward, classic_forward
from gradwatch.demo.data import make_blobs
from gradwatch.demo.mlp import MLP
from gradwatch.schema import TAG_DEMO_BUG, TAG_DEMO_MODEL, TAG_PARENT_RUN, TAG_SWEEP_ID

__all__ = [
    "DEMO_LRS",
    "DemoOutcome",
    "DemoResult",
    "DemoRun",
    "plan",
    "run_demo",
    "train",
    "ui_command",
]

#: learns, diverges, barely moves.
DEMO_LRS: tuple[float, ...] = (0.2, 10.0, 1e-10)
MODELS: tuple[str, ...] = ("classic", "mlp")
#: Unnormalized features: raw-scale inputs are what make lr=10 blow up.
FEATURE_SCALE = 10.0
CHECKS_PER_RUN = 6  # spread over the run: at the first step, then every steps // 6
BUGS = {"classic": "dW2x2,db1x4", "mlp": "dW2x2"}


@dataclass(frozen=True)
class DemoRun:
    """One training run of the demo."""

    model: str  # "classic" | "mlp"
    lr: float
    bug: bool
    steps: int
    seed: int = 0

    @property
    def run_name(self) -> str:
        return f"{self.model} lr={self.lr:g}" + (" BUG" if self.bug else "")

    @property
    def params(self) -> dict[str, object]:
        return {
            "lr": self.lr,
            "model": self.model,
            "steps": self.steps,
            "bug": BUGS[self.model] if self.bug else "none",
        }


@dataclass(frozen=True)
class DemoOutcome:
    """How one demo run ended: its final loss (None if non-finite), MLflow ids and verdict."""

    final_loss: float | None
    run_id: str | None = None
    experiment_id: str | None = None
    verdict: str | None = None  # as `gradwatch compare` words it


@dataclass(frozen=True)
class DemoResult:
    """The demo's sweep id and the runs it trained (name -> final loss, None if non-finite)."""

    sweep_id: str
    experiment: str
    tracking_uri: str
    final_losses: dict[str, float | None] = field(default_factory=dict)
    outcomes: dict[str, DemoOutcome] = field(default_factory=dict)
    parent_run_id: str | None = None  # the demo's parent run; every run is a child of it

    @property
    def experiment_id(self) -> str | None:
        """The experiment's id in MLflow (None if it cannot be looked up)."""
        from gradwatch.errors import GradwatchError
        from gradwatch.mlflow_access import experiment_id, get_client, mlflow_errors

        try:
            client = get_client(self.tracking_uri, must_exist=False)
            with mlflow_errors(client.tracking_uri):
                return experiment_id(client, self.experiment)
        except GradwatchError:  # only used to print a nicer URL
            return None


def plan(
    steps: int = 300,
    lrs: Sequence[float] = DEMO_LRS,
    models: Sequence[str] = MODELS,
    bugs: Sequence[bool] = (False, True),
) -> list[DemoRun]:
    """Every run of the demo: each model x lr x (correct, bug)."""
    return [DemoRun(m, lr, bug, steps) for m in models for bug in bugs for lr in lrs]


# ------------------------------------------------------------------------------ models


def _classic_problem(seed: int):
    X, y = make_blobs(n=128, dim=4, classes=2, seed=seed + 1)
    x = X.T * FEATURE_SCALE  # the exercise's layout: one example per column
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in CLASSIC_SHAPES.items():
        # He initialization for the weights, zero biases (random in [-e, e] in the notes).
        scale = np.sqrt(2.0 / shape[1]) if name.startswith("W") else 0.0
        params[name] = rng.normal(0.0, 1.0, size=shape) * scale
    bugs = ClassicBugs.planted()

    def loss_and_grads(p, bug: bool):
        cost, cache = classic_forward(x, y, p)
        return cost, classic_backward(x, y, cache, bugs=bugs if bug else ClassicBugs())

    def loss_fn(p):
        return classic_forward(x, y, p)[0]

    return params, loss_and_grads, loss_fn


def _mlp_problem(seed: int):
    X, y = make_blobs(n=256, dim=20, classes=3, seed=seed)
    X = X * FEATURE_SCALE
    mlp = MLP([20, 32, 3], seed=seed)

    def loss_and_grads(p, bug: bool):
        loss, grads = mlp.loss_and_grads(p, X, y)
        if bug:
            grads["dW2"] = grads["dW2"] * 2.0  # the planted bug: a factor 2 in dW2
        return loss, grads

    def loss_fn(p):
        return mlp.loss(p, X, y)

    return {k: v.copy() for k, v in mlp.params.items()}, loss_and_grads, loss_fn


def train(
    spec: DemoRun,
    tracking_uri: str,
    experiment: str,
    sweep_id: str,
    on_step: Callable[[DemoRun, int], None] | None = None,
    parent_run_id: str | None = None,
) -> DemoOutcome:
    """Train one run through GradWatch; returns its final loss (None if non-finite), run id
    and verdict.

    A run whose loss goes non-finite is stopped right after that step has been recorded:
    nothing more can be learnt from it. ``on_step(spec, steps_done)`` follows progress.
    ``parent_run_id``: the run is a child of that one (tag ``mlflow.parentRunId``). The
    hook's own closing lines (verdict, links) are left to the caller, which prints them with
    its progress.
    """
    import gradwatch

    make = _classic_problem if spec.model == "classic" else _mlp_problem
    params, loss_and_grads, loss_fn = make(spec.seed)
    every = max(1, spec.steps // CHECKS_PER_RUN)
    loss = None
    tags = {TAG_SWEEP_ID: sweep_id, TAG_DEMO_MODEL: spec.model, TAG_DEMO_BUG: spec.params["bug"]}
    if parent_run_id:
        tags[TAG_PARENT_RUN] = parent_run_id
    with (
        contextlib.redirect_stderr(io.StringIO()),
        gradwatch.GradWatch(
            every=every,
            experiment=experiment,
            run_name=spec.run_name,
            params=spec.params,
            tags=tags,
            tracking_uri=tracking_uri,
            config=False,
            seed=spec.seed,
        ) as watch,
        np.errstate(all="ignore"),  # overflow is the point of lr=10
    ):
        for done in range(1, spec.steps + 1):
            loss, grads = loss_and_grads(params, spec.bug)
            watch.step(params, grads, loss=loss, lr=spec.lr, loss_fn=loss_fn)
            if on_step is not None:
                on_step(spec, done)
            if not math.isfinite(loss):
                break
            for k in params:
                params[k] -= spec.lr * grads["d" + k]
    final = loss if loss is not None and math.isfinite(loss) else None
    result = watch.close_result
    run_id = result.run_id if result is not None else None
    return DemoOutcome(final, run_id, watch.run.experiment_id if run_id else None, watch.verdict)


def run_demo(
    specs: Sequence[DemoRun],
    tracking_uri: str,
    experiment: str = "gradwatch-demo",
    sweep_id: str | None = None,
    on_done: Callable[[int], None] | None = None,
    on_step: Callable[[DemoRun, int], None] | None = None,
    on_run: Callable[[DemoRun, DemoOutcome], None] | None = None,
) -> DemoResult:
    """Train every run in ``specs`` (one after the other), as children of one parent run.

    Progress: ``on_step(spec, steps_done)`` during a run, ``on_run(spec, outcome)`` and
    ``on_done(1)`` after each. The parent run (``gradwatch demo <sweep id>``) ends with a
    description listing every run's verdict, as ``gradwatch sweep``'s does.

    The hook's own warnings (failed checks, divergence alerts) are silenced while the demo
    trains: they are the expected outcome, and the comparison table shows them all.
    """
    from gradwatch.runs.sweep import end_parent_run, new_sweep_id, start_parent_run

    sweep_id = sweep_id or "demo-" + new_sweep_id()
    grid = {
        "lr": ", ".join(f"{lr:g}" for lr in dict.fromkeys(s.lr for s in specs)),
        "model": ", ".join(dict.fromkeys(s.model for s in specs)),
    }
    parent = start_parent_run(
        tracking_uri, experiment, sweep_id, f"gradwatch demo {sweep_id}", grid
    )
    hook_logger = logging.getLogger("gradwatch")
    saved = hook_logger.level
    hook_logger.setLevel(logging.CRITICAL + 1)
    outcomes: dict[str, DemoOutcome] = {}
    interrupted = True
    try:
        for spec in specs:
            outcome = train(spec, tracking_uri, experiment, sweep_id, on_step, parent)
            outcomes[spec.run_name] = outcome
            if on_run is not None:
                on_run(spec, outcome)
            if on_done is not None:
                on_done(1)
        interrupted = False
    finally:
        hook_logger.setLevel(saved)
        end_parent_run(
            tracking_uri,
            parent,
            [(name, 0) for name in outcomes],
            {n: o.verdict for n, o in outcomes.items() if o.verdict},
            interrupted=interrupted,
        )
    losses = {name: o.final_loss for name, o in outcomes.items()}
    return DemoResult(sweep_id, experiment, tracking_uri, losses, outcomes, parent)


def ui_command(tracking_uri: str, experiment_id: str | None = None) -> str:
    """How to look at the runs: ``mlflow ui`` on a local store, the URL of a server.

    >>> ui_command("sqlite:////runs/mlflow.db")
    'mlflow ui --backend-store-uri sqlite:////runs/mlflow.db'
    >>> ui_command("http://127.0.0.1:5000/", experiment_id="3")
    'open http://127.0.0.1:5000/#/experiments/3'
    """
    if tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/")
        return f"open {url}/#/experiments/{experiment_id}" if experiment_id else f"open {url}"
    if tracking_uri.startswith("sqlite:///"):
        path = os.path.abspath(tracking_uri[len("sqlite:///") :])
        return f"mlflow ui --backend-store-uri sqlite:///{path}"
    if tracking_uri.startswith("file:") or "://" not in tracking_uri:
        path = os.path.abspath(tracking_uri.removeprefix("file://").removeprefix("file:"))
        return f"mlflow ui --backend-store-uri {path}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"
