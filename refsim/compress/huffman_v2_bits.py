"""What the jitted loops of the version-2 Huffman coder share: the stream layout and varints.

The layout of ``docs/formats.md`` Sec. 2 (and ``huffman_v2.py``): four streams, stream r the
codewords of symbols r*S .. min(n, (r+1)*S) - 1 with S = 2 * ceil(n / 8); sizes as unsigned
LEB128 varints. Plain loops, jitted in one visible place each (``njit(cache=True)``); with
``NUMBA_DISABLE_JIT=1`` they run as the Python they read as. The encoder is
``huffman_v2_encode.py``, the decoder ``huffman_v2_decode.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["VERSION", "STREAMS", "MAX_LEN", "segment", "copy_bytes", "varint_size", "put_varint",
           "get_varint"]

VERSION = 2
STREAMS = 4
MAX_LEN = 24  # longest codeword (as version 1)
_U = np.uint64



def _copy_loop(dst, d0, src, s0, count):
    """dst[d0:d0 + count] = src[s0:s0 + count], as a loop (Numba's slice assignment is ~10x
    slower than this; uint64 indices: with signed ones the negative-index wraparound Numba
    adds stops the loop from being vectorized, 50x slower)."""
    d = _U(d0)
    s = _U(s0)
    for i in range(_U(count)):
        dst[d + i] = src[s + i]


copy_bytes = njit(cache=True)(_copy_loop)


def _segment_loop(n):
    """S = 2 * ceil(n / 8): stream r holds symbols r*S .. min(n, (r+1)*S) - 1."""
    return 2 * ((n + 7) // 8)


segment = njit(cache=True)(_segment_loop)


def _varint_size_loop(v):
    k = 1
    while v >= 128:
        v >>= 7
        k += 1
    return k


varint_size = njit(cache=True)(_varint_size_loop)


def _put_varint_loop(out, pos, v):
    """Unsigned LEB128 of v >= 0 at byte pos of out; returns the position after it."""
    while v >= 128:
        out[pos] = np.uint8((v & 127) | 128)
        v >>= 7
        pos += 1
    out[pos] = np.uint8(v)
    return pos + 1


put_varint = njit(cache=True)(_put_varint_loop)


def _get_varint_loop(buf, pos):
    """(value, position after it) of the LEB128 at byte pos; value -10 if the bytes run out,
    -11 if it has more than 9 bytes (a value of 2**63 or more: no count here reaches it) or a
    redundant last byte."""
    v = np.int64(0)
    shift = 0
    while True:
        if pos >= buf.shape[0]:
            return np.int64(-10), pos
        b = np.int64(buf[pos])
        pos += 1
        if shift == 63:
            return np.int64(-11), pos
        v |= (b & 127) << shift
        shift += 7
        if b < 128:
            if b == 0 and shift > 7:
                return np.int64(-11), pos
            return v, pos


get_varint = njit(cache=True)(_get_varint_loop)
