"""Fetch a baseline run's metric histories from MLflow, for the ``baseline_drift`` rule.

    series = load_baseline("3f2c...", tracking_uri="http://127.0.0.1:5000")
    series = load_baseline(tracking_uri=uri)          # latest run tagged gradwatch.baseline
    rules = attach_baselines(config.rules, tracking_uri=uri)   # before AlertEngine(rules)

The only alerts module that imports MLflow, and only inside these functions, so detectors and
the engine stay importable (and replayable) without it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from collections.abc import Iterable, Sequence

from gradwatch.alerts.detectors import DEFAULT_BASELINE_METRICS
from gradwatch.alerts.engine import Rule
from gradwatch.errors import InputError, TrackingError
from gradwatch.mlflow_access import experiment_id, get_client, mlflow_errors
from gradwatch.schema import TAG_BASELINE, hook_keys

__all__ = ["BASELINE_TAG", "attach_baselines", "find_baseline_run", "load_baseline"]

logger = logging.getLogger("gradwatch.alerts")

#: Tag marking a run as a baseline (any value but false/0/no).
BASELINE_TAG = TAG_BASELINE
_FALSY = ("", "false", "0", "no", "off")
_SEARCH_LIMIT = 50  # tagged runs looked at, newest first


def _client(tracking_uri: str | None):
    try:
        return get_client(tracking_uri)
    except InputError as exc:  # no such store: the rule cannot load its baseline
        raise TrackingError(str(exc)) from None


def find_baseline_run(tracking_uri: str | None = None, experiment: str | None = None) -> str:
    """The id of the newest run tagged ``gradwatch.baseline`` (in ``experiment`` if named).

    run_id = find_baseline_run("http://127.0.0.1:5000", experiment="mlp")
    """
    from mlflow.entities import ViewType

    client = _client(tracking_uri)
    with mlflow_errors(client.tracking_uri, "cannot search for a baseline run"):
        if experiment is not None:
            try:
                ids = [experiment_id(client, experiment)]
            except InputError as exc:  # names the experiments there are
                raise TrackingError(f"baseline experiment: {exc}") from None
        else:
            ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        runs = client.search_runs(
            ids,
            filter_string=f"tags.`{BASELINE_TAG}` LIKE '%'",
            order_by=["attributes.start_time DESC"],
            max_results=_SEARCH_LIMIT,
        )
    for run in runs:
        if run.data.tags.get(BASELINE_TAG, "").strip().lower() not in _FALSY:
            return run.info.run_id
    where = f" in experiment {experiment!r}" if experiment else ""
    raise TrackingError(
        f"no run tagged {BASELINE_TAG}{where}; tag one (mlflow.set_tag('{BASELINE_TAG}', 'true')) "
        "or give the rule a run_id"
    )


def load_baseline(
    run_id: str | None = None,
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    metrics: Sequence[str] = DEFAULT_BASELINE_METRICS,
) -> dict[str, dict[int, float]]:
    """Metric histories ``{metric: {step: value}}`` of a baseline run, for ``metrics`` globs.

        series = load_baseline(run_id, tracking_uri=uri, metrics=["grad_norm/*"])

    ``run_id=None``: the newest run tagged ``gradwatch.baseline`` (see
    :func:`find_baseline_run`). Raises TrackingError when the run or server is unavailable.
    """
    if run_id is None:
        run_id = find_baseline_run(tracking_uri, experiment)
    client = _client(tracking_uri)
    with mlflow_errors(client.tracking_uri, f"cannot load baseline run {run_id!r}"):
        run = client.get_run(run_id)
        names = hook_keys(run.data.metrics, run.data.tags)  # gradwatch/loss -> loss, if shared
        keys = [k for k in names if any(fnmatch.fnmatchcase(k, p) for p in metrics)]
        series = {}
        for key in sorted(keys):
            series[key] = {
                int(m.step): float(m.value) for m in client.get_metric_history(run_id, names[key])
            }
    return series


def attach_baselines(rules: Iterable[Rule], tracking_uri: str | None = None) -> list[Rule]:
    """Return ``rules`` with each ``baseline_drift`` rule's baseline series loaded.

        engine = AlertEngine(attach_baselines(config.rules, tracking_uri=uri))

    Rules that already carry ``params["baseline"]``, and disabled rules, are kept as they are. A baseline that
    cannot be loaded disables only its rule (logged as a warning): monitoring must not keep
    training from starting.
    """
    out = []
    for rule in rules:
        # A rule switched off (`enabled: false`) needs no baseline: nothing to load or warn.
        if (
            rule.type != "baseline_drift"
            or not rule.enabled
            or rule.params.get("baseline") is not None
        ):
            out.append(rule)
            continue
        params = dict(rule.params)
        try:
            params["baseline"] = load_baseline(
                params.get("run_id"),
                tracking_uri=tracking_uri,
                experiment=params.get("experiment"),
                metrics=params.get("metrics", DEFAULT_BASELINE_METRICS),
            )
        except TrackingError as exc:
            logger.warning("gradwatch alert rule %r disabled: %s", rule.name, exc)
            out.append(dataclasses.replace(rule, enabled=False))
            continue
        out.append(dataclasses.replace(rule, params=params))
    return out
