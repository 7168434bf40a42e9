"""The hook inside the trials of an Optuna study and of Ray Tune, each trial in an MLflow run of
its own made by the tuner's MLflow integration, through a real ``mlflow server``: the hook logs
into the trial's run (its series under ``gradwatch/``), every point lands, no two trials share
a run, and no journal is left behind.

Optuna and Ray come from the ``trials`` extra (part of ``test``); a test is skipped, saying so,
when its tuner is not installed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import mlflow
import pytest

from gradwatch import GradWatch
from gradwatch.schema import SHARED_PREFIX, TAG_PARENT_RUN, TAG_VERDICT

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
STEPS = 40


def train(lr: float, journal_dir: str, steps: int = STEPS) -> float:
    """A small MLP trained under a GradWatch; returns its final loss."""
    from gradwatch.demo import MLP, make_blobs

    X, Y = make_blobs(256, 12, 3, seed=0)
    mlp = MLP([12, 16, 3], seed=0)
    params = mlp.params
    loss = float("nan")
    with GradWatch(every=10, config=False, journal_dir=journal_dir) as watch:
        for s in range(steps):
            b = slice((s * 32) % 256, (s * 32) % 256 + 32)
            loss, grads = mlp.loss_and_grads(params, X[b], Y[b])
            watch.step(
                params, grads, loss=loss, lr=lr, loss_fn=lambda p, b=b: mlp.loss(p, X[b], Y[b])
            )
            for k in params:
                params[k] -= lr * grads["d" + k]
    assert watch.close_result.pending == 0, watch.close_result.message
    return float(loss)


def _assert_trial_runs(client, runs, journal_dir: Path) -> None:
    """Every trial's run holds one training's hook series, whole; nothing is left behind."""
    assert len({r.info.run_id for r in runs}) == len(runs)
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, SHARED_PREFIX + "loss")]
        assert sorted(steps) == list(range(STEPS)), run.info.run_name  # once each: no merge
        passed = client.get_metric_history(run.info.run_id, SHARED_PREFIX + "gradcheck/passed")
        assert sorted(m.step for m in passed) == [0, 10, 20, 30]
        assert run.data.tags[TAG_VERDICT]
    assert list(journal_dir.glob("*.jsonl")) == []


def test_optuna_trials_each_log_into_their_nested_run(tracking_uri, tmp_path):
    optuna = pytest.importorskip("optuna", reason="Optuna is in the trials extra")
    journal_dir = tmp_path / "journal"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("gw-optuna")

    def objective(trial):  # each trial in a nested run, as MLflow users arrange a study
        lr = trial.suggest_float("lr", 0.01, 0.5, log=True)
        with mlflow.start_run(run_name=f"trial {trial.number}", nested=True):
            mlflow.log_param("lr", lr)
            final = train(lr, str(journal_dir))
            mlflow.log_metric("final_loss", final)
        return final

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with mlflow.start_run(run_name="study") as study_run:
            study = optuna.create_study(study_name="gw-optuna")
            study.optimize(objective, n_trials=3)
    finally:
        mlflow.set_tracking_uri(None)
    client = mlflow.MlflowClient(tracking_uri)
    exp = study_run.info.experiment_id
    trials = client.search_runs([exp], f"tags.`{TAG_PARENT_RUN}` = '{study_run.info.run_id}'")
    assert sorted(r.info.run_name for r in trials) == ["trial 0", "trial 1", "trial 2"]
    _assert_trial_runs(client, trials, journal_dir)
    for run in trials:  # the user's own logging sits beside the hook's, untouched
        assert "final_loss" in run.data.metrics and "lr" in run.data.params
    study_metrics = client.get_run(study_run.info.run_id).data.metrics
    assert not any(k.startswith(SHARED_PREFIX) for k in study_metrics)


def _ray_trainable(config):
    from ray.air.integrations.mlflow import setup_mlflow

    mlflow_module = setup_mlflow(
        config, tracking_uri=config["uri"], experiment_name="gw-ray", run_name=f"lr={config['lr']}"
    )
    try:
        final = train(config["lr"], config["journal_dir"])
    finally:
        mlflow_module.end_run()
    from ray import tune

    tune.report({"final_loss": final})


def test_ray_tune_trials_with_setup_mlflow_each_log_into_their_run(tracking_uri, tmp_path):
    pytest.importorskip("ray.tune", reason="Ray Tune is in the trials extra")
    import ray
    from ray import tune

    journal_dir = tmp_path / "journal"
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.create_experiment("gw-ray")  # before the trials race to create it
    lrs = [0.02, 0.05, 0.1, 0.2]
    # A short folder: Ray's socket paths must fit in 107 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="gwray", dir="/tmp")
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=ray_tmp,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    try:
        tuner = tune.Tuner(
            _ray_trainable,
            param_space={
                "lr": tune.grid_search(lrs),
                "uri": tracking_uri,
                "journal_dir": str(journal_dir),
            },
            run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not results.errors, results.errors
    assert len(results) == 4
    runs = client.search_runs([exp])
    assert sorted(r.info.run_name for r in runs) == sorted(f"lr={lr}" for lr in lrs)
    _assert_trial_runs(client, runs, journal_dir)
    for run in runs:  # Ray's own params beside the hook's one settings entry
        assert run.data.params["lr"] == run.info.run_name[3:]
        assert run.info.status == "FINISHED"
    assert not list((tmp_path / "ray").rglob("*.jsonl")), "a journal was left in a trial folder"
