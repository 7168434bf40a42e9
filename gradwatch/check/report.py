"""What a gradient check found: per coordinate, per tensor and overall.

report = gradwatch.check_gradients(loss_fn, params, grads)
print(report)                 # verdict and the worst coordinates
report.per_param["W2"].verdict, report.to_dict()
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Probe", "TensorReport", "CheckReport", "VERDICTS"]

#: ``ok``: agrees; ``noise``: disagreed at first, explained by round-off or truncation (the
#: discrepancy changes with the step as they predict and vanishes in the extrapolation);
#: ``kink``: a non-differentiable point (ReLU at 0) lies within the step and the analytic value
#: is a one-sided derivative there; ``clipped``: the analytic value sits exactly at a bound ±c
#: shared by other entries while the loss is steeper (element-wise gradient clipping; does not
#: fail the check); ``mismatch``: a backprop bug. In order of severity.
VERDICTS = ("ok", "noise", "kink", "clipped", "mismatch")
_SEVERITY = {v: i for i, v in enumerate(VERDICTS)}


def _fmt_index(index: tuple[int, ...]) -> str:
    return "[" + ",".join(str(i) for i in index) + "]"


@dataclass
class Probe:
    """One comparison of analytic and numerical derivative.

    A coordinate probe has ``index`` (a tuple into the tensor); a directional probe has
    ``index=None`` and ``size`` coordinates moved at once along a random direction.
    """

    tensor: str
    index: tuple[int, ...] | None
    analytic: float
    numeric: float
    rel_error: float
    verdict: str = "ok"
    step: float = 0.0
    size: int = 1
    note: str = ""
    #: The relative error that remains after triage: against the extrapolated derivative
    #: (noise, mismatch) or the one-sided derivative on the analytic value's side (kink);
    #: ``rel_error`` when the probe agreed at once. ``None`` at construction means "not
    #: triaged" and is replaced by ``rel_error``.
    resolved: float | None = None

    def __post_init__(self) -> None:
        if self.resolved is None:
            self.resolved = self.rel_error

    @property
    def label(self) -> str:
        if self.index is None:
            return f"{self.tensor}<direction over {self.size} coords>"
        return f"{self.tensor}{_fmt_index(self.index)}"

    def __str__(self) -> str:
        text = (
            f"{self.label}: analytic {self.analytic:.6g} numeric {self.numeric:.6g} "
            f"rel {self.rel_error:.1e}"
        )
        resolved_differs = self.rel_error > 0 and not 0.5 <= self.resolved / self.rel_error <= 2
        if self.verdict in ("noise", "kink") and resolved_differs:
            text += f" (resolved {self.resolved:.1e})"
        text += f" ({self.verdict})"
        return f"{text} {self.note}" if self.note else text

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": list(self.index) if self.index is not None else None,
            "analytic": _num(self.analytic),
            "numeric": _num(self.numeric),
            "rel_error": _num(self.rel_error),
            "resolved": _num(self.resolved),
            "verdict": self.verdict,
            "step": _num(self.step),
            "size": self.size,
            **({"note": self.note} if self.note else {}),
        }


def _num(x: float) -> float | str:
    """JSON has no NaN/Inf: keep them as strings so ``to_dict`` always serializes."""
    x = float(x)
    return x if math.isfinite(x) else str(x)


@dataclass
class TensorReport:
    """Results for one parameter tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    step: float
    coords: list[Probe] = field(default_factory=list)
    directions: list[Probe] = field(default_factory=list)

    @property
    def probes(self) -> list[Probe]:
        return self.coords + self.directions

    @property
    def indices(self) -> list[tuple[int, ...]]:
        return [p.index for p in self.coords]

    @property
    def analytic(self) -> list[float]:
        return [p.analytic for p in self.coords]

    @property
    def numeric(self) -> list[float]:
        return [p.numeric for p in self.coords]

    @property
    def rel_errors(self) -> list[float]:
        return [p.rel_error for p in self.coords]

    @property
    def verdicts(self) -> list[str]:
        return [p.verdict for p in self.coords]

    @property
    def max_rel_error(self) -> float:
        """The largest triage-resolved error (``Probe.resolved``), clipped probes excluded:
        stable from check to check on a correct network, kinks and noise included only with
        what remains after triage."""
        errs = [p.resolved for p in self.probes if p.verdict != "clipped"]
        return max(errs, key=_sortable) if errs else 0.0

    @property
    def max_raw_rel_error(self) -> float:
        """The largest first-pass error (``Probe.rel_error``), before triage."""
        errs = [p.rel_error for p in self.probes]
        return max(errs, key=_sortable) if errs else 0.0

    @property
    def num_clipped(self) -> int:
        return sum(p.verdict == "clipped" for p in self.probes)

    @property
    def num_mismatches(self) -> int:
        return sum(p.verdict == "mismatch" for p in self.probes)

    @property
    def verdict(self) -> str:
        """The most severe verdict of any probe of this tensor."""
        return max((p.verdict for p in self.probes), key=_SEVERITY.__getitem__, default="ok")

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "step": _num(self.step),
            "max_rel_error": _num(self.max_rel_error),
            "max_raw_rel_error": _num(self.max_raw_rel_error),
            "verdict": self.verdict,
            "num_mismatches": self.num_mismatches,
            "num_clipped": self.num_clipped,
            "coords": [p.to_dict() for p in self.coords],
            "directions": [p.to_dict() for p in self.directions],
        }


@dataclass
class CheckReport:
    """The outcome of :func:`gradwatch.check_gradients`.

    ``passed`` is False when any probe is a ``mismatch`` or when the check was inconclusive
    (``status == "inconclusive"``, e.g. a non-deterministic loss). ``difference`` is the classic
    ‖g − g̃‖/(‖g‖ + ‖g̃‖) over the checked coordinates (over the directional probes when no
    coordinate was checked). ``max_rel_error`` is the largest triage-resolved error of any
    tensor (see :attr:`TensorReport.max_rel_error`). Relative-error bands: > 1e-2 almost surely a bug, 1e-4…1e-2
    suspicious, < 1e-7 good (float64).
    """

    passed: bool
    status: str
    max_rel_error: float
    difference: float
    num_evals: int
    seconds: float
    mode: str
    seed: int | None
    loss: float
    stochastic_loss: bool
    per_param: dict[str, TensorReport]
    notes: list[str] = field(default_factory=list)

    @property
    def num_mismatches(self) -> int:
        return sum(t.num_mismatches for t in self.per_param.values())

    @property
    def num_clipped(self) -> int:
        return sum(t.num_clipped for t in self.per_param.values())

    @property
    def clipped_tensors(self) -> list[str]:
        """Tensors with probes at an element-wise clipping bound (they do not fail the check)."""
        return [name for name, t in self.per_param.items() if t.num_clipped]

    @property
    def mismatched_tensors(self) -> list[str]:
        return [name for name, t in self.per_param.items() if t.num_mismatches]

    def worst(self, k: int = 5) -> list[Probe]:
        """The ``k`` probes with the most severe verdict, then the largest relative error."""
        probes = [p for t in self.per_param.values() for p in t.probes]
        probes.sort(key=lambda p: (_SEVERITY[p.verdict], _sortable(p.rel_error)), reverse=True)
        return probes[:k]

    def __str__(self) -> str:
        head = {
            "passed": "gradient check PASSED",
            "failed": "gradient check FAILED",
            "inconclusive": "gradient check INCONCLUSIVE",
        }[self.status]
        lines = [
            f"{head} ({self.mode}): max rel error {self.max_rel_error:.1e}, difference "
            f"{self.difference:.3e}, {self.num_evals} loss evaluations in {self.seconds:.3f}s"
        ]
        if self.mismatched_tensors:
            lines.append("mismatched tensors: " + ", ".join(self.mismatched_tensors))
        lines.extend(f"  {p}" for p in self.worst(5))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "status": self.status,
            "max_rel_error": _num(self.max_rel_error),
            "difference": _num(self.difference),
            "num_evals": self.num_evals,
            "seconds": self.seconds,
            "mode": self.mode,
            "seed": self.seed,
            "loss": _num(self.loss),
            "stochastic_loss": self.stochastic_loss,
            "num_mismatches": self.num_mismatches,
            "num_clipped": self.num_clipped,
            "notes": list(self.notes),
            "per_param": {name: t.to_dict() for name, t in self.per_param.items()},
        }


def _sortable(x: float) -> float:
    return math.inf if math.isnan(x) else x
