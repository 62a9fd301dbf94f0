"""im2col and col2im as CUDA kernels; the oracles are ``refsim.nn.im2col.im2col_slices`` and
``col2im_slices`` (xp-generic, read those first).

im2col writes one element of cols (C, K, K, N, Ho, Wo) per loop step::

    cols[c, p, q, n, i, j] = x[n, c, i + p - before, j + q - before]   (0 outside x)

col2im is written as a *gather* rather than the oracle's scatter-add, so that no two threads
write the same element (no atomics, a fixed order of additions)::

    dx[n, c, r, s] = sum over (p, q) in row-major order, with i = r + before - p in [0, Ho)
                     and j = s + before - q in [0, Wo), of cols[c, p, q, n, i, j]

starting from 0. The oracle adds the same taps in the same (p, q) order onto zeros, so the two
agree bit for bit (``tests/test_nn_cuda_kernels.py``).
"""

from __future__ import annotations

from refsim.backend import get_xp
from refsim.cuda_launch import cupy_launch

__all__ = ["SOURCE", "im2col_cuda", "col2im_cuda"]

SOURCE = r"""
extern "C" __global__ void refsim_im2col(
    const real_t* __restrict__ x, real_t* __restrict__ cols, long long N, long long C,
    long long H, long long W, long long K, long long before, long long Ho, long long Wo)
{
    const long long total = C * K * K * N * Ho * Wo;  // cols is (C, K, K, N, Ho, Wo)
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        long long rest = e;
        const long long j = rest % Wo; rest /= Wo;
        const long long i = rest % Ho; rest /= Ho;
        const long long n = rest % N; rest /= N;
        const long long q = rest % K; rest /= K;
        const long long p = rest % K;
        const long long c = rest / K;
        const long long r = i + p - before, s = j + q - before;
        cols[e] = (r >= 0 && r < H && s >= 0 && s < W) ? x[((n * C + c) * H + r) * W + s]
                                                         : (real_t)0;
    }
}

extern "C" __global__ void refsim_col2im(
    const real_t* __restrict__ cols, real_t* __restrict__ dx, long long N, long long C,
    long long H, long long W, long long K, long long before, long long Ho, long long Wo)
{
    const long long total = N * C * H * W;  // dx is (N, C, H, W)
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        long long rest = e;
        const long long s = rest % W; rest /= W;
        const long long r = rest % H; rest /= H;
        const long long c = rest % C;
        const long long n = rest / C;
        real_t acc = (real_t)0;
        for (long long p = 0; p < K; ++p) {
            const long long i = r + before - p;
            if (i < 0 || i >= Ho) continue;
            for (long long q = 0; q < K; ++q) {
                const long long j = s + before - q;
                if (j < 0 || j >= Wo) continue;
                acc += cols[((((c * K + p) * K + q) * N + n) * Ho + i) * Wo + j];
            }
        }
        dx[e] = acc;
    }
}
"""


def im2col_cuda(x, K: int, before: int, Ho: int, Wo: int, launch=cupy_launch):
    """cols (C, K, K, N, Ho, Wo) of x (N, C, H, W); same contract as ``im2col_slices``.

    The padded input must cover Ho + K - 1 rows and Wo + K - 1 columns (zeros beyond x).
    """
    xp = get_xp(x)
    x = xp.ascontiguousarray(x)
    N, C, H, W = x.shape
    cols = xp.empty((C, K, K, N, Ho, Wo), dtype=x.dtype)
    launch(SOURCE, "refsim_im2col", x.dtype, cols.size, x, cols, N, C, H, W, K, before, Ho, Wo)
    return cols


def col2im_cuda(cols, x_shape, before: int, launch=cupy_launch):
    """dx (N, C, H, W) from cols (C, K, K, N, Ho, Wo); same contract as ``col2im_slices``."""
    xp = get_xp(cols)
    cols = xp.ascontiguousarray(cols)
    C, K, _, N, Ho, Wo = cols.shape
    _, _, H, W = x_shape
    dx = xp.empty((N, C, H, W), dtype=cols.dtype)
    launch(SOURCE, "refsim_col2im", cols.dtype, dx.size, cols, dx, N, C, H, W, K, before, Ho, Wo)
    return dx
