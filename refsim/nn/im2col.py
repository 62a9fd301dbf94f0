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
* ``im2col_numba`` / ``col2im_numba``: the same maps as explicit loops compiled by Numba,
  used for NumPy arrays because NumPy's strided copies of short rows are slow. Each tap's
  output row is split into its zero padding and one contiguous in-bounds run (under "same"
  padding, one run over all the tap's rows), so the copy and add loops have no branch and
  Numba vectorizes them; col2im of other widths keeps a per-element loop.
  ``tests/test_nn_im2col.py`` pins them to the slice versions bit for bit (both add the taps
  of one element in the same order).
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


def _tap_bounds(size_out, size_in, shift):
    """The outputs t in [0, size_out) whose source t + shift lies in [0, size_in), as the
    half-open range [t0, t1) (empty as t0 == t1); positions outside it read the zero padding."""
    t0 = min(size_out, max(0, -shift))
    t1 = max(t0, min(size_out, size_in - shift))
    return t0, t1


_tap_bounds_kernel = numba.njit(cache=True, nogil=True)(_tap_bounds)

# Tap (p, q) maps output row i, column j to x's row i + p - before, column j + q - before;
# the rows [i0, i1) and columns [j0, j1) of _tap_bounds are the in-bounds ones. When output
# rows are as wide as x's (W == Wo: "same" padding), the rows i0 .. i1-1 of a tap are one run
# of x's plane shifted by (p - before) * W + (q - before) elements, cut by the wrapped columns
# (j < j0 or j >= j1) between rows: one long loop instead of Ho short ones.
#
# The runs index flat views with np.uint64 offsets, computed from signed values known to be
# >= 0. With signed indices Numba must allow for negative (wrap-around) indices, and that
# keeps LLVM from vectorizing the loops. Measured, a conv2 block of the MNIST CNN (6
# examples, same run, 2026-12-03): im2col 0.47-0.87 ms with signed indices and row by row,
# 0.16-0.25 ms this way; col2im 0.40-0.87 against 0.09-0.13 ms.


def _im2col_loop(x, K, before, Ho, Wo, cols):
    """Fill cols (C, K, K, N, Ho, Wo) from x (N, C, H, W), both C-contiguous: each tap's
    in-bounds runs copied, everything else 0."""
    N, C, H, W = x.shape
    xf, cf = x.reshape(-1), cols.reshape(-1)
    plane = Ho * Wo
    for c in range(C):
        for p in range(K):
            i0, i1 = _tap_bounds_kernel(Ho, H, p - before)
            for q in range(K):
                j0, j1 = _tap_bounds_kernel(Wo, W, q - before)
                for n in range(N):
                    out = np.uint64((((c * K + p) * K + q) * N + n) * plane)  # cols[c, p, q, n]
                    if i0 == i1 or j0 == j1:  # the whole tap reads padding
                        for t in range(np.uint64(plane)):
                            cf[out + t] = 0
                        continue
                    src = np.uint64(((n * C + c) * H + i0 + p - before) * W + j0 + q - before)
                    if W == Wo:  # one run from (i0, j0) to (i1 - 1, j1), then the cuts
                        a, b = np.uint64(i0 * Wo + j0), np.uint64((i1 - 1) * Wo + j1)
                        for t in range(a):
                            cf[out + t] = 0
                        for t in range(b - a):
                            cf[out + a + t] = xf[src + t]
                        for t in range(b, np.uint64(plane)):
                            cf[out + t] = 0
                        for i in range(i0, i1):
                            row = out + np.uint64(i * Wo)
                            for j in range(np.uint64(j0)):
                                cf[row + j] = 0
                            for j in range(np.uint64(j1), np.uint64(Wo)):
                                cf[row + j] = 0
                        continue
                    for t in range(np.uint64(i0 * Wo)):
                        cf[out + t] = 0
                    for i in range(i1 - i0):  # one run per row
                        row = out + np.uint64((i0 + i) * Wo)
                        s = src + np.uint64(i * W)
                        for j in range(np.uint64(j0)):
                            cf[row + j] = 0
                        for j in range(np.uint64(j1 - j0)):
                            cf[row + np.uint64(j0) + j] = xf[s + j]
                        for j in range(np.uint64(j1), np.uint64(Wo)):
                            cf[row + j] = 0
                    for t in range(np.uint64(i1 * Wo), np.uint64(plane)):
                        cf[out + t] = 0


def _col2im_loop(cols, before, dx):
    """Add cols (C, K, K, N, Ho, Wo) onto dx (N, C, H, W) (zeroed), both C-contiguous, taps in
    (p, q) order.

    In a long run (W == Wo) the wrapped columns add 0 instead of being skipped: dx starts at
    +0 and a sum that starts at +0 is never -0, so adding +0 leaves every value's bits as they
    are (NaN and inf included), and each element still gets its taps in (p, q) order. Other
    widths add row by row (short rows: this branchy form measured fastest)."""
    C, K, _, N, Ho, Wo = cols.shape
    H, W = dx.shape[2], dx.shape[3]
    if W != Wo:
        for c in range(C):
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
        return
    cf, df = cols.reshape(-1), dx.reshape(-1)
    plane = Ho * Wo
    zero = np.zeros(1, dtype=cols.dtype)[0]
    inside = np.empty((K, plane), dtype=np.bool_)  # inside[q, t]: column t % Wo in bounds
    for q in range(K):
        j0, j1 = _tap_bounds_kernel(Wo, W, q - before)
        for t in range(plane):
            inside[q, t] = j0 <= t % Wo < j1
    for c in range(C):
        for p in range(K):
            i0, i1 = _tap_bounds_kernel(Ho, H, p - before)
            for q in range(K):
                j0, j1 = _tap_bounds_kernel(Wo, W, q - before)
                if i0 == i1 or j0 == j1:
                    continue
                a, b = np.uint64(i0 * Wo + j0), np.uint64((i1 - 1) * Wo + j1)
                for n in range(N):
                    out = np.uint64((((c * K + p) * K + q) * N + n) * plane)  # cols[c, p, q, n]
                    dst = np.uint64(((n * C + c) * H + i0 + p - before) * W + j0 + q - before)
                    for t in range(b - a):
                        df[dst + t] += cf[out + a + t] if inside[q, a + t] else zero


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
