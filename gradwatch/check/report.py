"""What a gradient check found: per coordinate, per tensor and overall.

report = gradwatch.check_gradients(loss_fn, params, grads)
print(report)                 # verdict and the worst coordinates
report.finding.kind, report.finding.hint   # the engine's conclusion, in words
report = CheckReport.from_dict(record)      # a checks.jsonl record, typed again

The engine alone judges a check: ``finding`` is its verdict, and every reader (the hook's
console, ``compare``, the run report) displays it, never re-derives it from the probes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gradwatch.schema import CHECK_FINDINGS

__all__ = ["CheckReport", "Finding", "FINDINGS", "Probe", "TensorReport", "VERDICTS"]

#: What a check concludes, worst kinds of evidence first after ``passed`` (see
#: :class:`Finding`); shared with the metric ``gradcheck/finding`` through ``gradwatch.schema``.
FINDINGS = CHECK_FINDINGS

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

    @classmethod
    def from_dict(cls, tensor: str, record: Mapping[str, Any]) -> Probe:
        index = record.get("index")
        verdict = str(record.get("verdict") or "ok")
        size = record.get("size")
        return cls(
            tensor,
            tuple(int(i) for i in index) if isinstance(index, list) else None,
            _float_any(record.get("analytic")),
            _float_any(record.get("numeric")),
            _float_any(record.get("rel_error")),
            verdict if verdict in _SEVERITY else "mismatch",
            _float_any(record.get("step"), 0.0),
            int(size) if isinstance(size, int) else 1,
            str(record.get("note") or ""),
            _float_any(record.get("resolved")),
        )


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
    #: Numeric and analytic gradients both ~0 in every probe: the loss does not depend on
    #: this tensor here (a bias feeding a batchnorm); information, not a failure.
    invariant: bool = False

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
            **({"invariant": True} if self.invariant else {}),
        }

    @classmethod
    def from_dict(cls, name: str, record: Mapping[str, Any]) -> TensorReport:
        shape = record.get("shape")
        tr = cls(
            name,
            tuple(int(i) for i in shape) if isinstance(shape, list) else (),
            str(record.get("dtype") or ""),
            _float_any(record.get("step")),
        )
        tr.invariant = bool(record.get("invariant"))
        for key, out in (("coords", tr.coords), ("directions", tr.directions)):
            probes = record.get(key)
            for p in probes if isinstance(probes, list) else ():
                if isinstance(p, Mapping):
                    out.append(Probe.from_dict(name, p))
        return tr


def _factor_text(factor: float) -> str:
    text = f"{factor:.4g}"
    if 0 < factor < 0.5:
        inverse = 1.0 / factor
        exact = abs(inverse - round(inverse)) <= 1e-4 * inverse
        if exact and not math.log10(round(inverse)).is_integer():  # e.g. 1/batch size
            text += f" (1/{round(inverse)})"
    return text


@dataclass(frozen=True)
class Finding:
    """The engine's conclusion about one check: the one verdict every reader shows.

        Finding("bug", ("W2",), 2.0, "a bug in the backward pass of W2").headline
        # 'BACKPROP BUG in W2 (analytic = 2 × numeric)'

    ``kind`` is one of :data:`FINDINGS`: ``passed``; ``bug`` (a backprop bug in ``tensors``;
    ``factor`` is set when their mismatches share one ratio analytic/numeric); ``factor``
    (every tensor is off by the same ``factor``: the loss and its gradient follow different
    conventions); ``call_order`` (re-evaluated at the parameters before a plain SGD update,
    the gradients agree: step() was called after the update); ``stochastic`` and ``timeout``
    (inconclusive). ``hint`` is the one sentence on the likeliest cause and what to do.
    """

    kind: str = "passed"
    tensors: tuple[str, ...] = ()
    factor: float | None = None
    hint: str = ""

    @property
    def inconclusive(self) -> bool:
        return self.kind in ("stochastic", "timeout")

    @property
    def headline(self) -> str:
        """The finding in a few words: what is wrong and where."""
        names = ", ".join(self.tensors)
        ratio = f" (analytic = {_factor_text(self.factor)} × numeric)" if self.factor else ""
        if self.kind == "bug":
            return f"BACKPROP BUG in {names}{ratio}" if names else "BACKPROP BUG"
        if self.kind == "factor":
            return f"every tensor's gradient off by one factor{ratio}"
        if self.kind == "call_order":
            return "gradients of other parameters: step() called after the update"
        if self.kind == "stochastic":
            return "INCONCLUSIVE: the loss is non-deterministic"
        if self.kind == "timeout":
            return "INCONCLUSIVE: check_timeout reached"
        return "passed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tensors": list(self.tensors),
            "factor": None if self.factor is None else _num(self.factor),
            "hint": self.hint,
            "headline": self.headline,
        }

    @classmethod
    def from_dict(cls, record: Any) -> Finding | None:
        """The finding of a ``to_dict()`` record, or None when it holds none (an older record)."""
        if not isinstance(record, Mapping) or record.get("kind") not in FINDINGS:
            return None
        factor = _float_or_none(record.get("factor"))
        tensors = record.get("tensors")
        names = tuple(str(t) for t in tensors) if isinstance(tensors, (list, tuple)) else ()
        return cls(str(record["kind"]), names, factor, str(record.get("hint") or ""))


def _float_or_none(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _float_any(value: Any, default: float = math.nan) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


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
    finding: Finding = field(default_factory=Finding)
    #: Shared directional probes over groups of tensors (only when a check has more tensors
    #: than ``num_samples / 2``; see ``gradwatch.check._groups``).
    groups: list[Probe] = field(default_factory=list)

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
        """The ``k`` probes with the most severe verdict, coordinates first, then the largest
        relative error."""
        probes = [p for t in self.per_param.values() for p in t.probes]
        # A coordinate names a place to look: it goes before a direction of the same verdict.
        probes.sort(
            key=lambda p: (_SEVERITY[p.verdict], p.index is not None, _sortable(p.rel_error)),
            reverse=True,
        )
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
        if self.finding.kind != "passed":
            lines.append(self.finding.headline)
        if self.finding.hint:
            lines.append(f"hint: {self.finding.hint}")
        return "\n".join(lines + self.probe_lines())

    def probe_lines(self) -> list[str]:
        """The five worst probes and the notes (the probe table of the console)."""
        lines = [f"  {p}" for p in self.worst(5)]
        lines.extend(f"note: {n}" for n in self.notes if n != self.finding.hint)
        return lines

    def summary_lines(self) -> list[str]:
        """A failing check in a few lines: verdict and tensors, the worst error, the hint."""
        evals = f"{self.num_evals} loss evaluations"
        if self.status == "inconclusive":
            lines = [f"gradient check {self.finding.headline} ({evals})"]
        else:
            head = "FAILED" if self.status == "failed" else "PASSED"
            worst = self.worst(1)
            where = f" at {worst[0].label}" if worst and self.status == "failed" else ""
            lines = [
                f"gradient check {head}: {self.finding.headline}; worst rel error "
                f"{self.max_rel_error:.1e}{where} ({evals})"
            ]
        if self.finding.hint:
            lines.append(f"hint: {self.finding.hint}")
        return lines

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> CheckReport:
        """A report from its ``to_dict()`` form (a ``checks.jsonl`` record), typed again.

            report = CheckReport.from_dict(json.loads(line))

        Tolerates older and damaged records: missing fields take neutral values; a record
        without a finding gets the one its status implies (``bug`` naming the mismatched
        tensors for a failed check), never one re-derived from the probes.
        """
        per_param: dict[str, TensorReport] = {}
        raw_tensors = record.get("per_param")
        for name, t in raw_tensors.items() if isinstance(raw_tensors, Mapping) else ():
            if isinstance(t, Mapping):
                per_param[str(name)] = TensorReport.from_dict(str(name), t)
        status = str(record.get("status") or ("passed" if record.get("passed") else "failed"))
        finding = Finding.from_dict(record.get("finding"))
        if finding is None:
            if status == "passed":
                finding = Finding()
            elif status == "inconclusive":
                finding = Finding("stochastic")
            else:
                names = tuple(n for n, t in per_param.items() if t.num_mismatches)
                finding = Finding("bug", names)
        seed = record.get("seed")
        notes = record.get("notes")
        groups = record.get("groups") if isinstance(record.get("groups"), list) else []
        return cls(
            passed=bool(record.get("passed", status == "passed")),
            status=status,
            max_rel_error=_float_any(record.get("max_rel_error")),
            difference=_float_any(record.get("difference")),
            num_evals=int(_float_any(record.get("num_evals"), 0.0)),
            seconds=_float_any(record.get("seconds")),
            mode=str(record.get("mode") or ""),
            seed=int(seed) if isinstance(seed, int) else None,
            loss=_float_any(record.get("loss")),
            stochastic_loss=bool(record.get("stochastic_loss")),
            per_param=per_param,
            notes=[str(n) for n in notes] if isinstance(notes, list) else [],
            finding=finding,
            groups=[Probe.from_dict("(group)", g) for g in groups if isinstance(g, Mapping)],
        )

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
            "finding": self.finding.to_dict(),
            "per_param": {name: t.to_dict() for name, t in self.per_param.items()},
            **({"groups": [p.to_dict() for p in self.groups]} if self.groups else {}),
        }


def _sortable(x: float) -> float:
    return math.inf if math.isnan(x) else x
