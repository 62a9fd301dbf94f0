"""Version 1 of refsim's Huffman stream (still decoded, and written on request).

The canonical, length-limited code of ``huffman_code.py`` (package-merge, canonical codewords,
deterministic ties) in the byte format refsim wrote before version 2 (``huffman_v2.py``). It is
kept so that every version-1 stream still decodes, and so that ``huffman.encode(x, version=1)``
can write for a reader that knows only version 1 (the golden vectors of ``huffman.npz`` and
``codec.npz`` are version 1).

Byte format, version 1 (all integers little-endian; full spec in ``docs/formats.md`` Sec. 1)::

    version u8 = 1 | width u8 (1: uint8 symbols, 2: uint16) | n u64 (number of symbols)
    if n > 0:
      mode u8 = 0 (sparse): m u32, then m symbols (width bytes each, strictly increasing),
                            then m code lengths (u8, 1..24)
      mode u8 = 1 (dense):  A u32, then A code lengths (u8, 0..24) of symbols 0..A-1
      L0 u32 | L1 u32 | L2 u32, then four bit streams of L0, L1, L2 and L3 (the rest) bytes:
      stream r holds the codewords of symbols r, r+4, r+8, ..., MSB first, zero-padded to a
      whole byte (exactly that many bytes)

The encoder writes the smaller table (dense when A < m * (width + 1), A = max symbol + 1). Four
interleaved streams let a decoder have four table lookups in flight (``huffman_kernels.py``).

``encode_naive``/``decode_naive`` (Python strings of bits, a dict of codewords) are the oracles of
``encode``/``decode`` (the jitted loops of ``huffman_kernels.py``). The decoders reject malformed
input with ValueError; every index derived from input bytes is bound-checked in the kernel
itself (Numba does not bound-check).
"""

from __future__ import annotations

import numpy as np

from refsim.compress.huffman_code import (
    MAX_CODE_LENGTH,
    canonical_codes,
    check_code_lengths,
    code_lengths,
)
from refsim.compress.huffman_kernels import (
    PRIMARY_BITS,
    STREAMS,
    decode_kernel,
    decode_tables,
    encode_kernel,
    histogram_kernel,
    to_words,
)

__all__ = ["VERSION", "STREAMS", "PRIMARY_BITS", "encode", "encode_naive", "decode",
           "decode_naive", "stream_histograms", "header_size"]

VERSION = 1
_HEAD = 10  # version, width, n


def stream_histograms(a: np.ndarray) -> np.ndarray:
    """(STREAMS, 2**(8*itemsize)) int64: counts per stream (symbol i is in stream i % 4)."""
    counts = np.zeros((STREAMS, 1 << (8 * a.itemsize)), dtype=np.int64)
    histogram_kernel(a, counts)
    return counts


def _header(width: int, n: int, lengths: np.ndarray) -> bytes:
    """The bytes before the payload, for (2**(8*width),) code lengths."""
    head = bytes([VERSION, width]) + int(n).to_bytes(8, "little")
    if n == 0:
        return head
    present = np.flatnonzero(lengths)  # (m,)
    m, a = present.size, int(present[-1]) + 1
    if a < m * (width + 1):
        return head + bytes([1]) + a.to_bytes(4, "little") + lengths[:a].astype(np.uint8).tobytes()
    sym_bytes = present.astype("<u1" if width == 1 else "<u2").tobytes()
    return (head + bytes([0]) + m.to_bytes(4, "little") + sym_bytes
            + lengths[present].astype(np.uint8).tobytes())


def header_size(data: bytes) -> int:
    """Bytes before the four bit streams (header, code table, stream lengths)."""
    return _parse(data)[3]


def _code(counts: np.ndarray):
    lengths = code_lengths(counts)  # (2**(8*width),) uint8
    return lengths, canonical_codes(lengths)


def encode_naive(a: np.ndarray) -> bytes:
    """Oracle of :func:`encode`: codewords joined as a string of '0'/'1', then packed MSB first.

    a : (n,) C-contiguous uint8/uint16 (checked by ``huffman.py``), as for every function here.
    """
    lengths, codes = _code(np.bincount(a, minlength=1 << (8 * a.itemsize)))
    words = {int(s): format(int(codes[s]), f"0{int(lengths[s])}b") for s in np.flatnonzero(lengths)}
    streams = []
    for r in range(STREAMS):
        bits = "".join(words[int(s)] for s in a[r::STREAMS])
        streams.append(np.packbits(np.frombuffer(bits.encode(), np.uint8) - ord("0")).tobytes())
    return _header(a.itemsize, a.size, lengths) + _join(streams, a.size)


def _join(streams: list, n: int) -> bytes:
    """L0 | L1 | L2 (u32) then the four streams; nothing at all when n == 0."""
    if n == 0:
        return b""
    if max(len(b) for b in streams) >= 2**32:
        raise ValueError("huffman: a stream exceeds 2**32 - 1 bytes; split the input")
    return b"".join(len(b).to_bytes(4, "little") for b in streams[:3]) + b"".join(streams)


def encode(a: np.ndarray) -> bytes:
    """Huffman-code (n,) uint8/uint16 symbols into the version-1 byte format.

    Jitted histogram and bit writer; oracle :func:`encode_naive` (identical bytes).

    >>> data = encode(np.array([3, 3, 3, 1, 0], np.uint8))
    >>> len(data), decode(data).tolist()
    (35, [3, 3, 3, 1, 0])
    """
    per_stream = stream_histograms(a)  # (STREAMS, A)
    lengths, codes = _code(per_stream.sum(axis=0))
    bits = per_stream @ lengths.astype(np.int64)  # (STREAMS,) payload bits per stream
    nwords = (bits + 31) // 32  # (STREAMS,) ceil(bits_r / 32)
    starts = np.concatenate([[0], np.cumsum(nwords)[:-1]]).astype(np.int64)  # (STREAMS,)
    words = np.empty(int(nwords.sum()), dtype=np.uint32)
    with np.errstate(over="ignore"):  # shifts drop written bits (NumPy scalars w/o JIT)
        encode_kernel(a, codes.astype(np.uint64), lengths.astype(np.int64), words, starts)
    raw = words.astype(">u4").tobytes()  # MSB-first bytes of each stream's words
    streams = [raw[4 * st:4 * st + (int(b) + 7) // 8] for st, b in zip(starts, bits)]
    return _header(a.itemsize, a.size, lengths) + _join(streams, a.size)


def _parse(data: bytes):
    """Validate the header -> (dtype, n, lengths (2**(8*width),) uint8, payload offset)."""
    buf = bytes(data)
    if len(buf) < _HEAD:
        raise ValueError(f"huffman: stream of {len(buf)} bytes is shorter than its header")
    if buf[0] != VERSION:
        raise ValueError(f"huffman: unsupported version {buf[0]} (expected {VERSION})")
    width = buf[1]
    if width not in (1, 2):
        raise ValueError(f"huffman: symbol width must be 1 or 2 bytes, got {width}")
    n = int.from_bytes(buf[2:10], "little")
    lengths = np.zeros(1 << (8 * width), dtype=np.uint8)
    dtype = np.dtype(np.uint8 if width == 1 else np.uint16)
    if n == 0:
        if len(buf) != _HEAD:
            raise ValueError("huffman: an empty stream must be exactly 10 bytes")
        return dtype, 0, lengths, _HEAD, [0] * STREAMS
    if len(buf) < _HEAD + 5:
        raise ValueError("huffman: truncated code table")
    mode, count = buf[10], int.from_bytes(buf[11:15], "little")
    off = _HEAD + 5
    if not 1 <= count <= lengths.size:
        raise ValueError(f"huffman: table size {count} outside 1..{lengths.size}")
    if mode == 0:
        end = off + count * (width + 1)
        if len(buf) < end:
            raise ValueError("huffman: truncated code table")
        syms = np.frombuffer(buf, dtype="<u1" if width == 1 else "<u2", count=count, offset=off)
        if count > 1 and not bool(np.all(syms[1:] > syms[:-1])):
            raise ValueError("huffman: table symbols are not strictly increasing")
        lens = np.frombuffer(buf, dtype=np.uint8, count=count, offset=off + count * width)
        if not bool(np.all(lens > 0)):
            raise ValueError("huffman: a listed symbol has code length 0")
        lengths[syms.astype(np.int64)] = lens
    elif mode == 1:
        end = off + count
        if len(buf) < end:
            raise ValueError("huffman: truncated code table")
        lengths[:count] = np.frombuffer(buf, dtype=np.uint8, count=count, offset=off)
    else:
        raise ValueError(f"huffman: unknown table mode {mode}")
    check_code_lengths(lengths)  # ValueError unless a complete prefix code (or one symbol)
    if not lengths.any():
        raise ValueError("huffman: n > 0 but the code table is empty")
    if len(buf) < end + 12:
        raise ValueError("huffman: truncated stream lengths")
    sizes = [int.from_bytes(buf[end + 4 * r:end + 4 * r + 4], "little") for r in range(3)]
    end += 12
    sizes.append(len(buf) - end - sum(sizes))
    if sizes[3] < 0:
        raise ValueError(f"huffman: stream lengths {sizes[:3]} exceed the payload")
    if n > 8 * (len(buf) - end):  # every symbol costs >= 1 bit: caps the allocation
        raise ValueError(f"huffman: {n} symbols cannot fit in {len(buf) - end} payload bytes")
    return dtype, n, lengths, end, sizes


def _check_end(payload: np.ndarray, consumed: int) -> None:
    """A stream must end exactly at its last codeword's byte, with zero padding bits."""
    if consumed > 8 * payload.size:
        raise ValueError("huffman: payload truncated")
    if payload.size != (consumed + 7) // 8:
        raise ValueError(f"huffman: {payload.size - (consumed + 7) // 8} trailing payload bytes")
    pad = (-consumed) % 8
    if pad and int(payload[-1]) & ((1 << pad) - 1):
        raise ValueError("huffman: nonzero padding bits")


def decode_naive(data) -> np.ndarray:
    """Oracle of :func:`decode`: reads one bit at a time and looks (length, code) up in a dict."""
    dtype, n, lengths, off, sizes = _parse(data)
    codes = canonical_codes(lengths)
    table = {(int(lengths[s]), int(codes[s])): int(s) for s in np.flatnonzero(lengths)}
    out = np.zeros(n, dtype=dtype)
    for r in range(STREAMS):
        start = off + sum(sizes[:r])
        stream = np.frombuffer(bytes(data), dtype=np.uint8, count=sizes[r], offset=start)
        bits = np.unpackbits(stream).tolist()
        symbols, code, ln, pos = [], 0, 0, 0
        while len(symbols) < len(range(r, n, STREAMS)):
            if pos == len(bits):
                raise ValueError("huffman: payload truncated")
            code, ln, pos = 2 * code + bits[pos], ln + 1, pos + 1
            if (ln, code) in table:
                symbols.append(table[(ln, code)])
                code, ln = 0, 0
            elif ln == MAX_CODE_LENGTH:
                raise ValueError("huffman: invalid codeword")
        _check_end(stream, pos)
        out[r::STREAMS] = symbols
    return out


def decode(data) -> np.ndarray:
    """Decode a version-1 stream -> (n,) uint8 or uint16 (four-stream table-driven kernel).

    ValueError on any malformed, truncated or trailing input. Oracle: :func:`decode_naive`.
    """
    dtype, n, lengths, off, sizes = _parse(data)
    out = np.empty(n, dtype=dtype)  # (n,) n <= 8 * payload bytes, checked by _parse
    if n == 0:
        return out
    buf = bytes(data)
    bounds = off + np.concatenate([[0], np.cumsum(sizes)])  # (STREAMS + 1,) byte offsets
    streams = [buf[bounds[r]:bounds[r + 1]] for r in range(STREAMS)]
    words, starts, ends = to_words(streams)  # big-endian uint32 words, zero slack after each
    used = np.zeros(STREAMS, dtype=np.int64)  # (STREAMS,) bits each stream consumed
    tables = decode_tables(lengths, canonical_codes(lengths))
    with np.errstate(over="ignore"):  # shifts drop consumed bits (NumPy scalars w/o JIT)
        status = decode_kernel(words, starts, ends, *tables, out, used)
    if status < 0:
        raise ValueError("huffman: invalid codeword or truncated stream")
    for r in range(STREAMS):
        _check_end(np.frombuffer(streams[r], dtype=np.uint8), int(used[r]))
    return out
