"""The training hook: ``GradWatch`` and its parts.

    with gradwatch.GradWatch(every=100, experiment="mlp", run_name="lr=0.1", params={"lr": 0.1}) as watch:
        for step in range(steps):
            loss, grads = forward_backward(params, X[b], Y[b])
            watch.step(params, grads, loss=loss, lr=lr, loss_fn=lambda p: forward(p, X[b], Y[b]))
            for k in params:
                params[k] -= lr * grads[k]

Call ``step()`` after backprop and *before* the update: the check then runs at exactly the
parameters the gradients belong to. Gradients from another point (called after the update,
or from another batch than ``loss_fn`` sees) show up as mismatches in every tensor.

Data flows one way: the hook feeds the check engine and the statistics, hands records to the
tracking journal (shipped to MLflow in the background) and observations to the alert engine.
Monitoring never crashes or stalls training: a tracking outage is journaled and replayed,
webhooks are sent from a background thread, and a check that cannot run is logged, not raised.

Parts (each a module of this package):

    options     HookOptions: the validated, frozen options (schema shared with gradwatch.yaml)
    clock       LoopClock: the loop's own time vs the hook's (pure; fake-clock testable)
    schedule    Schedule: when statistics and checks run, the budget (pure)
    layout      TensorLayout: the tensors' names, gradient keys and shapes, checked every step
    statistics  Statistics (norms, quantiles, update ratios), StaleParams (arrays replaced,
                not updated)
    histograms  Histograms: which statistics steps also append |g| and |θ| histograms
    feed        AlertFeed: typed step records batched into the alert engine; alert sinks
    checks      CheckRunner: runs a check, records it, prints a failure once
    sigterm     SigtermGuard: SIGTERM ends the run KILLED
    watch       GradWatch: the coordinator
"""

from gradwatch.hook.clock import PAUSE_STEPS, LoopClock
from gradwatch.hook.feed import ALERT_BATCH_STEPS, ALERT_MAX_DELAY
from gradwatch.hook.options import DEFAULTS, HookOptions
from gradwatch.hook.schedule import (
    BUDGET_RESERVE,
    STATS_MAX_INTERVAL,
    STATS_MAX_METRICS_PER_SECOND,
    STATS_TIME_FRACTION,
    Schedule,
)
from gradwatch.hook.watch import GradWatch

__all__ = [
    "ALERT_BATCH_STEPS",
    "ALERT_MAX_DELAY",
    "BUDGET_RESERVE",
    "DEFAULTS",
    "PAUSE_STEPS",
    "STATS_MAX_INTERVAL",
    "STATS_MAX_METRICS_PER_SECOND",
    "STATS_TIME_FRACTION",
    "GradWatch",
    "HookOptions",
    "LoopClock",
    "Schedule",
]
