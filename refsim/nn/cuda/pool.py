"""2x2/2 max-pooling as CUDA kernels; the oracle is the loop of ``refsim.nn.pool``
(``maxpool2d_forward_naive`` / ``maxpool2d_backward_naive``, read those first).

Forward, one output (n, c, i, j) per loop step: the window's taps k = 0..3 at
(2i + k // 2, 2j + k % 2) are visited in row-major order and a tap replaces the best so far only
if it is strictly greater, so the *first* maximum wins (PyTorch's tie rule); taps outside x
('same' padding of an odd size) are skipped. argmax[n, c, i, j] = k of the winner (int8).

Backward as a gather, one dx element (n, c, r, s) per loop step (windows do not overlap)::

    dx[n, c, r, s] = 0 + dy[n, c, r // 2, s // 2]   if (r // 2, s // 2) is an output and
                                                     argmax there == 2 * (r % 2) + s % 2
                   = 0                              otherwise

the oracle's ``+=`` onto zeros, bit for bit (0 + dy turns -0 into +0 in both).
"""

from __future__ import annotations

from refsim.backend import get_xp
from refsim.cuda_launch import cupy_launch

__all__ = ["SOURCE", "maxpool2d_forward_cuda", "maxpool2d_backward_cuda"]

SOURCE = r"""
extern "C" __global__ void refsim_maxpool_forward(
    const real_t* __restrict__ x, real_t* __restrict__ y, signed char* __restrict__ argmax,
    long long N, long long C, long long H, long long W, long long Ho, long long Wo)
{
    const long long total = N * C * Ho * Wo;  // y and argmax are (N, C, Ho, Wo)
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        long long rest = e;
        const long long j = rest % Wo; rest /= Wo;
        const long long i = rest % Ho;
        const long long nc = rest / Ho;  // n * C + c
        const real_t* plane = x + nc * H * W;
        const long long r = 2 * i, s = 2 * j;  // tap 0 is always inside x
        real_t best = plane[r * W + s];
        signed char best_k = 0;
        if (s + 1 < W && plane[r * W + s + 1] > best) { best = plane[r * W + s + 1]; best_k = 1; }
        if (r + 1 < H) {
            if (plane[(r + 1) * W + s] > best) { best = plane[(r + 1) * W + s]; best_k = 2; }
            if (s + 1 < W && plane[(r + 1) * W + s + 1] > best) {
                best = plane[(r + 1) * W + s + 1]; best_k = 3;
            }
        }
        y[e] = best;
        argmax[e] = best_k;
    }
}

extern "C" __global__ void refsim_maxpool_backward(
    const real_t* __restrict__ dy, const signed char* __restrict__ argmax,
    real_t* __restrict__ dx, long long N, long long C, long long H, long long W, long long Ho,
    long long Wo)
{
    const long long total = N * C * H * W;  // dx is (N, C, H, W)
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        long long rest = e;
        const long long s = rest % W; rest /= W;
        const long long r = rest % H;
        const long long nc = rest / H;
        const long long i = r / 2, j = s / 2;
        real_t g = (real_t)0;
        if (i < Ho && j < Wo) {
            const long long o = (nc * Ho + i) * Wo + j;
            if (argmax[o] == 2 * (r % 2) + s % 2) g = (real_t)0 + dy[o];
        }
        dx[e] = g;
    }
}
"""


def maxpool2d_forward_cuda(x, Ho: int, Wo: int, launch=cupy_launch):
    """y (N, C, Ho, Wo) and argmax (int8, same shape) of x (N, C, H, W); Ho, Wo from
    ``refsim.nn.pool.pool_output_size``."""
    xp = get_xp(x)
    x = xp.ascontiguousarray(x)
    N, C, H, W = x.shape
    if not (1 <= Ho <= (H + 1) // 2 and 1 <= Wo <= (W + 1) // 2):  # tap 0 must lie inside x
        raise ValueError(f"maxpool2d: a {Ho}x{Wo} output does not fit a {H}x{W} input")
    y = xp.empty((N, C, Ho, Wo), dtype=x.dtype)
    argmax = xp.empty((N, C, Ho, Wo), dtype=xp.int8)
    launch(SOURCE, "refsim_maxpool_forward", x.dtype, y.size, x, y, argmax, N, C, H, W, Ho, Wo)
    return y, argmax


def maxpool2d_backward_cuda(dy, argmax, x_shape, launch=cupy_launch):
    """dx (N, C, H, W) = x_shape from dy and argmax (N, C, Ho, Wo) (int8)."""
    xp = get_xp(dy)
    dy = xp.ascontiguousarray(dy)
    argmax = xp.ascontiguousarray(argmax, dtype=xp.int8)
    N, C, Ho, Wo = dy.shape
    if argmax.shape != dy.shape:
        raise ValueError(f"maxpool2d: argmax {argmax.shape} and dy {dy.shape} differ")
    H, W = x_shape[2], x_shape[3]
    dx = xp.empty((N, C, H, W), dtype=dy.dtype)
    launch(SOURCE, "refsim_maxpool_backward", dy.dtype, dx.size, dy, argmax, dx, N, C, H, W,
           Ho, Wo)
    return dx
