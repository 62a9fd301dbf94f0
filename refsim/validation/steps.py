"""Check another implementation's local SGD steps one at a time: the library behind
``refsim compare-steps``.

Why: in float32 two correct implementations of McMahan et al.'s CNN (AISTATS 2017,
arXiv:1602.05629) part within a few dozen SGD steps on MNIST, because ReLU and max-pool
near-ties fall differently under different summation orders and the difference then grows
(``docs/validation.md`` has the measured onset). Comparing whole trajectories therefore cannot
tell a correct float32 implementation from a wrong one. Checking each step *from the
candidate's own weights* can: errors stay local, nothing accumulates.

For every local step j of the candidate (weights w_j -> a = w_{j+1}) on refsim's batch b_j
and learning rate eta (``step_inputs``), refsim recomputes the step from w_j three ways
(``traced_step``):

* r64: in float64 (from w_j and the candidate's own input values, both exactly widened),
* r32: in float32, as refsim computes it,
* q32: in float32 with every bias gradient accumulated as one running sum
  (``sequential_bias_sums``), as many implementations compute it; refsim's own pairwise sums
  are more accurate than that, and a scale taken from them alone would be too tight.

Both float32 probes take every ReLU mask and pool winner from r64 (``decisions``), so that
they differ from it by rounding only: where refsim's own float32 arithmetic falls on the other
side of a near-tie, the scale would otherwise absorb a tie flip and blunt the check.

For each tensor T (elements i), in the candidate's dtype with unit roundoff u (2^-24 float32,
2^-53 float64):

    S_T     = max_i max(|r32_i - r64_i|, |q32_i - r64_i|) * u / 2^-24  (the rounding scale)
    floor_T = eps * max_i |r64_i|                    (one ulp of the tensor's largest weight)
    E_T     = max_i |a_i - r64_i|
    bound_T = c * S_T + floor_T

The step **agrees** when E_T <= bound_T for every tensor (c = :data:`C_DEFAULT`; the floor
covers a tensor whose rounding happens to vanish in refsim's recomputation). Otherwise the near
ties of the step are searched (``near_ties``): if refsim's float64 step, with some of them
resolved the other way, lands within the bounds, the step is a **tie flip** and passes; else
the step **diverges**. The constants and the measurements behind them are in
``docs/validation.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from refsim.data import to_float
from refsim.nn import Model
from refsim.validation.near_ties import (LayerTies, NearTie, TieExplanation,
                                         explain_by_flips, find_near_ties)
from refsim.validation.step_inputs import ClientRound, StepSeries
from refsim.validation.traced_step import traced_step

__all__ = ["C_DEFAULT", "FLOOR_ULPS", "StepTolerance", "TensorCheck", "StepCheck",
           "StepsReport", "tensor_checks", "tensor_dict", "batch_inputs", "check_step", "check_client_steps"]

C_DEFAULT = 16.0  # the tolerance factor c (docs/validation.md, "The step tolerance")
FLOOR_ULPS = 1.0  # the floor, in ulps of the tensor's largest weight
U32 = 2.0 ** -24


@dataclass(frozen=True)
class StepTolerance:
    """The rule of the module docstring, and the limits of the near-tie search."""
    c: float = C_DEFAULT
    floor_ulps: float = FLOOR_ULPS
    max_tries: int = 64  # near-ties tried one at a time
    max_flips: int = 4  # near-ties combined

    def __post_init__(self):
        if not (self.c > 0 and self.floor_ulps >= 0):
            raise ValueError(f"the step tolerance needs c > 0 and floor_ulps >= 0, got "
                             f"c={self.c}, floor_ulps={self.floor_ulps}")
        if self.max_tries < 0 or self.max_flips < 0:
            raise ValueError("max_tries and max_flips must be >= 0")


@dataclass(frozen=True)
class TensorCheck:
    """One tensor of one step: E_T, S_T, bound_T, and the element furthest beyond its bound
    (candidate a, refsim's float64 r64 and float32 r32 there)."""
    name: str
    shape: tuple[int, ...]
    err: float
    scale: float
    bound: float
    worst_index: tuple[int, ...]
    candidate: float
    refsim64: float
    refsim32: float

    @property
    def ratio(self) -> float:
        """E_T / bound_T: at most 1 agrees."""
        return self.err / self.bound if self.bound > 0 else (0.0 if self.err == 0 else np.inf)

    @property
    def exceeds(self) -> bool:
        return not self.err <= self.bound  # NaN exceeds


@dataclass(frozen=True)
class StepCheck:
    """The verdict on local step j (w_j -> w_{j+1}): "agree", "tie flip" or "diverge".

    tensors : the unflipped comparison, one :class:`TensorCheck` per tensor in layout order.
    ties : the near-tie census of every ReLU and pool layer (computed only when the step
        exceeds its bounds, else empty).
    explanation : the flips that explain a "tie flip" step (None otherwise); ``flipped`` the
        comparison with them applied.
    """
    step: int
    epoch: int
    batch: int
    status: str
    tensors: tuple[TensorCheck, ...]
    ties: tuple[LayerTies, ...] = ()
    explanation: TieExplanation | None = field(default=None, repr=False)
    flipped: tuple[TensorCheck, ...] = ()
    tried: int = 0
    note_text: str = ""

    @property
    def worst(self) -> TensorCheck:
        """The tensor with the largest E_T / bound_T (of the unflipped comparison)."""
        return max(self.tensors, key=lambda t: t.ratio if not np.isnan(t.ratio) else np.inf)

    @property
    def note(self) -> str:
        if self.note_text:
            return self.note_text
        if self.status == "tie flip":
            return self.explanation.summary()
        if self.status == "diverge":
            near = sum(t.near for t in self.ties)
            return (f"no flip of its {near} near-tie(s) explains it ({self.tried} flipped "
                    f"steps tried)" if near else "no near-tie in this step could explain it")
        return ""


def tensor_checks(model: Model, a, r64, r32, q32, dtype, tol: StepTolerance):
    """The :class:`TensorCheck` of every tensor (the rule of the module docstring): a and r64
    (P,) float64, r32 and q32 (P,) float32, dtype the candidate's."""
    u = float(np.finfo(dtype).eps) / 2
    views = [model.views(v) for v in (a, r64, r32.astype(np.float64), q32.astype(np.float64))]
    out = []
    for spec in model.layout:
        va, v64, v32, vq = (v[spec.name] for v in views)
        scale = float(np.maximum(np.abs(v32 - v64), np.abs(vq - v64)).max()) * u / U32
        floor = tol.floor_ulps * 2 * u * float(np.abs(v64).max())
        diff = np.abs(va - v64)
        worst = np.unravel_index(int(np.argmax(np.where(np.isnan(diff), np.inf, diff))),
                                 spec.shape)
        out.append(TensorCheck(spec.name, spec.shape, float(np.max(diff)), scale,
                               tol.c * scale + floor, tuple(int(i) for i in worst),
                               float(va[worst]), float(v64[worst]), float(v32[worst])))
    return tuple(out)


def batch_inputs(images: np.ndarray, indices: np.ndarray, dtype) -> np.ndarray:
    """The model input of a batch: ``to_float(images[indices])`` (x / 255) in ``dtype``, with
    a channel axis added to (b, H, W) images, as ``refsim.fedavg.from_images`` does."""
    x = to_float(images[indices], np.dtype(dtype).type)
    return x[:, None] if x.ndim == 3 else x


def check_step(model: Model, w: np.ndarray, a: np.ndarray, x: np.ndarray, y: np.ndarray,
               lr: float, tol: StepTolerance = StepTolerance(), step: int = 0,
               epoch: int = 0, batch: int = 0) -> StepCheck:
    """Check one candidate step w -> a on batch (x, y) with learning rate lr.

    w, a : (P,) the candidate's weights before and after the step, float32 or float64 (one
    dtype); x : (b, *input_shape) the candidate's input values, same dtype; y : (b,) labels.
    """
    dtype = w.dtype
    if not (np.isfinite(w).all() and np.isfinite(a).all()):
        which = "w_j" if not np.isfinite(w).all() else "w_(j+1)"
        bad = TensorCheck("(all)", (int(w.size),), float("nan"), 0.0, 0.0, (0,), float("nan"),
                          0.0, 0.0)
        return StepCheck(step, epoch, batch, "diverge", (bad,), note_text=f"the candidate's "
                         f"{which} contains NaN or Inf")
    w64, x64 = w.astype(np.float64), x.astype(np.float64)
    w32, x32 = w.astype(np.float32), x.astype(np.float32)
    s64 = traced_step(model, w64, x64, y, lr)
    s32 = traced_step(model, w32, x32, y, lr, decisions=s64.decisions)
    q32 = traced_step(model, w32, x32, y, lr, sequential_bias_sums=True,
                      decisions=s64.decisions).params
    a64 = a.astype(np.float64)
    checks = tensor_checks(model, a64, s64.params, s32.params, q32, dtype, tol)
    if not any(t.exceeds for t in checks):
        return StepCheck(step, epoch, batch, "agree", checks)
    ties, census, groups = find_near_ties(model, s32, s64, tol.c)
    bounds = {t.name: t.bound for t in checks}

    def flipped(flips):
        return traced_step(model, w64, x64, y, lr, flips).params if flips else s64.params

    def cost(params):
        va, vp = model.views(a64), model.views(params)
        return float(sum(np.sum(((va[n] - vp[n]) / max(b, 1e-300)) ** 2)
                         for n, b in bounds.items()))

    def passes(params):
        va, vp = model.views(a64), model.views(params)
        return all(float(np.max(np.abs(va[n] - vp[n]))) <= b for n, b in bounds.items())

    found = explain_by_flips(flipped, cost, passes, ties, groups, tol.max_tries, tol.max_flips)
    if found is None:
        tried = min(len(ties), tol.max_tries) + len(groups)
        return StepCheck(step, epoch, batch, "diverge", checks, tuple(census), None, (), tried)
    after = tensor_checks(model, a64, found.params, s32.params, q32, dtype, tol)
    return StepCheck(step, epoch, batch, "tie flip", checks, tuple(census), found, after,
                     found.tried)


@dataclass(frozen=True)
class StepsReport:
    """Every checked step of one client's round (``check_client_steps``)."""
    candidate: StepSeries
    client: ClientRound
    tolerance: StepTolerance
    checks: tuple[StepCheck, ...]
    stopped_early: bool  # stopped at the first divergence
    seconds: float

    @property
    def first_divergence(self) -> StepCheck | None:
        return next((c for c in self.checks if c.status == "diverge"), None)

    @property
    def agree(self) -> bool:
        return self.first_divergence is None

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.checks)

    def to_dict(self) -> dict:
        """Plain JSON-ready data (non-finite floats as strings)."""
        first = self.first_divergence
        return {
            "candidate": {"path": self.candidate.path, "steps": list(self.candidate.steps),
                          "dtype": str(self.candidate.dtype), "mapping": self.candidate.mapping},
            "trace": {"path": self.client.trace_dir, "round": self.client.round,
                      "client": self.client.client, "model": self.client.model.name,
                      "lr": self.client.lr, "batch_size": self.client.batch_size,
                      "num_examples": self.client.num_examples,
                      "num_steps": self.client.num_steps},
            "tolerance": {"c": self.tolerance.c, "floor_ulps": self.tolerance.floor_ulps,
                          "rule": "max|a - r64| <= c * S + floor_ulps * eps * max|r64| per "
                                  "tensor (docs/validation.md)"},
            "verdict": "agree" if self.agree else "diverge",
            "first_divergence": None if first is None else _step_dict(first),
            "counts": {s: self.count(s) for s in ("agree", "tie flip", "diverge")},
            "stopped_early": self.stopped_early, "seconds": self.seconds,
            "steps": [_step_dict(c) for c in self.checks],
        }


def _json_float(v: float):
    return v if np.isfinite(v) else repr(v)


def tensor_dict(t: TensorCheck) -> dict:
    """A :class:`TensorCheck` as JSON-ready data."""
    return {"name": t.name, "shape": list(t.shape), "err": _json_float(t.err),
            "scale": t.scale, "bound": t.bound, "ratio": _json_float(t.ratio),
            "worst_index": list(t.worst_index), "candidate": _json_float(t.candidate),
            "refsim64": t.refsim64, "refsim32": t.refsim32}


def _tie_dict(t: NearTie) -> dict:
    return {"layer": t.layer, "index": list(t.index), "margin": t.margin,
            "threshold": t.threshold, "tap": t.flip.tap}


def _step_dict(c: StepCheck) -> dict:
    return {"step": c.step, "epoch": c.epoch, "batch": c.batch, "status": c.status,
            "note": c.note, "worst_tensor": c.worst.name, "worst_ratio": _json_float(c.worst.ratio),
            "tensors": [tensor_dict(t) for t in c.tensors],
            "near_ties": [vars(t) for t in c.ties],
            "flips": ([] if c.explanation is None else [_tie_dict(t) for t in c.explanation.flips]),
            "flipped": [tensor_dict(t) for t in c.flipped], "flipped_steps_tried": c.tried}


def check_client_steps(candidate: StepSeries, client: ClientRound, images: np.ndarray,
                       labels: np.ndarray, tol: StepTolerance = StepTolerance(),
                       stop_at_first: bool = True) -> StepsReport:
    """Check every step the candidate recorded (w_j -> w_{j+1} for consecutive j in
    ``candidate.steps``) against refsim's step from w_j on the trace's batch j.

    images : the training images the trace indexes, uint8 (N, H, W) or (N, C, H, W), converted
    per batch with :func:`batch_inputs`; labels : (N,) their labels.
    stop_at_first : stop after the first diverging step (the rest are not checked).
    """
    if candidate.model.name != client.model.name:
        raise ValueError(f"the candidate is {candidate.model.name} but the trace trains "
                         f"{client.model.name}")
    last = candidate.steps[-1]
    if last > client.num_steps:
        raise ValueError(f"{candidate.path}: holds w_{last}, but client {client.client} takes "
                         f"{client.num_steps} local steps in round {client.round} (w_0..w_"
                         f"{client.num_steps})")
    start, checks, stopped = time.perf_counter(), [], False
    model = client.model
    for i, j in enumerate(candidate.steps[:-1]):
        rows = client.batch(j)
        x = batch_inputs(images, rows, candidate.dtype)
        epoch, batch = client.epoch_and_batch(j)
        check = check_step(model, candidate.weights[i], candidate.weights[i + 1], x,
                           np.asarray(labels[rows], np.int64), client.lr, tol, j, epoch, batch)
        checks.append(check)
        if check.status == "diverge" and stop_at_first and j + 1 < last:
            stopped = True
            break
    return StepsReport(candidate, client, tol, tuple(checks), stopped,
                       time.perf_counter() - start)
