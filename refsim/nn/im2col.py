"""im2col and its adjoint col2im: the data movement that turns a convolution into one GEMM.

For an input x (N, C, H, W), a K x K kernel at stride 1 and zero padding ``before`` on the
top/left (the bottom/right padding is implied by the output size Ho x Wo)::

    cols[c, p, q, n, i, j] = x_pad[n, c, i + p, j + q]
                           = x[n, c, i + p - before, j + q - before]  (0 outside x)

so that ``w.reshape(O, C*K*K) @ cols.reshape(C*K*K, N*Ho*Wo)`` is the convolution. The
layout (C, K, K, N, Ho, Wo) makes each kernel tap a copy of contiguous rows and lets the
GEMM output come out as (O, N, Ho, Wo). col2im is the adjoint (transpose) map: it
scatter-adds a (C, K, K, N, Ho, Wo) array back onto x's positions, taps in (p, q) order.

Two implementations of each, one algorithm:

* ``im2col_slices`` / ``col2im_slices``: K*K shifted-window copies over any array module
  (NumPy, CuPy). The readable version and the oracle.
* ``im2col_numba`` / ``col2im_numba``: the same loops written element by element and
  compiled by Numba (parallel over channels), used for NumPy arrays because NumPy's
  strided copies of short rows are slow. ``tests/test_nn_im2col.py`` pins them to the
  slice versions bit for bit (both add the taps of one element in the same order).
* ``refsim.nn.cuda.im2col_cuda`` / ``col2im_cuda``: CUDA kernels, used for CuPy arrays, pinned
  to the slice versions bit for bit by ``tests/test_nn_cuda_kernels.py``.
"""

from __future__ import annotations

import numba
import numpy as np

from refsim.backend import get_xp, is_cupy_array
from refsim.nn.cuda import col2im_cuda, im2col_cuda

__all__ = ["im2col", "col2im", "im2col_slices", "col2im_slices", "im2col_numba", "col2im_numba"]


def im2col_slices(x, K: int, before: int, Ho: int, Wo: int):
    """cols (C, K, K, N, Ho, Wo) by K*K shifted-window copies (xp-generic oracle).

    x : ndarray, shape (N, C, H, W); the padded input must cover Ho + K - 1 rows and
    Wo + K - 1 columns (zeros beyond x).
    """
    xp = get_xp(x)
    N, C, H, W = x.shape
    Hp, Wp = Ho + K - 1, Wo + K - 1
    x_pad = xp.zeros((C, N, Hp, Wp), dtype=x.dtype)  # (C, N, Hp, Wp)
    x_pad[:, :, before:before + H, before:before + W] = x.transpose(1, 0, 2, 3)
    cols = xp.empty((C, K, K, N, Ho, Wo), dtype=x.dtype)  # (C, K, K, N, Ho, Wo)
    for p in range(K):
        for q in range(K):
            cols[:, p, q] = x_pad[:, :, p:p + Ho, q:q + Wo]  # tap (p, q): a shifted window
    return cols


def col2im_slices(cols, x_shape, before: int):
    """The adjoint of :func:`im2col_slices`: dx (N, C, H, W) from cols (C, K, K, N, Ho, Wo)."""
    xp = get_xp(cols)
    C, K, _, N, Ho, Wo = cols.shape
    _, _, H, W = x_shape
    dx_pad = xp.zeros((C, N, Ho + K - 1, Wo + K - 1), dtype=cols.dtype)  # (C, N, Hp, Wp)
    for p in range(K):
        for q in range(K):
            dx_pad[:, :, p:p + Ho, q:q + Wo] += cols[:, p, q]
    return dx_pad[:, :, before:before + H, before:before + W].transpose(1, 0, 2, 3)  # (N, C, H, W)


def _im2col_loop(x, K, before, Ho, Wo, cols):
    """Fill cols (C, K, K, N, Ho, Wo) from x (N, C, H, W), element by element."""
    N, C, H, W = x.shape
    for c in range(C):
        for p in range(K):
            for q in range(K):
                for n in range(N):
                    for i in range(Ho):
                        r = i + p - before
                        for j in range(Wo):
                            s = j + q - before
                            if 0 <= r < H and 0 <= s < W:
                                cols[c, p, q, n, i, j] = x[n, c, r, s]
                            else:
                                cols[c, p, q, n, i, j] = 0


def _col2im_loop(cols, before, dx):
    """Add cols (C, K, K, N, Ho, Wo) onto dx (N, C, H, W) (zeroed), taps in (p, q) order."""
    C, K, _, N, Ho, Wo = cols.shape
    H, W = dx.shape[2], dx.shape[3]
    for c in range(C):  # each thread owns whole channels: no write races
        for p in range(K):
            for q in range(K):
                for n in range(N):
                    for i in range(Ho):
                        r = i + p - before
                        if r < 0 or r >= H:
                            continue
                        for j in range(Wo):
                            s = j + q - before
                            if 0 <= s < W:
                                dx[n, c, r, s] += cols[c, p, q, n, i, j]


_im2col_kernel = numba.njit(cache=True, nogil=True)(_im2col_loop)
_col2im_kernel = numba.njit(cache=True, nogil=True)(_col2im_loop)


def im2col_numba(x: np.ndarray, K: int, before: int, Ho: int, Wo: int) -> np.ndarray:
    """Numba version of :func:`im2col_slices` (its oracle), NumPy arrays only."""
    cols = np.empty((x.shape[1], K, K, x.shape[0], Ho, Wo), dtype=x.dtype)
    _im2col_kernel(np.ascontiguousarray(x), K, before, Ho, Wo, cols)
    return cols


def col2im_numba(cols: np.ndarray, x_shape, before: int) -> np.ndarray:
    """Numba version of :func:`col2im_slices` (its oracle), NumPy arrays only."""
    dx = np.zeros(x_shape, dtype=cols.dtype)
    _col2im_kernel(np.ascontiguousarray(cols), before, dx)
    return dx


def im2col(x, K: int, before: int, Ho: int, Wo: int):
    """cols (C, K, K, N, Ho, Wo): the Numba kernel for NumPy arrays, the CUDA kernel for CuPy
    arrays, slices otherwise."""
    if is_cupy_array(x):
        return im2col_cuda(x, K, before, Ho, Wo)
    if isinstance(x, np.ndarray):
        return im2col_numba(x, K, before, Ho, Wo)
    return im2col_slices(x, K, before, Ho, Wo)


def col2im(cols, x_shape, before: int):
    """dx (N, C, H, W): the Numba kernel for NumPy arrays, the CUDA kernel for CuPy arrays,
    slices otherwise."""
    if is_cupy_array(cols):
        return col2im_cuda(cols, x_shape, before)
    if isinstance(cols, np.ndarray):
        return col2im_numba(cols, x_shape, before)
    return col2im_slices(cols, x_shape, before)
