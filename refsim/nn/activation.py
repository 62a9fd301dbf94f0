"""The ReLU activation, forward and backward.

ReLU(x) = max(x, 0) (Nair and Hinton, ICML 2010), used after every hidden layer of the
FedAvg CNN and 2NN (McMahan et al., AISTATS 2017, arXiv:1602.05629, Sec. 3)::

    y = max(x, 0),      dx = dy * [x > 0]

At x == 0 the derivative is taken as 0, as in PyTorch and TensorFlow.
``relu_forward_naive`` / ``relu_backward_naive`` are the element-loop oracles; CuPy arrays go
to the CUDA kernels of ``refsim.nn.cuda.elementwise``, which give the same bits.
"""

from __future__ import annotations

import numpy as np

from refsim.backend import get_xp, is_cupy_array
from refsim.nn.cuda import relu_backward_cuda, relu_forward_cuda

__all__ = ["relu_forward", "relu_backward", "relu_forward_naive", "relu_backward_naive"]


def relu_forward(x):
    """y = max(x, 0), any shape; the cache is the mask x > 0. Oracle :func:`relu_forward_naive`."""
    if is_cupy_array(x):
        return relu_forward_cuda(x)
    xp = get_xp(x)
    return xp.maximum(x, 0), x > 0  # same shape as x; the 0 takes x's dtype


def relu_backward(dy, mask):
    """dx = dy * [x > 0]. Oracle :func:`relu_backward_naive`."""
    if is_cupy_array(dy):
        return relu_backward_cuda(dy, mask)
    return dy * mask  # bool mask: the product keeps dy's dtype


def relu_forward_naive(x):
    """Element by element. Oracle for :func:`relu_forward`."""
    y = np.zeros_like(x)
    mask = np.zeros(x.shape, dtype=bool)
    for idx in np.ndindex(x.shape):
        if x[idx] > 0:
            y[idx], mask[idx] = x[idx], True
    return y, mask


def relu_backward_naive(dy, mask):
    """Element by element. Oracle for :func:`relu_backward`."""
    dx = np.zeros_like(dy)
    for idx in np.ndindex(dy.shape):
        if mask[idx]:
            dx[idx] = dy[idx]
    return dx
