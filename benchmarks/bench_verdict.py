"""What the verdict at the end of a run costs the training process (``GradWatch.close``).

    python benchmarks/bench_verdict.py                 # 10,000 and 100,000 steps
    python benchmarks/bench_verdict.py --steps 1000000

Before the run's end record the hook reads its own journal back (``gradwatch.report.verdict``)
to write the ``gradwatch.verdict`` tag and the run's description: the report's verdict, which is
``gradwatch compare``'s. This writes a journal of N steps as the hook does (loss and lr every
step, 16 per-tensor statistics every 100 steps, a check's metrics every 1000), with nothing
shipped (a dead server), and measures the CPU seconds of that read, three times each.
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time

from gradwatch.tracking import open_run
from gradwatch.tracking.state import ShipperSettings


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def journal(steps: int, folder: str):
    run = open_run(
        tracking_uri="http://127.0.0.1:9",
        experiment="bench-verdict",
        journal_dir=folder,
        keep_journal=True,
        settings=ShipperSettings(process=False, interval=3600.0),
    )
    rng = random.Random(0)
    stats = {f"{kind}/W{i}": 1.0 for kind in ("grad_norm", "param_norm") for i in range(8)}
    for s in range(steps):
        run.log_loss_lr(s, 2.0 / (1 + s / 1000) + 0.01 * rng.random(), 0.1, 1_700_000_000_000 + s)
        if s % 100 == 0:
            run.log_metrics(s, stats)
        if s % 1000 == 0:
            run.log_metrics(s, {"gradcheck/passed": 1.0, "gradcheck/max_rel_error": 1e-9})
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from gradwatch.report.verdict import verdict_tags  # imported before timing

    print("| steps | journal MB | verdict_tags CPU s (min / max) | verdict |")
    print("|---|---|---|---|")
    for steps in args.steps:
        with tempfile.TemporaryDirectory() as folder:
            run = journal(steps, folder)
            times, word = [], ""
            for _ in range(args.repeat):
                t0 = cpu()
                word = verdict_tags(run.journal_path, None)["gradwatch.verdict"]
                times.append(cpu() - t0)
            size = run.journal_path.stat().st_size / 1e6
            run._shipper.abort()  # noqa: SLF001 - nothing to ship to a dead server
            time.sleep(0.1)
        print(f"| {steps:,} | {size:.1f} | {min(times):.2f} / {max(times):.2f} | {word} |")


if __name__ == "__main__":
    main()
