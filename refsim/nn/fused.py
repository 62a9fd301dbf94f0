"""The convolution -> ReLU -> 2x2 max-pool block with its bias, ReLU and pool in one pass.

Both convolution stages of the MNIST CNN of McMahan et al., AISTATS 2017 (arXiv:1602.05629),
Sec. 3 ("5x5 convolution ... followed with 2x2 max pooling", ReLU after each convolution),
and of the Flower/PyTorch CIFAR-10 net are this block. Unfused, it is four passes over the
convolution's output (bias add, ReLU, pool, and a transpose out of the GEMM's (O, N, H, W)
layout) and three more backward. Here it is one pass each way. With z = w_mat @ im2col(x)
the convolution without its bias, in the GEMM's layout (``refsim.nn.conv.conv2d_gemm_forward``)::

    r[n, o, h, w] = max(z[o, n, h, w] + b[o], 0)                 (refsim.nn.activation)
    y[n, o, i, j] = max_{p, q in {0, 1}} r[n, o, 2i + p, 2j + q]   (refsim.nn.pool)

with the pool's argmax (the FIRST maximum in row-major order wins, PyTorch's rule) kept for
the backward pass. Backward, for dy = dL/dy (N, O, Ho, Wo), in the GEMM's layout again::

    dz[o, n, 2i + p, 2j + q] = dy[n, o, i, j] * [z + b > 0]  at the window's winner (p, q),
                               0                             elsewhere

and at the winner [z + b > 0] = [y > 0], since there r = y. ReLU and max are exact, so the
fused pass is the unfused composition bit for bit, including -0.0 (max(-0.0, 0) is +0.0, as
``numpy.maximum`` gives) and NaN (it propagates through the ReLU as through ``numpy.maximum``,
and wins a window only as its first tap, as in ``refsim.nn.pool``).

``bias_relu_maxpool_forward_naive`` / ``bias_relu_maxpool_backward_naive`` are that unfused
composition (the layer functions of ``refsim.nn.activation`` and ``refsim.nn.pool``), the
oracles of the Numba kernels; ``tests/test_nn_fused.py`` pins them together. For arrays other
than NumPy's (CuPy) :func:`conv_relu_pool_forward` / :func:`conv_relu_pool_backward` run the
unfused layers, whose CUDA kernels give the same bits.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from refsim.backend import is_cupy_array
from refsim.nn.chunk_threads import ChunkThreads
from refsim.nn.activation import relu_backward, relu_forward
from refsim.nn.conv import (ConvCache, _check_conv_args, conv2d_backward, conv2d_backward_t,
                            conv2d_forward, conv2d_gemm_forward)
from refsim.nn.pool import (PoolCache, maxpool2d_backward, maxpool2d_backward_naive,
                            maxpool2d_forward, maxpool2d_forward_naive, pool_output_size)

__all__ = [
    "bias_relu_maxpool_forward",
    "bias_relu_maxpool_backward",
    "bias_relu_maxpool_forward_naive",
    "bias_relu_maxpool_backward_naive",
    "conv_relu_pool_forward",
    "conv_relu_pool_backward",
]


class FusedCache(NamedTuple):
    z_shape: tuple[int, int, int, int]  # (O, N, H, W)
    argmax: np.ndarray  # (N, O, Ho, Wo) int8, the winner 0..3 of each window, row-major
    y: np.ndarray  # (N, O, Ho, Wo) the block's output: the ReLU passed the winner iff y > 0


class NaiveCache(NamedTuple):
    z_shape: tuple[int, int, int, int]  # (O, N, H, W)
    mask: np.ndarray  # (N, O, H, W) the ReLU's mask z + b > 0
    pool: PoolCache


# ----------------------------------------------------------------------------------------
# The oracle: the unfused layers, in the order the model would call them.


def bias_relu_maxpool_forward_naive(z, b, padding: str = "valid"):
    """y = maxpool(relu(z + b)) by the separate layer functions. Oracle of
    :func:`bias_relu_maxpool_forward`.

    z : ndarray, shape (O, N, H, W); b : ndarray, shape (O,). Returns y (N, O, Ho, Wo), cache.
    """
    h = (z + b[:, None, None, None]).transpose(1, 0, 2, 3)  # (N, O, H, W)
    r, mask = relu_forward(h)  # (N, O, H, W)
    y, pool = maxpool2d_forward_naive(np.ascontiguousarray(r), padding)  # (N, O, Ho, Wo)
    return y, NaiveCache(z.shape, mask, pool)


def bias_relu_maxpool_backward_naive(dy, cache: NaiveCache):
    """dz (O, N, H, W) by the separate layer functions; oracle of
    :func:`bias_relu_maxpool_backward`. dy : ndarray, shape (N, O, Ho, Wo)."""
    dr = maxpool2d_backward_naive(dy, cache.pool)  # (N, O, H, W)
    return np.ascontiguousarray(relu_backward(dr, cache.mask).transpose(1, 0, 2, 3))


# ----------------------------------------------------------------------------------------
# The fused loops. Plain Python over NumPy arrays, compiled by Numba below (one thread: Numba
# threads beside OpenBLAS's spinning ones oversubscribed the 2-core machine, 5-8x slower).


def _relu(v, zero):
    """max(v, 0) as ``numpy.maximum`` computes it: +0.0 (``zero``, in v's dtype) for every
    v <= 0, -0.0 included; NaN for NaN."""
    return v if v > 0 or v != v else zero


_relu_kernel = numba.njit(cache=True, nogil=True, inline="always")(_relu)

# The kernels index flat views with np.uint64 offsets (computed from values >= 0) where they
# can: with signed indices Numba allows for negative (wrap-around) ones, and that keeps LLVM
# from vectorizing the loops. Measured on conv2 of the MNIST CNN at B = 50 (64 x 50 x 14 x
# 14, 2026-12-03, same runs): forward 1.94-2.02 ms with signed indices and branches,
# 0.34-0.62 ms so; backward 0.53-0.89 against 0.23-0.39 ms.


def _forward_loop(z, b, y, argmax, zero):
    """y, argmax (N, O, Ho, Wo) from z (O, N, H, W) and b (O,), all C-contiguous. Each tap is
    v = relu(z + b); a later tap wins only if strictly greater (the first maximum wins; a NaN
    wins only as the first tap). Windows with all four taps inside z go branch-free; the
    others (the last row or column of an odd size under 'same' pooling) skip their taps
    outside z, which never win."""
    O, N, H, W = z.shape
    Ho, Wo = y.shape[2], y.shape[3]
    zf, yf, af = z.reshape(-1), y.reshape(-1), argmax.reshape(-1)
    full_i, full_j = min(Ho, H // 2), min(Wo, W // 2)  # windows inside z
    one, two = np.uint64(1), np.uint64(2)
    for t in range(O * N):
        o, n = t // N, t % N
        bias = b[o]
        for i in range(Ho):
            out = np.uint64(((n * O + o) * Ho + i) * Wo)  # y[n, o, i, 0]
            j_edge = 0
            if i < full_i:
                r0 = np.uint64((t * H + 2 * i) * W)  # z[o, n, 2i, 0]
                r1 = r0 + np.uint64(W)
                for j in range(np.uint64(full_j)):
                    best, k = _relu_kernel(zf[r0 + two * j] + bias, zero), 0  # tap (0, 0)
                    v = _relu_kernel(zf[r0 + two * j + one] + bias, zero)  # tap (0, 1)
                    k = 1 if v > best else k
                    best = v if v > best else best
                    v = _relu_kernel(zf[r1 + two * j] + bias, zero)  # tap (1, 0)
                    k = 2 if v > best else k
                    best = v if v > best else best
                    v = _relu_kernel(zf[r1 + two * j + one] + bias, zero)  # tap (1, 1)
                    k = 3 if v > best else k
                    best = v if v > best else best
                    yf[out + j] = best
                    af[out + j] = k
                j_edge = full_j
            r = 2 * i  # always inside z; row r + 1 may not be
            for j in range(j_edge, Wo):
                s = 2 * j  # always inside z; column s + 1 may not be
                best, k = _relu_kernel(z[o, n, r, s] + bias, zero), 0
                if s + 1 < W:
                    v = _relu_kernel(z[o, n, r, s + 1] + bias, zero)
                    if v > best:
                        best, k = v, 1
                if r + 1 < H:
                    v = _relu_kernel(z[o, n, r + 1, s] + bias, zero)
                    if v > best:
                        best, k = v, 2
                    if s + 1 < W:
                        v = _relu_kernel(z[o, n, r + 1, s + 1] + bias, zero)
                        if v > best:
                            best, k = v, 3
                y[n, o, i, j] = best
                argmax[n, o, i, j] = k


def _backward_loop(dy, argmax, y, dz, zero):
    """Fill dz (O, N, H, W), all C-contiguous: 0 everywhere (also a last odd row or column
    that 'valid' pooling dropped), then at each window's winner the pool's 0 + dy, times the
    ReLU's mask [y > 0] as the float 0 or 1 that ``relu_backward`` multiplies by."""
    O, N, H, W = dz.shape
    Ho, Wo = dy.shape[2], dy.shape[3]
    dyf, af, yf, dzf = dy.reshape(-1), argmax.reshape(-1), y.reshape(-1), dz.reshape(-1)
    for t in range(dzf.size):
        dzf[t] = zero
    two = np.uint64(2)
    for t in range(O * N):
        o, n = t // N, t % N
        for i in range(Ho):
            src = np.uint64(((n * O + o) * Ho + i) * Wo)  # dy[n, o, i, 0]
            row = np.uint64((t * H + 2 * i) * W)  # dz[o, n, 2i, 0]
            for j in range(np.uint64(Wo)):
                k = np.uint64(af[src + j])
                g = zero + dyf[src + j]  # the pool's dx: zeros, plus dy at the winner
                if not yf[src + j] > 0:
                    g = g * zero  # the ReLU's dx = dy * mask, mask False
                dzf[row + k // two * np.uint64(W) + two * j + k % two] = g


_forward_kernel = numba.njit(cache=True, nogil=True)(_forward_loop)
_backward_kernel = numba.njit(cache=True, nogil=True)(_backward_loop)


def bias_relu_maxpool_forward(z, b, padding: str = "valid"):
    """y = maxpool(relu(z + b)) in one compiled pass (NumPy arrays). Oracle
    :func:`bias_relu_maxpool_forward_naive`.

    z : ndarray, shape (O, N, H, W) (copied if not C-contiguous); b : ndarray, shape (O,).
    Returns y : ndarray, shape (N, O, Ho, Wo), and the cache for the backward pass.
    """
    O, N, H, W = z.shape
    Ho, Wo = pool_output_size(H, padding), pool_output_size(W, padding)
    y = np.empty((N, O, Ho, Wo), dtype=z.dtype)  # (N, O, Ho, Wo)
    argmax = np.empty((N, O, Ho, Wo), dtype=np.int8)  # (N, O, Ho, Wo)
    _forward_kernel(np.ascontiguousarray(z), b, y, argmax, z.dtype.type(0))
    return y, FusedCache(z.shape, argmax, y)


def bias_relu_maxpool_backward(dy, cache: FusedCache):
    """dz : ndarray, shape (O, N, H, W), C-contiguous (the layout ``conv2d_backward_t`` takes),
    from dy (N, O, Ho, Wo), in one compiled pass.
    Oracle :func:`bias_relu_maxpool_backward_naive`."""
    dz = np.empty(cache.z_shape, dtype=dy.dtype)  # (O, N, H, W)
    _backward_kernel(np.ascontiguousarray(dy), cache.argmax, cache.y, dz, dy.dtype.type(0))
    return dz


# ----------------------------------------------------------------------------------------
# The model's entry points: the whole block, convolution included.


class BlockCache(NamedTuple):
    conv: ConvCache
    rest: object  # FusedCache (NumPy), or the (ReLU mask, PoolCache) of the unfused layers


def conv_relu_pool_forward(x, w, b, conv_padding="valid", pool_padding: str = "valid",
                           threads: ChunkThreads | None = None):
    """maxpool(relu(conv2d(x, w, b))): x (N, C, H, W) -> y (N, O, Ho', Wo'), and the cache.

    NumPy arrays: the GEMM of ``conv2d_gemm_forward``, then the fused pass. Other arrays
    (CuPy): ``conv2d_forward``, ``relu_forward``, ``maxpool2d_forward``. Same bits.
    ``threads`` runs the convolution's batch chunks side by side, with the same bits
    (``refsim.nn.conv.map_chunks``); the fused pass runs in the calling thread.
    """
    _check_conv_args(x, w, b)
    if isinstance(x, np.ndarray) and not is_cupy_array(x):
        z, conv = conv2d_gemm_forward(x, w, conv_padding, threads)  # (O, N, H', W')
        y, rest = bias_relu_maxpool_forward(z, b, pool_padding)
        return y, BlockCache(conv, rest)
    h, conv = conv2d_forward(x, w, b, conv_padding)  # (N, O, H', W')
    r, mask = relu_forward(h)
    y, pool = maxpool2d_forward(r, pool_padding)
    return y, BlockCache(conv, (mask, pool))


def conv_relu_pool_backward(dy, cache: BlockCache, need_dx: bool = True,
                            threads: ChunkThreads | None = None):
    """Gradients of :func:`conv_relu_pool_forward`: dy (N, O, Ho', Wo') -> dx (N, C, H, W)
    (None unless ``need_dx``), dw (O, C, K, K), db (O,). ``threads`` as in the forward."""
    if isinstance(cache.rest, FusedCache):
        dz = bias_relu_maxpool_backward(dy, cache.rest)  # (O, N, H', W')
        return conv2d_backward_t(dz, cache.conv, need_dx, threads)
    mask, pool = cache.rest
    d = relu_backward(maxpool2d_backward(dy, pool), mask)  # (N, O, H', W')
    return conv2d_backward(d, cache.conv, need_dx, threads)
