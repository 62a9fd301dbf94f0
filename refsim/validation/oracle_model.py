"""A model's logits, loss and gradient computed by the loop oracles of ``refsim.nn`` alone.

``Model.loss_and_grad`` runs the vectorised layers (im2col and matrix products through BLAS),
whose summation order depends on the BLAS build, the CPU and the number of threads: the same
call can differ in the last bits from one machine to the next. The golden vectors must
regenerate byte for byte anywhere, so the ones that need a network's gradient are computed
here, layer by layer exactly as ``Model`` chains its layers (``refsim/nn/model.py``), but with
the ``*_naive`` oracles: explicit loops in a fixed order, no BLAS. This is the oracle of
``Model.forward`` / ``Model.loss_and_grad`` (STYLE.md habit 5); ``tests/test_validation_golden.py``
pins the two together on the golden inputs.
"""

from __future__ import annotations

import numpy as np

from refsim.nn import Conv2D, Dense, Flatten, MaxPool2D, Model, ReLU
from refsim.nn.activation import relu_backward_naive, relu_forward_naive
from refsim.nn.conv import conv2d_backward_naive, conv2d_forward_naive
from refsim.nn.dense import linear_backward_naive, linear_forward_naive
from refsim.nn.flatten import flatten_backward, flatten_forward_naive
from refsim.nn.loss import softmax_cross_entropy_naive
from refsim.nn.pool import maxpool2d_backward_naive, maxpool2d_forward_naive

__all__ = ["oracle_forward", "oracle_loss_and_grad"]


def _flatten_any(h):
    """Flatten (N, ...) in C order: the loop oracle for images, a reshape otherwise."""
    return flatten_forward_naive(h) if h.ndim == 4 else (h.reshape(h.shape[0], -1), h.shape)


def oracle_forward(model: Model, params: np.ndarray, x: np.ndarray):
    """(logits (N, K), caches): ``model.forward(params, x)`` by the loop oracles.

    params : (P,) flat, float32 or float64; x : (N, *model.input_shape), same dtype.
    """
    view = model.views(params)
    caches, h = [], x
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            h, cache = conv2d_forward_naive(h, view[f"{layer.name}.weight"],
                                            view[f"{layer.name}.bias"], layer.padding)
        elif isinstance(layer, Dense):
            h, cache = linear_forward_naive(h, view[f"{layer.name}.weight"],
                                            view[f"{layer.name}.bias"])
        elif isinstance(layer, MaxPool2D):
            h, cache = maxpool2d_forward_naive(h, layer.padding)
        elif isinstance(layer, ReLU):
            h, cache = relu_forward_naive(h)
        elif isinstance(layer, Flatten):
            h, cache = _flatten_any(h)
        else:
            raise TypeError(f"oracle_forward: unknown layer {layer!r}")
        caches.append(cache)
    return h, caches


def oracle_loss_and_grad(model: Model, params: np.ndarray, x: np.ndarray, y: np.ndarray):
    """(logits (N, K), mean softmax cross-entropy, flat gradient (P,) in the params' layout).

    ``model.loss_and_grad(params, x, y)`` by the loop oracles (which also returns the logits).
    """
    logits, caches = oracle_forward(model, params, x)
    loss, d = softmax_cross_entropy_naive(logits, y)  # d: (N, K)
    grad = np.zeros_like(params)  # (P,)
    gview = model.views(grad)
    for layer, cache in zip(reversed(model.layers), reversed(caches)):
        if isinstance(layer, Conv2D):
            d, dw, db = conv2d_backward_naive(d, cache)
        elif isinstance(layer, Dense):
            d, dw, db = linear_backward_naive(d, cache)
        elif isinstance(layer, MaxPool2D):
            d = maxpool2d_backward_naive(d, cache)
        elif isinstance(layer, ReLU):
            d = relu_backward_naive(d, cache)
        else:
            d = flatten_backward(d, cache)
        if isinstance(layer, (Conv2D, Dense)):
            gview[f"{layer.name}.weight"][...] = dw
            gview[f"{layer.name}.bias"][...] = db
    return logits, loss, grad
