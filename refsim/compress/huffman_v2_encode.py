"""The jitted encoder of the version-2 Huffman stream: the whole stream in one Numba call.

Plain Python loops over NumPy arrays, jitted in one visible place each (``njit(cache=True)``);
with ``NUMBA_DISABLE_JIT=1`` they run as the Python they read as. Oracle:
``huffman_v2.encode_naive`` (strings of bits); format: ``docs/formats.md`` Sec. 2.

``encode_kernel``: a histogram per stream (the four segments in lockstep), the code
(``huffman_build.optimal_lengths``: Huffman's lengths, package-merge's if deeper than 24 bits;
or the lengths the caller gives, those of ``huffman_mdl``) and canonical codewords, the
code-length table (``huffman_table.py``), then the codewords. Bits are packed LSB first, so a
codeword goes in bit-reversed: ``acc |= rev << nb``, and a full 32-bit word leaves ``acc``
without a branch (the word is stored every time; its index advances only when it is full). For
uint8 symbols and long inputs the encoder codes two symbols per table lookup: a 65,536-entry
table indexed by the uint16 view of a symbol pair holds both codewords (pairs longer than 32
bits fall back to one symbol at a time). Two writers run in lockstep (two independent chains of
bit arithmetic): x writes streams 0 and 1 in place after the header, y streams 2 and 3 in place
too (the word where stream 2 starts is shared with the end of stream 1: y's version of it is
saved and OR-ed back; see ``_encode_loop``), or, when stream 1 or 2 is shorter than 4 bytes,
past the end, moved into place at the end. (Writing y past the end and moving it cost ~0.085 ms
of the ~1.3 ms at 1,663,370 symbols.)

Tried and not kept (1,663,370 8-bit symbols, Intel Xeon, ``time.thread_time``): a histogram
reading 8 symbols per uint64 load, with 4, 8 or 16 count tables, int64 or uint32 counters
(0.41-0.50 ms against 0.43: one increment is a load, an add and a store per symbol either way);
a packed entry per pair (code | length << 27 in one uint32, or << 32 in a uint64: one load
fewer, 5-10% slower); the code and length tables in one array; four writers in lockstep (30%
slower: registers spill); two pairs per writer per iteration (10-15% slower). One writer alone
is as fast as two: the loop is bound by instruction throughput, not by the chains' latency.

The hot loops index with uint64 values: with signed indices Numba adds negative-index
wraparound code to every access, which costs a third of the loop time (and 50x on a copy,
which it stops from being vectorized).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from refsim.compress.huffman_build import canonical, optimal_lengths, reverse_bits
from refsim.compress.huffman_table import write_table
from refsim.compress.huffman_v2_bits import (MAX_LEN, STREAMS, VERSION, copy_bytes, put_varint,
                                             varint_size, segment)

__all__ = ["PAIR_MIN", "encode_kernel"]

PAIR_MIN = 1 << 16  # uint8 inputs of at least this many symbols are coded two at a time
_U = np.uint64
_M32 = np.uint64(0xFFFFFFFF)

def _emit_loop(acc, nb, q, code, ln, words):
    """Add a bit-reversed codeword of ln bits to a writer whose pending bits are acc (nb < 32
    of them; code + pending <= 64 bits); store acc's low word at words[q] and advance q if
    the word is full (no branch: the word is stored every time). All arguments uint64."""
    acc |= code << nb
    t = nb + ln
    words[q] = np.uint32(acc & _M32)
    s = t & _U(32)
    return acc >> s, t & _U(31), q + (s >> _U(5))


_emit = njit(cache=True, inline="always")(_emit_loop)


def _pair_loop(acc, nb, q, x, pcode, plen, words):
    """The symbol pair x (first symbol in the low byte) into a writer: one lookup, or, when the
    pair is longer than 32 bits (plen 0), its two symbols from the single-symbol entries
    pcode[65536 + s]. (The rare case comes first: in this order LLVM lays the common one out
    without a jump, ~7% faster.)"""
    ln = _U(plen[x])
    if ln == 0:
        lo = _U(65536) + _U(x & np.uint16(255))
        hi = _U(65536) + _U(x >> np.uint16(8))
        acc, nb, q = _emit(acc, nb, q, _U(pcode[lo]), _U(plen[lo]), words)
        return _emit(acc, nb, q, _U(pcode[hi]), _U(plen[hi]), words)
    return _emit(acc, nb, q, _U(pcode[x]), ln, words)


_pair = njit(cache=True, inline="always")(_pair_loop)


def _symbols_loop(acc, nb, q, words, a, lo, hi, a16, pairs, pcode, plen, soff):
    """a[lo:hi] into a writer (pairs: two symbols per lookup from lo, which is even; the
    single-symbol entries are pcode[soff + s])."""
    i = _U(lo)
    if pairs:
        for k in range(i >> _U(1), _U(hi) >> _U(1)):
            acc, nb, q = _pair(acc, nb, q, a16[k], pcode, plen, words)
        i = (_U(hi) >> _U(1)) << _U(1)
    for j in range(i, _U(hi)):
        e = _U(soff) + _U(a[j])
        acc, nb, q = _emit(acc, nb, q, _U(pcode[e]), _U(plen[e]), words)
    return acc, nb, q


_symbols = njit(cache=True)(_symbols_loop)


def _lockstep2_loop(x, y, words, a, xlo, xhi, ylo, yhi, a16, pairs, pcode, plen, soff):
    """Writers x and y (uint64 (acc, nb, q) arrays, both into words) over a[xlo:xhi] and
    a[ylo:yhi] in lockstep: two independent chains of bit arithmetic. xlo, ylo even when
    pairs."""
    ax, nx, qx = x[0], x[1], x[2]
    ay, ny, qy = y[0], y[1], y[2]
    if pairs:
        kx, ky = _U(xlo) >> _U(1), _U(ylo) >> _U(1)
        m = _U(min(xhi - xlo, yhi - ylo) // 2)
        for j in range(m):
            ax, nx, qx = _pair(ax, nx, qx, a16[kx + j], pcode, plen, words)
            ay, ny, qy = _pair(ay, ny, qy, a16[ky + j], pcode, plen, words)
        xlo, ylo = xlo + 2 * np.int64(m), ylo + 2 * np.int64(m)
    else:
        ix, iy = _U(xlo), _U(ylo)
        m = _U(min(xhi - xlo, yhi - ylo))
        for j in range(m):
            ex, ey = _U(soff) + _U(a[ix + j]), _U(soff) + _U(a[iy + j])
            ax, nx, qx = _emit(ax, nx, qx, _U(pcode[ex]), _U(plen[ex]), words)
            ay, ny, qy = _emit(ay, ny, qy, _U(pcode[ey]), _U(plen[ey]), words)
        xlo, ylo = xlo + np.int64(m), ylo + np.int64(m)
    x[0], x[1], x[2] = _symbols(ax, nx, qx, words, a, xlo, xhi, a16, pairs, pcode, plen, soff)
    y[0], y[1], y[2] = _symbols(ay, ny, qy, words, a, ylo, yhi, a16, pairs, pcode, plen, soff)


_lockstep2 = njit(cache=True)(_lockstep2_loop)


def _byte_loop(w, words, last):
    """End a stream at a byte boundary (zero bits), or, with last, store the partial word."""
    acc, nb, q = w[0], w[1], w[2]
    nb = (nb + _U(7)) & ~_U(7)
    if nb == 32 or (last and nb > 0):
        words[q] = np.uint32(acc & _M32)
        acc, nb, q = _U(0), _U(0), q + _U(1)
    w[0], w[1], w[2] = acc, nb, q


_byte = njit(cache=True)(_byte_loop)


def _histogram_loop(a, n, seg, counts4):
    """counts4[r, s]: occurrences of s in stream r's segment; the four segments in lockstep
    (uint64 indices, see _stream_loop)."""
    s1 = _U(seg)
    n3 = _U(max(0, n - 3 * seg))  # stream 3's symbols; streams 0-2 have seg each if n >= 3 seg
    i = _U(0)
    if n >= 3 * seg:
        while i < n3:
            counts4[0, a[i]] += 1
            counts4[1, a[i + s1]] += 1
            counts4[2, a[i + s1 + s1]] += 1
            counts4[3, a[i + s1 + s1 + s1]] += 1
            i += _U(1)
        while i < s1:
            counts4[0, a[i]] += 1
            counts4[1, a[i + s1]] += 1
            counts4[2, a[i + s1 + s1]] += 1
            i += _U(1)
        return
    for r in range(STREAMS):
        for j in range(min(n, r * seg), min(n, (r + 1) * seg)):
            counts4[r, a[j]] += 1


_histogram = njit(cache=True)(_histogram_loop)


def _pair_tables_loop(scode, slen, pcode, plen):
    """pcode[s1 | s2 << 8] = both bit-reversed codewords (s1's in the low bits), plen = their
    total length (0 when longer than 32 bits, or when a symbol is absent), for uint8 symbols
    s1, s2 < A (scode, slen: (A,) the single-symbol codewords and lengths)."""
    size = _U(scode.shape[0])
    for s2 in range(size):
        c2, l2 = _U(scode[s2]), _U(slen[s2])
        row = s2 << _U(8)
        for s1 in range(size):  # contiguous: vectorized
            ln = _U(slen[s1]) + l2
            ok = (ln <= _U(32)) & (l2 > _U(0)) & (slen[s1] > 0)
            pcode[row + s1] = np.uint32((_U(scode[s1]) | (c2 << _U(slen[s1]))) & _M32)
            plen[row + s1] = np.uint8(ln if ok else 0)


_pair_tables = njit(cache=True)(_pair_tables_loop)


def _encode_loop(a, a16, width, pairs, given):
    """The version-2 stream of a (n,) uint8/uint16 (width 1/2) as (L,) uint8. pairs: code two
    symbols per lookup (uint8 only; a16 = the uint16 view of a's first 2 * (n // 2)).
    given: (0,) int64 for the default lengths (Sec. 2.1), or the code lengths (A',) to use
    instead (``huffman_mdl``; the caller guarantees a complete code of <= 24-bit lengths that
    covers every symbol of a, with A' <= 2^(8 width) and the last length > 0)."""
    n = a.shape[0]
    alphabet = 1 << (8 * width)
    head = np.zeros(12, np.uint8)
    head[0] = VERSION
    head[1] = width
    hpos = put_varint(head, 2, n)
    if n == 0:
        return head[:hpos].copy()
    seg = segment(n)
    counts4 = np.zeros((STREAMS, 256 if width == 1 else 1), np.int64)  # per stream (uint8)
    counts = np.zeros(alphabet, np.int64)
    if width == 1:
        _histogram(a, n, seg, counts4)
        for r in range(STREAMS):
            for s in range(256):
                counts[s] += counts4[r, s]
    else:
        for i in range(n):
            counts[a[i]] += 1
    if given.shape[0] > 0:
        size = given.shape[0]  # A'
        lengths = given.copy()
    else:
        top = alphabet - 1
        while counts[top] == 0:
            top -= 1
        size = top + 1  # A: the table covers symbols 0..A-1
        lengths = np.zeros(size, np.int64)
        optimal_lengths(counts[:size], MAX_LEN, lengths)
    codes = np.zeros(size, np.int64)
    canonical(lengths, codes)
    bits = np.zeros(STREAMS, np.int64)  # (4,) payload bits per stream
    for r in range(STREAMS):
        if width == 1:
            for s in range(size):
                bits[r] += counts4[r, s] * lengths[s]
        else:
            for i in range(min(n, r * seg), min(n, (r + 1) * seg)):
                bits[r] += lengths[a[i]]
    table = np.empty((5 + 3 * 26 + 80 * size) // 8 + 2, np.uint8)
    tbytes = write_table(lengths, table, 0)
    nbytes = (bits + 7) // 8  # (4,) L_r
    total = hpos + varint_size(size) + tbytes + nbytes.sum()
    for r in range(STREAMS - 1):
        total += varint_size(nbytes[r])
    # Writer y (streams 2 and 3) writes in place when streams 1 and 2 have >= 4 bytes each
    # (see below); otherwise past the end of the output, moved into place at the end.
    inplace = nbytes[1] >= 4 and nbytes[2] >= 4
    ystart = total // 4 + 2  # writer y's words start here when not in place
    out32 = np.empty(total // 4 + 2 if inplace else ystart + (nbytes[2] + nbytes[3]) // 4 + 2,
                     np.uint32)
    out = out32.view(np.uint8)
    copy_bytes(out, 0, head, 0, hpos)
    pos = put_varint(out, hpos, size)
    copy_bytes(out, pos, table, 0, tbytes)
    pos += tbytes
    for r in range(STREAMS - 1):
        pos = put_varint(out, pos, nbytes[r])
    # Codewords: pcode / plen hold bit-reversed codewords (LSB-first packing) and lengths:
    # pairs s1 | s2 << 8 (pairs only), then the single symbols from soff.
    soff = 1 << 16 if pairs else 0
    pcode = np.zeros(soff + size, np.uint32)
    plen = np.zeros(soff + size, np.uint8)
    for s in range(size):
        if lengths[s] > 0:
            pcode[soff + s] = reverse_bits(codes[s], lengths[s])
            plen[soff + s] = lengths[s]
    if pairs:
        _pair_tables(pcode[soff:], plen[soff:], pcode, plen)
    # Writer x: streams 0 and 1, in place after the header (its first word keeps the header's
    # bytes). Writer y: streams 2 and 3, in place from byte p2 (or past the output, moved into
    # place at the end). Each stream ends at a byte boundary. Both are (acc, nb, q) of uint64.
    # In place, the word w = p2 // 4 may hold the end of stream 1 (x's, written last, in call
    # 2) and the start of stream 2 (y's, in call 1; y starts with nb = 8 * (p2 % 4) zero
    # bits): each stores it with zeros in the other's bytes, so y's version, saved after call
    # 1, is OR-ed into x's (when p2 % 4 == 0, x never stores w and the OR changes nothing).
    # This needs y past w after call 1 (L2 >= 4 bytes) and x short of w in call 1 (L1 >= 4).
    x = np.zeros(3, np.uint64)
    x[1], x[2] = 8 * (pos % 4), pos // 4
    x[0] = np.uint64(out32[pos // 4]) & ((np.uint64(1) << x[1]) - np.uint64(1))
    p2 = pos + nbytes[0] + nbytes[1]
    y = np.zeros(3, np.uint64)
    if inplace:
        y[1], y[2] = 8 * (p2 % 4), p2 // 4
    else:
        y[2] = ystart
    lo = np.empty(STREAMS + 1, np.int64)
    for r in range(STREAMS + 1):
        lo[r] = min(n, r * seg)
    _lockstep2(x, y, out32, a, lo[0], lo[1], lo[2], lo[3], a16, pairs, pcode, plen, soff)
    _byte(x, out32, False)
    _byte(y, out32, False)
    wy = out32[p2 // 4] if inplace else np.uint32(0)  # y's version of word w
    _lockstep2(x, y, out32, a, lo[1], lo[2], lo[3], lo[4], a16, pairs, pcode, plen, soff)
    _byte(x, out32, True)
    _byte(y, out32, True)
    if inplace:
        out32[p2 // 4] |= wy
    else:
        copy_bytes(out, p2, out, 4 * ystart, nbytes[2] + nbytes[3])
    return out[:total]


encode_kernel = njit(cache=True)(_encode_loop)
