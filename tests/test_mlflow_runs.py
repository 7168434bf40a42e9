"""The hook in the user's own MLflow habits, through a real ``mlflow server``: its own run, the
user's active run (shared, series under ``gradwatch/``), child runs for a ``run_name`` or a
second hook, an experiment that contradicts the active run, and the user's own ``loss``."""

from __future__ import annotations

import mlflow
import pytest

from gradwatch import GradWatch, InputError
from gradwatch.demo import MLP, make_blobs
from gradwatch.schema import (
    PARAM_SETTINGS,
    SHARED_PREFIX,
    TAG_METRIC_PREFIX,
    TAG_PARENT_RUN,
    expand_settings,
    hook_keys,
)

pytestmark = pytest.mark.server
X, Y = make_blobs(256, 12, 3, seed=0)
STEPS = 30


def _train(watch: GradWatch, steps: int = STEPS, user_logs: bool = False) -> None:
    mlp = MLP([12, 16, 3], seed=0)
    params = mlp.params
    for s in range(steps):
        b = slice((s * 32) % 256, (s * 32) % 256 + 32)
        loss, grads = mlp.loss_and_grads(params, X[b], Y[b])
        watch.step(params, grads, loss=loss, lr=0.1, loss_fn=lambda p, b=b: mlp.loss(p, X[b], Y[b]))
        if user_logs:  # the user's own logging of the same names, as MLflow users do
            mlflow.log_metrics({"loss": float(loss), "lr": 0.1}, step=s)
        for k in params:
            params[k] -= 0.1 * grads["d" + k]


@pytest.fixture
def client(tracking_uri):
    mlflow.set_tracking_uri(tracking_uri)
    yield mlflow.MlflowClient(tracking_uri)
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _children(client, parent) -> list:
    runs = client.search_runs(
        [parent.info.experiment_id], f"tags.`{TAG_PARENT_RUN}` = '{parent.info.run_id}'"
    )
    return sorted(runs, key=lambda r: r.info.start_time)


def test_no_active_run_the_hook_opens_its_own(client, capsys):
    with GradWatch(every=10, experiment="own-run", run_name="own", config=False) as watch:
        _train(watch)
    run = client.get_run(watch.close_result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "own"
    assert TAG_PARENT_RUN not in run.data.tags and TAG_METRIC_PREFIX not in run.data.tags
    assert _steps(client, run.info.run_id, "loss") == list(range(STEPS))
    # The hook's settings are one param, not one per setting.
    hook_params = [k for k in run.data.params if k.startswith("gradwatch.")]
    assert hook_params == [PARAM_SETTINGS]
    assert expand_settings(run.data.params)["gradwatch.every"] == "10"
    assert "active MLflow run" not in capsys.readouterr().err  # nothing to say about placement


def test_active_run_is_shared_and_the_users_loss_is_never_doubled(client, capsys):
    mlflow.set_experiment("shared-run")
    with mlflow.start_run(run_name="mine") as mine:
        mlflow.log_params({"lr": 0.1, "batch": 32})
        with GradWatch(every=10, config=False, params={"hidden": 16}) as watch:
            _train(watch, user_logs=True)
        assert mlflow.active_run().info.run_id == mine.info.run_id  # left open for the user
        assert client.get_run(mine.info.run_id).info.status == "RUNNING"
    err = capsys.readouterr().err
    assert err.count(f"logging into your active MLflow run {mine.info.run_id}") == 1
    assert SHARED_PREFIX + "loss" in err
    run = client.get_run(mine.info.run_id)
    assert run.info.status == "FINISHED"
    # The user's loss and lr: their own points, once each; the hook's under gradwatch/.
    assert _steps(client, mine.info.run_id, "loss") == list(range(STEPS))
    assert _steps(client, mine.info.run_id, "lr") == list(range(STEPS))
    assert _steps(client, mine.info.run_id, SHARED_PREFIX + "loss") == list(range(STEPS))
    assert run.data.tags[TAG_METRIC_PREFIX] == SHARED_PREFIX
    hook_metrics = [k for k in run.data.metrics if k not in ("loss", "lr")]
    assert hook_metrics and all(k.startswith(SHARED_PREFIX) for k in hook_metrics)
    assert SHARED_PREFIX + "gradcheck/passed" in run.data.metrics
    # The user's params table: theirs, plus one entry for the hook's settings.
    assert run.data.params.keys() == {"lr", "batch", "hidden", PARAM_SETTINGS}
    # Readers see the hook's series under the schema's names.
    assert hook_keys(run.data.metrics, run.data.tags)["loss"] == SHARED_PREFIX + "loss"


def test_run_name_in_the_users_run_opens_a_child(client, capsys):
    mlflow.set_experiment("child-run")
    with mlflow.start_run() as parent:
        with GradWatch(every=10, run_name="gw lr=0.1", config=False) as watch:
            _train(watch)
    err = capsys.readouterr().err
    assert err.count("a child run 'gw lr=0.1' of your active MLflow run") == 1
    (child,) = _children(client, parent)
    assert child.info.run_id == watch.close_result.run_id
    assert child.info.run_name == "gw lr=0.1" and child.info.status == "FINISHED"
    assert child.info.experiment_id == parent.info.experiment_id
    assert _steps(client, child.info.run_id, "loss") == list(range(STEPS))
    assert client.get_run(parent.info.run_id).data.metrics == {}  # nothing merged into it


@pytest.mark.slow
def test_two_hooks_in_one_run_never_share_a_history(client):
    """The issue's case: two named hooks one after the other in one parent run."""
    mlflow.set_experiment("two-hooks")
    with mlflow.start_run() as parent:
        for name in ("gw lr=0.5", "gw lr=0.05"):
            with GradWatch(every=10, run_name=name, config=False, params={"lr": name[-3:]}) as w:
                _train(w)
    children = _children(client, parent)
    assert [c.info.run_name for c in children] == ["gw lr=0.5", "gw lr=0.05"]
    for child in children:
        assert _steps(client, child.info.run_id, "loss") == list(range(STEPS))
    assert client.get_run(parent.info.run_id).data.metrics == {}
    assert not any(
        k.startswith("gradwatch.param_conflict")
        for k in client.get_run(parent.info.run_id).data.tags
    )


@pytest.mark.slow
def test_a_second_hook_in_a_run_already_shared_gets_a_child(client, capsys):
    mlflow.set_experiment("second-hook")
    with mlflow.start_run() as parent:
        with GradWatch(every=10, config=False) as first:
            _train(first)
        with GradWatch(every=10, config=False) as second:
            _train(second)
    assert first.close_result.run_id == parent.info.run_id
    (child,) = _children(client, parent)
    assert child.info.run_id == second.close_result.run_id
    assert "a gradwatch hook already logged into that run" in capsys.readouterr().err
    # Each training's loss once, in its own run.
    assert _steps(client, parent.info.run_id, SHARED_PREFIX + "loss") == list(range(STEPS))
    assert _steps(client, child.info.run_id, "loss") == list(range(STEPS))


def test_an_experiment_that_contradicts_the_active_run_is_an_error(client):
    mlflow.set_experiment("users-exp")
    with mlflow.start_run() as mine:
        with pytest.raises(InputError) as caught:
            GradWatch(every=10, experiment="other-exp", config=False).start()
        message = str(caught.value)
        assert "'other-exp'" in message and "'users-exp'" in message
        assert mine.info.run_id in message
        # The same experiment named explicitly is no contradiction: the run is shared.
        with GradWatch(every=10, experiment="users-exp", config=False) as watch:
            _train(watch, 3)
    assert watch.close_result.run_id == mine.info.run_id
    assert client.get_experiment_by_name("other-exp") is None  # nothing created there
