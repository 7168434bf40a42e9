"""A real training loop watched by gradwatch.GradWatch, with alert rules from a YAML file.

    python examples/train_mlp.py                     # 300 steps, a backprop bug from step 200
    python examples/train_mlp.py --steps 60 --bug-at 0     # short and clean
    gradwatch sweep examples/train_mlp.py --lr 0.3 0.1 0.03  # one run per learning rate

A 64-128-10 ReLU MLP (gradwatch.demo.MLP) trained with minibatch SGD on seeded blobs
(gradwatch.demo.make_blobs). The hook's options and alert rules come from
examples/gradwatch.yaml: a gradient check every 50 steps, the default rules plus gradient-norm
drift and stalled learning, each alert also handed to a Python callback (``callback:collect``).
From ``--bug-at`` on, backprop returns dW2 twice too large: the next check fails and the
``check_failure`` rule fires once (then stays quiet for its cooldown).

Everything goes to the tracking URI in force: MLFLOW_TRACKING_URI, else the embedded
sqlite:///mlflow.db in the working directory (see it with ``mlflow ui``). At the end, the run
gets its report (artifact gradwatch/report.html: verdict, curves, every check, the alerts)
and the gradient and weight distributions over the steps (gradwatch/histograms.png).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

import gradwatch
from gradwatch.demo import MLP, make_blobs

CONFIG = Path(__file__).with_name("gradwatch.yaml")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument(
        "--lr",
        type=float,
        # `gradwatch sweep --lr ...` passes the value as GRADWATCH_PARAM_LR.
        default=gradwatch.param("lr", 0.1),
        help="learning rate (default 0.1, or GRADWATCH_PARAM_LR)",
    )
    parser.add_argument("--batch", type=int, default=64, help="minibatch size (default 64)")
    parser.add_argument(
        "--bug-at",
        type=int,
        default=200,
        help="plant a backprop bug (dW2 x 2) from this step on; 0: never (default 200)",
    )
    parser.add_argument("--run-name", default=None, help="MLflow run name")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    X, y = make_blobs(n=2048, dim=64, classes=10, seed=0)
    mlp = MLP([64, 128, 10], seed=0)
    params = mlp.params  # {"W1", "b1", "W2", "b2"}; updated in place below
    rng = np.random.default_rng(0)

    received = []  # alerts delivered to the callback (from gradwatch's delivery thread)

    bug_at = args.bug_at if args.bug_at > 0 else None
    # Explicit arguments beat gradwatch.yaml and the GRADWATCH_* variables `gradwatch sweep`
    # sets, so fall back to those variables here to keep the script sweepable.
    experiment = os.environ.get("GRADWATCH_EXPERIMENT", "gradwatch-examples")
    run_name = (
        args.run_name
        or os.environ.get("GRADWATCH_RUN_NAME")
        or f"mlp lr={args.lr:g}" + (f" bug@{bug_at}" if bug_at else "")
    )
    with gradwatch.GradWatch(
        config=CONFIG,
        experiment=experiment,
        run_name=run_name,
        params={"lr": args.lr, "batch": args.batch, "steps": args.steps, "bug_at": bug_at},
        callbacks={"collect": received.append},
    ) as watch:
        for step in range(args.steps):
            idx = rng.choice(len(X), size=args.batch, replace=False)
            Xb, yb = X[idx], y[idx]
            loss, grads = mlp.loss_and_grads(params, Xb, yb)
            if bug_at is not None and step >= bug_at:
                grads["dW2"] = grads["dW2"] * 2.0  # the planted bug
            # After backprop, before the update; loss_fn sees the same batch as the grads
            # (bound as defaults: the check calls it now, but a closure over the loop
            # variables would silently follow them if it were kept).
            report = watch.step(
                params,
                grads,
                loss=loss,
                lr=args.lr,
                loss_fn=lambda p, Xb=Xb, yb=yb: mlp.loss(p, Xb, yb),
            )
            if report is not None:
                print(
                    f"step {step:4d}  loss {loss:.4f}  check "
                    f"{'passed' if report.passed else 'FAILED'}  "
                    f"max rel error {report.max_rel_error:.1e}  ({report.num_evals} evals)"
                )
            for name in params:
                params[name] -= args.lr * grads["d" + name]

    result = watch.close_result
    print(f"\nfinal loss {loss:.4f}")
    print(f"checks: {watch.checks}, failed: {watch.checks_failed}")
    print(f"alerts via callback: {len(received)}")
    for alert in received:
        print(f"  {alert.text()}")
    print(result)  # "run <id> complete", or the records still pending and the sync command
    print(f"tracking URI: {watch.run.tracking_uri}")
    if result.complete:
        # Drawn by gradwatch at the end of the run: the verdict, curves, every check, the
        # alerts and the gradient distributions (gradwatch/histograms.png) in one page.
        print(
            f"run report: artifact gradwatch/report.html of run {result.run_id}"
            f" (again any time: gradwatch report {result.run_id})"
        )


if __name__ == "__main__":
    main()
