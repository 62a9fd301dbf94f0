"""Near-ties of ReLU and max-pool in one SGD step, and the search for the tie flips that explain
another implementation's step.

ReLU ``y = max(z, 0)`` and 2x2 max-pool route the gradient by a comparison (``z > 0``; the
first maximum of a window). When a comparison is decided by less than the rounding of the
numbers compared, two correct implementations can decide it differently, and their steps then
differ by far more than rounding (McMahan et al.'s CNN on MNIST meets such a unit every few
dozen steps; ``docs/validation.md``). For one step from weights w_j, with z32 and z64 refsim's
values of a layer's input in float32 and float64 arithmetic:

* the layer's rounding scale is ``sigma = max |z32 - z64|`` over the layer, and its near-tie
  threshold ``tau = c * sigma`` (c is the step tolerance factor of ``refsim.validation.steps``);
* a ReLU unit is a *near-tie* when ``0 < |z64| <= tau`` and gradient reaches it (its upstream
  gradient is not 0), or would reach it if it turned active: it feeds a max-pool window that
  carries gradient and whose maximum is at most ``|z64| + tau`` (a window of zeros, say);
* a pool window is a near-tie when its margin ``m = top1 - top2`` (the largest minus the second
  largest of its four inputs, float64) satisfies ``0 < m <= tau`` and gradient reaches it; its
  flip routes the gradient to the second largest input;
* an *exact tie* (z64 == 0 exactly, or a pool margin of exactly 0 with a positive maximum) is
  counted but not flipped unit by unit: refsim resolves it as PyTorch and TensorFlow do
  (``z > 0``; the first maximum), and the search tries each layer's exact ties resolved the other
  way as one group (``[z >= 0]``; the last maximum).

:func:`explain_by_flips` looks for the flips under which refsim's own float64 step, recomputed
with :func:`refsim.validation.traced_step.traced_step`, lands within the step tolerance of the
candidate's: single flips in order of margin / tau, then a greedy combination of the best of
them, then the exact-tie groups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from refsim.nn import MaxPool2D, Model, ReLU
from refsim.validation.traced_step import Flip, TracedStep, pool_windows

__all__ = ["NearTie", "LayerTies", "TieExplanation", "layer_labels", "find_near_ties",
           "explain_by_flips"]


@dataclass(frozen=True)
class NearTie:
    """One near-tie: the :class:`Flip` that resolves it the other way, the layer's label, the
    unit's position in that layer (ReLU: its input's index; pool: the window's (n, c, i, j)),
    its margin and the layer's threshold tau."""
    flip: Flip
    layer: str
    index: tuple[int, ...]
    margin: float
    threshold: float


@dataclass(frozen=True)
class LayerTies:
    """The near-tie census of one ReLU or max-pool layer in one step."""
    layer: str
    sigma: float  # max |z32 - z64| over the layer's input
    threshold: float  # tau = c * sigma
    near: int  # near-ties (0 < margin <= tau, gradient flows)
    exact: int  # exact ties through which gradient flows


@dataclass(frozen=True)
class TieExplanation:
    """Flips under which refsim's float64 step agrees with the candidate's, and that step."""
    flips: tuple[NearTie, ...]
    params: np.ndarray  # (P,) float64
    tried: int  # flipped steps computed in the search

    def summary(self) -> str:
        """'tie flip at conv2 pool: 1 unit, smallest margin 4.1e-10' (one clause per layer)."""
        parts = []
        for layer in dict.fromkeys(t.layer for t in self.flips):
            ties = [t for t in self.flips if t.layer == layer]
            units = "unit" if len(ties) == 1 else "units"
            parts.append(f"tie flip at {layer}: {len(ties)} {units}, smallest margin "
                         f"{min(t.margin for t in ties):.2g}")
        return "; ".join(parts)


def layer_labels(model: Model) -> dict[int, str]:
    """{layer index: label} of every ReLU and max-pool, named after the last layer with
    weights before it: 'conv1 relu', 'conv1 pool', ..., 'fc1 relu'."""
    labels, last = {}, "input"
    for i, layer in enumerate(model.layers):
        name = getattr(layer, "name", None)
        if name:
            last = name
        elif isinstance(layer, ReLU):
            labels[i] = f"{last} relu"
        elif isinstance(layer, MaxPool2D):
            labels[i] = f"{last} pool"
    return labels


def _window_of_each_unit(a: np.ndarray, shape) -> np.ndarray:
    """a (N, C, Ho, Wo), one value per 2x2 window, spread to the units (N, C, H, W) of each
    window (0 for a unit of a row or column that 'valid' pooling drops)."""
    out = np.zeros(shape, dtype=a.dtype)  # (N, C, H, W)
    spread = a.repeat(2, axis=2).repeat(2, axis=3)  # (N, C, 2Ho, 2Wo)
    h, w = min(shape[2], spread.shape[2]), min(shape[3], spread.shape[3])
    out[:, :, :h, :w] = spread[:, :, :h, :w]
    return out


def _relu_ties(i, label, z32, z64, upstream, c, pool_after=None):
    """pool_after: (float64 input of the max-pool that follows, its upstream gradient, its
    padding), for
    a ReLU that feeds one: a unit gradient does not reach yet counts when turning it active
    (with value |z|) could make it its window's winner."""
    sigma = float(np.abs(z32.astype(np.float64) - z64).max())
    tau = c * sigma
    flows = upstream != 0
    exact = np.flatnonzero((z64 == 0) & flows)  # [z >= 0] would pass their gradient
    if pool_after is not None:
        pool_in, pool_up, padding = pool_after
        taps = pool_windows(pool_in, padding)  # (4, N, C, Ho, Wo)
        window_max = _window_of_each_unit(taps.max(axis=0), z64.shape)
        carries = _window_of_each_unit(pool_up, z64.shape) != 0
        flows = flows | (carries & (window_max <= np.abs(z64) + tau))
    near = np.flatnonzero((np.abs(z64) <= tau) & (z64 != 0) & flows)
    ties = [NearTie(Flip(i, int(u)), label, tuple(int(k) for k in np.unravel_index(u, z64.shape)),
                    float(abs(z64.flat[u])), tau) for u in near]
    groups = [Flip(i, int(u)) for u in exact]  # [z >= 0]: exact zeros become active
    return ties, LayerTies(label, sigma, tau, len(ties), len(exact)), groups


def _pool_ties(i, label, x32, x64, upstream, padding, c):
    sigma = float(np.abs(x32.astype(np.float64) - x64).max())
    tau = c * sigma
    taps = pool_windows(x64, padding)  # (4, N, C, Ho, Wo)
    order = np.argsort(-taps, axis=0, kind="stable")  # largest first, ties in tap order
    ranked = np.take_along_axis(taps, order, axis=0)  # (4, N, C, Ho, Wo)
    margin = ranked[0] - ranked[1]  # (N, C, Ho, Wo)
    flows = upstream != 0
    near = np.flatnonzero((margin > 0) & (margin <= tau) & flows)
    exact = np.flatnonzero((margin == 0) & (ranked[0] > 0) & flows)
    ties = [NearTie(Flip(i, int(u), int(order[1].flat[u])), label,
                    tuple(int(k) for k in np.unravel_index(u, margin.shape)),
                    float(margin.flat[u]), tau) for u in near]
    is_max = taps == ranked[0]  # (4, N, C, Ho, Wo)
    last = 3 - np.argmax(is_max[::-1], axis=0)  # the last maximal tap of every window
    groups = [Flip(i, int(u), int(last.flat[u])) for u in exact]
    return ties, LayerTies(label, sigma, tau, len(ties), len(exact)), groups


def find_near_ties(model: Model, step32: TracedStep, step64: TracedStep, c: float):
    """The near-ties of one step (see the module docstring).

    step32, step64 : :func:`traced_step` from the same weights and batch in float32 and float64.
    Returns (near-ties sorted by margin / tau, one :class:`LayerTies` per ReLU and pool layer,
    {label: the flips that resolve that layer's exact ties the other way}).
    """
    labels = layer_labels(model)
    ties, census, groups = [], [], {}
    for i, label in labels.items():
        if isinstance(model.layers[i], ReLU):
            pool = (i + 1 < len(model.layers) and isinstance(model.layers[i + 1], MaxPool2D))
            found = _relu_ties(i, label, step32.inputs[i], step64.inputs[i],
                               step64.upstream[i], c,
                               (step64.inputs[i + 1], step64.upstream[i + 1],
                                model.layers[i + 1].padding) if pool else None)
        else:
            found = _pool_ties(i, label, step32.inputs[i], step64.inputs[i],
                               step64.upstream[i], model.layers[i].padding, c)
        ties += found[0]
        census.append(found[1])
        if found[2]:
            groups[label] = found[2]
    ties.sort(key=lambda t: t.margin / t.threshold if t.threshold > 0 else np.inf)
    return ties, census, groups


def explain_by_flips(step: Callable[[Sequence[Flip]], np.ndarray],
                     cost: Callable[[np.ndarray], float], passes: Callable[[np.ndarray], bool],
                     ties: Sequence[NearTie], groups: dict[str, list[Flip]],
                     max_tries: int = 64, max_flips: int = 4, greedy_pool: int = 8
                     ) -> TieExplanation | None:
    """Find flips under which ``passes(step(flips))``, or None.

    step : flips -> refsim's float64 step (P,) with those flips.
    cost : params -> how far the candidate is from them (smaller is closer; the search keeps a
        flip only when it lowers the cost).
    passes : params -> whether the candidate agrees with them within the step tolerance.
    ties : near-ties, most likely first (``find_near_ties``); at most ``max_tries`` are tried
        one at a time, then up to ``max_flips`` of the ``greedy_pool`` best are combined
        greedily (each combination recomputed exactly); then each exact-tie group alone.
    """
    tried, singles = 0, []
    base_cost = cost(step(()))
    for tie in ties[:max_tries]:
        params = step((tie.flip,))
        tried += 1
        if passes(params):
            return TieExplanation((tie,), params, tried)
        singles.append((cost(params), tie))
    pool = [t for c, t in sorted(singles, key=lambda s: s[0]) if c < base_cost][:greedy_pool]
    chosen, best = [], base_cost
    while pool and len(chosen) < max_flips:
        trials = []
        for tie in pool:
            params = step([t.flip for t in chosen] + [tie.flip])
            tried += 1
            if passes(params):
                return TieExplanation(tuple(chosen + [tie]), params, tried)
            trials.append((cost(params), tie))
        c, tie = min(trials, key=lambda s: s[0])
        if c >= best:
            break
        chosen.append(tie)
        pool.remove(tie)
        best = c
    for label, flips in groups.items():
        params = step(flips)
        tried += 1
        if passes(params):
            exact = tuple(NearTie(f, label, (f.unit,), 0.0, 0.0) for f in flips)
            return TieExplanation(exact, params, tried)
    return None
