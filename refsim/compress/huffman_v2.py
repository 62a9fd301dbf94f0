"""Version 2 of refsim's Huffman stream: a compact code-length table, four segment streams.

The same canonical, length-limited code as version 1 (``huffman_code.py``: package-merge with
limit 24, refsim's tie rule, RFC 1951 canonical codewords), in a layout built for speed and for
small tables (normative text: ``docs/formats.md`` Sec. 2; all integers are unsigned LEB128
varints, at most 9 bytes)::

    version u8 = 2 | width u8 (1: uint8 symbols, 2: uint16) | n varint
    if n > 0:
      A varint (the table covers symbols 0..A-1; symbol A-1 occurs)
      the code-length table (huffman_table.py), padded to a byte
      L0 varint | L1 varint | L2 varint, then four bit streams of L0, L1, L2 and L3 (the
      rest) bytes: with S = 2 * ceil(n / 8), stream r holds the codewords of symbols
      r*S .. min(n, (r+1)*S) - 1 (a contiguous segment, as in Huff0's four streams)

Bits are packed LSB first (bit j of a stream is bit j mod 8 of byte j div 8) and each codeword
goes in first bit first: DEFLATE's convention (RFC 1951, Sec. 3.1.1), so a little-endian 64-bit
load gives the next 64 bits. Each stream is exactly ceil(bits / 8) bytes, zero-padded.

``encode(a, mdl=True)`` (``huffman.encode(x, lengths="mdl")``) writes the same format with the
lengths of ``huffman_mdl.py`` (the shortest of several complete codes) instead.

``encode_naive`` / ``decode_naive`` (strings of '0'/'1', dictionaries of codewords, the
package-merge oracle) are the oracles of ``encode`` / ``decode`` (``huffman_v2_encode.py``,
``huffman_v2_decode.py``);
they produce and accept the same bytes. Every malformed, truncated or trailing input raises
ValueError with one line naming the problem.
"""

from __future__ import annotations

import numpy as np

from refsim.compress.huffman_code import (MAX_CODE_LENGTH, canonical_codes_naive,
                                          optimal_lengths_naive)
from refsim.compress.huffman_table import (TABLE_ERRORS, read_table, read_table_naive,
                                           table_bits_naive)
from refsim.compress.huffman_v2_bits import STREAMS, VERSION
from refsim.compress.huffman_v2_decode import DECODE_ERRORS, decode_kernel
from refsim.compress.huffman_mdl import mdl_lengths, mdl_lengths_naive
from refsim.compress.huffman_v2_encode import PAIR_MIN, encode_kernel

__all__ = ["VERSION", "encode", "decode", "encode_naive", "decode_naive", "stream_naive",
           "header_size"]

_ERRORS = {**TABLE_ERRORS, **DECODE_ERRORS}
_EMPTY8 = np.zeros(0, np.uint8)
_EMPTY16 = np.zeros(0, np.uint16)
_NO_LENGTHS = np.zeros(0, np.int64)  # encode_kernel: the default lengths


def _segment(n: int) -> int:
    return 2 * ((n + 7) // 8)


def encode(a: np.ndarray, mdl: bool = False) -> bytes:
    """The version-2 stream of a (n,) C-contiguous uint8/uint16 array (checked by the caller).

    One Numba call (``huffman_v2_encode.encode_kernel``). mdl: the code lengths of
    ``huffman_mdl.mdl_lengths`` instead of the default's (Sec. 2.1). Oracle:
    :func:`encode_naive`.
    """
    given = mdl_lengths(a) if mdl and a.size else _NO_LENGTHS
    pairs = a.dtype == np.uint8 and a.size >= PAIR_MIN
    a16 = _EMPTY16
    if pairs:
        even = a[:a.size - a.size % 2]
        if even.ctypes.data % 2:  # the uint16 view needs 2-byte alignment
            even = even.copy()
        a16 = even.view(np.uint16)  # (n // 2,) symbol pairs, first symbol in the low byte
    with np.errstate(over="ignore"):  # shifts drop bits on purpose (NumPy scalars w/o JIT)
        return encode_kernel(a, a16, a.itemsize, pairs, given).tobytes()


def decode(data: bytes, lookup_bits: int = 0) -> np.ndarray:
    """Decode a version-2 stream -> (n,) uint8 or uint16. ValueError on malformed input.

    lookup_bits : bits of the decoder's lookup table (1..14); 0: chosen from n (the tests
    decode with every size, which must give the same symbols). Oracle: :func:`decode_naive`.
    """
    buf = np.frombuffer(data, np.uint8)
    with np.errstate(over="ignore"):
        status, n, out8, out16 = decode_kernel(buf, _EMPTY8, _EMPTY16, lookup_bits)
    if status < 0:
        raise ValueError(f"huffman: {_ERRORS[status]}")
    if n == 0:
        return np.zeros(0, np.uint8 if data[1] == 1 else np.uint16)
    return out8 if data[1] == 1 else out16


def header_size(data: bytes) -> int:
    """Bytes before the four bit streams (header, table, stream lengths) of a valid stream."""
    decode(data)
    buf = bytes(data)
    n, pos = _varint(buf, 2)
    if n == 0:
        return pos
    a, pos = _varint(buf, pos)
    arr = np.frombuffer(buf, np.uint8)
    pos = read_table(arr, 8 * pos, 8 * arr.size, np.zeros(a, np.int64)) // 8
    for _ in range(STREAMS - 1):
        _, pos = _varint(buf, pos)
    return pos


# ---------------------------------------------------------------------------- the oracles


def varint_bytes(v: int) -> bytes:
    out = bytearray()
    while v >= 128:
        out.append((v & 127) | 128)
        v >>= 7
    out.append(v)
    return bytes(out)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    v, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ValueError(f"huffman: {_ERRORS[-10]}")
        b = buf[pos]
        pos += 1
        if shift == 63:
            raise ValueError(f"huffman: {_ERRORS[-11]}")
        v |= (b & 127) << shift
        shift += 7
        if b < 128:
            if b == 0 and shift > 7:
                raise ValueError(f"huffman: {_ERRORS[-11]}")
            return v, pos


def _pack(bits: str) -> bytes:
    bits += "0" * (-len(bits) % 8)
    return np.packbits(np.frombuffer(bits.encode(), np.uint8) - ord("0"),
                       bitorder="little").tobytes()


def _bits(data: bytes) -> str:
    return "".join(map(str, np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")))


def encode_naive(a: np.ndarray, mdl: bool = False) -> bytes:
    """Oracle of :func:`encode`: codewords as strings of '0'/'1', packed LSB first."""
    if a.size == 0:
        return bytes([VERSION, a.itemsize]) + varint_bytes(0)
    if mdl:
        return stream_naive(mdl_lengths_naive(a), a)
    counts = np.bincount(a, minlength=1 << (8 * a.itemsize))
    size = int(np.flatnonzero(counts)[-1]) + 1
    return stream_naive(optimal_lengths_naive(counts[:size], MAX_CODE_LENGTH), a)


def stream_naive(lengths: np.ndarray, a: np.ndarray) -> bytes:
    """The version-2 stream of symbols a (n,) >= 1 coded with the canonical code of lengths
    (A,) (any complete code that covers every symbol of a; lengths[A-1] > 0): how
    :func:`encode_naive` writes, and how a test writes a stream with a code of its choice."""
    n, width = a.size, a.itemsize
    head = bytes([VERSION, width]) + varint_bytes(n)
    size = lengths.size
    codes = canonical_codes_naive(lengths)
    words = {int(s): format(int(codes[s]), f"0{int(lengths[s])}b") for s in np.flatnonzero(lengths)}
    seg = _segment(n)
    streams = [_pack("".join(words[int(s)] for s in a[r * seg:(r + 1) * seg]))
               for r in range(STREAMS)]
    return (head + varint_bytes(size) + _pack(table_bits_naive(lengths))
            + b"".join(varint_bytes(len(b)) for b in streams[:3]) + b"".join(streams))


def decode_naive(data: bytes) -> np.ndarray:
    """Oracle of :func:`decode`: reads one bit at a time, looks (length, code) up in a dict."""
    buf = bytes(data)
    if len(buf) < 3:
        raise ValueError(f"huffman: {_ERRORS[-10]}")
    width = buf[1]
    if width not in (1, 2):
        raise ValueError(f"huffman: {_ERRORS[-12]}")
    dtype = np.uint8 if width == 1 else np.uint16
    n, pos = _varint(buf, 2)
    if n > 8 * len(buf):
        raise ValueError(f"huffman: {_ERRORS[-17]}")
    if n == 0:
        if pos != len(buf):
            raise ValueError(f"huffman: {_ERRORS[-13]}")
        return np.zeros(0, dtype)
    size, pos = _varint(buf, pos)
    if not 1 <= size <= 1 << (8 * width):
        raise ValueError(f"huffman: {_ERRORS[-14]}")
    lengths, used = read_table_naive(_bits(buf[pos:]), size)
    pos += used // 8
    used_lengths = [int(v) for v in lengths if v]
    if not (used_lengths == [1] or (len(used_lengths) > 1 and sum(
            1 << (MAX_CODE_LENGTH - v) for v in used_lengths) == 1 << MAX_CODE_LENGTH)):
        raise ValueError(f"huffman: {_ERRORS[-15]}")
    sizes = []
    for _ in range(STREAMS - 1):
        v, pos = _varint(buf, pos)
        sizes.append(v)
    if sum(sizes) > len(buf) - pos or any(pos + sum(sizes[:r + 1]) > len(buf) for r in range(3)):
        raise ValueError(f"huffman: {_ERRORS[-16]}")
    sizes.append(len(buf) - pos - sum(sizes))
    seg = _segment(n)
    counts = [len(range(r * seg, min(n, (r + 1) * seg))) for r in range(STREAMS)]
    if any(c > 8 * s for c, s in zip(counts, sizes)):
        raise ValueError(f"huffman: {_ERRORS[-17]}")
    codes = canonical_codes_naive(lengths)
    table = {(int(lengths[s]), int(codes[s])): int(s) for s in np.flatnonzero(lengths)}
    prefixes = {(k, int(codes[s]) >> (int(lengths[s]) - k)) for s in np.flatnonzero(lengths)
                for k in range(1, int(lengths[s]) + 1)}  # of some codeword
    out = []
    for r in range(STREAMS):
        bits = _bits(buf[pos:pos + sizes[r]])
        pos += sizes[r]
        at = 0
        for _ in range(counts[r]):
            code, ln = 0, 0
            while (ln, code) not in table:
                if at == len(bits):
                    raise ValueError(f"huffman: {_ERRORS[-19]}")
                code, ln, at = 2 * code + int(bits[at]), ln + 1, at + 1
                if (ln, code) not in prefixes:  # only the one-symbol code has such bits
                    raise ValueError(f"huffman: {_ERRORS[-18]}")
            out.append(table[(ln, code)])
        if (at + 7) // 8 != sizes[r]:
            raise ValueError(f"huffman: {_ERRORS[-20]}")
        if "1" in bits[at:]:
            raise ValueError(f"huffman: {_ERRORS[-21]}")
    return np.array(out, dtype)
