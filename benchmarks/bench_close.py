"""close() on a fresh sqlite store under load: how long the end of a run takes, and whether
the run is really there when it returns (issue 22).

    python benchmarks/bench_close.py --tree . --repeats 3 --busy 3
    python benchmarks/bench_close.py --tree /path/to/another/checkout --repeats 3 --busy 3

Each repeat runs a 300-step training script (the hook, a check every 50 steps, the report on)
in a fresh folder whose sqlite store does not exist yet, with ``--busy`` processes spinning
``while 1: pass`` beside it, and the gradwatch of ``--tree`` first on the path. It prints, per
repeat, the wall time of ``close()`` (the end of the ``with`` block), whether a plain
``mlflow.MlflowClient`` right after it finds the run FINISHED with its 300 losses and
``report.html``, and close()'s message. Wall time on purpose: it is what the user waits for;
the machine's other load moves it, so compare trees in the same session.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import sys, time, numpy as np, mlflow, gradwatch
    uri = "sqlite:///" + sys.argv[1]
    params = {"W": np.ones((6, 5)), "b": np.zeros(5)}
    def loss_fn(p):
        return float(((p["W"].sum(0) + p["b"]) ** 2).sum())
    with gradwatch.GradWatch(every=50, experiment="fresh", tracking_uri=uri, config=False) as watch:
        for _ in range(300):
            g = 2 * (params["W"].sum(0) + params["b"])
            grads = {"W": np.tile(g, (6, 1)), "b": g}
            watch.step(params, grads, loss=loss_fn(params), lr=1e-3, loss_fn=loss_fn)
            for k in params:
                params[k] -= 1e-3 * grads[k]
        closing = time.monotonic()
    took = time.monotonic() - closing
    readable = "no"
    try:
        client = mlflow.MlflowClient(uri)
        run = client.get_run(watch.close_result.run_id)
        n = len(client.get_metric_history(run.info.run_id, "loss"))
        names = {f.path for f in client.list_artifacts(run.info.run_id, "gradwatch")}
        if run.info.status == "FINISHED" and n == 300 and "gradwatch/report.html" in names:
            readable = "yes"
        else:
            readable = f"no ({run.info.status}, {n} losses, report {'gradwatch/report.html' in names})"
    except Exception as err:
        readable = f"no ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    print(f"RESULT {took:.1f} {readable} | {watch.close_result.message}")
    """
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--busy", type=int, default=3)
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(Path(args.tree).resolve()))
    env.pop("MLFLOW_TRACKING_URI", None)
    burners = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(args.busy)]
    try:
        for i in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                db = Path(tmp) / "store" / "mlflow.db"
                out = subprocess.run(
                    [sys.executable, "-c", SCRIPT, str(db)],
                    cwd=tmp,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
                line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")]
                tb = "Traceback" in out.stderr
                print(
                    f"{i + 1}: close {line[0][7:] if line else 'no result'}"
                    f"{' [traceback on stderr]' if tb else ''}",
                    flush=True,
                )
    finally:
        for b in burners:
            b.kill()
            b.wait()


if __name__ == "__main__":
    main()
