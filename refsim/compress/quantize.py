"""Uniform b-bit quantization of a tensor between its own min and max (deterministic/stochastic).

The reference for TFF's ``UniformQuantizationEncodingStage`` (tensorflow_model_optimization,
``python/core/internal/tensor_encoding/stages/stages_impl.py``; used by TFF's
``compression_aggregator``), with stochastic rounding as in Gupta et al., ICML 2015,
arXiv:1502.02551, and Suresh et al., "Distributed Mean Estimation with Limited
Communication", ICML 2017, arXiv:1611.00429 (their stochastic k-level quantization, k = 2**b):

    lo, hi = min(x), max(x)                      # exact, in float64
    scale  = (2**b - 1) / (hi - lo)              # float64; scale = 0 when hi == lo
    t_i    = (float64(x_i) - lo) * scale         # float64, in [0, 2**b - 1]
    deterministic:  l_i = rint(t_i)              # round half to even (as tf.round)
    stochastic:     l_i = floor(t_i) + [u_i < t_i - floor(t_i)],  u_i = rng.uniform(seed, i)
    l_i    = min(max(l_i, 0), 2**b - 1)          # clamp (t_i may exceed 2**b - 1 by one ulp)
    dequantize:     x_hat_i = lo + float64(l_i) * ((hi - lo) / (2**b - 1)), cast to x.dtype

i is the row-major (C-order) flat index of the element. These are exactly the float64 operations,
in this order, of both ``quantize_naive`` (NumPy) and ``quantize`` (Numba): the two agree bit for
bit (``tests/test_compress_quantize.py``). E[l_i] = t_i up to 2**-53 (u_i has 53 bits), so the
stochastic quantizer is unbiased; deterministic rounding is biased with |error| <= step / 2.
Bits per coordinate: b, plus the two endpoints per tensor (see ``docs/compression.md``).

Deviation from TFF: TFF computes in float32 and draws its uniforms from TensorFlow's stateless
RNG; refsim computes in float64 and draws from the documented SplitMix64 stream
(``refsim/compress/rng.py``) so that any implementation can reproduce the levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from refsim.compress._checks import check_int
from refsim.compress.rng import check_key, uniform_at, uniform_naive

__all__ = [
    "QuantizerConfig",
    "Quantized",
    "level_dtype",
    "quantize",
    "quantize_naive",
    "dequantize",
    "dequantize_naive",
]

MAX_BITS = 16


@dataclass(frozen=True)
class QuantizerConfig:
    """b-bit uniform quantization of each tensor, stochastic (unbiased) or round-half-even."""

    bits: int = 8
    stochastic: bool = True

    def __post_init__(self):
        _check_bits(self.bits)
        if not isinstance(self.stochastic, bool):
            raise TypeError(f"stochastic must be a bool, got {type(self.stochastic).__name__}")


class Quantized(NamedTuple):
    """The output of :func:`quantize`. ``levels`` has the shape of the input."""

    levels: np.ndarray  # shape of x, uint8 (bits <= 8) or uint16 (bits <= 16), values < 2**bits
    min: float  # lo = min(x) as float64 (0.0 for an empty tensor)
    max: float  # hi = max(x) as float64
    bits: int
    dtype: np.dtype  # dtype of x, restored by dequantize


def _check_bits(bits: object) -> int:
    return check_int("bits", bits, 1, MAX_BITS)


def level_dtype(bits: int) -> np.dtype:
    """uint8 for bits <= 8, else uint16."""
    return np.dtype(np.uint8) if bits <= 8 else np.dtype(np.uint16)


def check_float_array(x: object, name: str = "x") -> np.ndarray:
    """``x`` as a float32/float64 NumPy array; TypeError for other dtypes."""
    a = np.asarray(x)
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")
    return a


def _prepare(x: object, bits: object):
    """Validated (x, bits, lo, hi, scale); ValueError for NaN/Inf or an unscalable range."""
    x = check_float_array(x)
    b = _check_bits(bits)
    if x.size == 0:
        return x, b, 0.0, 0.0, 0.0
    lo, hi = float(np.min(x)), float(np.max(x))  # NaN propagates through min/max
    return x, b, lo, hi, range_scale(lo, hi, b)


def range_scale(lo: float, hi: float, bits: int) -> float:
    """scale = (2**b - 1) / (hi - lo) in float64, 0 when hi == lo; ValueError for a NaN/Inf
    endpoint or a range that cannot be scaled in float64."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("quantize: x contains NaN or Inf")
    if hi == lo:
        return 0.0
    with np.errstate(over="ignore"):
        width = hi - lo
        scale = (2.0**bits - 1.0) / width if np.isfinite(width) else 0.0
    if not (np.isfinite(width) and np.isfinite(scale) and scale > 0.0):
        raise ValueError(f"quantize: range [{lo!r}, {hi!r}] cannot be scaled in float64")
    return scale


def quantize_naive(x, bits: int, *, stochastic: bool = True, seed: int = 0) -> Quantized:
    """NumPy oracle of :func:`quantize` (same arguments, identical result, slower).

    x : ndarray (any shape), float32 or float64. seed : int in [0, 2**64), the SplitMix64 key.
    """
    x, b, lo, hi, scale = _prepare(x, bits)
    key = check_key(seed)
    qmax = 2.0**b - 1.0
    t = (x.reshape(-1).astype(np.float64) - lo) * scale  # (n,)
    if stochastic:
        f = np.floor(t)  # (n,)
        u = uniform_naive(key, 0, t.size)  # (n,)
        lev = f + (u < t - f)  # (n,)
    else:
        lev = np.rint(t)  # (n,) round half to even
    lev = np.minimum(np.maximum(lev, 0.0), qmax)  # (n,)
    levels = lev.astype(level_dtype(b)).reshape(x.shape)  # shape of x
    return Quantized(levels, lo, hi, b, x.dtype)


def _quantize_loop(x, lo, scale, qmax, stochastic, key, out):
    """x: (n,) float32/64; out: (n,) uint8/uint16. One element per iteration, as documented."""
    for i in range(x.shape[0]):
        t = (np.float64(x[i]) - lo) * scale
        if stochastic:
            f = np.floor(t)
            lev = f + 1.0 if uniform_at(key, i) < t - f else f
        else:
            lev = np.rint(t)
        out[i] = min(max(lev, 0.0), qmax)


_quantize_kernel = njit(cache=True)(_quantize_loop)


def quantize(x, bits: int, *, stochastic: bool = True, seed: int = 0) -> Quantized:
    """Quantize ``x`` to ``bits``-bit levels between its min and max (Numba kernel).

    x : ndarray (any shape), float32 or float64, finite. bits : 1..16.
    stochastic : floor plus Bernoulli(fraction) with u_i from the SplitMix64 stream keyed by
    ``seed`` (unbiased); False: round half to even. Oracle: :func:`quantize_naive`.

    >>> q = quantize(np.array([0.0, 0.25, 1.0], np.float32), 2, stochastic=False)
    >>> q.levels.tolist(), q.min, q.max
    ([0, 1, 3], 0.0, 1.0)
    >>> dequantize(q).tolist()
    [0.0, 0.3333333432674408, 1.0]
    """
    x, b, lo, hi, scale = _prepare(x, bits)
    key = check_key(seed)
    if not isinstance(stochastic, bool):
        raise TypeError(f"stochastic must be a bool, got {type(stochastic).__name__}")
    flat = np.ascontiguousarray(x).reshape(-1)  # (n,)
    out = np.empty(flat.size, dtype=level_dtype(b))  # (n,)
    with np.errstate(over="ignore"):  # SplitMix64 wraps mod 2**64 (NumPy scalars without JIT)
        _quantize_kernel(flat, lo, scale, 2.0**b - 1.0, stochastic, key, out)
    return Quantized(out.reshape(x.shape), lo, hi, b, x.dtype)


def _check_quantized(q: Quantized):
    if not isinstance(q, Quantized):
        raise TypeError(f"dequantize expects a Quantized, got {type(q).__name__}")
    b = _check_bits(q.bits)
    levels = np.asarray(q.levels)
    if levels.dtype != level_dtype(b):
        raise TypeError(f"levels must be {level_dtype(b)} for {b} bits, got {levels.dtype}")
    if levels.size and int(levels.max()) > 2**b - 1:
        raise ValueError(f"levels exceed 2**{b} - 1")
    step = (q.max - q.min) / (2.0**b - 1.0)
    return levels, b, float(q.min), step, np.dtype(q.dtype)


def dequantize_naive(q: Quantized) -> np.ndarray:
    """NumPy oracle of :func:`dequantize`: lo + float64(l) * step, cast to q.dtype."""
    levels, b, lo, step, dtype = _check_quantized(q)
    return np.asarray(lo + levels.astype(np.float64) * step, dtype=dtype)  # shape of levels


def _dequantize_loop(levels, lo, step, out):
    for i in range(levels.shape[0]):
        out[i] = lo + np.float64(levels[i]) * step


_dequantize_kernel = njit(cache=True)(_dequantize_loop)


def dequantize(q: Quantized) -> np.ndarray:
    """The inverse affine map x_hat = lo + l * (hi - lo) / (2**b - 1) (Numba kernel), in q.dtype.

    Oracle: :func:`dequantize_naive`.
    """
    levels, b, lo, step, dtype = _check_quantized(q)
    flat = np.ascontiguousarray(levels).reshape(-1)  # (n,)
    out = np.empty(flat.size, dtype=dtype)  # (n,)
    _dequantize_kernel(flat, lo, step, out)
    return out.reshape(levels.shape)
