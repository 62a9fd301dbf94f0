"""2-D convolution (stride 1), forward and backward, the reference for refsim's CNNs.

Implements the convolutional layer of the MNIST CNN of McMahan et al., "Communication-
Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017
(arXiv:1602.05629), Sec. 3, and of the Flower/PyTorch CIFAR-10 tutorial net. As in every
deep-learning framework the "convolution" is a cross-correlation (no kernel flip)::

    y[n, o, i, j] = b[o] + sum_{c, p, q} w[o, c, p, q] * x_pad[n, c, i + p, j + q]

Backward, with dy = dL/dy::

    db[o]          = sum_{n, i, j} dy[n, o, i, j]
    dw[o, c, p, q] = sum_{n, i, j} dy[n, o, i, j] * x_pad[n, c, i + p, j + q]
    dx_pad[n, c, i + p, j + q] += sum_o dy[n, o, i, j] * w[o, c, p, q]

Dimensions: N batch, C input channels, O output channels, H x W input, K x K kernel,
Ho x Wo output. Layout NCHW; kernels OIHW (O, C, K, K), as PyTorch.

Padding: ``"valid"`` (none), an int P (P on every side) or ``"same"`` (output size equals
input size at stride 1). For an even K, ``"same"`` pads (K-1)//2 before and K//2 after,
the TensorFlow/Keras convention (PyTorch's ``padding='same'`` does the same).

``conv2d_forward_naive`` / ``conv2d_backward_naive`` are the loop-level oracles; the
vectorised ``conv2d_forward`` / ``conv2d_backward`` (im2col + GEMM, by batch chunks) are checked
against them in ``tests/test_nn_conv.py``. For CuPy arrays im2col, col2im, the bias add and
the bias gradient are the CUDA kernels of ``refsim.nn.cuda`` and the GEMMs are cuBLAS's.

The vectorised functions take an optional ``threads`` (a ``refsim.nn.chunk_threads.ChunkThreads``)
that runs the batch chunks side by side; see :func:`map_chunks`. It never changes a bit: the
chunks are those of the serial loop, each chunk's work is the same calls on the same
operands, and the dw terms are summed on the calling thread in chunk order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple, TypeVar

import numpy as np

from refsim.backend import get_xp, is_cupy_array
from refsim.nn.chunk_threads import ChunkThreads
from refsim.nn.cuda import bias_add_cuda, channel_sum_cuda
from refsim.nn.im2col import col2im, im2col

__all__ = [
    "conv_padding",
    "conv_output_size",
    "conv2d_forward",
    "conv2d_backward",
    "conv2d_gemm_forward",
    "conv2d_backward_t",
    "conv2d_forward_naive",
    "conv2d_backward_naive",
    "map_chunks",
]

T = TypeVar("T")


def conv_padding(kernel: int, padding: str | int) -> tuple[int, int]:
    """(before, after) zero padding of one spatial axis for ``padding`` at stride 1.

    >>> conv_padding(5, "same"), conv_padding(4, "same"), conv_padding(5, "valid"), conv_padding(5, 1)
    ((2, 2), (1, 2), (0, 0), (1, 1))
    """
    if padding == "valid":
        return 0, 0
    if padding == "same":
        return (kernel - 1) // 2, kernel // 2
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool) and padding >= 0:
        return int(padding), int(padding)
    raise ValueError(f"padding must be 'same', 'valid' or an int >= 0, got {padding!r}")


def conv_output_size(size: int, kernel: int, padding: str | int) -> int:
    """Output length of one spatial axis: size + before + after - K + 1."""
    before, after = conv_padding(kernel, padding)
    out = size + before + after - kernel + 1
    if out < 1:
        raise ValueError(f"a {kernel}x{kernel} kernel with padding {padding!r} does not fit "
                         f"an input of size {size}")
    return out


class ConvCache(NamedTuple):
    x: object  # (N, C, H, W) the input
    w: object  # (O, C, K, K)
    pads: tuple[int, int]  # (before, after) zero padding on each spatial axis
    cols: tuple | None = None  # the forward pass's im2col blocks (C*K*K, n*Ho*Wo), or None


def _check_conv_args(x, w, b) -> None:
    if x.ndim != 4:
        raise ValueError(f"conv2d: x must have shape (N, C, H, W), got {x.shape}")
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
        raise ValueError(f"conv2d: w must have shape (O, C, K, K), got {w.shape}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"conv2d: x has {x.shape[1]} channels but w expects {w.shape[1]}")
    if b.shape != (w.shape[0],):
        raise ValueError(f"conv2d: b must have shape ({w.shape[0]},), got {b.shape}")


def _pad(x, pads: tuple[int, int]):
    xp = get_xp(x)
    before, after = pads
    if before == after == 0:
        return x
    return xp.pad(x, ((0, 0), (0, 0), (before, after), (before, after)))  # (N, C, Hp, Wp)


# ----------------------------------------------------------------------------------------
# Loop-level oracle: read this first.


def conv2d_forward_naive(x, w, b, padding: str | int = "valid"):
    """Convolution by explicit loops over (n, o, i, j). Oracle for :func:`conv2d_forward`.

    x : ndarray, shape (N, C, H, W); w : ndarray, shape (O, C, K, K); b : ndarray, shape (O,)
    Returns y : ndarray, shape (N, O, Ho, Wo), and the cache for the backward pass.
    """
    _check_conv_args(x, w, b)
    N, C, H, W = x.shape
    O, _, K, _ = w.shape
    pads = conv_padding(K, padding)
    Ho, Wo = conv_output_size(H, K, padding), conv_output_size(W, K, padding)
    x_pad = _pad(x, pads)  # (N, C, Hp, Wp)
    y = np.zeros((N, O, Ho, Wo), dtype=x.dtype)  # (N, O, Ho, Wo)
    for n in range(N):
        for o in range(O):
            for i in range(Ho):
                for j in range(Wo):
                    window = x_pad[n, :, i:i + K, j:j + K]  # (C, K, K)
                    y[n, o, i, j] = np.sum(window * w[o]) + b[o]
    return y, ConvCache(x, w, pads)


def conv2d_backward_naive(dy, cache: ConvCache):
    """Gradients by explicit loops. Oracle for :func:`conv2d_backward`.

    dy : ndarray, shape (N, O, Ho, Wo). Returns dx (N, C, H, W), dw (O, C, K, K), db (O,).
    """
    x_pad, w, (before, _) = _pad(cache.x, cache.pads), cache.w, cache.pads
    N, C, H, W = cache.x.shape
    _, O, Ho, Wo = dy.shape
    K = w.shape[2]
    dx_pad = np.zeros_like(x_pad)  # (N, C, Hp, Wp)
    dw = np.zeros_like(w)  # (O, C, K, K)
    db = np.zeros(O, dtype=dy.dtype)  # (O,)
    for n in range(N):
        for o in range(O):
            for i in range(Ho):
                for j in range(Wo):
                    g = dy[n, o, i, j]
                    db[o] += g
                    dw[o] += g * x_pad[n, :, i:i + K, j:j + K]
                    dx_pad[n, :, i:i + K, j:j + K] += g * w[o]
    dx = dx_pad[:, :, before:before + H, before:before + W]  # (N, C, H, W)
    return dx, dw, db


# ----------------------------------------------------------------------------------------
# Vectorised version: im2col + GEMM (``refsim.nn.im2col`` holds the data movement), over
# chunks of the batch so that each im2col block stays small (CHUNK_BYTES): the blocks stay
# in cache and are reused rather than allocated afresh. When all the blocks of a batch
# together take at most KEEP_COLS_BYTES (the MNIST CNN at B = 50: 31 MB for conv2) the
# forward pass keeps them in its cache and the backward pass reuses them instead of running
# im2col again; above that (e.g. a whole client of 600 examples as one batch) the backward
# pass rebuilds them from x. Kept blocks are fresh allocations and cost page faults, but
# at B = 50 keeping conv2's 31 MB made the step 0.88x as long as rebuilding them (median
# of 8 alternations, 2026-12-03, docs/benchmarks.md). The blocks are the same either way, so
# the arithmetic is too (tests/test_nn_conv.py pins the two).

CHUNK_BYTES = 4 * 2**20
CHUNK_BYTES_GPU = 2**30  # on a GPU, few large GEMMs beat many small launches
KEEP_COLS_BYTES = 32 * 2**20


def _chunk_size(x, C: int, K: int, Ho: int, Wo: int) -> int:
    """Examples per im2col block: as many as fit in CHUNK_BYTES (CHUNK_BYTES_GPU for CuPy
    arrays), at least one."""
    budget = CHUNK_BYTES_GPU if is_cupy_array(x) else CHUNK_BYTES
    return max(1, budget // (C * K * K * Ho * Wo * x.itemsize))


def map_chunks(work: Callable[[int], T], count: int,
               threads: ChunkThreads | None) -> Iterable[T]:
    """work(0), ..., work(count - 1), in that order.

    ``threads`` None: each chunk runs in the calling thread when its result is asked for (a
    generator, so the serial loop holds one result at a time). Otherwise the list of
    ``threads.map(work, count)``: chunk k on lane k mod L, every chunk finished before the
    results come back, the first failing chunk's exception raised.

    The chunk loops of this module are written as a ``work(k)`` for chunk k that writes only
    chunk k's part of the outputs and returns what must be combined in order, so the bits
    are those of the serial loop with the same BLAS threads, for any number of lanes
    (tests/test_nn_step_threads.py).

    >>> list(map_chunks(lambda k: k * k, 4, None))
    [0, 1, 4, 9]
    """
    if threads is None:
        return (work(k) for k in range(count))
    return threads.map(work, count)


def conv2d_gemm_forward(x, w, padding: str | int = "valid", threads: ChunkThreads | None = None):
    """The convolution without its bias, in the GEMM's own layout: z = w_mat @ im2col(x).

    x : ndarray, shape (N, C, H, W); w : ndarray, shape (O, C, K, K).
    Returns z : ndarray, shape (O, N, Ho, Wo), C-contiguous (y[n, o] = z[o, n] + b[o]), and
    the cache for :func:`conv2d_backward_t`. :func:`conv2d_forward` adds the bias;
    ``refsim.nn.fused`` adds it inside its ReLU and max-pool pass. ``threads`` runs the
    chunks side by side (:func:`map_chunks`; NumPy arrays only, CuPy arrays run in order).
    """
    xp = get_xp(x)
    N, C, H, W = x.shape
    O, _, K, _ = w.shape
    pads = conv_padding(K, padding)
    Ho, Wo = conv_output_size(H, K, padding), conv_output_size(W, K, padding)
    w_mat = w.reshape(O, C * K * K)  # (O, C*K*K)
    z = xp.empty((O, N, Ho, Wo), dtype=x.dtype)  # (O, N, Ho, Wo): the GEMM's natural layout
    z_mat = z.reshape(O, N * Ho * Wo)  # a view: chunk n0..n1 is the columns n0*Ho*Wo..n1*Ho*Wo
    on_gpu = is_cupy_array(z)
    step = _chunk_size(x, C, K, Ho, Wo)
    keep = C * K * K * N * Ho * Wo * x.itemsize <= KEEP_COLS_BYTES

    def chunk(k: int):
        """Writes chunk k's columns of z; returns its im2col block if the cache keeps it."""
        n0 = k * step
        n1 = min(N, n0 + step)
        cols = im2col(x[n0:n1], K, pads[0], Ho, Wo).reshape(C * K * K, -1)  # (C*K*K, n*Ho*Wo)
        if on_gpu:
            z[:, n0:n1] = (w_mat @ cols).reshape(O, n1 - n0, Ho, Wo)
        else:  # OpenBLAS writes the chunk's columns of z in place (same bits, no copy)
            np.matmul(w_mat, cols, out=z_mat[:, n0 * Ho * Wo:n1 * Ho * Wo])
        return cols if keep else None

    kept = tuple(map_chunks(chunk, -(-N // step), None if on_gpu else threads))
    return z, ConvCache(x, w, pads, kept if keep else None)


def conv2d_forward(x, w, b, padding: str | int = "valid", threads: ChunkThreads | None = None):
    """Convolution as matrix products: y[:, chunk] = w_mat @ im2col(x[chunk]), plus b.

    Same contract as :func:`conv2d_forward_naive` (its oracle).
    x : ndarray, shape (N, C, H, W); w : ndarray, shape (O, C, K, K); b : ndarray, shape (O,)
    Returns y : ndarray, shape (N, O, Ho, Wo), and the cache for :func:`conv2d_backward`.
    ``threads``: see :func:`map_chunks`.
    """
    _check_conv_args(x, w, b)
    y, cache = conv2d_gemm_forward(x, w, padding, threads)  # (O, N, Ho, Wo)
    if is_cupy_array(y):
        y = bias_add_cuda(y, b, axis=0)  # (O, N, Ho, Wo)
    else:
        y += b[:, None, None, None]
    return y.transpose(1, 0, 2, 3), cache  # (N, O, Ho, Wo), a view


def conv2d_backward(dy, cache: ConvCache, need_dx: bool = True,
                    threads: ChunkThreads | None = None):
    """Gradients of :func:`conv2d_forward`; oracle :func:`conv2d_backward_naive`.

    dw = sum over chunks of dy_mat @ cols^T, dx[chunk] = col2im(w_mat^T @ dy_mat).
    dy : ndarray, shape (N, O, Ho, Wo). Returns dx (N, C, H, W) (None when ``need_dx`` is
    False, e.g. for the first layer of a network), dw (O, C, K, K), db (O,).
    ``threads``: see :func:`map_chunks`.
    """
    xp = get_xp(dy)
    return conv2d_backward_t(xp.ascontiguousarray(dy.transpose(1, 0, 2, 3)), cache, need_dx,
                             threads)


def conv2d_backward_t(dy_t, cache: ConvCache, need_dx: bool = True,
                      threads: ChunkThreads | None = None):
    """:func:`conv2d_backward` for dy_t : ndarray, shape (O, N, Ho, Wo), C-contiguous (dy in
    the GEMM's layout, as ``refsim.nn.fused`` writes it). Same results, bit for bit.

    For NumPy arrays each chunk's dw term dy_mat @ cols^T is computed as (cols @ dy_mat^T)^T:
    the same products and sums, which OpenBLAS 0.3.31 runs faster for these shapes (conv2 of
    the MNIST CNN, a 6-example chunk: 0.74 against 0.93 ms; the whole step 2-3% faster) and
    which gave the same bits as dy_mat @ cols^T on every shape tried (docs/nn.md). CuPy arrays
    keep dy_mat @ cols^T (cuBLAS was not measured). The terms are added to dw = 0 in chunk
    order, also when ``threads`` computes them side by side (:func:`map_chunks`; NumPy arrays
    only)."""
    xp = get_xp(dy_t)
    on_gpu = is_cupy_array(dy_t)
    x, w, (before, _), kept = cache
    N, C, H, W = x.shape
    O, _, Ho, Wo = dy_t.shape
    K = w.shape[2]
    w_mat = w.reshape(O, C * K * K)  # (O, C*K*K)
    dx = xp.empty(x.shape, dtype=dy_t.dtype) if need_dx else None  # (N, C, H, W)
    step = _chunk_size(x, C, K, Ho, Wo)

    def chunk(k: int):
        """Chunk k's dw term (O, C*K*K); writes its images of dx."""
        n0 = k * step
        n1 = min(N, n0 + step)
        if kept is not None:
            cols = kept[k]  # (C*K*K, n*Ho*Wo), the forward pass's block
        else:
            cols = im2col(x[n0:n1], K, before, Ho, Wo).reshape(C * K * K, -1)
        dy_mat = dy_t[:, n0:n1].reshape(O, -1)  # (O, n*Ho*Wo)
        if need_dx:
            dcols = (w_mat.T @ dy_mat).reshape(C, K, K, n1 - n0, Ho, Wo)
            dx[n0:n1] = col2im(dcols, (n1 - n0, C, H, W), before)
        return dy_mat @ cols.T if on_gpu else (cols @ dy_mat.T).T  # see the note above

    dw = xp.zeros((O, C * K * K), dtype=dy_t.dtype)  # (O, C*K*K)
    for term in map_chunks(chunk, -(-N // step), None if on_gpu else threads):
        dw += term
    db = channel_sum_cuda(dy_t, axis=0) if on_gpu else dy_t.sum(axis=(1, 2, 3))
    return dx, dw.reshape(w.shape), db
