"""Default alert rules on real numpy training: false alerts on healthy noisy runs, delay on bad ones.

    python benchmarks/bench_alerts.py                  # markdown tables on stdout
    python benchmarks/bench_alerts.py --steps 3000 --json out.json

Healthy runs: six small numpy models written here (binary logistic regression, softmax
regression, a ReLU MLP, the online book's sigmoid MLP with the quadratic cost and eta=3.0, a
sigmoid MLP with cross-entropy, linear regression with label noise), trained with plain
minibatch SGD on overlapping synthetic classes (so the loss stays noisy), at several batch sizes
and seeds. Each loss goes through the public alert API the way the hook feeds it:
``AlertEngine(default_rules()).observe_steps`` in batches of 32 StepObservations (loss and lr
every step; grad/param norms and NaN/Inf counts every 10th step, like the hook's statistics).
Any alert on a healthy run is a false alert.

Divergent runs: the learning rate too large from the start (x0^2 + x1^2 at lr=10, linear
regression, a ReLU MLP), the learning rate raised 30x mid-run, a NaN loss, and a steady
geometric rise of x1.02, x1.05, x1.1 per step applied to a healthy run's real noisy losses from
its plateau on. Delay = first alert step - step the trouble starts. Also reported: the CPU
microseconds the default rules take per observation (the engine alone).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from gradwatch.alerts import AlertEngine, StepObservation, default_rules
from gradwatch.demo import MLP, make_blobs

BATCH_FEED = 32  # the hook feeds the engine in batches of this many steps
STATS_EVERY = 10

Params = dict[str, np.ndarray]
LossGrads = Callable[[Params, np.ndarray, np.ndarray], tuple[float, Params]]


# ------------------------------------------------------------------------------ models


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warning for large |z|


def logistic_regression(dim: int, classes: int, rng) -> tuple[Params, LossGrads]:
    """Binary: class 0 against the rest."""
    params = {"w": rng.normal(0, 0.01, dim), "b": np.zeros(1)}

    def loss_grads(p, X, y):
        t = (y == 0).astype(float)
        z = X @ p["w"] + p["b"][0]
        loss = float(np.mean(np.logaddexp(0.0, z) - t * z))
        d = (sigmoid(z) - t) / len(t)
        return loss, {"w": X.T @ d, "b": np.array([d.sum()])}

    return params, loss_grads


def relu_mlp(sizes: list[int]) -> Callable:
    def build(dim: int, classes: int, rng) -> tuple[Params, LossGrads]:
        mlp = MLP([dim, *sizes, classes], seed=int(rng.integers(1 << 30)))

        def loss_grads(p, X, y):
            loss, grads = mlp.loss_and_grads(p, X, y)
            return loss, {k[1:]: v for k, v in grads.items()}

        return mlp.params, loss_grads

    return build


def sigmoid_mlp(hidden: int, cost: str) -> Callable:
    """The online book's network: sigmoid layers, quadratic or cross-entropy cost."""

    def build(dim: int, classes: int, rng) -> tuple[Params, LossGrads]:
        params = {
            "W1": rng.normal(0, 1.0, (dim, hidden)),
            "b1": rng.normal(0, 1.0, hidden),
            "W2": rng.normal(0, 1.0, (hidden, classes)),
            "b2": rng.normal(0, 1.0, classes),
        }

        def loss_grads(p, X, y):
            onehot = np.eye(classes)[y]
            h = sigmoid(X @ p["W1"] + p["b1"])
            a = sigmoid(h @ p["W2"] + p["b2"])
            if cost == "quadratic":
                loss = float(0.5 * np.sum((a - onehot) ** 2) / len(y))
                d2 = (a - onehot) * a * (1 - a) / len(y)
            else:
                with np.errstate(divide="ignore"):
                    ce = -(onehot * np.log(a) + (1 - onehot) * np.log1p(-a))
                loss = float(np.sum(np.nan_to_num(ce, posinf=50.0)) / len(y))
                d2 = (a - onehot) / len(y)
            d1 = (d2 @ p["W2"].T) * h * (1 - h)
            grads = {"W2": h.T @ d2, "b2": d2.sum(0), "W1": X.T @ d1, "b1": d1.sum(0)}
            return loss, grads

        return params, loss_grads

    return build


def linear_regression(dim: int, classes: int, rng) -> tuple[Params, LossGrads]:
    """Regress a noisy linear target (the class labels are ignored)."""
    true_w = rng.normal(0, 1.0, dim)
    params = {"w": np.zeros(dim), "b": np.zeros(1)}

    def loss_grads(p, X, y):
        target = X @ true_w * math.sqrt(dim) + 0.5 * np.sin(1e3 * X[:, 0])  # fixed label noise
        r = X @ p["w"] + p["b"][0] - target
        return float(0.5 * np.mean(r**2)), {"w": X.T @ r / len(r), "b": np.array([r.mean()])}

    return params, loss_grads


MODELS: dict[str, Callable] = {
    "logistic regression": logistic_regression,
    "softmax regression": relu_mlp([]),
    "ReLU MLP 32": relu_mlp([32]),
    "sigmoid MLP 30, quadratic cost": sigmoid_mlp(30, "quadratic"),
    "sigmoid MLP 30, cross-entropy": sigmoid_mlp(30, "cross-entropy"),
    "linear regression": linear_regression,
}
#: Learning rates of the healthy runs (the book's eta=3.0 for its quadratic-cost network).
HEALTHY_LR = {
    "logistic regression": 0.05,
    "softmax regression": 0.05,
    "ReLU MLP 32": 0.1,
    "sigmoid MLP 30, quadratic cost": 3.0,
    "sigmoid MLP 30, cross-entropy": 0.5,
    "linear regression": 0.05,
}


@dataclass(frozen=True)
class Run:
    model: str
    batch: int
    seed: int
    lr: float
    steps: int
    lr_from: tuple[int, float] | None = None  # (step, new lr): a schedule bug
    nan_at: int | None = None


def train(run: Run) -> Iterator[tuple[float, float, Params, Params]]:
    """Yield ``(loss, lr, params, grads)`` of each SGD step (params before the update)."""
    rng = np.random.default_rng(run.seed)
    X, y = make_blobs(n=1000, dim=20, classes=3, seed=run.seed, spread=2.5)
    X = X * math.sqrt(20)  # unit-scale features
    params, loss_grads = MODELS[run.model](X.shape[1], 3, rng)
    order, pos, lr = rng.permutation(len(y)), 0, run.lr
    with np.errstate(all="ignore"):
        for step in range(run.steps):
            if pos + run.batch > len(y):
                order, pos = rng.permutation(len(y)), 0
            idx = order[pos : pos + run.batch]
            pos += run.batch
            if run.lr_from and step == run.lr_from[0]:
                lr = run.lr_from[1]
            loss, grads = loss_grads(params, X[idx], y[idx])
            if step == run.nan_at:
                loss = math.nan
            yield loss, lr, params, grads
            for k in params:
                params[k] -= lr * grads[k]


def quadratic(lr: float, steps: int) -> Iterator[tuple[float, float, Params, Params]]:
    """x0^2 + x1^2 from (-3, 4), the course notes' example."""
    x = np.array([-3.0, 4.0])
    with np.errstate(all="ignore"):
        for _ in range(steps):
            yield float(np.sum(x**2)), lr, {"x": x}, {"x": 2 * x}
            x = x - lr * 2 * x


# ------------------------------------------------------------------------------ alerting


def observations(
    steps: Iterator[tuple[float, float, Params, Params]],
    scale: Callable[[int], float] | None = None,
) -> list[StepObservation]:
    """The StepObservations the hook would build (``scale(step)`` multiplies the loss)."""
    out = []
    with np.errstate(all="ignore"):
        for s, (loss, lr, params, grads) in enumerate(steps):
            if scale is not None:
                loss *= scale(s)
            norms = nonfinite = pnorms = None
            if s % STATS_EVERY == 0:
                norms = {k: float(np.linalg.norm(g)) for k, g in grads.items()}
                pnorms = {k: float(np.linalg.norm(v)) for k, v in params.items()}
                nonfinite = {
                    k: int(
                        np.size(v)
                        - np.isfinite(v).sum()
                        + np.size(grads[k])
                        - np.isfinite(grads[k]).sum()
                    )
                    for k, v in params.items()
                }
            out.append(StepObservation(s, float(loss), lr, norms, pnorms, None, nonfinite, 0.0))
    return out


def alerts_of(obs: list[StepObservation]) -> list:
    engine = AlertEngine(default_rules())
    alerts = []
    for i in range(0, len(obs), BATCH_FEED):
        alerts += engine.observe_steps(obs[i : i + BATCH_FEED])
    return alerts


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------------------ the benchmark


def healthy_runs(steps: int) -> list[Run]:
    runs = []
    for model in MODELS:
        for batch in (10, 32):
            for seed in (1, 2, 3):
                runs.append(Run(model, batch, seed, HEALTHY_LR[model], steps))
    for seed in (1, 2, 3):  # one example per step: the noisiest loss there is
        runs.append(Run("logistic regression", 1, seed, 0.01, steps))
    for seed in (1, 2):
        runs.append(Run("ReLU MLP 32", 1, seed, 0.01, steps))
        runs.append(Run("sigmoid MLP 30, quadratic cost", 1, seed, 0.3, steps))
    runs.append(Run("sigmoid MLP 30, quadratic cost", 100, 1, 3.0, steps))
    runs.append(Run("ReLU MLP 32", 100, 1, 0.1, steps))
    return runs


def bench_healthy(steps: int) -> tuple[list[dict], float]:
    rows, engine_cpu, fed = [], 0.0, 0
    for run in healthy_runs(steps):
        obs = observations(train(run))
        t0 = cpu_seconds()
        alerts = alerts_of(obs)
        engine_cpu += cpu_seconds() - t0
        fed += len(obs)
        losses = np.array([o.loss for o in obs])
        head, tail = np.median(losses[:50]), np.median(losses[-200:])
        best = float(losses.min())
        rows.append(
            {
                "model": run.model,
                "batch": run.batch,
                "seed": run.seed,
                "lr": run.lr,
                "steps": len(obs),
                "loss_start": float(head),
                "loss_end": float(tail),
                "max_over_best": float(losses[len(losses) // 10 :].max() / best),
                "alerts": [(a.rule, a.step) for a in alerts],
            }
        )
    return rows, 1e6 * engine_cpu / fed


def divergent_cases(steps: int) -> list[tuple[str, int, Callable[[], list[StepObservation]]]]:
    """``(name, onset step, observations)``: the trouble starts at ``onset``."""
    plateau = 1500
    book = Run("sigmoid MLP 30, quadratic cost", 10, 3, 3.0, steps)
    cases = [
        ("x0^2 + x1^2, lr=10 (course notes)", 0, lambda: observations(quadratic(10.0, 200))),
        (
            "linear regression, batch 10, lr=1.5 (too large)",
            0,
            lambda: observations(train(Run("linear regression", 10, 3, 1.5, 400))),
        ),
        (
            "ReLU MLP 32, batch 10, lr=10",
            0,
            lambda: observations(train(Run("ReLU MLP 32", 10, 3, 10.0, 400))),
        ),
        (
            "linear regression, batch 10, lr 0.05 -> 1.5 at step 1000",
            1000,
            lambda: observations(train(Run("linear regression", 10, 4, 0.05, 1400, (1000, 1.5)))),
        ),
        (
            "softmax regression, batch 10, lr 0.05 -> 30 at step 1000",
            1000,
            lambda: observations(train(Run("softmax regression", 10, 4, 0.05, 1400, (1000, 30.0)))),
        ),
        (
            "logistic regression, batch 10, lr=10 (hovers ~10x above its start, no blow-up)",
            0,
            lambda: observations(train(Run("logistic regression", 10, 3, 10.0, 1000))),
        ),
        (
            "sigmoid MLP (book), batch 10, NaN loss at step 700",
            700,
            lambda: observations(train(Run(book.model, 10, 3, 3.0, 1000, nan_at=700))),
        ),
    ]
    for rate in (1.02, 1.05, 1.1):
        cases.append(
            (
                f"sigmoid MLP (book), batch 10: loss x{rate:g}/step from its plateau (step {plateau})",
                plateau,
                lambda rate=rate: observations(train(book), lambda s: rate ** max(0, s - plateau)),
            )
        )
    for model in (
        "logistic regression",
        "softmax regression",
        "ReLU MLP 32",
        "sigmoid MLP 30, cross-entropy",
    ):
        for rate in (1.02, 1.05):
            cases.append(
                (
                    f"{model}, batch 10: loss x{rate:g}/step from step {plateau}",
                    plateau,
                    lambda rate=rate, model=model: observations(
                        train(Run(model, 10, 8, HEALTHY_LR[model], plateau + 500)),
                        lambda s: rate ** max(0, s - plateau),
                    ),
                )
            )
    return cases


def bench_divergent(steps: int) -> list[dict]:
    rows = []
    for name, onset, make in divergent_cases(steps):
        alerts = alerts_of(make())
        early = [(a.rule, a.step) for a in alerts if a.step < onset]
        first = next((a for a in alerts if a.step >= onset), None)
        rows.append(
            {
                "case": name,
                "onset": onset,
                "false_before_onset": early,
                "rule": first.rule if first else None,
                "test": (first.details.get("test") if first else None),
                "delay": first.step - onset if first else None,
            }
        )
    return rows


def drift_lead(sizes: list[int], seeds: int, check_every: int = 50) -> list[dict]:
    """A backprop error planted in b1 of a ReLU MLP, 1e-6 at step 0 and doubling every 100
    steps, checked every ``check_every`` steps by the real engine (its default samples): the
    first step each default check rule flags it, against the step it crosses 2e-5."""
    from gradwatch import check_gradients
    from gradwatch.alerts import CheckObservation, Rule

    crosses = 100 * math.log2(20)
    rows = []
    for seed in range(seeds):
        X, y = make_blobs(n=1024, dim=sizes[0], classes=sizes[-1], seed=seed)
        mlp = MLP(sizes, seed=seed)
        rng = np.random.default_rng(seed)
        engines = {
            kind: AlertEngine([Rule(kind, kind)]) for kind in ("rel_error_drift", "check_failure")
        }
        first: dict[str, int] = {}
        for step in range(600):
            idx = rng.integers(0, len(y), size=128)
            loss, grads = mlp.loss_and_grads(mlp.params, X[idx], y[idx])
            grads["db1"] = grads["db1"] * (1.0 + 1e-6 * 2.0 ** (step / 100))
            if step % check_every == 0 and step > 0:
                report = check_gradients(
                    lambda p, i=idx: mlp.loss(p, X[i], y[i]), mlp.params, grads, seed=step
                ).to_dict()
                for kind, engine in engines.items():
                    if engine.observe_check(CheckObservation(step, report)):
                        first.setdefault(kind, step)
            for k in mlp.params:
                mlp.params[k] -= 0.1 * grads["d" + k]
        rows.append(
            {"model": "-".join(map(str, sizes)), "seed": seed, "crosses_2e-5": crosses, **first}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="steps of each healthy run")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    t0 = cpu_seconds()
    healthy, us_per_obs = bench_healthy(args.steps)
    divergent = bench_divergent(args.steps)
    print(
        "| model | batch | seed | lr | steps | loss start → end (median) | max batch / best batch "
        "| alerts |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in healthy:
        shown = ", ".join(f"{rule}@{s}" for rule, s in r["alerts"]) or "none"
        print(
            f"| {r['model']} | {r['batch']} | {r['seed']} | {r['lr']:g} | {r['steps']} | "
            f"{r['loss_start']:.3g} → {r['loss_end']:.3g} | {r['max_over_best']:.0f}× | "
            f"{shown} |"
        )
    false_runs = sum(bool(r["alerts"]) for r in healthy)
    print(
        f"\nhealthy runs with any alert: {false_runs} of {len(healthy)}; default rules "
        f"{us_per_obs:.1f} µs CPU per observation\n"
    )
    print("| divergence | starts at | first alert | delay (steps) |")
    print("|---|---|---|---|")
    for r in divergent:
        what = f"{r['rule']} ({r['test']})" if r["test"] else (r["rule"] or "none")
        delay = "missed" if r["delay"] is None else str(r["delay"])
        early = f" (false before: {r['false_before_onset']})" if r["false_before_onset"] else ""
        print(f"| {r['case']} | {r['onset']} | {what}{early} | {delay} |")
    drift = drift_lead([20, 32, 3], 5) + drift_lead([784, 256, 10], 4)
    print(
        "\n| model | seed | rel_error_drift fires at | planted error then | check_failure fires at "
        "| planted error then | lead on 2e-5 (steps) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in drift:
        cells = []
        for kind in ("rel_error_drift", "check_failure"):
            s = r.get(kind)
            cells += ["never", "-"] if s is None else [str(s), f"{1e-6 * 2 ** (s / 100):.2g}"]
        flagged = min((r[k] for k in ("rel_error_drift", "check_failure") if k in r), default=None)
        lead = "missed" if flagged is None else f"{r['crosses_2e-5'] - flagged:.0f}"
        print(f"| {r['model']} | {r['seed']} | {' | '.join(cells)} | {lead} |")
    print(f"\nCPU {cpu_seconds() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "healthy": healthy,
                    "divergent": divergent,
                    "drift": drift,
                    "us_per_observation": us_per_obs,
                },
                fh,
                indent=1,
            )


if __name__ == "__main__":
    main()
