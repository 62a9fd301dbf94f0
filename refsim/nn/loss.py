"""Softmax cross-entropy over integer labels, averaged over the batch.

For logits z (N, K) and labels y in {0..K-1} (the loss of every model in McMahan et al.,
AISTATS 2017, arXiv:1602.05629, and PyTorch's ``F.cross_entropy(reduction='mean')``)::

    L  = (1/N) sum_n [ logsumexp(z[n]) - z[n, y_n] ]
    dz = (softmax(z) - onehot(y)) / N

logsumexp is computed stably as m + log sum exp(z - m), with m = max_k z[n, k].
``softmax_cross_entropy_naive`` is the per-example loop oracle. CuPy arrays go to the CUDA
kernel of ``refsim.nn.cuda.loss``, which returns the loss as a float64 0-d device array so that a
training step does not wait for the GPU.
"""

from __future__ import annotations

import math

import numpy as np

from refsim.backend import get_xp, is_cupy_array
from refsim.nn.cuda import softmax_cross_entropy_cuda

__all__ = ["check_labels", "softmax_cross_entropy", "softmax_cross_entropy_naive"]


def check_labels(y, num_samples: int, num_classes: int) -> None:
    """Raise TypeError/ValueError unless y is an integer vector of length N in [0, K)."""
    if not np.issubdtype(y.dtype, np.integer):  # dtypes are NumPy's on every backend
        raise TypeError(f"labels must be an integer array, got dtype {y.dtype}")
    if y.shape != (num_samples,):
        raise ValueError(f"labels must have shape ({num_samples},), got {y.shape}")
    if num_samples and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in "
                         f"[{int(y.min())}, {int(y.max())}]")


def softmax_cross_entropy(z, y, check: bool = True):
    """Mean cross-entropy and its gradient. z : (N, K) logits, y : (N,) int labels.

    Returns (loss, dz : ndarray (N, K)); loss is a float for NumPy arrays and a float64 0-d
    array for CuPy arrays (``float(loss)`` waits for the GPU). ``check=False`` skips
    :func:`check_labels` for labels the caller has already checked. Oracle
    :func:`softmax_cross_entropy_naive`.
    """
    N, K = z.shape
    if check:
        check_labels(y, N, K)
    if is_cupy_array(z):
        return softmax_cross_entropy_cuda(z, y)
    xp = get_xp(z)
    rows = xp.arange(N)
    shifted = z - z.max(axis=1, keepdims=True)  # (N, K), max entry 0
    exp = xp.exp(shifted)  # (N, K)
    sum_exp = exp.sum(axis=1)  # (N,)
    loss = float((xp.log(sum_exp) - shifted[rows, y]).mean())
    dz = exp / sum_exp[:, None]  # (N, K) softmax
    dz[rows, y] -= 1
    dz /= N
    return loss, dz


def softmax_cross_entropy_naive(z, y):
    """One example at a time with Python floats. Oracle for :func:`softmax_cross_entropy`."""
    N, K = z.shape
    check_labels(y, N, K)
    total = 0.0
    dz = np.zeros_like(z)
    for n in range(N):
        m = max(float(v) for v in z[n])
        s = sum(math.exp(float(v) - m) for v in z[n])
        total += m + math.log(s) - float(z[n, y[n]])
        for k in range(K):
            dz[n, k] = (math.exp(float(z[n, k]) - m) / s - (k == y[n])) / N
    return total / N, dz
