"""gradwatch compare: verdicts, table/json/csv output and the plot, over runs in a real MLflow
tracking server."""

from __future__ import annotations

import csv
import io
import json
import math
import time

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from gradwatch.cli import main
from gradwatch.runs.verdicts import is_finite, loss_verdict

NAN, INF = float("nan"), float("inf")


def test_loss_verdicts():
    empty = loss_verdict([])
    assert (empty.first, empty.final, empty.best, empty.diverged) == (None, None, None, False)
    v = loss_verdict([1.0, 0.5, 80.0])
    assert (v.first, v.final, v.best, v.diverged) == (1.0, 80.0, 0.5, True)
    # exploded, then collapsed to a dead network with a finite loss above the start
    assert loss_verdict([0.7, 22.0, 1.06]).diverged is True
    # reached 1e-4 and wobbles back to 1e-3: still far below where it started
    assert loss_verdict([1.0, 1e-4, 1e-3]).diverged is False
    # a spike early on that the run recovers from is not divergence
    assert loss_verdict([4.45, 12.3, 0.1, 0.01]).diverged is False
    v = loss_verdict([1.0, 10.0, INF, NAN])
    assert v.diverged and math.isnan(v.final) and v.best == 1.0 and not v.stalled
    assert loss_verdict([1.0, 1.7976931348623157e308]).diverged, "MLflow stores inf as max double"
    assert loss_verdict([1.0, 0.9995]).stalled and not loss_verdict([1.0, 0.5]).stalled
    assert not is_finite(None) and not is_finite(NAN) and is_finite(0.0)


def test_noisy_flat_run_is_stalled_and_noisy_learning_run_is_not():
    """lr=30 at chance: loss flat around 5.0 with big batch-to-batch noise. Its best single
    batch is far below its first, which used to read as progress ("ok")."""
    rng = np.random.default_rng(0)
    flat = list(5.0 + rng.normal(0, 0.8, size=400))
    verdict = loss_verdict(flat)
    assert verdict.best < 0.7 * verdict.first, "the noise alone looks like progress"
    assert verdict.stalled and not verdict.diverged
    # The same noise on a curve that halves: learning, not stalled, not diverged.
    learning = [5.0 * (1 - 0.5 * i / 400) + e for i, e in enumerate(rng.normal(0, 0.8, size=400))]
    assert not loss_verdict(learning).stalled and not loss_verdict(learning).diverged
    # Healthy minibatch noise: single batches spike far above the smoothed best (> 10x),
    # the run still ends far below its start: not diverged.
    spiky = [2.0 * 0.99**i for i in range(400)]
    for i in range(20, 400, 37):
        spiky[i] = 20 * spiky[i]
    assert not loss_verdict(spiky).diverged and not loss_verdict(spiky).stalled
    # A steady rise from a plateau well past 10x: diverged, though every value is finite.
    rising = [1.0] * 200 + [1.0 * 1.05**i for i in range(200)]
    assert loss_verdict(rising).diverged
    # Blowing up only in the last few steps of a long run: diverged.
    late = [1.0 / (1 + 0.01 * i) for i in range(1000)] + [50.0, 500.0, 5e3, 5e4, 5e5, 5e6]
    assert loss_verdict(late).diverged


def _run(client, exp_id, name, lr, losses, checks, tags=None, nonfinite=None):
    run = client.create_run(
        exp_id, run_name=name, tags={"gradwatch.sweep_id": "s1", **(tags or {})}
    )
    ts = int(time.time() * 1000)
    metrics = [Metric("loss", v, ts, i) for i, v in enumerate(losses)]
    for step, (passed, err) in checks.items():
        metrics += [
            Metric("gradcheck/passed", passed, ts, step),
            Metric("gradcheck/max_rel_error", err, ts, step),
        ]
    for step, count in (nonfinite or {}).items():
        metrics.append(Metric("nonfinite/W1", count, ts, step))
    client.log_batch(
        run.info.run_id,
        metrics=metrics,
        params=[Param("lr", str(lr)), Param("gradwatch.every", "10")],
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.fixture
def runs(tracking_uri):
    """Four runs, one per regime, in a fresh experiment: {name: run_id}."""
    client = MlflowClient(tracking_uri)
    exp_name = f"compare-{time.time_ns()}"
    exp_id = client.create_experiment(exp_name)
    ids = {
        "learns": _run(
            client,
            exp_id,
            "learns",
            0.5,
            [1 / (1 + i) for i in range(50)],
            {0: (1, 1e-9), 10: (1, 2e-9)},
        ),
        "diverges": _run(
            client, exp_id, "diverges", 10, [1, 10, 100, 1e4, INF, NAN], {0: (1, 1e-9)}
        ),
        "stalls": _run(
            client, exp_id, "stalls", 1e-10, [1 - 1e-9 * i for i in range(50)], {0: (1, 1e-9)}
        ),
        "bug": _run(
            client,
            exp_id,
            "bug",
            0.5,
            [1 / (1 + i) for i in range(50)],
            {0: (0, 0.33), 10: (0, 0.3)},
            tags={"gradwatch.alert.check_failure": "x"},
        ),
        "nan-grads": _run(
            client, exp_id, "nan-grads", 0.5, [1.0, 0.9, 0.8], {}, nonfinite={0: 0, 2: 3}
        ),
    }
    return exp_name, ids


def test_json_records_carry_the_verdicts(runs):
    exp, ids = runs
    result = CliRunner().invoke(main, ["compare", "--experiment", exp, "--format", "json"])
    assert result.exit_code == 0, result.output
    records = {r["run_name"]: r for r in json.loads(result.stdout)}
    assert set(records) == set(ids)
    for name, rec in records.items():
        assert rec["run_id"] == ids[name]
        assert {
            "params",
            "final_loss",
            "best_loss",
            "diverged",
            "checks",
            "checks_failed",
            "max_rel_error",
            "alerts",
        } <= set(rec)
    assert records["learns"]["params"]["lr"] == "0.5"
    assert records["learns"]["final_loss"] == pytest.approx(0.02)
    assert records["learns"]["verdict"] == "ok"
    assert records["diverges"]["diverged"] is True
    assert records["diverges"]["final_loss"] is None  # NaN: JSON has no NaN
    assert records["diverges"]["best_loss"] == 1.0
    assert records["stalls"]["stalled"] is True and records["stalls"]["diverged"] is False
    assert records["bug"]["checks"] == 2 and records["bug"]["checks_failed"] == 2
    assert records["bug"]["max_rel_error"] == pytest.approx(0.33)
    assert records["bug"]["alerts"] == 1 and records["bug"]["alert_rules"] == ["check_failure"]
    assert records["bug"]["diverged"] is False
    assert records["nan-grads"]["diverged"] is True, "non-finite tensors count as divergence"


def test_csv_and_table(runs):
    exp, ids = runs
    result = CliRunner().invoke(main, ["compare", "-e", exp, "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = {r["run_name"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
    assert set(rows) == set(ids)
    assert rows["diverges"]["diverged"] == "True" and rows["diverges"]["params.lr"] == "10"
    assert rows["bug"]["checks_failed"] == "2"

    table = CliRunner().invoke(main, ["compare", "-e", exp]).stdout
    lines = {line.split()[0]: line for line in table.splitlines()[2:] if line.strip()}
    assert "DIVERGED" in lines["diverges"] and "BACKPROP BUG" in lines["bug"]
    assert "stalled" in lines["stalls"] and lines["learns"].rstrip().endswith("ok")
    assert "same for all runs: gradwatch" not in table, "the hook's own params stay out"


def test_selected_runs_and_sweep_filter(runs, tracking_uri):
    exp, ids = runs
    result = CliRunner().invoke(
        main, ["compare", "--runs", ids["learns"], ids["bug"], "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    assert [r["run_name"] for r in json.loads(result.stdout)] == ["learns", "bug"]
    result = CliRunner().invoke(main, ["compare", "-e", exp, "--sweep", "nope"])
    assert result.exit_code == 0 and "no runs" in result.output


def test_plot_is_a_real_image_with_curves(runs, tmp_path):
    import matplotlib.image

    exp, _ = runs
    out = tmp_path / "runs.png"
    result = CliRunner().invoke(main, ["compare", "-e", exp, "--plot", str(out)])
    assert result.exit_code == 0, result.output
    image = matplotlib.image.imread(out)
    height, width = image.shape[:2]
    assert width >= 800 and height >= 600
    rgb = image[..., :3]
    assert rgb.std() > 0.05, "the plot is blank"
    # Curves in colour, not only black axes and text: some saturated pixels.
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    assert np.count_nonzero(saturation > 0.3) > 500


def test_bad_arguments_give_usage_errors(runs, tracking_uri, tmp_path):
    exp, _ = runs
    runner = CliRunner()
    for args, needle in [
        (["compare"], "--experiment"),
        (["compare", "-e", exp, "--format", "xml"], "'xml' is not one of"),
        (["compare", "-e", exp, "--plot", "x.jpg"], "must end in .png"),
        (["compare", "-e", exp, "--plot", str(tmp_path / "no" / "x.png")], "does not exist"),
        (["compare", "-e", exp, "--bogus"], "No such option"),
    ]:
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Usage: " in result.output and needle in result.output, (args, result.output)
        assert "Traceback" not in result.output
        error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert len(error_lines) == 1


def test_what_the_store_does_not_have_exits_1_without_a_usage_banner(runs, tracking_uri):
    runner = CliRunner()
    for args, needle in [
        (["compare", "-e", "no-such-experiment"], "no experiment named 'no-such-experiment'"),
        (["compare", "--runs", "0123456789abcdef"], "no run '0123456789abcdef'"),
    ]:
        result = runner.invoke(main, args)
        assert result.exit_code == 1, (args, result.output)
        assert needle in result.output and "Usage:" not in result.output, (args, result.output)


def test_missing_embedded_store_is_an_error_not_a_new_database(tmp_path):
    result = CliRunner().invoke(main, ["compare", "-e", "x"])  # cwd: an empty tmp dir
    assert result.exit_code == 1
    assert "no MLflow store at" in result.output and "gradwatch demo" in result.output
    assert not (tmp_path / "mlflow.db").exists()
