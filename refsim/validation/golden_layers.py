"""Golden vectors of every layer's forward and backward pass (``docs/golden.md``, "Layers").

Each function returns the arrays of one golden file (name -> array). The outputs come from the
loop oracles of ``refsim.nn`` (``*_naive``), not the vectorised layers: the oracles sum in a
fixed order without BLAS, so the vectors do not depend on the BLAS build or the CPU. The
inputs are ``golden_inputs.fixed_uniform`` / ``fixed_integers`` streams, float64, of small odd
shapes (no dimension equal to another where that could hide a transposition).

Semantics (``docs/nn.md``): convolution is a cross-correlation with OIHW kernels, 'same'
padding with an even K puts the extra zero row/column after; 2x2/2 max-pooling sends the
gradient to the first maximum of a window in row-major order; dense is y = x w + b with
w (I, O); ReLU has derivative 0 at 0; flatten is C order over (C, H, W); the loss is the mean
softmax cross-entropy.
"""

from __future__ import annotations

import numpy as np

from refsim.nn.activation import relu_backward_naive, relu_forward_naive
from refsim.nn.conv import conv2d_backward_naive, conv2d_forward_naive, conv_padding
from refsim.nn.dense import linear_backward_naive, linear_forward_naive
from refsim.nn.flatten import flatten_backward, flatten_forward_naive
from refsim.nn.loss import softmax_cross_entropy_naive
from refsim.nn.pool import maxpool2d_backward_naive, maxpool2d_forward_naive
from refsim.validation.golden_inputs import fixed_integers, fixed_uniform

__all__ = ["conv2d_vectors", "maxpool2d_vectors", "dense_vectors", "relu_vectors",
           "flatten_vectors", "softmax_cross_entropy_vectors"]

# case -> (x shape (N, C, H, W), O, K, padding, first key); keys are first .. first + 3
_CONV_CASES = {
    "valid": ((2, 3, 5, 6), 4, 3, "valid", 101),
    "same": ((1, 2, 5, 4), 3, 4, "same", 111),   # even K: 1 zero before, 2 after
    "pad1": ((2, 1, 3, 4), 2, 2, 1, 121),        # int padding: 1 zero on every side
}

# case -> (x shape (N, C, H, W), padding, first key); x holds small integers, so ties happen
_POOL_CASES = {
    "valid": ((2, 2, 5, 7), "valid", 201),  # odd H and W: the last row and column are dropped
    "same": ((1, 2, 5, 3), "same", 211),    # odd H and W: padded with -inf
}


def conv2d_vectors() -> dict[str, np.ndarray]:
    """Per case: x, w, b, padding (before, after), y = conv(x), dy, dx, dw, db."""
    out = {}
    for case, (x_shape, o, k, padding, key) in _CONV_CASES.items():
        n, c, h, w_ = x_shape
        x = fixed_uniform(key, x_shape)  # (N, C, H, W)
        w = fixed_uniform(key + 1, (o, c, k, k), -0.5, 0.5)  # (O, C, K, K)
        b = fixed_uniform(key + 2, (o,), -0.5, 0.5)  # (O,)
        y, cache = conv2d_forward_naive(x, w, b, padding)  # (N, O, Ho, Wo)
        dy = fixed_uniform(key + 3, y.shape)  # (N, O, Ho, Wo)
        dx, dw, db = conv2d_backward_naive(dy, cache)
        out.update({f"{case}.x": x, f"{case}.w": w, f"{case}.b": b,
                    f"{case}.padding": np.array(conv_padding(k, padding), np.int64),
                    f"{case}.y": y, f"{case}.dy": dy, f"{case}.dx": dx, f"{case}.dw": dw,
                    f"{case}.db": db})
    return out


def maxpool2d_vectors() -> dict[str, np.ndarray]:
    """Per case: x, y, argmax (int8, 0..3 row-major in the window), dy, dx."""
    out = {}
    for case, (x_shape, padding, key) in _POOL_CASES.items():
        x = fixed_integers(key, x_shape, -2, 2).astype(np.float64)  # (N, C, H, W)
        y, cache = maxpool2d_forward_naive(x, padding)  # (N, C, Ho, Wo)
        dy = fixed_uniform(key + 1, y.shape)  # (N, C, Ho, Wo)
        dx = maxpool2d_backward_naive(dy, cache)  # (N, C, H, W)
        out.update({f"{case}.x": x, f"{case}.y": y, f"{case}.argmax": cache.argmax,
                    f"{case}.dy": dy, f"{case}.dx": dx})
    return out


def dense_vectors() -> dict[str, np.ndarray]:
    """x (3, 5), w (5, 4), b (4,), y = x w + b, dy (3, 4), dx, dw, db."""
    x = fixed_uniform(301, (3, 5))  # (N, I)
    w = fixed_uniform(302, (5, 4), -0.5, 0.5)  # (I, O)
    b = fixed_uniform(303, (4,), -0.5, 0.5)  # (O,)
    y, cache = linear_forward_naive(x, w, b)  # (N, O)
    dy = fixed_uniform(304, y.shape)  # (N, O)
    dx, dw, db = linear_backward_naive(dy, cache)
    return {"x": x, "w": w, "b": b, "y": y, "dy": dy, "dx": dx, "dw": dw, "db": db}


def relu_vectors() -> dict[str, np.ndarray]:
    """x (3, 5) in quarters -1 .. 0.75 (so some entries are exactly 0), y, dy, dx."""
    x = fixed_integers(401, (3, 5), -4, 4) / 4.0  # (3, 5), exact quarters
    y, mask = relu_forward_naive(x)
    dy = fixed_uniform(402, x.shape)  # (3, 5)
    return {"x": x, "y": y, "dy": dy, "dx": relu_backward_naive(dy, mask)}


def flatten_vectors() -> dict[str, np.ndarray]:
    """x (2, 3, 2, 4) -> y (2, 24) with y[n, (c*H + h)*W + w] = x[n, c, h, w]; dy, dx."""
    x = fixed_uniform(501, (2, 3, 2, 4))  # (N, C, H, W)
    y, x_shape = flatten_forward_naive(x)  # (N, C*H*W)
    dy = fixed_uniform(502, y.shape)  # (N, C*H*W)
    return {"x": x, "y": y, "dy": dy, "dx": flatten_backward(dy, x_shape)}


def softmax_cross_entropy_vectors() -> dict[str, np.ndarray]:
    """z (4, 5) logits (row 2 shifted by +1000), labels (4,), loss (), dz = dL/dz (4, 5)."""
    z = fixed_uniform(601, (4, 5), -3.0, 3.0)  # (N, K)
    z[2] += 1000.0  # a naive exp would overflow: the loss must be computed stably
    labels = fixed_integers(602, (4,), 0, 5)  # (N,)
    loss, dz = softmax_cross_entropy_naive(z, labels)
    return {"z": z, "labels": labels, "loss": np.float64(loss), "dz": dz}
