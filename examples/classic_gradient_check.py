"""The classic gradient-checking exercise, done with gradwatch.check_gradients.

    python examples/classic_gradient_check.py

The 3-layer network LINEAR -> RELU -> LINEAR -> RELU -> LINEAR -> SIGMOID (W1 5x4, b1 5x1,
W2 3x5, b2 3x1, W3 1x3, b3 1x1: 47 numbers) with the exercise's two planted backprop bugs
(dW2 twice too large, db1 computed with 4/m instead of 1/m):

1. a full check (every coordinate) with the exercise's fixed step eps=1e-7 prints the
   exercise's figure, difference 0.285093..., and names the two broken tensors, W2 and b1;
2. with backprop fixed, a full check with gradwatch's own step passes (difference ~4e-10);
3. the default check (mode="auto": sampled coordinates plus a random direction per tensor)
   finds the same bugs without perturbing every coordinate.

No MLflow here: the check engine is pure numpy.
"""

from __future__ import annotations

import json

import gradwatch
from gradwatch.demo import ClassicBugs, classic_backward, classic_forward, classic_test_case

#: The exercise's own threshold on ``difference``; gradwatch judges per coordinate instead.
CLASSIC_THRESHOLD = 2e-7


def main() -> None:
    x, y, params = classic_test_case()

    def loss_fn(p):
        # The loss at the parameters the check hands in: it perturbs `params` in place.
        return classic_forward(x, y, p)[0]

    _, cache = classic_forward(x, y, params)
    buggy = classic_backward(x, y, cache, bugs=ClassicBugs.planted())
    fixed = classic_backward(x, y, cache)

    print("== 1. buggy backprop, full check with the exercise's step eps=1e-7")
    report = gradwatch.check_gradients(loss_fn, params, buggy, mode="full", eps=1e-7, seed=0)
    print(report)
    print(f"difference = {report.difference!r}")
    verdict = "a mistake" if report.difference > CLASSIC_THRESHOLD else "no mistake"
    print(f"the exercise's rule (difference > {CLASSIC_THRESHOLD:g}) says: {verdict} in backprop")
    for name, tensor in report.per_param.items():
        print(
            f"  {name:3s} shape {str(tensor.shape):7s} verdict {tensor.verdict:8s} "
            f"mismatches {tensor.num_mismatches}/{len(tensor.coords)}  "
            f"max rel error {tensor.max_rel_error:.1e}"
        )
    print("mismatched tensors:", ", ".join(report.mismatched_tensors))

    print("\n== 2. fixed backprop, full check with gradwatch's default step")
    report = gradwatch.check_gradients(loss_fn, params, fixed, mode="full", seed=0)
    print(report)
    print("steps chosen per tensor:", {n: f"{t.step:.1e}" for n, t in report.per_param.items()})

    print("\n== 3. buggy backprop, default check (mode='auto')")
    report = gradwatch.check_gradients(loss_fn, params, buggy, seed=0)
    print(report)

    print("\n== report.to_dict(): what the hook appends to gradwatch/checks.jsonl")
    record = report.to_dict()
    print({k: v for k, v in record.items() if k != "per_param"})
    w2 = record["per_param"]["W2"]
    print("per_param['W2']:", {k: v for k, v in w2.items() if k not in ("coords", "directions")})
    worst = max(w2["coords"], key=lambda c: c["rel_error"])
    print("its worst coordinate:", json.dumps(worst))


if __name__ == "__main__":
    main()
