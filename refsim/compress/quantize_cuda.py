"""Uniform b-bit quantization of a device tensor as a CUDA kernel; the oracle is
``refsim.compress.quantize.quantize`` (its Numba loop ``_quantize_loop``; read that first).

One element per loop step, the same float64 operations in the same order as the oracle::

    t   = (double(x[i]) - lo) * scale
    lev = floor(t) + [u_i < t - floor(t)]        (stochastic; u_i = SplitMix64 uniform(key, i))
        = rint(t)                                 (deterministic, round half to even)
    out[i] = min(max(lev, 0), 2**b - 1)

with u_i computed in 64-bit unsigned arithmetic exactly as ``refsim.compress.rng`` specifies
(wrap-around mod 2**64, top 53 bits times 2**-53). lo, hi (exact min and max) and scale
(``quantize.range_scale``) are the oracle's. Nothing here rounds differently from the oracle
(no fused multiply-add applies: t is a difference times a scale), so the levels agree bit for
bit (``tests/test_compress_quantize_cuda.py``). Only the levels cross to the host, b <= 8:
one byte per element, b <= 16: two, for the Huffman coder or bit-packer that follows.
"""

from __future__ import annotations

import numpy as np

from refsim.backend import get_xp, to_numpy
from refsim.compress._checks import check_int
from refsim.compress.quantize import MAX_BITS, Quantized, level_dtype, range_scale
from refsim.compress.rng import check_key
from refsim.cuda_launch import cupy_launch

__all__ = ["SOURCE", "quantize_cuda"]

SOURCE = r"""
__device__ __forceinline__ double refsim_uniform_at(unsigned long long key, long long i)
{
    unsigned long long z = key + ((unsigned long long)i + 1ULL) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z = z ^ (z >> 31);
    return (double)(z >> 11) / 9007199254740992.0;  // 2**53: exact
}

template <typename L>
__device__ void refsim_quantize_body(const real_t* __restrict__ x, L* __restrict__ out,
                                     double lo, double scale, double qmax, long long stochastic,
                                     unsigned long long key, long long n)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const double t = ((double)x[i] - lo) * scale;
        double lev;
        if (stochastic) {
            const double f = floor(t);
            lev = (refsim_uniform_at(key, i) < t - f) ? f + 1.0 : f;
        } else {
            lev = rint(t);
        }
        lev = (lev > 0.0) ? lev : 0.0;
        lev = (lev < qmax) ? lev : qmax;
        out[i] = (L)lev;
    }
}

extern "C" __global__ void refsim_quantize_u8(
    const real_t* __restrict__ x, unsigned char* __restrict__ out, double lo, double scale,
    double qmax, long long stochastic, unsigned long long key, long long n)
{
    refsim_quantize_body<unsigned char>(x, out, lo, scale, qmax, stochastic, key, n);
}

extern "C" __global__ void refsim_quantize_u16(
    const real_t* __restrict__ x, unsigned short* __restrict__ out, double lo, double scale,
    double qmax, long long stochastic, unsigned long long key, long long n)
{
    refsim_quantize_body<unsigned short>(x, out, lo, scale, qmax, stochastic, key, n);
}
"""


def quantize_cuda(x, bits: int, *, stochastic: bool = True, seed: int = 0,
                  launch=cupy_launch) -> Quantized:
    """:func:`refsim.compress.quantize.quantize` of a device array: same arguments, the same
    :class:`Quantized` (levels copied to the host), the same errors (ValueError for NaN/Inf or
    bits outside [1, 16]; TypeError for another dtype or a non-bool ``stochastic``)."""
    xp = get_xp(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be a float32 or float64 array, got dtype {x.dtype}")
    b = check_int("bits", bits, 1, MAX_BITS)
    if not isinstance(stochastic, bool):
        raise TypeError(f"stochastic must be a bool, got {type(stochastic).__name__}")
    key = check_key(seed)
    n = int(x.size)
    lo = hi = scale = 0.0
    if n:
        lo, hi = float(x.min()), float(x.max())  # NaN propagates through min/max
        scale = range_scale(lo, hi, b)
    flat = xp.ascontiguousarray(x).reshape(-1)  # (n,)
    out = xp.empty(n, dtype=level_dtype(b))  # (n,)
    name = "refsim_quantize_u8" if b <= 8 else "refsim_quantize_u16"
    launch(SOURCE, name, x.dtype, n, flat, out, np.float64(lo), np.float64(scale),
           np.float64(2.0**b - 1.0), int(stochastic), key, n)
    return Quantized(to_numpy(out).reshape(x.shape), lo, hi, b, np.dtype(x.dtype))
