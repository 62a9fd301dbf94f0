"""Softmax cross-entropy, forward and backward in one CUDA kernel; the oracle is
``refsim.nn.loss.softmax_cross_entropy`` (read it first).

One loop step per example n of logits z (N, K) and label y_n::

    m = max_k z[n, k],   s = sum_k exp(z[n, k] - m)         (k in order)
    loss[n] = log(s) - (z[n, y_n] - m)
    dz[n, k] = (exp(z[n, k] - m) / s - [k == y_n]) / N

then L = (1/N) sum_n loss[n], summed by ``channel_sum_cuda`` (a fixed order) in the logits'
dtype and returned as a float64 0-d array (the oracle returns a Python float). The oracle
computes the same expressions with NumPy's exp, log and pairwise sums, so the two agree to
float rounding (``tests/test_nn_cuda_kernels.py`` states the tolerances). A label outside
[0, K) makes that example's loss and gradient row NaN instead of reading outside z; callers
check labels first (``refsim.nn.loss.check_labels``).
"""

from __future__ import annotations

import numpy as np

from refsim.backend import get_xp
from refsim.nn.cuda.elementwise import channel_sum_cuda
from refsim.cuda_launch import cupy_launch

__all__ = ["SOURCE", "softmax_cross_entropy_cuda"]

SOURCE = r"""
extern "C" __global__ void refsim_softmax_xent(
    const real_t* __restrict__ z, const long long* __restrict__ labels,
    real_t* __restrict__ loss, real_t* __restrict__ dz, long long N, long long K)
{
    for (long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x; n < N;
         n += (long long)blockDim.x * gridDim.x) {
        const real_t* row = z + n * K;
        real_t* grad = dz + n * K;
        const long long label = labels[n];
        if (label < 0 || label >= K) {
            const real_t nan = (real_t)0 / (real_t)0;
            loss[n] = nan;
            for (long long k = 0; k < K; ++k) grad[k] = nan;
            continue;
        }
        real_t m = row[0];
        for (long long k = 1; k < K; ++k) m = (row[k] > m) ? row[k] : m;
        real_t s = (real_t)0;
        for (long long k = 0; k < K; ++k) s += exp(row[k] - m);
        loss[n] = log(s) - (row[label] - m);
        for (long long k = 0; k < K; ++k) {
            grad[k] = (exp(row[k] - m) / s - (real_t)(k == label)) / (real_t)N;
        }
    }
}
"""


def softmax_cross_entropy_cuda(z, y, launch=cupy_launch):
    """(L, dz): L the mean loss as a float64 0-d array (no device synchronisation), dz (N, K).

    z : (N, K) float logits; y : (N,) integer labels (cast to int64).
    """
    xp = get_xp(z)
    z = xp.ascontiguousarray(z)
    N, K = z.shape
    if K < 1:
        raise ValueError("softmax cross-entropy needs at least one class, got logits (N, 0)")
    if y.shape != (N,):
        raise ValueError(f"labels must have shape ({N},), got {y.shape}")
    labels = xp.ascontiguousarray(y, dtype=xp.int64)
    loss = xp.empty((N,), dtype=z.dtype)
    dz = xp.empty_like(z)
    launch(SOURCE, "refsim_softmax_xent", z.dtype, N, z, labels, loss, dz, N, K)
    total = channel_sum_cuda(loss.reshape(N, 1), axis=1, launch=launch)  # (1,)
    return (total / z.dtype.type(N)).reshape(()).astype(np.float64), dz
