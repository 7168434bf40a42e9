"""Sensitivity of the default check: the smallest backprop error it flags, per tensor.

    python benchmarks/bench_sensitivity.py                      # 200 SGD steps, 5 seeds
    python benchmarks/bench_sensitivity.py --steps 50 --seeds 3 # quicker
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_sensitivity.py  # another version

The benchmark MLP (784-256-10, ReLU, batch 128) is trained by plain SGD for --steps steps;
then one tensor's backprop gradient is scaled by (1 + δ) and the default ``auto`` check is
run (seeded like the network). A cell says in how many seeds the check failed. The row
"correct" (δ = 0) counts false alarms over all seeds, and the evaluation count of the
passing checks is printed so a change in cost shows up.
"""

from __future__ import annotations

import argparse
import resource
import statistics

import numpy as np

import gradwatch
from gradwatch.demo import MLP, make_blobs

DELTAS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 1e-2)
TENSORS = ("W1", "b1", "W2", "b2")


def trained_mlp(seed: int, steps: int, lr: float = 0.1):
    """The benchmark MLP after ``steps`` SGD steps; returns ``(mlp, params, batch_x, batch_y)``."""
    X, y = make_blobs(1024, 784, 10, seed=seed)
    mlp = MLP([784, 256, 10], seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(len(X), size=128, replace=False)
        _, grads = mlp.loss_and_grads(mlp.params, X[idx], y[idx])
        for name, value in mlp.params.items():
            value -= lr * grads["d" + name]
    idx = rng.choice(len(X), size=128, replace=False)
    return mlp, mlp.params, X[idx], y[idx]


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    started = cpu_seconds()
    flagged = {(t, d): 0 for t in TENSORS for d in DELTAS}
    false_alarms, passing_evals, resolved = 0, [], []
    for seed in range(args.seeds):
        mlp, params, xb, yb = trained_mlp(seed, args.steps)
        _, grads = mlp.loss_and_grads(params, xb, yb)
        loss_fn = lambda p: mlp.loss(p, xb, yb)  # noqa: E731
        report = gradwatch.check_gradients(loss_fn, params, grads, seed=seed)
        false_alarms += not report.passed
        if report.passed:
            passing_evals.append(report.num_evals)
        resolved.append(report.max_rel_error)
        for tensor in TENSORS:
            for delta in DELTAS:
                wrong = dict(grads)
                wrong["d" + tensor] = grads["d" + tensor] * (1.0 + delta)
                r = gradwatch.check_gradients(loss_fn, params, wrong, seed=seed)
                flagged[(tensor, delta)] += not r.passed
    print(
        f"\nFlagged by the default check, out of {args.seeds} seeds (MLP 784-256-10, batch 128, "
        f"after {args.steps} SGD steps; one tensor's gradient x (1 + δ))\n"
    )
    print("| tensor | " + " | ".join(f"δ={d:.0e}" for d in DELTAS) + " |")
    print("|---|" + "---|" * len(DELTAS))
    for tensor in TENSORS:
        cells = " | ".join(f"{flagged[(tensor, d)]}/{args.seeds}" for d in DELTAS)
        print(f"| {tensor} | {cells} |")
    growth_table(args.seeds, args.steps)
    print(
        f"\ncorrect network: {false_alarms}/{args.seeds} false alarms; evaluations per passing "
        f"check (median) {statistics.median(passing_evals) if passing_evals else 'n/a'}; "
        f"max rel error of the correct checks {max(resolved):.1e}; "
        f"{cpu_seconds() - started:.0f} CPU s"
    )


def growth_table(seeds: int, steps: int) -> None:
    """A b1 error doubling from 1e-6 between checks: the per-tensor error a drift detector
    reads (``to_dict()["per_param"]["b1"]["max_rel_error"]``) and when the check fails."""
    print("\nA growing error in b1 (x2 per check from 1e-6): per-tensor b1 max_rel_error / δ\n")
    deltas = [1e-6 * 2**k for k in range(7)]
    print("| seed | clean, all tensors | " + " | ".join(f"δ={d:.1e}" for d in deltas) + " |")
    print("|---|---|" + "---|" * len(deltas))
    for seed in range(seeds):
        mlp, params, xb, yb = trained_mlp(seed, steps)
        _, grads = mlp.loss_and_grads(params, xb, yb)
        loss_fn = lambda p: mlp.loss(p, xb, yb)  # noqa: E731
        clean = gradwatch.check_gradients(loss_fn, params, grads, seed=seed).to_dict()
        worst = max(t["max_rel_error"] for t in clean["per_param"].values())
        cells = []
        for k, delta in enumerate(deltas):
            wrong = dict(grads, db1=grads["db1"] * (1.0 + delta))
            r = gradwatch.check_gradients(loss_fn, params, wrong, seed=100 * seed + k).to_dict()
            ratio = r["per_param"]["b1"]["max_rel_error"] / delta
            cells.append(f"{ratio:.2f}" + (" FAIL" if not r["passed"] else ""))
        print(f"| {seed} | {worst:.1e} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
