"""Fixed-width bit packing of b-bit levels, MSB first: the bytes of a tensor without Huffman.

The "bitpacking" step that follows uniform quantization in TFF's ``compression_aggregator``
(Konecny et al., "Federated Learning: Strategies for Improving Communication Efficiency",
arXiv:1610.05492, Sec. 3: "probabilistic quantization ... each scalar is then b bits"), but
dense: refsim packs every bit, whereas TFF packs 28 bits per 32-bit word (``tff_bits.py``).

Layout: level i occupies stream bits [i*b, (i+1)*b), most significant bit first; stream bit j
is bit (7 - j % 8) of byte j // 8 (the MSB of a byte comes first, as ``np.packbits``' default
and as the Huffman payload in ``huffman.py``); the last byte is zero-padded. Size:
ceil(n*b / 8) bytes. A b-bit packing is therefore the canonical prefix code in which every
symbol has length b and codeword equal to itself.

``pack_naive``/``unpack_naive`` (NumPy bit matrices) are the oracles of the jitted
``pack``/``unpack`` (64-bit accumulator loops).
"""

from __future__ import annotations

import operator

import numpy as np
from numba import njit

from refsim.compress._checks import check_int

__all__ = ["packed_size", "pack", "pack_naive", "unpack", "unpack_naive", "to_blocks",
           "from_blocks"]


def _check_bits(bits: object) -> int:
    return check_int("bits", bits, 1, 16)


def packed_size(n: int, bits: int) -> int:
    """ceil(n * bits / 8): bytes of n packed ``bits``-bit levels."""
    return (n * _check_bits(bits) + 7) // 8


def _check_levels(levels: object, bits: object):
    b = _check_bits(bits)
    a = np.asarray(levels)
    if a.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"levels must be uint8 or uint16, got dtype {a.dtype}")
    a = np.ascontiguousarray(a).reshape(-1)  # (n,)
    if a.size and int(a.max()) >> b:
        raise ValueError(f"levels do not fit in {b} bits (max {int(a.max())})")
    return a, b


def pack_naive(levels, bits: int) -> np.ndarray:
    """NumPy oracle of :func:`pack`. levels: (n,) uint8/uint16 < 2**bits -> (ceil(n*b/8),) uint8."""
    a, b = _check_levels(levels, bits)
    shifts = np.arange(b - 1, -1, -1, dtype=np.uint32)  # (b,) MSB first
    bitmat = (a.astype(np.uint32)[:, None] >> shifts) & 1  # (n, b)
    return np.packbits(bitmat.reshape(-1).astype(np.uint8))  # (ceil(n*b/8),)


def _pack_loop(a, b, out):
    acc = np.uint64(0)  # pending bits, right-aligned
    nbits = 0
    pos = 0
    for i in range(a.shape[0]):
        acc = (acc << np.uint64(b)) | np.uint64(a[i])
        nbits += b
        while nbits >= 8:
            nbits -= 8
            out[pos] = np.uint8((acc >> np.uint64(nbits)) & np.uint64(0xFF))
            pos += 1
    if nbits > 0:
        out[pos] = np.uint8((acc << np.uint64(8 - nbits)) & np.uint64(0xFF))


_pack_kernel = njit(cache=True)(_pack_loop)


def pack(levels, bits: int) -> np.ndarray:
    """Pack ``bits``-bit levels MSB first (Numba). levels: any shape, flattened in C order.

    Returns (ceil(n*bits/8),) uint8. Oracle: :func:`pack_naive`.

    >>> pack(np.array([1, 2, 3], np.uint8), 2).tolist()  # 01 10 11 00
    [108]
    """
    a, b = _check_levels(levels, bits)
    out = np.empty(packed_size(a.size, b), dtype=np.uint8)  # (ceil(n*b/8),)
    with np.errstate(over="ignore"):  # shifts drop written bits (NumPy scalars w/o JIT)
        _pack_kernel(a, b, out)
    return out


def _check_packed(data: object, n: object, bits: object):
    b = _check_bits(bits)
    n = operator.index(n)
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) \
        else np.asarray(data)
    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise TypeError("packed data must be bytes or a 1-D uint8 array")
    if n < 0 or buf.size != (n * b + 7) // 8:
        raise ValueError(f"packed data has {buf.size} bytes, expected ceil({n}*{b}/8)")
    return buf, n, b


def unpack_naive(data, n: int, bits: int) -> np.ndarray:
    """NumPy oracle of :func:`unpack`: (ceil(n*b/8),) uint8 -> (n,) uint8/uint16."""
    buf, n, b = _check_packed(data, n, bits)
    bitmat = np.unpackbits(buf, count=n * b).reshape(n, b).astype(np.uint32)  # (n, b)
    weights = np.uint32(1) << np.arange(b - 1, -1, -1, dtype=np.uint32)  # (b,)
    return (bitmat * weights).sum(axis=1).astype(np.uint8 if b <= 8 else np.uint16)  # (n,)


def _unpack_loop(buf, b, out):
    acc = np.uint64(0)
    nbits = 0
    pos = 0
    mask = np.uint64((1 << b) - 1)
    for i in range(out.shape[0]):
        while nbits < b:  # pos < buf.shape[0] holds: the caller checked the byte count
            acc = (acc << np.uint64(8)) | np.uint64(buf[pos])
            pos += 1
            nbits += 8
        nbits -= b
        out[i] = (acc >> np.uint64(nbits)) & mask


_unpack_kernel = njit(cache=True)(_unpack_loop)


def unpack(data, n: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack` (Numba): n levels of ``bits`` bits -> (n,) uint8/uint16.

    ``data`` must hold exactly ceil(n*bits/8) bytes (ValueError otherwise). Padding bits are
    ignored. Oracle: :func:`unpack_naive`.
    """
    buf, n, b = _check_packed(data, n, bits)
    out = np.empty(n, dtype=np.uint8 if b <= 8 else np.uint16)  # (n,)
    with np.errstate(over="ignore"):
        _unpack_kernel(buf, b, out)
    return out


def to_blocks(levels, bits: int, k: int) -> np.ndarray:
    """Group k consecutive ``bits``-bit levels into one (k*bits)-bit symbol, first level in the
    high bits; the last block is zero-padded. (n,) -> (ceil(n/k),) uint8 if k*bits <= 8, else
    uint16. These are the packed bits of the levels read back k*bits at a time.

    >>> to_blocks(np.array([1, 2, 3, 0, 1], np.uint8), 2, 4).tolist()  # 01 10 11 00 | 01 00 00 00
    [108, 64]
    """
    a, b = _check_levels(levels, bits)
    if not 1 <= k * b <= 16:
        raise ValueError(f"a block of {k} levels of {b} bits must have 1..16 bits")
    m = -(-a.size // k)  # number of blocks
    packed = np.zeros(packed_size(m, k * b), dtype=np.uint8)  # room for the padding levels
    packed[:packed_size(a.size, b)] = pack(a, b)
    return unpack(packed, m, k * b)  # (m,)


def from_blocks(blocks, n: int, bits: int, k: int) -> np.ndarray:
    """Inverse of :func:`to_blocks`: (ceil(n/k),) blocks -> (n,) levels (padding dropped)."""
    blocks = np.asarray(blocks)
    if blocks.ndim != 1 or blocks.size != -(-n // k):
        raise ValueError(f"expected {-(-n // k)} blocks for {n} levels, got {blocks.size}")
    packed = pack(blocks, k * _check_bits(bits))
    return unpack(packed[:packed_size(n, bits)], n, bits)  # (n,)
