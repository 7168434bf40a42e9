"""Three learning rates as three MLflow runs in one experiment, then compared.

    python examples/lr_sweep.py                        # lr 0.5, 10, 1e-10; 100 steps each
    python examples/lr_sweep.py --steps 40 --plot lr_sweep.png

The three regimes of gradient descent from the course notes, on a 20-32-3 ReLU MLP trained
full-batch on seeded blobs with raw-scale (unnormalized) features:

- lr=0.5 learns (the loss falls by four decades);
- lr=10 diverges (the loss passes 1e20 within a few steps: the ``loss_divergence`` alert fires);
- lr=1e-10 barely moves (the loss changes in the 7th digit: ``compare`` calls it stalled).

Every run is watched by gradwatch.GradWatch and tagged with one ``gradwatch.sweep_id``; the
script then compares exactly those runs with gradwatch.runs.compare, the module behind
``gradwatch compare`` (the same table, from the command line:
``gradwatch compare --experiment gradwatch-lr-sweep --sweep <id>``).

Runs go to the tracking URI in force: MLFLOW_TRACKING_URI, else the embedded
sqlite:///mlflow.db in the working directory.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import gradwatch
from gradwatch.demo import MLP, make_blobs
from gradwatch.mlflow_access import get_client
from gradwatch.params import TAG_SWEEP_ID
from gradwatch.runs import compare
from gradwatch.runs.plot import plot_runs

#: learns, diverges, barely moves.
LEARNING_RATES = (0.5, 10.0, 1e-10)
#: Raw-scale features, like unnormalized measurements: what makes lr=10 blow up.
FEATURE_SCALE = 10.0


def train(lr: float, steps: int, experiment: str, sweep_id: str) -> tuple[str, float]:
    """Train one run; returns ``(run_id, final_loss)``."""
    X, y = make_blobs(n=512, dim=20, classes=3, seed=0)
    X = X * FEATURE_SCALE
    mlp = MLP([20, 32, 3], seed=0)  # the same initial weights for every lr
    params = mlp.params
    loss = math.nan
    with (
        gradwatch.GradWatch(
            every=max(1, steps // 5),
            experiment=experiment,
            run_name=f"lr={lr:g}",
            params={"lr": lr, "steps": steps, "model": "mlp-20-32-3"},
            tags={TAG_SWEEP_ID: sweep_id},
            config=False,  # ignore any ./gradwatch.yaml: default rules only
            seed=0,
        ) as watch,
        np.errstate(over="ignore", invalid="ignore"),  # overflow is the point of lr=10
    ):
        for _ in range(steps):
            loss, grads = mlp.loss_and_grads(params, X, y)
            watch.step(params, grads, loss=loss, lr=lr, loss_fn=lambda p: mlp.loss(p, X, y))
            if not math.isfinite(loss):
                break  # recorded (and alerted on); nothing more to learn from this run
            for name in params:
                params[name] -= lr * grads["d" + name]
    if watch.alerts:
        print("  alerts:", ", ".join(f"{a.rule} at step {a.step}" for a in watch.alerts))
    return watch.close_result.run_id, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per run (default 100)")
    parser.add_argument(
        "--lr", type=float, nargs="+", default=list(LEARNING_RATES), help="learning rates"
    )
    parser.add_argument("--experiment", default="gradwatch-lr-sweep", help="MLflow experiment")
    parser.add_argument("--plot", default=None, help="also write loss/check-error curves here")
    args = parser.parse_args()

    sweep_id = time.strftime("lr-sweep-%Y%m%d-%H%M%S")
    for lr in args.lr:
        print(f"training lr={lr:g}")
        run_id, loss = train(lr, args.steps, args.experiment, sweep_id)
        print(f"  run {run_id}: final loss {loss:.6g}")

    # The comparison reads the runs back from MLflow (the hook flushed them on exit).
    client = get_client(None)
    runs = compare.select_runs(client, experiment=args.experiment, sweep_id=sweep_id)
    results = compare.summarize_runs(client, runs)
    summaries = [summary for summary, _ in results]
    print(f"\nsweep {sweep_id} in experiment {args.experiment!r}:")
    print(compare.format_table(summaries))
    for s in summaries:
        print(f"{s.run_name}: diverged={s.diverged} stalled={s.stalled} verdict={s.verdict}")
    if args.plot:
        plot_runs([curves for _, curves in results], args.plot)
        print(f"plot: {args.plot}")
    print(f"\nsame table: gradwatch compare --experiment {args.experiment} --sweep {sweep_id}")


if __name__ == "__main__":
    main()
