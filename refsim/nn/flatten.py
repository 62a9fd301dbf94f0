"""Flatten (N, C, H, W) to (N, C*H*W) in C order, so feature index = (c*H + h)*W + w.

This is PyTorch's ``torch.flatten(x, 1)`` on NCHW input. Keras flattens NHWC, i.e.
index (h*W + w)*C + c: the dense layer after a flatten must have its input rows permuted
when weights move between the two (``refsim.nn.convert``). Flatten has no arithmetic, so
the reshape is its own oracle: ``flatten_forward_naive`` spells the index formula out.
"""

from __future__ import annotations

import numpy as np

__all__ = ["flatten_forward", "flatten_backward", "flatten_forward_naive"]


def flatten_forward(x):
    """x : (N, ...) -> (N, prod(...)); the cache is the input shape."""
    return x.reshape(x.shape[0], -1), x.shape


def flatten_backward(dy, x_shape):
    """dy : (N, D) -> dx with the input's shape."""
    return dy.reshape(x_shape)


def flatten_forward_naive(x):
    """Oracle for :func:`flatten_forward` on (N, C, H, W): y[n, (c*H + h)*W + w] = x[n, c, h, w]."""
    N, C, H, W = x.shape
    y = np.empty((N, C * H * W), dtype=x.dtype)
    for n, c, h, w in np.ndindex(x.shape):
        y[n, (c * H + h) * W + w] = x[n, c, h, w]
    return y, x.shape
