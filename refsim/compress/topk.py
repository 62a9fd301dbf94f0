"""Top-k sparsification with error feedback (a per-client residual).

The reference for "sparsified SGD with memory": Stich, Cordonnier and Jaggi, NeurIPS 2018,
arXiv:1809.07599, Algorithm 1 (top-k compressor, memory m), following Aji and Heafield,
EMNLP 2017, arXiv:1704.05021, and the error feedback of Seide et al., Interspeech 2014:

    a        = x + residual                      # float64 would change the values: kept in x.dtype
    S        = the k indices of largest |a_i|    # ties: the smaller index wins
    sent     = a restricted to S (indices ascending, values a_i)
    residual' = a with a_i = 0 for i in S        # what was not sent is sent later

Biased (E[sent] != a) but contractive: ||a - sent||^2 <= (1 - k/n) ||a||^2. Bits per coordinate
in refsim's byte format: k * (32 + 8 * itemsize) / n (uint32 index + the value), plus the
header; entropy-coded (``topk_code.py``, ``Codec(TopKConfig(...), huffman=True)``): the
gap-coded indices and, with ``bits``, quantized values. Without a residual (zeros) this is
plain top-k.

``topk_naive`` (a full stable sort) is the oracle of ``topk`` (``np.partition`` for the
threshold, then an exact tie break).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from refsim.compress._checks import check_int
from refsim.compress.quantize import check_float_array

__all__ = ["TopKConfig", "TopKSparse", "topk", "topk_naive", "topk_densify"]


@dataclass(frozen=True)
class TopKConfig:
    """Keep the largest-magnitude entries of each tensor: ``k`` of them (at most the tensor
    size), or the ``fraction`` f of its n entries, k = max(1, floor(f * n + 0.5)) in float64
    (at most n; 0 for an empty tensor). Exactly one of the two.

    bits : with ``Codec(..., huffman=True)``, the sent values' magnitudes are quantized to
        ``bits`` bits (1..15; stochastic or round-half-even, ``quantize.py``) and Huffman-coded
        with their signs (``topk_code.py``); None sends them as floats.
    """

    k: int | None = None
    fraction: float | None = None
    bits: int | None = None
    stochastic: bool = True

    def __post_init__(self):
        if (self.k is None) == (self.fraction is None):
            raise ValueError("top-k: give exactly one of k and fraction")
        if self.k is not None and (not isinstance(self.k, int) or isinstance(self.k, bool)
                                   or self.k < 1):
            raise ValueError(f"top-k: k must be a positive int, got {self.k!r}")
        if self.fraction is not None and not (isinstance(self.fraction, float)
                                              and 0.0 < self.fraction <= 1.0):
            raise ValueError(f"top-k: fraction must be a float in (0, 1], got {self.fraction!r}")
        if self.bits is not None:
            check_int("bits", self.bits, 1, 15)  # "top-k" in the message would name no flag
        if not isinstance(self.stochastic, bool):
            raise TypeError("top-k: stochastic must be a bool")

    def k_for(self, n: int) -> int:
        """The k of a tensor of n elements."""
        if self.k is not None:
            return min(self.k, n)
        return min(n, max(1, int(np.floor(self.fraction * n + 0.5)))) if n else 0


class TopKSparse(NamedTuple):
    indices: np.ndarray  # (k,) int64, ascending flat C-order indices
    values: np.ndarray  # (k,) x.dtype
    shape: tuple  # shape of x
    residual: np.ndarray  # shape of x, x.dtype: the error carried to the next round


def _prepare(x, k, residual):
    x = check_float_array(x)
    k = operator.index(k)
    if k < 0:
        raise ValueError(f"top-k: k must be >= 0, got {k}")
    if x.size >= 2**32:
        raise ValueError("top-k: tensors of 2**32 or more elements are not supported")
    if residual is None:
        a = x.reshape(-1).copy()  # (n,)
    else:
        r = np.asarray(residual)
        if r.shape != x.shape or r.dtype != x.dtype:
            raise ValueError(f"top-k: residual must have shape {x.shape} and dtype {x.dtype}, "
                             f"got {r.shape} {r.dtype}")
        a = (x + r).reshape(-1)  # (n,)
    if not np.isfinite(a).all():
        raise ValueError("top-k: x + residual contains NaN or Inf")
    return x, min(k, x.size), a


def _result(x, a, idx):
    idx = np.sort(idx)  # (k,)
    values = a[idx]  # (k,)
    a[idx] = 0
    return TopKSparse(idx.astype(np.int64), values, x.shape, a.reshape(x.shape))


def topk_naive(x, k: int, residual=None) -> TopKSparse:
    """Oracle of :func:`topk`: a stable sort of -|a| puts ties in index order."""
    x, k, a = _prepare(x, k, residual)
    order = np.argsort(-np.abs(a), kind="stable")  # (n,)
    return _result(x, a, order[:k])


def topk(x, k: int, residual=None) -> TopKSparse:
    """Top-k of x + residual by magnitude (ties: smaller index), with the new residual.

    x, residual : same shape and float dtype. Oracle: :func:`topk_naive`.

    >>> r = topk(np.array([1.0, -3.0, 2.0, -2.0]), 2)
    >>> r.indices.tolist(), r.values.tolist(), r.residual.tolist()
    ([1, 2], [-3.0, 2.0], [1.0, 0.0, 0.0, -2.0])
    """
    x, k, a = _prepare(x, k, residual)
    if k == 0:
        return _result(x, a, np.zeros(0, dtype=np.int64))
    mag = np.abs(a)  # (n,)
    thresh = np.partition(mag, mag.size - k)[mag.size - k]  # the k-th largest magnitude
    above = np.flatnonzero(mag > thresh)  # (< k,)
    ties = np.flatnonzero(mag == thresh)[: k - above.size]  # smallest indices first
    return _result(x, a, np.concatenate([above, ties]))


def topk_densify(sparse: TopKSparse) -> np.ndarray:
    """The dense tensor that ``sparse`` sends: values at indices, zeros elsewhere."""
    out = np.zeros(int(np.prod(sparse.shape)), dtype=sparse.values.dtype)  # (n,)
    out[sparse.indices] = sparse.values
    return out.reshape(sparse.shape)
