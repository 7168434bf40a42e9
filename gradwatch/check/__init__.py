"""The gradient-check engine: pure numpy, no MLflow.

from gradwatch.check import check_gradients
report = check_gradients(loss_fn, params, grads, mode="auto", num_samples=32)
"""

from gradwatch.check._explain import shared_ratio
from gradwatch.check._inputs import match_gradient_keys, param_items
from gradwatch.check.engine import (
    DEFAULT_NUM_SAMPLES,
    MAX_NUM_SAMPLES,
    MODES,
    check_gradients,
    validate_options,
)
from gradwatch.check.report import FINDINGS, VERDICTS, CheckReport, Finding, Probe, TensorReport

__all__ = [
    "DEFAULT_NUM_SAMPLES",
    "FINDINGS",
    "MAX_NUM_SAMPLES",
    "MODES",
    "VERDICTS",
    "CheckReport",
    "Finding",
    "Probe",
    "TensorReport",
    "check_gradients",
    "match_gradient_keys",
    "param_items",
    "shared_ratio",
    "validate_options",
]
