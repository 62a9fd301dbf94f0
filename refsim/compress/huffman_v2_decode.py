"""The jitted decoder of the version-2 Huffman stream: checks and decodes in one Numba call.

Plain Python loops over NumPy arrays, jitted in one visible place each (``njit(cache=True)``);
with ``NUMBA_DISABLE_JIT=1`` they run as the Python they read as. Oracle:
``huffman_v2.decode_naive`` (one bit at a time); format: ``docs/formats.md`` Sec. 2.

``decode_kernel`` parses and checks the header, table and stream lengths (every index derived
from input bytes is checked before it is used: Numba does not bound-check), copies each stream
into zero-padded 64-bit words, then decodes the four streams in lockstep. Each step takes the 64
bits at a stream's bit position P (two aligned words; no refill state) and looks up their low
``tb`` bits twice, in a table whose entries hold one or two symbols (for uint8 symbols: the
double-symbol tables of Collet's Huff0) and the bits they use; a codeword longer than tb bits is
decoded canonically from the same 64 bits. The steps run in rounds whose length guarantees that
no stream passes its words or its segment, so a step checks nothing. Near the end of a stream,
one symbol at a time with every check. A stream must end exactly at its last codeword's byte,
with zero padding bits. Negative status codes name the problem (``DECODE_ERRORS`` and
``huffman_table.TABLE_ERRORS``); ``huffman_v2.py`` turns them into one-line ValueErrors.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from refsim.compress.huffman_build import canonical, complete, reverse_bits
from refsim.compress.huffman_table import read_table
from refsim.compress.huffman_v2_bits import MAX_LEN, STREAMS, copy_bytes, get_varint, segment

__all__ = ["DECODE_ERRORS", "decode_kernel", "lookup_bits"]

_U = np.uint64
_REV8 = np.array([int(format(b, "08b")[::-1], 2) for b in range(256)], np.int64)  # bytes reversed
DECODE_ERRORS = {
    -10: "truncated header",
    -11: "malformed varint (more than 64 bits, or not minimal)",
    -12: "symbol width must be 1 or 2 bytes",
    -13: "an empty stream must be exactly 3 bytes",
    -14: "table size outside 1..2**(8*width)",
    -15: "code lengths are not a complete prefix code",
    -16: "stream lengths exceed the payload",
    -17: "more symbols than payload bits",
    -18: "invalid codeword",
    -19: "stream truncated",
    -20: "trailing bytes after a stream",
    -21: "nonzero padding bits",
}


def _lookup_bits_loop(n):
    """Bits of the decoder's lookup table for n symbols: larger tables hold more symbol pairs
    and fewer long codewords (14 bits: 4x faster than 11 on 8-bit levels), but cost 2**bits
    entries to build. Below 2**14 symbols: the bit length of n, from 9 to 12 (measured at
    1,000 8-bit levels: 16.1 us per call with 9 bits, 9.0 with 10; at 4,000: 51.7 us with 9,
    16.9 with 12; 4- and 2-bit levels: within +-25% either way)."""
    if n >= 1 << 18:
        return 14
    if n >= 1 << 14:
        return 12
    tb = 9
    while tb < 12 and n >= 1 << tb:
        tb += 1
    return tb


lookup_bits = njit(cache=True)(_lookup_bits_loop)


def _peek_loop(w, p):
    """The 64 bits of the word array w from bit position p (uint64; bit p is bit 0 of the
    result); reads w[p // 64] and w[p // 64 + 1]."""
    k = p >> _U(6)
    o = p & _U(63)
    return (w[k] >> o) | ((w[k + _U(1)] << _U(1)) << (_U(63) - o))


_peek = njit(cache=True, inline="always")(_peek_loop)


def _long_loop(v, tb, first_code, count, first_index, sorted_syms, rev8):
    """(symbol, length) of a codeword longer than tb bits at the start of v; (-1, 0) if none."""
    x = (np.int64(rev8[v & np.uint64(255)]) << 16) | (
        np.int64(rev8[(v >> np.uint64(8)) & np.uint64(255)]) << 8) | np.int64(
        rev8[(v >> np.uint64(16)) & np.uint64(255)])  # the next 24 bits, first bit highest
    for ln in range(tb + 1, MAX_LEN + 1):
        k = (x >> (MAX_LEN - ln)) - first_code[ln]
        if 0 <= k < count[ln]:
            return sorted_syms[first_index[ln] + k], ln
    return -1, 0


_long = njit(cache=True)(_long_loop)


def _tables_loop(lengths, codes, width, tb):
    """Decode tables: (entry (2**tb,) uint32, first_code, count, first_index (25,) int64,
    sorted_syms (m,) int64 in canonical order). entry[i] for the next tb bits i: bits 0-7 and
    8-15 two uint8 symbols (width 1) or bits 0-15 one uint16 symbol, 16-20 the bits they use,
    21-25 the first one's length, 26-27 how many symbols (0: longer codeword or invalid)."""
    size = lengths.shape[0]
    count = np.zeros(MAX_LEN + 1, np.int64)
    for s in range(size):
        count[lengths[s]] += 1
    count[0] = 0
    first_index = np.zeros(MAX_LEN + 1, np.int64)
    for ln in range(1, MAX_LEN + 1):
        first_index[ln] = first_index[ln - 1] + count[ln - 1]
    m = first_index[MAX_LEN] + count[MAX_LEN]
    sorted_syms = np.empty(m, np.int64)
    fill = first_index.copy()
    for s in range(size):
        if lengths[s] > 0:
            sorted_syms[fill[lengths[s]]] = s
            fill[lengths[s]] += 1
    first_code = np.zeros(MAX_LEN + 1, np.int64)
    for ln in range(1, MAX_LEN + 1):
        if count[ln] > 0:
            first_code[ln] = codes[sorted_syms[first_index[ln]]]
    entry = np.zeros(1 << tb, np.uint32)
    for t in range(m):
        s1 = sorted_syms[t]
        l1 = lengths[s1]
        if l1 > tb:
            break
        r1 = reverse_bits(codes[s1], l1)
        e1 = s1 | (l1 << 16) | (l1 << 21) | (1 << 26)
        for j in range(1 << (tb - l1)):
            entry[r1 | (j << l1)] = e1
        if width == 1:
            for u in range(m):  # canonical order: lengths ascending
                s2 = sorted_syms[u]
                l2 = lengths[s2]
                if l1 + l2 > tb:
                    break
                base = r1 | (reverse_bits(codes[s2], l2) << l1)
                e2 = s1 | (s2 << 8) | ((l1 + l2) << 16) | (l1 << 21) | (2 << 26)
                for j in range(1 << (tb - l1 - l2)):
                    entry[base | (j << (l1 + l2))] = e2
    return entry, first_code, count, first_index, sorted_syms


_tables = njit(cache=True)(_tables_loop)


def _decode_loop(buf, out8, out16, tb):
    """Decode the version-2 stream buf (uint8, buf[0] == 2) -> (status, n, out8, out16): the
    symbols in out8 (width 1) or out16 (width 2), the other empty; status 0 or a negative
    code of DECODE_ERRORS / huffman_table.TABLE_ERRORS. out8 / out16 are placeholders
    (empty arrays of the two dtypes); tb: bits of the lookup table, 0 for lookup_bits(n)
    (any of 1..14 decodes the same symbols: the tests use this)."""
    if buf.shape[0] < 3:
        return -10, 0, out8, out16
    width = np.int64(buf[1])
    if width != 1 and width != 2:
        return -12, 0, out8, out16
    n, pos = get_varint(buf, 2)
    if n < 0:
        return n, 0, out8, out16
    if n > 8 * buf.shape[0]:  # every codeword has >= 1 bit (and segment(n) cannot overflow)
        return -17, 0, out8, out16
    if n == 0:
        return (0 if pos == buf.shape[0] else -13), 0, out8, out16
    size, pos = get_varint(buf, pos)
    if size < 0:
        return size, 0, out8, out16
    if not 1 <= size <= (1 << (8 * width)):
        return -14, 0, out8, out16
    lengths = np.zeros(size, np.int64)
    p = read_table(buf, 8 * pos, 8 * buf.shape[0], lengths)
    if p < 0:
        return p, 0, out8, out16
    if not complete(lengths, MAX_LEN):
        return -15, 0, out8, out16
    pos = p // 8
    nbytes = np.zeros(STREAMS, np.int64)
    for r in range(STREAMS - 1):
        nbytes[r], pos = get_varint(buf, pos)
        if nbytes[r] < 0:
            return nbytes[r], 0, out8, out16
    rest = buf.shape[0] - pos
    for r in range(STREAMS - 1):
        if nbytes[r] > rest:
            return -16, 0, out8, out16
        rest -= nbytes[r]
    nbytes[STREAMS - 1] = rest
    seg = segment(n)
    for r in range(STREAMS):  # every codeword has >= 1 bit: caps the allocation below
        if min(n, (r + 1) * seg) - min(n, r * seg) > 8 * nbytes[r]:
            return -17, 0, out8, out16
    codes = np.zeros(size, np.int64)
    canonical(lengths, codes)
    if tb == 0:
        tb = lookup_bits(n)
    entry, first_code, count, first_index, sorted_syms = _tables(lengths, codes, width, tb)
    rev8 = _REV8
    # the four streams, each in zero-padded 64-bit words with one zero word after it
    wstart = np.zeros(STREAMS + 1, np.int64)
    for r in range(STREAMS):
        wstart[r + 1] = wstart[r] + (nbytes[r] + 7) // 8 + 1
    words = np.zeros(wstart[STREAMS], np.uint64)
    wb = words.view(np.uint8)
    for r in range(STREAMS):
        copy_bytes(wb, 8 * wstart[r], buf, pos, nbytes[r])
        pos += nbytes[r]
    if width == 1:
        out8 = np.empty(n, np.uint8)
    else:
        out16 = np.empty(n, np.uint16)
    bitpos = np.zeros(STREAMS, np.int64)  # P: absolute bit position in words
    outpos = np.zeros(STREAMS, np.int64)
    for r in range(STREAMS):
        bitpos[r] = 64 * wstart[r]
        outpos[r] = min(n, r * seg)
    status = _lockstep(words, wstart, bitpos, outpos, n, seg, width, tb, entry, first_code,
                       count, first_index, sorted_syms, rev8, out8, out16)
    if status < 0:
        return status, 0, out8, out16
    for r in range(STREAMS):  # the rest of each stream, one symbol at a time, checked
        status = _tail(words, wstart[r + 1] - 1, bitpos, outpos, r, min(n, (r + 1) * seg),
                       width, tb, entry, first_code, count, first_index, sorted_syms, rev8,
                       out8, out16)
        if status < 0:
            return status, 0, out8, out16
        used = bitpos[r] - 64 * wstart[r]
        if used > 8 * nbytes[r]:
            return -19, 0, out8, out16
        if (used + 7) // 8 != nbytes[r]:
            return -20, 0, out8, out16
        pad = 8 * nbytes[r] - used
        if pad > 0 and _peek(words, _U(bitpos[r])) & ((_U(1) << _U(pad)) - _U(1)):
            return -21, 0, out8, out16
    return 0, n, out8, out16


def _lockstep_loop(words, wstart, bitpos, outpos, n, seg, width, tb, entry, first_code, count,
                   first_index, sorted_syms, rev8, out8, out16):
    """The four streams in lockstep: two lookups per stream per step, in the 64 bits peeked at
    its position P (each lookup uses <= 24 of them). Runs in rounds of k steps, k chosen so
    that no stream can pass its words (<= 48 bits a step) or its segment (<= 4 symbols a step)
    within the round: the steps need no bound check. Updates bitpos / outpos; returns 0, or
    -18 on an invalid codeword. uint64 positions and indices (see _stream_loop)."""
    mask = _U((1 << tb) - 1)
    pend = np.empty(STREAMS, np.int64)  # the bit position of the zero word after stream r
    oend = np.empty(STREAMS, np.int64)  # the end of stream r's segment
    for r in range(STREAMS):
        pend[r] = 64 * (wstart[r + 1] - 1)
        oend[r] = min(n, (r + 1) * seg)
    per_step = 4 if width == 1 else 2  # symbols a step can write
    p0, p1, p2, p3 = _U(bitpos[0]), _U(bitpos[1]), _U(bitpos[2]), _U(bitpos[3])
    o0, o1, o2, o3 = _U(outpos[0]), _U(outpos[1]), _U(outpos[2]), _U(outpos[3])
    s16, s26, m5, m8 = _U(16), _U(26), _U(31), _U(255)
    while True:
        k = min((pend[0] - np.int64(p0)) // 48, (pend[1] - np.int64(p1)) // 48,
                (pend[2] - np.int64(p2)) // 48, (pend[3] - np.int64(p3)) // 48)
        k = min(k, (oend[0] - np.int64(o0)) // per_step, (oend[1] - np.int64(o1)) // per_step,
                (oend[2] - np.int64(o2)) // per_step, (oend[3] - np.int64(o3)) // per_step)
        if k <= 0:
            break
        for _ in range(k):
            v0, v1, v2, v3 = _peek(words, p0), _peek(words, p1), _peek(words, p2), _peek(words, p3)
            for _ in range(2):
                e0, e1 = _U(entry[v0 & mask]), _U(entry[v1 & mask])
                e2, e3 = _U(entry[v2 & mask]), _U(entry[v3 & mask])
                if (e0 >> s26) == 0 or (e1 >> s26) == 0 or (e2 >> s26) == 0 or (e3 >> s26) == 0:
                    e0 = _slow(e0, v0, tb, first_code, count, first_index, sorted_syms, rev8)
                    e1 = _slow(e1, v1, tb, first_code, count, first_index, sorted_syms, rev8)
                    e2 = _slow(e2, v2, tb, first_code, count, first_index, sorted_syms, rev8)
                    e3 = _slow(e3, v3, tb, first_code, count, first_index, sorted_syms, rev8)
                    if e0 == 0 or e1 == 0 or e2 == 0 or e3 == 0:
                        return -18
                if width == 1:
                    out8[o0], out8[o0 + _U(1)] = e0 & m8, (e0 >> _U(8)) & m8
                    out8[o1], out8[o1 + _U(1)] = e1 & m8, (e1 >> _U(8)) & m8
                    out8[o2], out8[o2 + _U(1)] = e2 & m8, (e2 >> _U(8)) & m8
                    out8[o3], out8[o3 + _U(1)] = e3 & m8, (e3 >> _U(8)) & m8
                else:
                    out16[o0], out16[o1] = e0 & _U(65535), e1 & _U(65535)
                    out16[o2], out16[o3] = e2 & _U(65535), e3 & _U(65535)
                b0, b1 = (e0 >> s16) & m5, (e1 >> s16) & m5
                b2, b3 = (e2 >> s16) & m5, (e3 >> s16) & m5
                v0, v1, v2, v3 = v0 >> b0, v1 >> b1, v2 >> b2, v3 >> b3
                p0, p1, p2, p3 = p0 + b0, p1 + b1, p2 + b2, p3 + b3
                o0, o1 = o0 + (e0 >> s26), o1 + (e1 >> s26)
                o2, o3 = o2 + (e2 >> s26), o3 + (e3 >> s26)
    bitpos[0], bitpos[1], bitpos[2], bitpos[3] = p0, p1, p2, p3
    outpos[0], outpos[1], outpos[2], outpos[3] = o0, o1, o2, o3
    return 0


_lockstep = njit(cache=True)(_lockstep_loop)


def _slow_loop(e, v, tb, first_code, count, first_index, sorted_syms, rev8):
    """e (uint64) itself if it holds symbols; else the one-symbol entry of the longer codeword
    at the start of v, or 0 if there is none (an invalid codeword)."""
    if e >> _U(26) != 0:
        return e
    s, ln = _long(v, tb, first_code, count, first_index, sorted_syms, rev8)
    if s < 0:
        return _U(0)
    return _U(s | (ln << 16) | (ln << 21) | (1 << 26))


_slow = njit(cache=True)(_slow_loop)


def _tail_loop(words, wlast, bitpos, outpos, r, oend, width, tb, entry, first_code, count,
               first_index, sorted_syms, rev8, out8, out16):
    """Decode stream r's symbols outpos[r] .. oend - 1 one at a time; words[wlast] is the zero
    word after the stream's words. Returns 0, -18 or -19."""
    mask = _U((1 << tb) - 1)
    p = bitpos[r]
    o = outpos[r]
    while o < oend:
        if p >= 64 * wlast:  # past the stream's words: truncated
            return -19
        v = _peek(words, _U(p))  # reads words[wlast] at most
        e = _slow(_U(entry[v & mask]), v, tb, first_code, count, first_index, sorted_syms, rev8)
        if e == 0:
            return -18
        if width == 1:
            out8[o] = e & _U(255)
        else:
            out16[o] = e & _U(65535)
        p += np.int64((e >> _U(21)) & _U(31))  # the first symbol only
        o += 1
    bitpos[r] = p
    outpos[r] = o
    return 0


_tail = njit(cache=True)(_tail_loop)

decode_kernel = njit(cache=True)(_decode_loop)
