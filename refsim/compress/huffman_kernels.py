"""The jitted loops behind ``huffman.py``: histogram, bit writer, four-stream table decoder.

Plain Python loops over NumPy arrays, jitted in one visible place each (``*_kernel =
njit(cache=True)(*_loop)``); with ``NUMBA_DISABLE_JIT=1`` they run as the Python they read as.
Their oracles are ``histogram_naive``, ``encode_naive`` and ``decode_naive`` in ``huffman.py``.

Streams: symbol i of a Huffman stream goes to bit stream i % 4 (docs/formats.md §1). The
decoder advances the four streams in lockstep: a codeword lookup depends on the previous
codeword's length in its *own* stream only, so four lookups are in flight at once (the idea of
Collet's Huff0, zstd's 4-stream literals). Both kernels move bits in 32-bit words: a stream's
bytes, zero-padded, are read as big-endian uint32 words (``to_words``), so MSB-first bit order is
preserved and one load refills 32 bits.

Lookup: the next ``PRIMARY_BITS`` = 11 bits of a stream index a table of ``symbol << 8 |
length``; length 0 marks a longer codeword, decoded canonically by ``long_codeword`` from
``first_code``/``first_index``/``per_len``/``sorted_syms``. Every index derived from input bytes
is bound-checked explicitly (Numba does not).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from refsim.compress.huffman_code import MAX_CODE_LENGTH

__all__ = ["STREAMS", "PRIMARY_BITS", "SLACK_WORDS", "histogram_kernel", "encode_kernel",
           "decode_kernel", "decode_tables", "to_words"]

STREAMS = 4
PRIMARY_BITS = 11
SLACK_WORDS = 2  # zero words after each stream: refills may run ahead of the last codeword
_SHIFT = np.uint64(64 - PRIMARY_BITS)
_MASK32 = np.uint64(0xFFFFFFFF)


def _histogram_loop(a, counts):
    """counts: (STREAMS, 2**(8*itemsize)) int64; counts[r, s] = #{i : i % 4 == r, a[i] == s}."""
    for i in range(a.shape[0]):
        counts[i % STREAMS, a[i]] += 1  # a[i] < counts.shape[1] by dtype (256 or 65536)


histogram_kernel = njit(cache=True)(_histogram_loop)


def _encode_loop(a, codes, lengths, out, starts):
    """Write the codewords of a[r], a[r + 4], ... MSB first into 32-bit words
    out[starts[r]:...], for the four streams r in lockstep (one pass over ``a``).

    codes: (A,) uint64; lengths: (A,) int64 (<= 24); out: uint32, ceil(bits_r / 32) words per
    stream (sized by the caller from the histogram). Each ``acc`` keeps its pending bits
    right-aligned: at most 31 + 24 of them, so it never overflows."""
    n = a.shape[0]
    acc = np.zeros(STREAMS, dtype=np.uint64)  # only for the tail; the main loop uses scalars
    nb = np.zeros(STREAMS, dtype=np.int64)
    pos = starts.copy()
    q0, q1, q2, q3 = pos[0], pos[1], pos[2], pos[3]
    c0 = c1 = c2 = c3 = np.uint64(0)
    b0 = b1 = b2 = b3 = 0
    for i in range(0, n - n % STREAMS, STREAMS):
        s0, s1, s2, s3 = a[i], a[i + 1], a[i + 2], a[i + 3]
        l0, l1, l2, l3 = lengths[s0], lengths[s1], lengths[s2], lengths[s3]
        c0 = (c0 << np.uint64(l0)) | codes[s0]
        c1 = (c1 << np.uint64(l1)) | codes[s1]
        c2 = (c2 << np.uint64(l2)) | codes[s2]
        c3 = (c3 << np.uint64(l3)) | codes[s3]
        b0, b1, b2, b3 = b0 + l0, b1 + l1, b2 + l2, b3 + l3
        if b0 >= 32:
            b0 -= 32
            out[q0] = (c0 >> np.uint64(b0)) & _MASK32
            q0 += 1
        if b1 >= 32:
            b1 -= 32
            out[q1] = (c1 >> np.uint64(b1)) & _MASK32
            q1 += 1
        if b2 >= 32:
            b2 -= 32
            out[q2] = (c2 >> np.uint64(b2)) & _MASK32
            q2 += 1
        if b3 >= 32:
            b3 -= 32
            out[q3] = (c3 >> np.uint64(b3)) & _MASK32
            q3 += 1
    acc[0], acc[1], acc[2], acc[3] = c0, c1, c2, c3
    nb[0], nb[1], nb[2], nb[3] = b0, b1, b2, b3
    pos[0], pos[1], pos[2], pos[3] = q0, q1, q2, q3
    for i in range(n - n % STREAMS, n):  # the last n % 4 symbols: streams 0, 1, 2 in turn
        r = i % STREAMS
        acc[r] = (acc[r] << np.uint64(lengths[a[i]])) | codes[a[i]]
        nb[r] += lengths[a[i]]
        if nb[r] >= 32:
            nb[r] -= 32
            out[pos[r]] = (acc[r] >> np.uint64(nb[r])) & _MASK32
            pos[r] += 1
    for r in range(STREAMS):  # the last bits of each stream, left-aligned in a padded word
        if nb[r] > 0:
            out[pos[r]] = (acc[r] << np.uint64(32 - nb[r])) & _MASK32


encode_kernel = njit(cache=True)(_encode_loop)


def to_words(streams: list) -> tuple:
    """Byte streams -> (words, starts, ends): each stream as big-endian uint32 words, zero-padded
    to a whole word plus SLACK_WORDS words, concatenated. words[starts[r]:ends[r]] is stream r."""
    sizes = [(len(b) + 3) // 4 + SLACK_WORDS for b in streams]
    ends = np.cumsum(sizes).astype(np.int64)  # (STREAMS,)
    raw = np.zeros(4 * int(ends[-1]), dtype=np.uint8)
    for b, e, size in zip(streams, ends, sizes):
        raw[4 * (e - size):4 * (e - size) + len(b)] = np.frombuffer(b, dtype=np.uint8)
    words = raw.view(">u4").astype(np.uint32)  # (sum(sizes),) native-endian values
    return words, ends - np.array(sizes, dtype=np.int64), ends


def decode_tables(lengths: np.ndarray, codes: np.ndarray):
    """(entry, first_code, first_index, per_len, sorted_syms) for valid code lengths (A,)
    and their canonical codes (A,)."""
    order = np.lexsort((np.arange(lengths.size), lengths))  # canonical order (length, symbol)
    order = order[lengths[order] > 0]  # (m,)
    # In canonical order the codewords, left-aligned to PRIMARY_BITS, tile the table from 0
    # upwards: symbol s (length <= 11) owns the 2**(11 - len) entries from code_s << (11 - len).
    short = order[lengths[order] <= PRIMARY_BITS]  # (m_short,)
    span = np.int64(1) << (PRIMARY_BITS - lengths[short].astype(np.int64))  # (m_short,)
    entry = np.zeros(1 << PRIMARY_BITS, dtype=np.int64)  # per 11-bit prefix: symbol << 8 | len
    entry[:int(span.sum())] = np.repeat((short.astype(np.int64) << 8) | lengths[short], span)
    per_len = np.bincount(lengths[order], minlength=MAX_CODE_LENGTH + 1).astype(np.int64)
    first_index = np.concatenate([[0], np.cumsum(per_len)[:-1]]).astype(np.int64)
    first_code = np.zeros(MAX_CODE_LENGTH + 1, dtype=np.int64)
    for ln in range(1, MAX_CODE_LENGTH + 1):
        if per_len[ln] > 0:
            first_code[ln] = int(codes[order[first_index[ln]]])
    return entry, first_code, first_index, per_len, order.astype(np.uint16)


def _long_codeword_loop(acc, first_code, first_index, per_len, sorted_syms):
    """symbol << 8 | length of a codeword longer than PRIMARY_BITS at the top of acc; 0 if none."""
    for ln in range(PRIMARY_BITS + 1, MAX_CODE_LENGTH + 1):
        k = np.int64(acc >> np.uint64(64 - ln)) - first_code[ln]
        if 0 <= k < per_len[ln]:
            j = first_index[ln] + k
            if j >= sorted_syms.shape[0]:
                return 0
            return (np.int64(sorted_syms[j]) << 8) | ln
    return 0


long_codeword = njit(cache=True)(_long_codeword_loop)


def _decode_loop(words, starts, ends, entry, first_code, first_index, per_len, sorted_syms,
                 out, used):
    """Decode len(out) symbols; symbol i from stream i % 4 = words[starts[r]:ends[r]].

    Each stream keeps a left-aligned 64-bit buffer ``acc`` (the next bit is bit 63) with
    ``nb`` >= 32 bits (>= any codeword) after a refill. Writes the bits each stream consumed
    into used (4,); returns 0, or -1 on an invalid codeword or a stream read past its end."""
    n = out.shape[0]
    acc = np.zeros(STREAMS, dtype=np.uint64)  # only for the tail; the main loop uses scalars
    nb = np.zeros(STREAMS, dtype=np.int64)
    pos = starts.copy()
    p0, p1, p2, p3 = pos[0], pos[1], pos[2], pos[3]
    a0 = a1 = a2 = a3 = np.uint64(0)
    n0 = n1 = n2 = n3 = 0
    for i in range(0, n - n % STREAMS, STREAMS):  # the four streams in lockstep
        if n0 < 32:
            if p0 >= ends[0]:
                return -1
            a0 |= np.uint64(words[p0]) << np.uint64(32 - n0)
            p0 += 1
            n0 += 32
        if n1 < 32:
            if p1 >= ends[1]:
                return -1
            a1 |= np.uint64(words[p1]) << np.uint64(32 - n1)
            p1 += 1
            n1 += 32
        if n2 < 32:
            if p2 >= ends[2]:
                return -1
            a2 |= np.uint64(words[p2]) << np.uint64(32 - n2)
            p2 += 1
            n2 += 32
        if n3 < 32:
            if p3 >= ends[3]:
                return -1
            a3 |= np.uint64(words[p3]) << np.uint64(32 - n3)
            p3 += 1
            n3 += 32
        e0, e1, e2, e3 = entry[a0 >> _SHIFT], entry[a1 >> _SHIFT], entry[a2 >> _SHIFT], \
            entry[a3 >> _SHIFT]
        if e0 & 0xFF == 0:
            e0 = long_codeword(a0, first_code, first_index, per_len, sorted_syms)
        if e1 & 0xFF == 0:
            e1 = long_codeword(a1, first_code, first_index, per_len, sorted_syms)
        if e2 & 0xFF == 0:
            e2 = long_codeword(a2, first_code, first_index, per_len, sorted_syms)
        if e3 & 0xFF == 0:
            e3 = long_codeword(a3, first_code, first_index, per_len, sorted_syms)
        l0, l1, l2, l3 = e0 & 0xFF, e1 & 0xFF, e2 & 0xFF, e3 & 0xFF
        if l0 == 0 or l1 == 0 or l2 == 0 or l3 == 0:
            return -1
        out[i], out[i + 1], out[i + 2], out[i + 3] = e0 >> 8, e1 >> 8, e2 >> 8, e3 >> 8
        a0, a1, a2, a3 = a0 << np.uint64(l0), a1 << np.uint64(l1), a2 << np.uint64(l2), \
            a3 << np.uint64(l3)
        n0, n1, n2, n3 = n0 - l0, n1 - l1, n2 - l2, n3 - l3
    acc[0], acc[1], acc[2], acc[3] = a0, a1, a2, a3
    nb[0], nb[1], nb[2], nb[3] = n0, n1, n2, n3
    pos[0], pos[1], pos[2], pos[3] = p0, p1, p2, p3
    for i in range(n - n % STREAMS, n):  # the last n % 4 symbols: streams 0, 1, 2 in turn
        r = i % STREAMS
        if nb[r] < 32:
            if pos[r] >= ends[r]:
                return -1
            acc[r] |= np.uint64(words[pos[r]]) << np.uint64(32 - nb[r])
            pos[r] += 1
            nb[r] += 32
        e = entry[acc[r] >> _SHIFT]
        if e & 0xFF == 0:
            e = long_codeword(acc[r], first_code, first_index, per_len, sorted_syms)
        if e & 0xFF == 0:
            return -1
        out[i] = e >> 8
        acc[r] = acc[r] << np.uint64(e & 0xFF)
        nb[r] -= e & 0xFF
    for r in range(STREAMS):
        used[r] = 32 * (pos[r] - starts[r]) - nb[r]
    return 0


decode_kernel = njit(cache=True)(_decode_loop)
