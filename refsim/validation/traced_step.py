"""One local SGD step of a :class:`refsim.nn.Model`, layer by layer, with the inputs of every
ReLU and max-pool kept, and with chosen near-ties resolved the other way.

This is the instrument of ``refsim compare-steps`` (``refsim.validation.steps``). ClientUpdate
(McMahan et al., AISTATS 2017, arXiv:1602.05629, Algorithm 1) takes the step

    w_{j+1} = w_j - eta * grad L(w_j; b_j),    L = mean softmax cross-entropy over batch b_j

through ReLU (``y = max(z, 0)``, ``dz = dy * [z > 0]``) and 2x2/2 max-pool (``dy`` goes to
the first maximum of its window). Both are discontinuous: a pre-activation z within rounding
of 0, or a window whose two largest inputs are within rounding of each other, can fall either
way in another implementation's arithmetic. A :class:`Flip` says how one such unit falls
instead:

* ReLU unit u of layer i: its mask is inverted (active <-> inactive); its output is 0 when it
  becomes inactive and |z| when it becomes active (the other implementation's z was on the
  positive side), so that a max-pool after it decides on that value: a window of zeros whose
  unit turns active by a hair routes its gradient to that unit, as the other side would.
* max-pool window u of layer i: its gradient goes to tap ``tap`` (0..3, row-major (p, q) in
  the window) instead of the first maximum, and the window outputs that tap's value.

:func:`traced_step` with no flips computes exactly ``Model.loss_and_grad`` and ``sgd_step``
(the same layer functions in the same order; ``tests/test_validation_steps.py`` pins the bits in
float32 and float64), so a flipped step differs from refsim's own step only by the flips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from refsim.nn import Conv2D, Dense, Flatten, MaxPool2D, Model, ReLU, sgd_step
from refsim.nn.conv import conv2d_backward, conv2d_forward
from refsim.nn.dense import linear_backward, linear_forward
from refsim.nn.loss import softmax_cross_entropy
from refsim.nn.pool import pool_output_size

__all__ = ["Flip", "TracedStep", "traced_step", "with_sequential_bias_sums", "sequential_sum",
           "pool_windows", "TAPS"]

TAPS = ((0, 0), (0, 1), (1, 0), (1, 1))  # window positions (p, q), row-major


@dataclass(frozen=True)
class Flip:
    """Resolve one near-tie the other way: ReLU unit or pool window ``unit`` (flat index into
    that layer's input, or into its (N, C, Ho, Wo) windows) of layer ``layer`` (its index in
    ``model.layers``); ``tap`` is the new winner of a pool window, None for a ReLU."""
    layer: int
    unit: int
    tap: int | None = None


class TracedStep(NamedTuple):
    """What :func:`traced_step` returns.

    params : (P,) w_{j+1} = w_j - eta * grad
    grad : (P,) the flat gradient
    loss : the mean loss of the batch at w_j
    inputs : {layer index: input array} of every ReLU (the pre-activation z, shape of the
        layer's input) and every max-pool (its input (N, C, H, W))
    upstream : {layer index: dL/d(output)} of every ReLU and max-pool layer
    decisions : {layer index: the ReLU mask (bool, shape of z) or the pool winners (int8 tap
        0..3, shape (N, C, Ho, Wo)) the step used}
    output_grads : {layer index: dL/d(output)} of every convolution and dense layer
    """
    params: np.ndarray
    grad: np.ndarray
    loss: float
    inputs: dict
    upstream: dict
    decisions: dict
    output_grads: dict


def pool_windows(x: np.ndarray, padding: str) -> np.ndarray:
    """The four taps of every 2x2/2 window, (4, N, C, Ho, Wo); -inf where 'same' padding
    adds a row or column (such a tap never wins)."""
    N, C, H, W = x.shape
    Ho, Wo = pool_output_size(H, padding), pool_output_size(W, padding)
    padded = np.full((N, C, 2 * Ho, 2 * Wo), -np.inf, dtype=x.dtype)  # (N, C, 2Ho, 2Wo)
    h, w = min(H, 2 * Ho), min(W, 2 * Wo)
    padded[:, :, :h, :w] = x[:, :, :h, :w]
    return np.stack([padded[:, :, p::2, q::2] for p, q in TAPS])  # (4, N, C, Ho, Wo)


def _first_max(taps: np.ndarray) -> np.ndarray:
    """Index 0..3 of the first maximal tap of every window, (N, C, Ho, Wo) int8."""
    return np.argmax(taps == taps.max(axis=0), axis=0).astype(np.int8)


def _pool_backward(dy: np.ndarray, winner: np.ndarray, x_shape) -> np.ndarray:
    """Route dy (N, C, Ho, Wo) to each window's winner; dx (N, C, H, W)."""
    N, C, H, W = x_shape
    _, _, Ho, Wo = dy.shape
    dx = np.zeros((N, C, 2 * Ho, 2 * Wo), dtype=dy.dtype)  # (N, C, 2Ho, 2Wo)
    for k, (p, q) in enumerate(TAPS):
        dx[:, :, p::2, q::2] = dy * (winner == k)
    out = np.zeros(x_shape, dtype=dy.dtype)  # (N, C, H, W)
    h, w = min(H, 2 * Ho), min(W, 2 * Wo)
    out[:, :, :h, :w] = dx[:, :, :h, :w]
    return out


def _flips_by_layer(flips) -> dict[int, list[Flip]]:
    out: dict[int, list[Flip]] = {}
    for f in flips:
        out.setdefault(f.layer, []).append(f)
    return out


def sequential_sum(a: np.ndarray, axis: int) -> np.ndarray:
    """The sum over ``axis`` accumulated one term at a time in a's dtype (a running sum, as a
    plain loop or a single accumulator in C does), not NumPy's pairwise summation.

    >>> sequential_sum(np.array([[1.0, 2.0], [3.0, 4.0]]), axis=0)
    array([4., 6.])
    """
    return np.add.accumulate(a, axis=axis, dtype=a.dtype).take(-1, axis=axis)


def traced_step(model: Model, params: np.ndarray, x: np.ndarray, y: np.ndarray, lr: float,
                flips=(), sequential_bias_sums: bool = False,
                decisions: dict | None = None) -> TracedStep:
    """One SGD step of ``model`` on batch (x, y) from ``params``, with ``flips`` applied.

    params : (P,) float32 or float64; x : (N, *model.input_shape) of the same dtype;
    y : (N,) int labels; lr : eta; flips : iterable of :class:`Flip`.
    sequential_bias_sums : accumulate every bias gradient (a sum over N, or over N, Ho, Wo
        for a convolution) one term at a time (:func:`sequential_sum`) instead of refsim's
        pairwise sums. refsim's steps never do this; ``refsim.validation.steps`` uses it to
        probe the rounding of a long running sum, as many implementations compute it.
    decisions : ``TracedStep.decisions`` of another step from the same weights and batch: every
        ReLU mask and pool winner is taken from it instead of being decided here (before
        ``flips``). A float32 step that follows a float64 step's decisions differs from it by
        rounding only, never by a near-tie that the two arithmetics decide differently.
    Raises ValueError for a flip that names a layer that is no ReLU or max-pool, a unit out
    of range, or a tap outside 0..3.
    """
    by_layer = _flips_by_layer(flips)
    for i in by_layer:
        if not 0 <= i < len(model.layers) or not isinstance(model.layers[i], (ReLU, MaxPool2D)):
            raise ValueError(f"flip of layer {i}: {model.name} has no ReLU or max-pool there")
    view = model.views(params)
    caches, inputs, decided, h = [], {}, {}, x
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Conv2D):
            h, cache = conv2d_forward(h, view[f"{layer.name}.weight"],
                                      view[f"{layer.name}.bias"], layer.padding)
        elif isinstance(layer, Dense):
            h, cache = linear_forward(h, view[f"{layer.name}.weight"],
                                      view[f"{layer.name}.bias"])
        elif isinstance(layer, ReLU):
            inputs[i] = h
            mask = (h > 0) if decisions is None else decisions[i].copy()  # same shape as h
            for f in by_layer.get(i, ()):
                _check_unit(f, mask.size)
                mask.flat[f.unit] = not mask.flat[f.unit]
            out = np.where(mask, h, h.dtype.type(0))  # same shape as h
            for f in by_layer.get(i, ()):
                if mask.flat[f.unit]:
                    out.flat[f.unit] = abs(h.flat[f.unit])  # active: on the positive side
            h, cache, decided[i] = out, mask, mask
        elif isinstance(layer, MaxPool2D):
            inputs[i] = h
            taps = pool_windows(h, layer.padding)  # (4, N, C, Ho, Wo)
            winner = _first_max(taps) if decisions is None else decisions[i].copy()
            for f in by_layer.get(i, ()):
                _check_unit(f, winner.size)
                if f.tap not in (0, 1, 2, 3):
                    raise ValueError(f"flip of pool layer {i}, window {f.unit}: tap must be "
                                     f"0..3, got {f.tap!r}")
                winner.flat[f.unit] = f.tap
            h = np.take_along_axis(taps, winner[None].astype(np.intp), axis=0)[0]
            cache, decided[i] = (winner, inputs[i].shape), winner
        elif isinstance(layer, Flatten):
            cache, h = h.shape, h.reshape(h.shape[0], -1)
        else:
            raise TypeError(f"unknown layer {layer!r}")
        caches.append(cache)
    loss, d = softmax_cross_entropy(h, y)  # d: (N, K)
    grad = np.empty_like(params)
    gview = model.views(grad)
    upstream, output_grads = {}, {}
    for i in range(len(model.layers) - 1, -1, -1):
        layer, cache = model.layers[i], caches[i]
        if isinstance(layer, Conv2D):
            dy = output_grads[i] = d  # (N, O, Ho, Wo)
            d, dw, db = conv2d_backward(dy, cache, i > 0)
            if sequential_bias_sums:
                db = sequential_sum(dy.transpose(1, 0, 2, 3).reshape(dy.shape[1], -1), 1)
        elif isinstance(layer, Dense):
            dy = output_grads[i] = d  # (N, O)
            d, dw, db = linear_backward(dy, cache, i > 0)
            if sequential_bias_sums:
                db = sequential_sum(dy, 0)
        elif isinstance(layer, ReLU):
            upstream[i] = d
            d = d * cache
        elif isinstance(layer, MaxPool2D):
            upstream[i] = d
            d = _pool_backward(d, *cache)
        else:
            d = d.reshape(cache)
        if isinstance(layer, (Conv2D, Dense)):
            gview[f"{layer.name}.weight"][...] = dw
            gview[f"{layer.name}.bias"][...] = db
    return TracedStep(sgd_step(params, grad, lr), grad, loss, inputs, upstream, decided,
                      output_grads)


def with_sequential_bias_sums(model: Model, step: TracedStep, params: np.ndarray,
                              lr: float) -> np.ndarray:
    """``traced_step(..., sequential_bias_sums=True).params`` from the step ``step`` that
    started at ``params``, without recomputing it: only the bias entries change (a bias
    gradient feeds nothing else), each to ``b - lr * sequential_sum(dy)``. Oracle: the
    ``sequential_bias_sums`` option of :func:`traced_step` (tests pin the two bit for bit)."""
    grad = step.grad.copy()
    gview = model.views(grad)
    for i, dy in step.output_grads.items():
        layer = model.layers[i]
        if isinstance(layer, Conv2D):
            db = sequential_sum(dy.transpose(1, 0, 2, 3).reshape(dy.shape[1], -1), 1)
        else:
            db = sequential_sum(dy, 0)
        gview[f"{layer.name}.bias"][...] = db
    return sgd_step(params, grad, lr)


def _check_unit(f: Flip, size: int) -> None:
    if not 0 <= f.unit < size:
        raise ValueError(f"flip of layer {f.layer}: unit {f.unit} outside 0..{size - 1}")
