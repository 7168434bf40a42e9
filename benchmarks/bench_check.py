"""Check modes compared on the bug zoo, and the cost of a check against its loss evaluations.

    python benchmarks/bench_check.py                 # zoo table + cost table
    python benchmarks/bench_check.py --seeds 20
    python benchmarks/bench_check.py --failing --repeats 3   # failing vs passing, many tensors

Part 1 (detection): every network of tests/zoo.py (13 backprop bugs, 9 correct networks that
naive checks misjudge) over --seeds seeds, with gradwatch's modes (auto = the default,
sampled, directional, full) and the classic recipe (full, eps=1e-7 in the parameters' own
precision, "mistake" above difference 2e-7) as the baseline.

Part 2 (cost): on the benchmark MLP (784-256-10, batch 128) a default check's wall time
divided by (its loss evaluations x one forward pass), timed in the same run; and the classic
roll/unroll implementation (a copy of the parameter vector per evaluation) on a slice, for
comparison.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from zoo import BUGS, CORRECT  # noqa: E402

import gradwatch  # noqa: E402
from gradwatch.demo import MLP, make_blobs  # noqa: E402


def naive_check(loss_fn, params, grads, eps=1e-7, threshold=2e-7) -> tuple[bool, int]:
    """The course recipe: perturb every coordinate by ±eps in place, difference > 2e-7 = bug."""
    a, n, evals = [], [], 0
    for name, value in params.items():
        g = grads["d" + name].reshape(-1)
        flat = value.reshape(-1)
        for i in range(flat.size):
            old = flat[i].copy()
            flat[i] = old + eps
            jp = loss_fn(params)
            flat[i] = old - eps
            jm = loss_fn(params)
            flat[i] = old
            evals += 2
            a.append(float(g[i]))
            n.append((jp - jm) / (2 * eps))
    a, n = np.array(a), np.array(n)
    diff = np.linalg.norm(a - n) / (np.linalg.norm(a) + np.linalg.norm(n))
    return bool(diff <= threshold), evals


def zoo_table(seeds: int) -> None:
    modes = ["auto", "sampled", "directional", "full", "classic"]
    rows = {
        m: {"caught": 0, "bugs": 0, "false": 0, "correct": 0, "evals": [], "secs": []}
        for m in modes
    }
    for _label, cases, is_bug in [("bug", BUGS, True), ("correct", CORRECT, False)]:
        for net in cases.values():
            for seed in range(seeds):
                params, X, y = net.make(seed)
                grads = net.backward(params, X, y)
                loss_fn = lambda p: net.loss(p, X, y)
                for mode in modes:
                    t0 = time.perf_counter()
                    if mode == "classic":
                        passed, evals = naive_check(loss_fn, params, grads)
                    else:
                        r = gradwatch.check_gradients(loss_fn, params, grads, mode=mode, seed=seed)
                        passed, evals = r.passed, r.num_evals
                    row = rows[mode]
                    row["secs"].append(time.perf_counter() - t0)
                    row["evals"].append(evals)
                    if is_bug:
                        row["bugs"] += 1
                        row["caught"] += not passed
                    else:
                        row["correct"] += 1
                        row["false"] += not passed
    print(
        f"\nDetection on the zoo ({len(BUGS)} bugs, {len(CORRECT)} correct networks, {seeds} seeds each)\n"
    )
    print(
        "| mode | bugs caught | false alarms | loss evals per check (median) | ms per check (median) |"
    )
    print("|---|---|---|---|---|")
    for mode, row in rows.items():
        name = (
            "classic (full, eps=1e-7, diff > 2e-7)"
            if mode == "classic"
            else mode + (" (default)" if mode == "auto" else "")
        )
        print(
            f"| {name} | {row['caught']}/{row['bugs']} | {row['false']}/{row['correct']} | "
            f"{statistics.median(row['evals']):.0f} | {1e3 * statistics.median(row['secs']):.2f} |"
        )


def cost_table(repeats: int) -> None:
    """The check's own overhead: its wall time against its loss evaluations."""
    X, y = make_blobs(1024, 784, 10, seed=0)
    mlp = MLP([784, 256, 10], seed=0)
    params, xb, yb = mlp.params, X[:128], y[:128]
    _, grads = mlp.loss_and_grads(params, xb, yb)
    loss_fn = lambda p: mlp.loss(p, xb, yb)
    for _ in range(20):
        loss_fn(params)
    ratios, inside, evals, secs, fwd = [], [], [], [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        for _ in range(50):
            loss_fn(params)
        forward = (time.perf_counter() - t0) / 50
        in_loss = [0.0]

        def timed_loss(p):
            t = time.perf_counter()
            try:
                return loss_fn(p)
            finally:
                in_loss[0] += time.perf_counter() - t

        report = gradwatch.check_gradients(timed_loss, params, grads, seed=r)
        ratios.append(report.seconds / (report.num_evals * forward))
        inside.append(report.seconds / in_loss[0])
        evals.append(report.num_evals)
        secs.append(report.seconds)
        fwd.append(forward)
    # The classic roll/unroll method: theta+ = np.copy(theta) for every evaluation.
    theta = np.concatenate([v.reshape(-1) for v in params.values()])
    shapes = [(k, v.shape, v.size) for k, v in params.items()]

    def unroll(vec):
        out, i = {}, 0
        for k, shape, size in shapes:
            out[k] = vec[i : i + size].reshape(shape)
            i += size
        return out

    coords = 20
    t0 = time.perf_counter()
    for i in range(coords):
        plus = np.copy(theta)
        plus[i] += 1e-7
        loss_fn(unroll(plus))
        minus = np.copy(theta)
        minus[i] -= 1e-7
        loss_fn(unroll(minus))
    classic_per_eval = (time.perf_counter() - t0) / (2 * coords)
    print(
        f"\nCost of a default check on the MLP 784-256-10, batch 128 ({theta.size} parameters, {repeats} repeats)\n"
    )
    print("| quantity | median |\n|---|---|")
    print(f"| one forward pass | {1e3 * statistics.median(fwd):.3f} ms |")
    print(f"| loss evaluations per default check | {statistics.median(evals):.0f} |")
    print(f"| check wall time | {1e3 * statistics.median(secs):.1f} ms |")
    print(
        f"| wall time / (evaluations x forward pass timed alone) | {statistics.median(ratios):.3f} |"
    )
    print(
        f"| wall time / time spent inside loss_fn during the check | {statistics.median(inside):.3f} |"
    )
    print(
        f"| classic roll/unroll: time per evaluation / forward pass | {classic_per_eval / statistics.median(fwd):.3f} |"
    )
    print(
        f"| classic full check would take (2n evaluations) | {2 * theta.size * classic_per_eval:.0f} s |"
    )


def failing_cost_table(repeats: int) -> None:
    """A failing check's loss evaluations against a passing one's, on the same MLP, and the
    engine's own share of the check's time (wall time over the time inside loss_fn)."""
    X, y = make_blobs(1024, 784, 10, seed=0)
    mlp = MLP([784, 256, 10], seed=0)
    params, xb, yb = mlp.params, X[:128], y[:128]
    _, grads = mlp.loss_and_grads(params, xb, yb)
    _, other = mlp.loss_and_grads(params, xb, (yb + 1) % 10)  # every tensor disagrees
    one_coord = {k: v.copy() for k, v in grads.items()}
    one_coord["dW1"][300, 7] += 10 * float(np.abs(grads["dW1"]).max())
    cases = {
        "passing (correct gradients)": grads,
        "dW2 x 2 (one tensor)": dict(grads, dW2=grads["dW2"] * 2),
        "every tensor x 128 (sum vs mean)": {k: v * 128 for k, v in grads.items()},
        "every tensor wrong, no factor": other,
        "one coordinate of W1 wrong (bisection)": one_coord,
    }
    print(
        f"\nFailing vs passing default checks on the MLP 784-256-10, batch 128 ({repeats} seeds)\n"
    )
    print(
        "| gradients | loss evaluations (median) | / passing | wall / time inside loss_fn | finding |"
    )
    print("|---|---|---|---|---|")
    passing = None
    for label, g in cases.items():
        evals, shares, kinds = [], [], set()
        for seed in range(repeats):
            in_loss = [0.0]

            def timed_loss(p):
                t = time.perf_counter()
                try:
                    return mlp.loss(p, xb, yb)
                finally:
                    in_loss[0] += time.perf_counter() - t

            report = gradwatch.check_gradients(timed_loss, params, g, seed=seed, lr=0.1)
            evals.append(report.num_evals)
            shares.append(report.seconds / in_loss[0])
            kinds.add(report.finding.kind)
        median = statistics.median(evals)
        passing = passing or median
        print(
            f"| {label} | {median:.0f} (max {max(evals)}) | {median / passing:.2f} | "
            f"{statistics.median(shares):.3f} | {', '.join(sorted(kinds))} |"
        )


def many_tensors_table(count: int) -> None:
    """A check's cost with many small tensors: bounded by num_samples, not by the count."""
    rng = np.random.default_rng(0)
    params = {f"t{i}": rng.normal(size=3) for i in range(count)}
    weights = {k: rng.normal(size=3) for k in params}

    in_loss = [0.0]

    def loss_fn(p):
        t = time.perf_counter()
        value = float(sum(np.dot(weights[k], np.tanh(v)) for k, v in p.items()))
        in_loss[0] += time.perf_counter() - t
        return value

    grads = {k: weights[k] * (1 - np.tanh(v) ** 2) for k, v in params.items()}
    bad = dict(grads, t4321=grads["t4321"] * 2)
    print(f"\n{count} tensors of 3 entries, num_samples=32\n")
    print("| gradients | loss evaluations | seconds | wall / time inside loss_fn | finding |")
    print("|---|---|---|---|---|")
    for label, g in (("correct", grads), ("t4321 x 2", bad)):
        in_loss[0] = 0.0
        report = gradwatch.check_gradients(loss_fn, params, g, seed=0)
        print(
            f"| {label} | {report.num_evals} | {report.seconds:.1f} | "
            f"{report.seconds / in_loss[0]:.3f} | {report.finding.headline} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--failing", action="store_true", help="only the failing-check tables")
    ap.add_argument("--tensors", type=int, default=10_000)
    args = ap.parse_args()
    if args.failing:
        failing_cost_table(args.repeats)
        many_tensors_table(args.tensors)
        return
    if args.seeds:
        zoo_table(args.seeds)
    cost_table(args.repeats)
    failing_cost_table(args.repeats)
    many_tensors_table(args.tensors)


if __name__ == "__main__":
    main()
