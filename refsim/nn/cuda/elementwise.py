"""ReLU, bias add and bias gradient as CUDA kernels; the oracles are ``refsim.nn.activation``
(``relu_forward`` / ``relu_backward``), the broadcast add of ``refsim.nn.conv`` and
``refsim.nn.dense`` (y + b), and their ``sum`` for the bias gradient.

ReLU, one element per loop step, written to give NumPy's bits (``tests/test_nn_cuda_kernels.py``
checks -0.0, NaN and Inf)::

    y = (x > 0 || x != x) ? x : 0     numpy.maximum(x, 0): NaN passes through, -0.0 gives +0.0
    mask = x > 0                 (bool, stored as one byte)
    dx = dy * (real_t)mask       dy * mask: a negative dy masked out gives -0.0, as in NumPy

Bias over a contiguous (A, C, B) view of y, channel axis C in the middle (a convolution's
(O, N*Ho*Wo) GEMM output is A = 1, B = N*Ho*Wo; a dense layer's (N, O) output is A = N, B = 1)::

    y[a, c, b] = z[a, c, b] + bias[c]                                        (bit-exact)
    db[c] = sum over a, b of dy[a, c, b]

The gradient is summed deterministically in two passes with no atomics: pass 1 sums each run of
``SUM_CHUNK`` consecutive (a, b) positions of a channel in order (one loop step per (c, chunk));
pass 2 sums each channel's chunk sums in order. NumPy sums pairwise, so the two agree within
summation rounding, bounded by (SUM_CHUNK + number of chunks) * eps * sum |dy| per channel
(recursive summation, Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., 4.2).
"""

from __future__ import annotations

from refsim.backend import get_xp
from refsim.cuda_launch import cupy_launch

__all__ = ["SOURCE", "SUM_CHUNK", "relu_forward_cuda", "relu_backward_cuda", "bias_add_cuda",
           "channel_sum_cuda"]

SUM_CHUNK = 256  # consecutive elements summed by one loop step of pass 1

SOURCE = r"""
extern "C" __global__ void refsim_relu_forward(
    const real_t* __restrict__ x, real_t* __restrict__ y, bool* __restrict__ mask,
    long long total)
{
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const real_t v = x[e];
        y[e] = (v > (real_t)0 || v != v) ? v : (real_t)0;  // v != v: NaN
        mask[e] = v > (real_t)0;
    }
}

extern "C" __global__ void refsim_relu_backward(
    const real_t* __restrict__ dy, const bool* __restrict__ mask, real_t* __restrict__ dx,
    long long total)
{
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        dx[e] = dy[e] * (real_t)mask[e];
    }
}

extern "C" __global__ void refsim_bias_add(
    const real_t* __restrict__ z, const real_t* __restrict__ bias, real_t* __restrict__ y,
    long long A, long long C, long long B)
{
    const long long total = A * C * B;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        y[e] = z[e] + bias[(e / B) % C];
    }
}

extern "C" __global__ void refsim_chunk_sums(
    const real_t* __restrict__ dy, real_t* __restrict__ partial, long long A, long long C,
    long long B, long long chunk, long long chunks)
{
    const long long total = C * chunks;  // partial is (C, chunks)
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const long long c = e / chunks, start = (e % chunks) * chunk;
        const long long stop = (start + chunk < A * B) ? start + chunk : A * B;
        real_t acc = (real_t)0;
        for (long long l = start; l < stop; ++l) {  // l = a * B + b
            acc += dy[((l / B) * C + c) * B + l % B];
        }
        partial[e] = acc;
    }
}

extern "C" __global__ void refsim_row_sums(
    const real_t* __restrict__ partial, real_t* __restrict__ out, long long C, long long chunks)
{
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < C;
         c += (long long)blockDim.x * gridDim.x) {
        real_t acc = (real_t)0;
        for (long long k = 0; k < chunks; ++k) acc += partial[c * chunks + k];
        out[c] = acc;
    }
}
"""


def relu_forward_cuda(x, launch=cupy_launch):
    """(y, mask) of ``relu_forward``: y = max(x, 0), mask = x > 0 (bool), any shape."""
    xp = get_xp(x)
    x = xp.ascontiguousarray(x)
    y, mask = xp.empty_like(x), xp.empty(x.shape, dtype=bool)
    launch(SOURCE, "refsim_relu_forward", x.dtype, x.size, x, y, mask, x.size)
    return y, mask


def relu_backward_cuda(dy, mask, launch=cupy_launch):
    """dx = dy * mask of ``relu_backward``; mask a bool array of dy's shape."""
    xp = get_xp(dy)
    dy, mask = xp.ascontiguousarray(dy), xp.ascontiguousarray(mask)
    if mask.shape != dy.shape or mask.dtype != bool:
        raise ValueError(f"relu: mask must be bool {dy.shape}, got {mask.dtype} {mask.shape}")
    dx = xp.empty_like(dy)
    launch(SOURCE, "refsim_relu_backward", dy.dtype, dy.size, dy, mask, dx, dy.size)
    return dx


def _acb(shape, axis: int) -> tuple[int, int, int]:
    A = 1
    for n in shape[:axis]:
        A *= n
    B = 1
    for n in shape[axis + 1:]:
        B *= n
    return A, shape[axis], B


def bias_add_cuda(z, bias, axis: int, launch=cupy_launch):
    """y = z + bias along ``axis`` of z (bias has z.shape[axis] entries), a new array."""
    xp = get_xp(z)
    z = xp.ascontiguousarray(z)
    A, C, B = _acb(z.shape, axis)
    if bias.shape != (C,) or bias.dtype != z.dtype:
        raise ValueError(f"bias must be ({C},) {z.dtype}, got {bias.shape} {bias.dtype}")
    y = xp.empty_like(z)
    launch(SOURCE, "refsim_bias_add", z.dtype, z.size, z, xp.ascontiguousarray(bias), y, A, C, B)
    return y


def channel_sum_cuda(dy, axis: int, launch=cupy_launch):
    """db (C,) = dy summed over every axis but ``axis`` (C = dy.shape[axis]), in two passes."""
    xp = get_xp(dy)
    dy = xp.ascontiguousarray(dy)
    A, C, B = _acb(dy.shape, axis)
    chunks = max(1, -(-(A * B) // SUM_CHUNK))
    partial = xp.empty((C, chunks), dtype=dy.dtype)
    out = xp.empty((C,), dtype=dy.dtype)
    launch(SOURCE, "refsim_chunk_sums", dy.dtype, C * chunks, dy, partial, A, C, B, SUM_CHUNK,
           chunks)
    launch(SOURCE, "refsim_row_sums", dy.dtype, C, partial, out, C, chunks)
    return out
