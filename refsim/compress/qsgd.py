"""QSGD: stochastic quantization of a tensor to s levels of its L2 norm, with signs.

The reference for Alistarh, Grubic, Li, Tomioka and Vojnovic, "QSGD: Communication-Efficient
SGD via Gradient Quantization and Encoding", NeurIPS 2017, arXiv:1610.02132, Sec. 3.1, Eq. (4):

    Q_s(v)_i = ||v||_2 * sgn(v_i) * xi_i(v, s),   xi_i = (l + 1)/s w.p. |v_i| s/||v|| - l, else l/s,

with l = floor(|v_i| s / ||v||). In refsim's float64 arithmetic, for the row-major flat index i:

    norm   = sqrt(((x_0**2 + x_1**2) + x_2**2) + ...)   # float64, left-to-right sum (see below)
    scale  = s / norm                                   # 0 when norm == 0
    t_i    = |float64(x_i)| * scale                     # in [0, s]
    l_i    = min(floor(t_i) + [u_i < t_i - floor(t_i)], s),   u_i = rng.uniform(seed, i)
    symbol_i = s + l_i if x_i > 0 else s - l_i          # in 0 .. 2s  (0.0 and -0.0: l_i = 0)
    dequantize: x_hat_i = float64(symbol_i - s) * (norm / s), cast to x.dtype

The sum of squares is sequential (``np.cumsum`` in the oracle, a plain loop in the kernel), a
summation order anyone can reproduce. Unbiased: E[x_hat] = x (up to 2**-53 from u). Variance
(Lemma 3.1): E||x_hat - x||^2 <= min(n/s^2, sqrt(n)/s) ||x||^2. Bits per coordinate:
ceil(log2(2s + 1)) packed (refsim's fixed-length form), or the Huffman length of the symbols
(refsim's stand-in for the paper's Elias coding, Sec. 3.2), plus one norm per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from refsim.compress._checks import check_int
from refsim.compress.quantize import check_float_array
from refsim.compress.rng import check_key, uniform_at, uniform_naive

__all__ = ["QSGDConfig", "QSGDQuantized", "qsgd", "qsgd_naive", "qsgd_dequantize", "qsgd_bits"]

MAX_LEVELS = 32767  # 2s + 1 symbols must fit in uint16


def _check_levels(s: object) -> int:
    return check_int("QSGD levels s", s, 1, MAX_LEVELS)


@dataclass(frozen=True)
class QSGDConfig:
    """QSGD with ``levels`` = s quantization levels per sign."""

    levels: int = 127

    def __post_init__(self):
        _check_levels(self.levels)


class QSGDQuantized(NamedTuple):
    symbols: np.ndarray  # shape of x; uint8 if 2s + 1 <= 256 else uint16; s + sgn(x_i) * l_i
    norm: float  # ||x||_2 in float64
    levels: int  # s
    dtype: np.dtype


def qsgd_bits(levels: int) -> int:
    """ceil(log2(2s + 1)): bits per coordinate of the fixed-length packing."""
    return int(2 * _check_levels(levels)).bit_length()


def _symbol_dtype(s: int) -> np.dtype:
    return np.dtype(np.uint8) if 2 * s <= 255 else np.dtype(np.uint16)


def _sumsq_loop(x):
    acc = 0.0
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        acc += v * v
    return acc


_sumsq_kernel = njit(cache=True)(_sumsq_loop)


def _scale(norm: float, s: int, dtype: np.dtype) -> float:
    if not np.isfinite(norm):
        raise ValueError("qsgd: x contains NaN or Inf, or its squared norm overflows float64")
    if norm > float(np.finfo(dtype).max):
        raise ValueError(f"qsgd: norm {norm!r} overflows {np.dtype(dtype)}")
    if norm == 0.0:
        return 0.0
    with np.errstate(over="ignore"):
        scale = s / norm
    if not np.isfinite(scale):
        raise ValueError(f"qsgd: norm {norm!r} too small to scale in float64")
    return scale


def qsgd_naive(x, levels: int, *, seed: int = 0) -> QSGDQuantized:
    """NumPy oracle of :func:`qsgd`. x: any shape, float32/float64."""
    x = check_float_array(x)
    s, key = _check_levels(levels), check_key(seed)
    v = x.reshape(-1).astype(np.float64)  # (n,)
    with np.errstate(over="ignore", invalid="ignore"):  # NaN/Inf/overflow rejected by _scale
        norm = float(np.sqrt(np.cumsum(v * v)[-1])) if v.size else 0.0
    scale = _scale(norm, s, x.dtype)
    t = np.abs(v) * scale  # (n,)
    f = np.floor(t)  # (n,)
    lev = np.minimum(f + (uniform_naive(key, 0, v.size) < t - f), float(s))  # (n,)
    sym = np.where(v > 0, s + lev, s - lev)  # (n,)
    return QSGDQuantized(sym.astype(_symbol_dtype(s)).reshape(x.shape), norm, s, x.dtype)


def _qsgd_loop(x, scale, s, key, out):
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        t = abs(v) * scale
        f = np.floor(t)
        lev = f + 1.0 if uniform_at(key, i) < t - f else f
        lev = min(lev, np.float64(s))
        out[i] = s + lev if v > 0 else s - lev


_qsgd_kernel = njit(cache=True)(_qsgd_loop)


def qsgd(x, levels: int, *, seed: int = 0) -> QSGDQuantized:
    """QSGD-quantize ``x`` with s = ``levels`` (Numba). Oracle: :func:`qsgd_naive`.

    >>> q = qsgd(np.array([3.0, -4.0, 0.0]), 5, seed=0)  # t = 3, 4, 0: no rounding needed
    >>> q.norm, q.symbols.tolist(), qsgd_dequantize(q).tolist()
    (5.0, [8, 1, 5], [3.0, -4.0, 0.0])
    """
    x = check_float_array(x)
    s, key = _check_levels(levels), check_key(seed)
    flat = np.ascontiguousarray(x).reshape(-1)  # (n,)
    norm = float(np.sqrt(_sumsq_kernel(flat)))
    scale = _scale(norm, s, x.dtype)
    out = np.empty(flat.size, dtype=_symbol_dtype(s))  # (n,)
    with np.errstate(over="ignore"):
        _qsgd_kernel(flat, scale, s, key, out)
    return QSGDQuantized(out.reshape(x.shape), norm, s, x.dtype)


def qsgd_dequantize(q: QSGDQuantized) -> np.ndarray:
    """x_hat_i = (symbol_i - s) * (norm / s), in q.dtype, shape of q.symbols."""
    if not isinstance(q, QSGDQuantized):
        raise TypeError(f"expected a QSGDQuantized, got {type(q).__name__}")
    s = _check_levels(q.levels)
    sym = np.asarray(q.symbols)
    _scale(q.norm, s, q.dtype)  # ValueError if the norm is not a finite value of q.dtype
    if sym.size and int(sym.max()) > 2 * s:
        raise ValueError(f"QSGD symbols exceed 2s = {2 * s}")
    return np.asarray((sym.astype(np.float64) - s) * (q.norm / s), dtype=q.dtype)  # shape of sym
