"""Compare two sets of weights round by round and tensor by tensor: the library behind
``refsim compare A B``.

A is the candidate and B the reference, as ``numpy.testing.assert_allclose(actual, desired)``.
Both are read by ``refsim.validation.weight_files`` (refsim traces, checkpoints, flat vectors,
named arrays, PyTorch state dicts) and compared in float64. For each round both hold and each
tensor (B's order):

* ``max_abs = max |a - b|`` over the elements;
* ``max_rel = max_abs / max(max |b|, tiny)``, tiny = ``np.finfo(np.float64).tiny``: the
  largest difference relative to the tensor's scale (not elementwise, so a near-zero element
  of b does not blow it up);
* an element *exceeds* the tolerance when ``numpy.isclose(a, b, rtol, atol)`` is False, i.e.
  ``|a - b| > atol + rtol * |b|``, or when a or b is NaN or +-Inf there (a non-finite value
  never agrees, even with the same value on the other side);
* the *first divergence* is the first (round, tensor) with an exceeding element, rounds
  ascending, tensors in B's order; the verdict is "agree" when there is none.

Rounds: when both inputs number their snapshots, the rounds they share are compared and the
others are listed (``rounds_only_in_a`` / ``_b``); sharing none is an error. A snapshot
without a round (a plain named-array file, a flat vector) is compared with the other input's
last snapshot. Different tensor names or shapes in a compared round are errors naming them.

Default tolerances, chosen by the less precise dtype of the two inputs (:data:`TOLERANCES`):
float64 rtol 1e-9, atol 1e-12; float32 (or lower) rtol 1e-4, atol 1e-6. refsim's own PyTorch
FedAvg cross-check (``tests/test_validation_torch.py``) stays far inside both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from refsim.validation.weight_files import Layout, Snapshot, WeightSeries, load_pair

__all__ = ["TOLERANCES", "default_tolerance", "TensorDiff", "RoundSummary", "Comparison",
           "tensor_diff", "compare_series", "compare_paths"]

TOLERANCES = {np.dtype(np.float64): (1e-9, 1e-12), np.dtype(np.float32): (1e-4, 1e-6)}
TINY = float(np.finfo(np.float64).tiny)


def default_tolerance(*dtypes) -> tuple[float, float]:
    """(rtol, atol) for comparing arrays of these dtypes: float64's only if all are float64."""
    if all(np.dtype(d) == np.float64 for d in dtypes):
        return TOLERANCES[np.dtype(np.float64)]
    return TOLERANCES[np.dtype(np.float32)]


@dataclass(frozen=True)
class TensorDiff:
    """How one tensor of A differs from B's in one round (definitions in the module docstring).

    num_exceeding : elements beyond ``atol + rtol * |b|`` (NaN and Inf included), of ``size``.
    worst_index : the exceeding element furthest beyond the tolerance (the first non-finite
        one if any), and worst_a, worst_b its values; all None when nothing exceeds.
    """
    round: int | None
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    num_exceeding: int
    size: int
    worst_index: tuple[int, ...] | None
    worst_a: float | None
    worst_b: float | None

    @property
    def exceeds(self) -> bool:
        return self.num_exceeding > 0


@dataclass(frozen=True)
class RoundSummary:
    """One round: the largest differences over its tensors and how many tensors exceed."""
    round: int | None
    num_tensors: int
    max_abs: float
    max_rel: float
    num_exceeding_tensors: int
    worst_tensor: str | None  # the tensor with the largest max_rel > 0 (NaN counts as largest)


@dataclass(frozen=True)
class Comparison:
    """The result of comparing candidate ``a`` with reference ``b``."""
    a: WeightSeries
    b: WeightSeries
    rtol: float
    atol: float
    diffs: tuple[TensorDiff, ...]  # rounds ascending, tensors in B's order
    rounds_only_in_a: tuple[int, ...]
    rounds_only_in_b: tuple[int, ...]

    @property
    def first_divergence(self) -> TensorDiff | None:
        return next((d for d in self.diffs if d.exceeds), None)

    @property
    def agree(self) -> bool:
        return self.first_divergence is None

    @property
    def rounds(self) -> tuple[int | None, ...]:
        return tuple(dict.fromkeys(d.round for d in self.diffs))

    def by_round(self) -> list[RoundSummary]:
        """One :class:`RoundSummary` per compared round, ascending."""
        out = []
        for r in self.rounds:
            ds = [d for d in self.diffs if d.round == r]
            worst = max(ds, key=lambda d: np.inf if np.isnan(d.max_rel) else d.max_rel)
            out.append(RoundSummary(r, len(ds), _nanmax([d.max_abs for d in ds]),
                                    _nanmax([d.max_rel for d in ds]),
                                    sum(d.exceeds for d in ds),
                                    None if worst.max_rel == 0 else worst.name))
        return out

    @property
    def float32(self) -> bool:
        """Whether either side holds float32 (or less precise) weights."""
        return any(np.dtype(d).itemsize < 8 for d in (*self.a.dtypes, *self.b.dtypes))

    def float32_divergence(self) -> dict | None:
        """For a float32 comparison that diverges: from which round, how far there and at the
        last compared round, and what to do (``advice``); None otherwise.

        In float32 two correct CNN implementations part within a few dozen SGD steps (ReLU and
        max-pool near-ties, ``docs/validation.md``), so the size of such a divergence says
        nothing about correctness; ``refsim compare-steps`` checks each local step instead.
        """
        first = self.first_divergence
        if first is None or not self.float32:
            return None
        rounds = self.by_round()
        at_first = next(r for r in rounds if r.round == first.round)
        where = "-" if first.round is None else first.round
        return {"from_round": first.round, "max_rel_from": at_first.max_rel,
                "last_round": rounds[-1].round, "max_rel_last": rounds[-1].max_rel,
                "advice": (f"Two correct float32 implementations part within a few dozen SGD "
                           f"steps (near-ties of ReLU and max-pool fall differently), so this "
                           f"divergence is not by itself a bug. Check the local steps of round "
                           f"{where} one at a time: record a client's weights before and after "
                           f"each step and run refsim compare-steps YOURS.npz TRACE --round "
                           f"{where} --client K (docs/validation.md, section 6); or compare a "
                           f"float64 run, where correct implementations agree to ~1e-15")}

    def to_dict(self) -> dict:
        """Plain JSON-ready data: inputs, tolerance, verdict, first divergence, every diff.
        Non-finite floats become the strings "nan", "inf", "-inf"."""
        first = self.first_divergence
        f32 = self.float32_divergence()
        return {
            "a": _series_dict(self.a), "b": _series_dict(self.b),
            "rtol": self.rtol, "atol": self.atol,
            "rule": "|a - b| <= atol + rtol * |b| elementwise (numpy.isclose); NaN/Inf diverge",
            "verdict": "agree" if self.agree else "diverge",
            "first_divergence": None if first is None else _diff_dict(first),
            "float32_divergence": None if f32 is None else _json_floats(f32),
            "rounds": [_json_floats(vars(s)) for s in self.by_round()],
            "rounds_only_in_a": list(self.rounds_only_in_a),
            "rounds_only_in_b": list(self.rounds_only_in_b),
            "tensors": [_diff_dict(d) for d in self.diffs],
        }


def _nanmax(values) -> float:
    return float("nan") if any(np.isnan(v) for v in values) else float(max(values))


def _json_floats(d: dict) -> dict:
    return {k: (repr(v) if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in d.items()}


def _diff_dict(d: TensorDiff) -> dict:
    out = _json_floats(vars(d))
    out["shape"] = list(d.shape)
    out["worst_index"] = None if d.worst_index is None else list(d.worst_index)
    return out


def _series_dict(s: WeightSeries) -> dict:
    return {"path": s.path, "kind": s.kind, "model": s.model, "mapping": s.mapping,
            "rounds": list(s.rounds), "dtypes": list(s.dtypes)}


def tensor_diff(a: np.ndarray, b: np.ndarray, rtol: float, atol: float,
                round_: int | None = None, name: str = "") -> TensorDiff:
    """Compare one tensor a with its reference b (same shape; see the module docstring).

    >>> d = tensor_diff(np.array([1.0, 2.0, np.nan]), np.array([1.0, 2.1, 3.0]), 1e-9, 0.0)
    >>> d.num_exceeding, d.worst_index, d.max_abs
    (2, (2,), nan)
    """
    if a.shape != b.shape:
        raise ValueError(f"round {round_}, tensor {name!r}: shapes {a.shape} and {b.shape} differ")
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    finite = np.isfinite(a64) & np.isfinite(b64)
    with np.errstate(invalid="ignore", over="ignore"):  # Inf - Inf is NaN, and counts as such
        diff = np.abs(a64 - b64)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(b64).max()) if b64.size else 0.0
        max_rel = max_abs / max(scale, TINY) if np.isfinite(scale) else float("nan")
        excess = np.where(finite, diff - (atol + rtol * np.abs(b64)), np.inf)
        exceeding = ~(np.isclose(a64, b64, rtol=rtol, atol=atol) & finite)
    count = int(exceeding.sum())
    worst = worst_a = worst_b = None
    if count:
        worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), a.shape))
        worst_a, worst_b = float(a64[worst]), float(b64[worst])
    return TensorDiff(round_, name, tuple(a.shape), max_abs, max_rel, count, int(a.size), worst,
                      worst_a, worst_b)


def _pairs(a: WeightSeries, b: WeightSeries):
    """[(round label, snapshot of a, snapshot of b)], rounds only in a, rounds only in b."""
    sa, sb = a.snapshots, b.snapshots
    if sa[-1].round is None or sb[-1].round is None:  # a single unnumbered snapshot
        label = sb[-1].round if sa[-1].round is None else sa[-1].round
        return ([(label, sa[-1], sb[-1])], tuple(s.round for s in sa[:-1]),
                tuple(s.round for s in sb[:-1]))
    ra, rb = {s.round: s for s in sa}, {s.round: s for s in sb}
    common = sorted(set(ra) & set(rb))
    if not common:
        raise ValueError(f"no round in common: {a.path} has rounds {sorted(ra)}, "
                         f"{b.path} has rounds {sorted(rb)}")
    return ([(t, ra[t], rb[t]) for t in common], tuple(sorted(set(ra) - set(rb))),
            tuple(sorted(set(rb) - set(ra))))


def _check_names_and_shapes(label, x: Snapshot, y: Snapshot, a: WeightSeries,
                            b: WeightSeries) -> None:
    only_a = [k for k in x.tensors if k not in y.tensors]
    only_b = [k for k in y.tensors if k not in x.tensors]
    if only_a or only_b:
        raise ValueError(f"round {label}: tensor names differ: only in A ({a.path}): {only_a}; "
                         f"only in B ({b.path}): {only_b}")
    for name, ref in y.tensors.items():
        shape_a, shape_b = x.tensors[name].shape, ref.shape
        if shape_a != shape_b:
            hint = ""
            if len(shape_a) == 2 and shape_a[::-1] == shape_b:
                hint = ("; transposed: one side may be a PyTorch state dict (dense weights "
                        "(out, in)): try --layout torch")
            raise ValueError(f"round {label}, tensor {name!r}: shape {shape_a} in A ({a.path}) "
                             f"but {shape_b} in B ({b.path}){hint}")


def compare_series(a: WeightSeries, b: WeightSeries, rtol: float | None = None,
                   atol: float | None = None) -> Comparison:
    """Compare candidate ``a`` with reference ``b``; None tolerances take the dtype defaults."""
    pairs, only_a, only_b = _pairs(a, b)
    default_rtol, default_atol = default_tolerance(*a.dtypes, *b.dtypes)
    rtol = default_rtol if rtol is None else float(rtol)
    atol = default_atol if atol is None else float(atol)
    if not (rtol >= 0 and atol >= 0):
        raise ValueError(f"rtol and atol must be >= 0, got rtol={rtol}, atol={atol}")
    diffs = []
    for label, x, y in pairs:
        _check_names_and_shapes(label, x, y, a, b)
        diffs.extend(tensor_diff(x.tensors[n], ref, rtol, atol, label, n)
                     for n, ref in y.tensors.items())
    return Comparison(a, b, rtol, atol, tuple(diffs), only_a, only_b)


def compare_paths(a: str | os.PathLike, b: str | os.PathLike, rtol: float | None = None,
                  atol: float | None = None, layout: Layout = Layout.AUTO) -> Comparison:
    """Read ``a`` and ``b`` (``weight_files.load_pair``) and compare them."""
    series_a, series_b = load_pair(a, b, layout)
    return compare_series(series_a, series_b, rtol, atol)
