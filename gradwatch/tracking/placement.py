"""Where a new run goes when the user's script has an MLflow run of its own open.

    placement = place_run(tracking_uri=None, experiment=None, run_name="gw lr=0.5")
    placement.kind        # "own", "shared" or "child"

The rules, as MLflow users arrange their runs:

- no active run: the hook opens its **own** run (under ``parent_run_id`` when a
  ``gradwatch sweep`` gave one: a child of the sweep's run);
- an active run, and neither ``run_name`` nor ``experiment`` asks for another: the hook logs
  into it (**shared**; its series go under ``gradwatch/`` there, the run is left open);
- an active run and a ``run_name``, or an active run a hook of this process already logged
  into: a **child** run of it (tag ``mlflow.parentRunId``, in its experiment), as
  ``mlflow.start_run(nested=True)`` makes one; two trainings never share one history;
- an ``experiment`` that is not the active run's: InputError naming both;
- a ``tracking_uri`` that is not the active run's server: the hook's own run there.

The active run is found through ``sys.modules``: a script that has an active run has imported
MLflow already, so the training process never imports it for this. Only an explicit
``experiment`` beside an active run costs a request (the active run's experiment name).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from gradwatch.errors import InputError, TrackingError
from gradwatch.mlflow_access import resolve_tracking_uri
from gradwatch.schema import SHARED_PREFIX
from gradwatch.secrets import mask_uri

__all__ = ["CHILD", "OWN", "SHARED", "Placement", "place_run"]

OWN, SHARED, CHILD = "own", "shared", "child"

#: Active runs a tracker of this process logged into: a second hook there gets a child run.
_shared_runs: set[str] = set()


@dataclass(frozen=True)
class Placement:
    """Where the run goes. ``message`` is what the hook says about it (empty: nothing to say)."""

    kind: str
    tracking_uri: str
    run_id: str | None = None  # shared: the active run
    parent_run_id: str | None = None  # child: the run it is nested under
    experiment_id: str | None = None  # beside an active run: that run's experiment
    message: str = ""
    user_note: bool = False  # shared: the user's run has a description of its own


def place_run(
    tracking_uri: str | None,
    experiment: str | None,
    run_name: str | None,
    parent_run_id: str | None = None,
) -> Placement:
    """Decide where a run with these arguments goes (see the module docstring).

        place_run(None, None, None).kind == "own"   # no MLflow run active in this thread

    Raises InputError when ``experiment`` contradicts the active run's experiment.
    """
    mlflow = sys.modules.get("mlflow")
    active = mlflow.active_run() if mlflow is not None else None
    if active is None:
        uri = resolve_tracking_uri(tracking_uri)
        if parent_run_id:
            return Placement(CHILD, uri, parent_run_id=parent_run_id)
        return Placement(OWN, uri)
    active_id = active.info.run_id
    active_uri = resolve_tracking_uri(mlflow.get_tracking_uri())
    uri = resolve_tracking_uri(tracking_uri) if tracking_uri else active_uri
    if uri != active_uri:
        return Placement(
            OWN,
            uri,
            message=(
                f"gradwatch: your active MLflow run {active_id} is on {mask_uri(active_uri)}, "
                f"tracking_uri is {mask_uri(uri)}: this training gets its own run there"
            ),
        )
    exp_id = str(active.info.experiment_id)
    if experiment:
        active_exp = _experiment_name(mlflow, uri, exp_id)
        if experiment != active_exp:
            raise InputError(
                f"experiment={experiment!r} contradicts your active MLflow run {active_id}, "
                f"which is in experiment {active_exp!r}: drop experiment= to log into that run "
                f"(or a child of it with run_name=), or start the hook outside the active run"
            )
    if run_name or active_id in _shared_runs:
        why = (
            f"run_name={run_name!r} given"
            if active_id not in _shared_runs
            else "a gradwatch hook already logged into that run"
        )
        return Placement(
            CHILD,
            uri,
            parent_run_id=active_id,
            experiment_id=exp_id,
            message=(
                f"gradwatch: a child run{f' {run_name!r}' if run_name else ''} of your active "
                f"MLflow run {active_id} ({why}), as mlflow.start_run(nested=True) makes one"
            ),
        )
    _shared_runs.add(active_id)
    note = bool(active.data.tags.get("mlflow.note.content")) if active.data else False
    return Placement(
        SHARED,
        uri,
        run_id=active_id,
        experiment_id=exp_id,
        user_note=note,
        message=(
            f"gradwatch: logging into your active MLflow run {active_id}: the hook's series go "
            f"under {SHARED_PREFIX} ({SHARED_PREFIX}loss, {SHARED_PREFIX}grad_norm/<tensor> ...) "
            f"beside yours, its settings into the one param gradwatch.settings; the run stays "
            f"open for you to end"
        ),
    )


def _experiment_name(mlflow, uri: str, experiment_id: str) -> str:  # noqa: ANN001 - the module
    try:
        return mlflow.MlflowClient(uri).get_experiment(experiment_id).name
    except Exception as err:  # noqa: BLE001 - MLflow raises many kinds; one message for all
        raise TrackingError(
            f"cannot read the experiment of your active MLflow run on {mask_uri(uri)} to "
            f"compare it with experiment= ({type(err).__name__}: {mask_uri(str(err))[:200]}); "
            f"drop experiment= to log into the active run"
        ) from None
