"""The names a run in MLflow is read and reached by, without a server: both layouts of the hook's
metrics and settings, the UI links, the sweep parent's description, and the settings param
that outgrows MLflow's limit (journal only)."""

from __future__ import annotations

import json
import os

from gradwatch.config import load_config
from gradwatch.hook.options import HookOptions
from gradwatch.hook.run import settings_params
from gradwatch.links import run_links, ui_command
from gradwatch.schema import (
    ARTIFACT_SETTINGS,
    PARAM_SETTINGS,
    SHARED_PREFIX,
    TAG_METRIC_PREFIX,
    expand_settings,
    hook_keys,
    settings_param,
)
from gradwatch.tracking import open_run
from gradwatch.tracking.batching import plan_batches
from gradwatch.tracking.journal import ARTIFACT_FILE, files_dir, read_records
from gradwatch.tracking.state import ShipperSettings


def test_hook_keys_read_both_layouts():
    own = ["loss", "lr", "grad_norm/W1", "val_acc"]
    assert hook_keys(own, {}) == {k: k for k in own}
    shared = ["loss", "lr", "val_acc", "gradwatch/loss", "gradwatch/lr", "gradwatch/grad_norm/W1"]
    names = hook_keys(shared, {TAG_METRIC_PREFIX: SHARED_PREFIX})
    # The hook's series under their schema names; the user's loss is not the hook's loss.
    assert names == {
        "loss": "gradwatch/loss",
        "lr": "gradwatch/lr",
        "grad_norm/W1": "gradwatch/grad_norm/W1",
        "val_acc": "val_acc",
    }
    # A run without the tag is the hook's own, whatever its keys look like.
    assert hook_keys(["gradwatch/loss"], {})["gradwatch/loss"] == "gradwatch/loss"


def test_the_settings_param_round_trips_and_old_runs_read_the_same():
    settings = {"gradwatch.every": "100", "gradwatch.alerts.rule.x": "type=threshold a=1"}
    param = settings_param(settings)
    assert list(param) == [PARAM_SETTINGS]
    assert json.loads(param[PARAM_SETTINGS]) == {
        "every": "100",
        "alerts.rule.x": "type=threshold a=1",
    }
    assert expand_settings({"lr": "0.1", **param}) == {"lr": "0.1", **settings}
    old = {"lr": "0.1", "gradwatch.every": "50"}
    assert expand_settings(old) == old
    cut = {PARAM_SETTINGS: '{"every": "10", "mo...[truncated by gradwatch]'}
    assert expand_settings(cut) == cut  # unreadable: shown as it is, never guessed at


def test_the_shipper_prefixes_only_metric_keys():
    lines = [
        (10, {"s": 1, "t": "m", "ts": 5, "st": 0, "m": {"loss": 1.0, "grad_norm/W": 2.0}}),
        (20, {"s": 2, "t": "g", "ts": 6, "g": {"gradwatch.verdict": "ok"}}),
    ]
    (batch,) = plan_batches(lines, 0, 0, SHARED_PREFIX).batches
    assert [m[0] for m in batch.metrics] == ["gradwatch/loss", "gradwatch/grad_norm/W"]
    assert batch.tag_list() == [("gradwatch.verdict", "ok")]
    (plain,) = plan_batches(lines, 0, 0).batches
    assert [m[0] for m in plain.metrics] == ["loss", "grad_norm/W"]


def test_links_for_a_server_and_for_a_local_store(tmp_path):
    server = run_links("https://ana:s3cret@mlflow.example:5000/", "3", "abc")
    assert server.command is None
    assert server.run == "https://ana:***@mlflow.example:5000/#/experiments/3/runs/abc"
    assert server.report == server.run + "/artifacts/gradwatch/report.html"
    assert server.experiment == "https://ana:***@mlflow.example:5000/#/experiments/3/runs"
    assert "s3cret" not in "".join(server.lines())
    local = run_links("sqlite:///mlflow.db", "1", "abc")
    assert local.command == f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db"
    assert local.run == "http://127.0.0.1:5000/#/experiments/1/runs/abc"
    assert local.lines()[0] == f"open it: `{local.command}`, then"
    assert (
        ui_command("sqlite:////data/my runs/m.db")
        == "mlflow ui --backend-store-uri 'sqlite:////data/my runs/m.db'"
    )


def test_settings_too_long_for_a_param_go_whole_into_an_artifact(tmp_path):
    rules = "".join(
        f"    - {{name: r{i}, type: threshold, metric: m{i}, above: {i}}}\n" for i in range(150)
    )
    (tmp_path / "gradwatch.yaml").write_text(f"alerts:\n  rules:\n{rules}")
    config = load_config(str(tmp_path / "gradwatch.yaml"))
    options = HookOptions.resolve({"every": 7}, config, environ={})
    run = open_run(
        tracking_uri="http://127.0.0.1:9",
        journal_dir=tmp_path / "j",
        settings=ShipperSettings(process=False, interval=3600.0),
        keep_journal=True,
    )
    try:
        param = settings_params(config, options, run)
        assert json.loads(param[PARAM_SETTINGS])["every"] == "7"
        assert len(param[PARAM_SETTINGS]) < 6000
        files = [r for r in read_records(run.journal_path) if r.get("t") == ARTIFACT_FILE]
        assert [f["path"] for f in files] == [os.path.dirname(ARTIFACT_SETTINGS)]
        copied = files_dir(run.journal_path) / files[0]["src"]
        whole = json.loads(copied.read_text())
        assert whole["alerts.rule.r149"].startswith("type=threshold")
    finally:
        run.close(timeout=0.1)
