"""The counter-based uniform generator behind every stochastic rounding in refsim.compress.

Stochastic rounding (Gupta et al., "Deep Learning with Limited Numerical Precision", ICML 2015,
arXiv:1502.02551) needs one uniform u_i in [0, 1) per element. To let *any* implementation
(NumPy, Numba, CuPy, C++, PyTorch) reproduce the rounded levels bit for bit, u_i is a pure
function of a 64-bit key and the element index i, with no generator state to carry:

    GAMMA = 0x9E3779B97F4A7C15
    z  = (key + (i + 1) * GAMMA)            mod 2**64        # SplitMix64 state after i+1 steps
    z  = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) mod 2**64    # SplitMix64 finaliser
    z  = ((z ^ (z >> 27)) * 0x94D049BB133111EB) mod 2**64
    z  =   z ^ (z >> 31)
    u_i = (z >> 11) * 2**-53                                 # top 53 bits, exact in float64

So u_i is the (i+1)-th output of Steele, Lea and Flood's SplitMix64 (OOPSLA 2014,
doi:10.1145/2660193.2660195; the constants of Vigna's ``splitmix64.c``) seeded with ``key``:
a C user can run the textbook generator and take successive outputs. ``key`` is the user's
``seed`` itself, an integer in [0, 2**64) (no further hashing). How an FL run derives a key per
round and client is :func:`quantize_key` (``refsim.backend.make_rng`` with ``Purpose.QUANTIZE``);
a codec derives one key per tensor with :func:`tensor_key`.

``uniform_naive`` (NumPy, vectorised over i) is the oracle of ``uniform`` (the jitted loop).
"""

from __future__ import annotations

import operator

import numpy as np
from numba import njit

from refsim.backend import Purpose, make_rng

__all__ = [
    "GAMMA",
    "check_key",
    "splitmix64_naive",
    "uniform_naive",
    "uniform",
    "quantize_key",
    "broadcast_key",
    "tensor_key",
]

GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TWO_M53 = 2.0**-53


def check_key(seed: object) -> np.uint64:
    """``seed`` as a uint64 key; TypeError unless an integer, ValueError outside [0, 2**64)."""
    try:
        k = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}") from None
    if not 0 <= k < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {k}")
    return np.uint64(k)


def splitmix64_naive(key: int, index):
    """Raw 64-bit outputs z(key, i) for an integer array ``index``; shape of ``index``, uint64."""
    i = np.asarray(index, dtype=np.uint64)
    with np.errstate(over="ignore"):  # arithmetic is mod 2**64 by definition
        z = check_key(key) + (i + np.uint64(1)) * GAMMA
        z = (z ^ (z >> _S30)) * _MUL1
        z = (z ^ (z >> _S27)) * _MUL2
    return z ^ (z >> _S31)


def uniform_naive(key: int, start: int, n: int) -> np.ndarray:
    """u_i for i = start .. start+n-1, float64 in [0, 1), shape (n,). Oracle of :func:`uniform`."""
    z = splitmix64_naive(key, np.arange(start, start + n, dtype=np.uint64))  # (n,)
    return (z >> _S11).astype(np.float64) * _TWO_M53  # (n,)


def _uniform_at(key, i):
    """One u_i (the loop body shared by every jitted kernel in this package)."""
    z = key + (np.uint64(i) + np.uint64(1)) * GAMMA
    z = (z ^ (z >> _S30)) * _MUL1
    z = (z ^ (z >> _S27)) * _MUL2
    z = z ^ (z >> _S31)
    return np.float64(z >> _S11) * _TWO_M53


uniform_at = njit(cache=True, inline="always")(_uniform_at)


def _uniform_loop(key, start, out):
    for j in range(out.shape[0]):  # start, j: int64, so start + j stays an exact integer
        out[j] = uniform_at(key, start + j)


_uniform_kernel = njit(cache=True)(_uniform_loop)


def uniform(key: int, start: int, n: int) -> np.ndarray:
    """u_i for i = start .. start+n-1, float64, shape (n,); jitted twin of :func:`uniform_naive`.

    >>> bool((uniform(7, 3, 5) == uniform_naive(7, 3, 5)).all())
    True
    """
    if not 0 <= start < 2**62 or not 0 <= n < 2**62:
        raise ValueError(f"start and n must be in [0, 2**62), got {start}, {n}")
    out = np.empty(n, dtype=np.float64)  # (n,)
    with np.errstate(over="ignore"):  # only matters with NUMBA_DISABLE_JIT=1 (NumPy scalars)
        _uniform_kernel(check_key(key), np.int64(start), out)
    return out


def quantize_key(seed: int, round_: int, client: int) -> int:
    """The 64-bit key of client ``client`` in round ``round_``: the first uint64 of
    ``make_rng(seed, Purpose.QUANTIZE, round_, client)``, so each (round, client) is replayable."""
    rng = make_rng(seed, Purpose.QUANTIZE, round_, client)
    return int(rng.integers(0, 2**64, dtype=np.uint64, endpoint=False))


def broadcast_key(seed: int, round_: int) -> int:
    """The 64-bit key of the server's broadcast in round ``round_`` (a downlink codec): the first
    uint64 of ``make_rng(seed, Purpose.BROADCAST, round_)``; one key per round, since every
    sampled client receives the same bytes."""
    rng = make_rng(seed, Purpose.BROADCAST, round_)
    return int(rng.integers(0, 2**64, dtype=np.uint64, endpoint=False))


def tensor_key(key: int, j: int) -> int:
    """The key of tensor ``j`` of an update whose key is ``key``: z(key, j), the raw SplitMix64
    output number j (so tensors never share a stream)."""
    return int(splitmix64_naive(key, np.array([j]))[0])
