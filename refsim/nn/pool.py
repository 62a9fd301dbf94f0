"""2x2 max-pooling with stride 2, forward and backward.

The pooling layer of the FedAvg MNIST CNN (McMahan et al., AISTATS 2017, arXiv:1602.05629,
Sec. 3: "2x2 max pooling") and of the Flower/PyTorch CIFAR-10 tutorial net::

    y[n, c, i, j] = max_{p, q in {0, 1}} x_pad[n, c, 2i + p, 2j + q]

Backward: the whole of dy[n, c, i, j] goes to the *first* maximal element of its window in
row-major order (p, q) = (0, 0), (0, 1), (1, 0), (1, 1): the tie rule of PyTorch's
``max_pool2d``. Every other element of the window gets zero.

Padding: ``"valid"`` drops a last odd row/column (Ho = floor(H / 2)); ``"same"`` pads a last
odd row/column with -inf (Ho = ceil(H / 2)), the TensorFlow/Keras convention, so a padded
element is never the maximum. Layout NCHW.

Three implementations, one algorithm (``tests/test_nn_pool.py`` pins them together):
``maxpool2d_forward_naive`` / ``maxpool2d_backward_naive`` run the loop oracle as plain Python;
``maxpool2d_forward`` / ``maxpool2d_backward`` run the same loops compiled by Numba for NumPy
arrays, the CUDA kernels of ``refsim.nn.cuda.pool`` for CuPy arrays, and the xp-generic
strided-view versions (``*_views``) for any other array module.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from refsim.backend import get_xp, is_cupy_array
from refsim.nn.cuda import maxpool2d_backward_cuda, maxpool2d_forward_cuda

__all__ = [
    "pool_output_size",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "maxpool2d_forward_views",
    "maxpool2d_backward_views",
    "maxpool2d_forward_naive",
    "maxpool2d_backward_naive",
]


def pool_output_size(size: int, padding: str) -> int:
    """Output length of one axis: floor(size / 2) for 'valid', ceil(size / 2) for 'same'."""
    if padding == "valid":
        out = size // 2
    elif padding == "same":
        out = (size + 1) // 2
    else:
        raise ValueError(f"max-pool padding must be 'same' or 'valid', got {padding!r}")
    if out < 1:
        raise ValueError(f"2x2 max-pool with padding {padding!r} needs an input of size >= 2, "
                         f"got {size}")
    return out


class PoolCache(NamedTuple):
    x_shape: tuple[int, int, int, int]  # (N, C, H, W)
    argmax: object  # (N, C, Ho, Wo) index 0..3 of the winner in its window, row-major


_TAPS = ((0, 0), (0, 1), (1, 0), (1, 1))  # window positions (p, q) in row-major order


def _padded(x, padding: str):
    """x cropped ('valid') or -inf padded ('same') to (N, C, 2Ho, 2Wo)."""
    xp = get_xp(x)
    if x.ndim != 4:
        raise ValueError(f"maxpool2d: x must have shape (N, C, H, W), got {x.shape}")
    N, C, H, W = x.shape
    Ho, Wo = pool_output_size(H, padding), pool_output_size(W, padding)
    if 2 * Ho > H or 2 * Wo > W:  # 'same' with an odd size: pad with -inf
        x = xp.pad(x, ((0, 0), (0, 0), (0, 2 * Ho - H), (0, 2 * Wo - W)),
                   constant_values=-xp.inf)
    return x[:, :, :2 * Ho, :2 * Wo]  # (N, C, 2Ho, 2Wo)


def maxpool2d_forward_views(x, padding: str = "valid"):
    """xp-generic 2x2/2 max-pool over four strided views; oracle :func:`maxpool2d_forward_naive`.

    The four window positions are four strided views x[:, :, p::2, q::2]; the winner is
    the first of them (row-major) that equals the maximum.
    x : ndarray, shape (N, C, H, W). Returns y (N, C, Ho, Wo) and the cache.
    """
    xp = get_xp(x)
    x_shape = x.shape
    x = _padded(x, padding)  # (N, C, 2Ho, 2Wo)
    taps = [x[:, :, p::2, q::2] for p, q in _TAPS]  # 4 x (N, C, Ho, Wo)
    y = xp.maximum(xp.maximum(taps[0], taps[1]), xp.maximum(taps[2], taps[3]))  # (N, C, Ho, Wo)
    # The first k with taps[k] == y: 0 if tap 0 is a maximum, else 1 + (0 if tap 1 is, else
    # 1 + (0 if tap 2 is, else 1)).
    miss = [(tap != y).astype(np.int8) for tap in taps[:3]]  # 3 x (N, C, Ho, Wo)
    argmax = miss[0] * (1 + miss[1] * (1 + miss[2]))  # (N, C, Ho, Wo), int8 in 0..3
    return y, PoolCache(x_shape, argmax)


def maxpool2d_backward_views(dy, cache: PoolCache):
    """xp-generic: route each dy to its window's first maximum; oracle
    :func:`maxpool2d_backward_naive`.

    dy : ndarray, shape (N, C, Ho, Wo). Returns dx : ndarray, shape (N, C, H, W).
    """
    xp = get_xp(dy)
    N, C, H, W = cache.x_shape
    _, _, Ho, Wo = dy.shape
    dx = xp.zeros((N, C, 2 * Ho, 2 * Wo), dtype=dy.dtype)  # (N, C, 2Ho, 2Wo)
    for k, (p, q) in enumerate(_TAPS):
        dx[:, :, p::2, q::2] = dy * (cache.argmax == k)
    if (2 * Ho, 2 * Wo) == (H, W):
        return dx
    out = xp.zeros((N, C, H, W), dtype=dy.dtype)  # (N, C, H, W)
    h, w = min(H, 2 * Ho), min(W, 2 * Wo)
    out[:, :, :h, :w] = dx[:, :, :h, :w]  # drops the -inf padding, zero for a dropped edge
    return out


# ----------------------------------------------------------------------------------------
# The loop oracle. Its loop bodies run as plain Python in the *_naive functions and, compiled
# by Numba, as the kernels maxpool2d_forward/backward use for NumPy arrays.


def _maxpool_forward_loop(x, y, argmax):
    """Fill y, argmax (N, C, Ho, Wo) from x (N, C, H, W); positions outside x never win."""
    N, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                r = 2 * i  # always inside x; row r + 1 may not be ('same', odd H)
                for j in range(Wo):
                    s = 2 * j  # always inside x; column s + 1 may not be
                    best, best_k = x[n, c, r, s], 0  # tap k = 0: (p, q) = (0, 0)
                    if s + 1 < W and x[n, c, r, s + 1] > best:  # k = 1: (0, 1)
                        best, best_k = x[n, c, r, s + 1], 1
                    if r + 1 < H:
                        if x[n, c, r + 1, s] > best:  # k = 2: (1, 0)
                            best, best_k = x[n, c, r + 1, s], 2
                        if s + 1 < W and x[n, c, r + 1, s + 1] > best:  # k = 3: (1, 1)
                            best, best_k = x[n, c, r + 1, s + 1], 3
                    y[n, c, i, j] = best  # strict '>' above: the first maximum wins
                    argmax[n, c, i, j] = best_k


def _maxpool_backward_loop(dy, argmax, dx):
    """Add each dy[n, c, i, j] to dx (N, C, H, W) (zeroed) at its window's winner."""
    N, C, Ho, Wo = dy.shape
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    k = argmax[n, c, i, j]
                    dx[n, c, 2 * i + k // 2, 2 * j + k % 2] += dy[n, c, i, j]


_maxpool_forward_kernel = numba.njit(cache=True, nogil=True)(_maxpool_forward_loop)
_maxpool_backward_kernel = numba.njit(cache=True, nogil=True)(_maxpool_backward_loop)


def _pool_outputs(x, padding: str):
    if x.ndim != 4:
        raise ValueError(f"maxpool2d: x must have shape (N, C, H, W), got {x.shape}")
    N, C, H, W = x.shape
    Ho, Wo = pool_output_size(H, padding), pool_output_size(W, padding)
    y = np.empty((N, C, Ho, Wo), dtype=x.dtype)  # (N, C, Ho, Wo)
    return y, np.empty((N, C, Ho, Wo), dtype=np.int8)  # (N, C, Ho, Wo)


def maxpool2d_forward_naive(x, padding: str = "valid"):
    """Max-pool by explicit loops over windows (plain Python). Oracle for the others."""
    y, argmax = _pool_outputs(x, padding)
    _maxpool_forward_loop(x, y, argmax)
    return y, PoolCache(x.shape, argmax)


def maxpool2d_backward_naive(dy, cache: PoolCache):
    """Gradient by explicit loops (plain Python). Oracle for the others."""
    dx = np.zeros(cache.x_shape, dtype=dy.dtype)  # (N, C, H, W)
    _maxpool_backward_loop(dy, cache.argmax, dx)
    return dx


def maxpool2d_forward(x, padding: str = "valid"):
    """2x2/2 max-pool: the compiled loop for NumPy arrays, the CUDA kernel for CuPy arrays,
    the strided views otherwise.

    x : ndarray, shape (N, C, H, W). Returns y (N, C, Ho, Wo) and the cache.
    """
    if is_cupy_array(x):
        if x.ndim != 4:
            raise ValueError(f"maxpool2d: x must have shape (N, C, H, W), got {x.shape}")
        Ho, Wo = pool_output_size(x.shape[2], padding), pool_output_size(x.shape[3], padding)
        y, argmax = maxpool2d_forward_cuda(x, Ho, Wo)
        return y, PoolCache(x.shape, argmax)
    if not isinstance(x, np.ndarray):
        return maxpool2d_forward_views(x, padding)
    y, argmax = _pool_outputs(x, padding)
    _maxpool_forward_kernel(x, y, argmax)
    return y, PoolCache(x.shape, argmax)


def maxpool2d_backward(dy, cache: PoolCache):
    """dx (N, C, H, W): the compiled loop for NumPy arrays, the CUDA kernel for CuPy arrays,
    the strided views otherwise."""
    if is_cupy_array(dy):
        return maxpool2d_backward_cuda(dy, cache.argmax, cache.x_shape)
    if not isinstance(dy, np.ndarray):
        return maxpool2d_backward_views(dy, cache)
    dx = np.zeros(cache.x_shape, dtype=dy.dtype)  # (N, C, H, W)
    _maxpool_backward_kernel(dy, cache.argmax, dx)
    return dx
