"""Fully connected (dense) layer, forward and backward.

The dense layers of the FedAvg CNN and 2NN (McMahan et al., AISTATS 2017, arXiv:1602.05629,
Sec. 3) and of multinomial logistic regression::

    y[n, o] = b[o] + sum_i x[n, i] * w[i, o]          (y = x w + b)

    dx = dy w^T,   dw = x^T dy,   db[o] = sum_n dy[n, o]

Dimensions: N batch, I inputs, O outputs. refsim stores w as (I, O) (the Keras layout);
PyTorch's ``nn.Linear.weight`` is its transpose (O, I): see ``refsim.nn.convert``.
``linear_forward_naive`` / ``linear_backward_naive`` are the loop oracles. For CuPy arrays the
products go to cuBLAS and the bias add and bias gradient to the kernels of
``refsim.nn.cuda.elementwise``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refsim.backend import is_cupy_array
from refsim.nn.cuda import bias_add_cuda, channel_sum_cuda

__all__ = ["linear_forward", "linear_backward", "linear_forward_naive", "linear_backward_naive"]


class LinearCache(NamedTuple):
    x: object  # (N, I)
    w: object  # (I, O)


def _check_linear_args(x, w, b) -> None:
    if x.ndim != 2:
        raise ValueError(f"linear: x must have shape (N, I), got {x.shape}")
    if w.ndim != 2 or w.shape[0] != x.shape[1]:
        raise ValueError(f"linear: w must have shape ({x.shape[1]}, O), got {w.shape}")
    if b.shape != (w.shape[1],):
        raise ValueError(f"linear: b must have shape ({w.shape[1]},), got {b.shape}")


def linear_forward(x, w, b):
    """y = x @ w + b. x : (N, I), w : (I, O), b : (O,) -> y : (N, O); oracle
    :func:`linear_forward_naive`."""
    _check_linear_args(x, w, b)
    if is_cupy_array(x):
        return bias_add_cuda(x @ w, b, axis=1), LinearCache(x, w)
    return x @ w + b, LinearCache(x, w)  # (N, O)


def linear_backward(dy, cache: LinearCache, need_dx: bool = True, dw_out=None):
    """dy : (N, O) -> dx (N, I) (None unless ``need_dx``), dw (I, O), db (O,); oracle
    :func:`linear_backward_naive`. ``dw_out``: an optional C-contiguous (I, O) array of dy's
    type that receives dw (and is returned as dw), e.g. its view in a flat gradient vector,
    saving a copy of the largest gradient of a network (fc1 of the MNIST CNN: 6.4 MB)."""
    # dx = dy w^T, computed as (w dy^T)^T: OpenBLAS runs this orientation faster for a
    # large w and a small batch (fc1 of the MNIST CNN at B = 10: 0.43 against 0.58 ms) and,
    # with OpenBLAS 0.3.31, gave the same bits on every shape tried (docs/nn.md).
    dx = (cache.w @ dy.T).T if need_dx else None  # (N, I), a transposed view
    db = channel_sum_cuda(dy, axis=1) if is_cupy_array(dy) else dy.sum(axis=0)  # (O,)
    if not is_cupy_array(dy) and isinstance(dy, np.ndarray) and isinstance(dw_out, np.ndarray):
        return dx, np.matmul(cache.x.T, dy, out=dw_out), db  # (I, O), the same product
    return dx, cache.x.T @ dy, db  # (I, O)


def linear_forward_naive(x, w, b):
    """Loops over (n, o). Oracle for :func:`linear_forward`."""
    _check_linear_args(x, w, b)
    N, I = x.shape
    O = w.shape[1]
    y = np.empty((N, O), dtype=x.dtype)  # (N, O)
    for n in range(N):
        for o in range(O):
            y[n, o] = b[o] + sum(x[n, i] * w[i, o] for i in range(I))
    return y, LinearCache(x, w)


def linear_backward_naive(dy, cache: LinearCache):
    """Loops over every (n, i, o) term. Oracle for :func:`linear_backward`."""
    x, w = cache.x, cache.w
    N, I = x.shape
    O = w.shape[1]
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros(O, dtype=dy.dtype)
    for n in range(N):
        for o in range(O):
            db[o] += dy[n, o]
            for i in range(I):
                dx[n, i] += dy[n, o] * w[i, o]
                dw[i, o] += dy[n, o] * x[n, i]
    return dx, dw, db
