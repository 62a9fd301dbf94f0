"""The code-length table of a version-2 Huffman stream: run lengths, deltas, then a Huffman code.

A canonical Huffman code is defined by its code lengths (RFC 1951, Sec. 3.2.2), so a stream
sends the lengths l[0..A-1] of the symbols 0..A-1 (0: the symbol does not occur). Version 1
spends a byte on each; version 2 codes them as DEFLATE does its code lengths (RFC 1951,
Sec. 3.2.7: literal lengths, run lengths, then a Huffman code of those tokens), with deltas
instead of literal lengths, since the lengths of quantized levels change slowly with the level:

* Tokens (26): ``LEN(d)``, d = 0..23: the next length is v = ((p - 1 + d) mod 24) + 1, where p
  is the last nonzero length so far (p = 1 before the first); ``ZERO`` (24): the next length is
  0; ``REPEAT`` (25) followed by the Elias-gamma code of r >= 1: the last length written
  repeats r more times.
* Encoder rule (normative for identical bytes): each maximal run of L equal lengths v is the
  token of v (``ZERO`` or ``LEN((v - p) mod 24)``), then, if L >= 2, ``REPEAT`` with r = L - 1.
* The tokens are coded with the code of their counts limited to 7 bits that version 2 uses for
  symbols (``huffman_code.optimal_lengths_naive``: Huffman's, or package-merge's when deeper
  than 7; one distinct token: length 1), canonical codewords. That
  code is sent as K - 1 in 5 bits, then the 3-bit lengths of the tokens ``ORDER[0..K-1]`` (the
  others have none); K is the smallest count that covers every used token.

Bits (as in the whole version-2 stream): a sequence b0 b1 ... packed LSB first (bit j is bit
j mod 8 of byte j div 8); each field is written most significant bit first, a codeword first
bit first; Elias gamma of r: floor(log2 r) zeros, then r's floor(log2 r) + 1 bits. The table
ends at the last token's last bit, then zero bits to a byte boundary. A permutation of all
65,536 uint16 symbols (every length 16) costs 101 bits; docs/formats.md, Sec. 2.

``table_bits_naive`` / ``read_table_naive`` (strings of '0'/'1') are the oracles of the jitted
``write_table`` / ``read_table``. The readers check every index against the end of the input.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from refsim.compress.huffman_build import canonical, complete, optimal_lengths, reverse_bits
from refsim.compress.huffman_code import canonical_codes_naive, optimal_lengths_naive

__all__ = ["TOKENS", "ZERO", "REPEAT", "ORDER", "TOKEN_MAX_LENGTH", "TABLE_ERRORS",
           "table_tokens_naive", "table_bits_naive", "read_table_naive", "write_table",
           "read_table", "table_bound_bytes"]

TOKENS = 26
ZERO = 24
REPEAT = 25
TOKEN_MAX_LENGTH = 7
ORDER = np.array([REPEAT, ZERO, 0] + [d for k in range(1, 12) for d in (k, 24 - k)] + [12],
                 np.int64)  # (26,) the order in which token code lengths are sent
_RANK = np.argsort(ORDER)  # (26,) position of each token in ORDER
# Negative statuses of read_table and what they mean.
TABLE_ERRORS = {
    -1: "truncated code-length table",
    -2: "code-length table: K - 1 > 25",
    -3: "code-length table: the token code lengths are not a prefix code",
    -4: "code-length table: invalid token codeword",
    -5: "code-length table: REPEAT before any length",
    -6: "code-length table: a run goes past the table",
    -7: "code-length table: its last symbol has no code",
    -8: "code-length table: nonzero padding bits",
}


def table_bound_bytes(a: int) -> int:
    """An upper bound on the bytes of the table of A lengths (2A tokens of <= 7 + 33 bits)."""
    return (5 + 3 * TOKENS + 2 * a * 40) // 8 + 2


# ---------------------------------------------------------------------------- the oracle


def table_tokens_naive(lengths) -> list:
    """[(token, r)] of lengths (A,) (r: the run of a REPEAT, 0 otherwise); A >= 1."""
    ln = [int(v) for v in np.asarray(lengths)]
    tokens, p, i = [], 1, 0
    while i < len(ln):
        v, j = ln[i], i + 1
        while j < len(ln) and ln[j] == v:
            j += 1
        tokens.append((ZERO, 0) if v == 0 else ((v - p) % 24, 0))
        p = v if v else p
        if j - i >= 2:
            tokens.append((REPEAT, j - i - 1))
        i = j
    return tokens


def _gamma(r: int) -> str:
    return "0" * (r.bit_length() - 1) + format(r, "b")


def table_bits_naive(lengths) -> str:
    """The table of lengths (A,) as a string of '0'/'1' (before the padding to a byte).

    Oracle of :func:`write_table`. The token code comes from ``optimal_lengths_naive``.
    """
    tokens = table_tokens_naive(lengths)
    counts = np.bincount([t for t, _ in tokens], minlength=TOKENS)  # (26,)
    lam = optimal_lengths_naive(counts, TOKEN_MAX_LENGTH).astype(np.int64)  # (26,)
    codes = canonical_codes_naive(lam)
    k = 1 + max(int(_RANK[t]) for t in np.flatnonzero(lam))
    bits = [format(k - 1, "05b")] + [format(int(lam[t]), "03b") for t in ORDER[:k]]
    for t, r in tokens:
        bits.append(format(int(codes[t]), f"0{int(lam[t])}b"))
        if t == REPEAT:
            bits.append(_gamma(r))
    return "".join(bits)


def read_table_naive(bits: str, a: int) -> tuple[np.ndarray, int]:
    """Oracle of :func:`read_table`: (lengths (A,) int64, bits consumed with the padding)
    from a string of '0'/'1' that starts at a byte boundary; ValueError with the message of
    ``TABLE_ERRORS`` on a malformed table."""
    def take(pos, k):
        if pos + k > len(bits):
            raise ValueError(TABLE_ERRORS[-1])
        return int(bits[pos:pos + k] or "0", 2), pos + k

    km1, pos = take(0, 5)
    if km1 > 25:
        raise ValueError(TABLE_ERRORS[-2])
    lam = np.zeros(TOKENS, np.int64)
    for t in ORDER[:km1 + 1]:
        lam[t], pos = take(pos, 3)
    used = [int(v) for v in lam if v > 0]
    if not (used == [1] or (len(used) > 1 and sum(1 << (7 - v) for v in used) == 128)):
        raise ValueError(TABLE_ERRORS[-3])
    codes = canonical_codes_naive(lam)
    words = {(int(lam[t]), int(codes[t])): int(t) for t in np.flatnonzero(lam)}
    out, p = [], 1
    while len(out) < a:
        code, ln = 0, 0
        while (ln, code) not in words:
            if ln == TOKEN_MAX_LENGTH:
                raise ValueError(TABLE_ERRORS[-4])
            bit, pos = take(pos, 1)
            code, ln = 2 * code + bit, ln + 1
        t = words[(ln, code)]
        if t == REPEAT:
            if not out:
                raise ValueError(TABLE_ERRORS[-5])
            zeros = 0
            while True:
                bit, pos = take(pos, 1)
                if bit:
                    break
                zeros += 1
                if zeros > 16:
                    raise ValueError(TABLE_ERRORS[-6])
            rest, pos = take(pos, zeros)
            r = (1 << zeros) | rest
            if len(out) + r > a:
                raise ValueError(TABLE_ERRORS[-6])
            out += [out[-1]] * r
        elif t == ZERO:
            out.append(0)
        else:
            p = (p - 1 + t) % 24 + 1
            out.append(p)
    if out[-1] == 0:
        raise ValueError(TABLE_ERRORS[-7])
    pad, end = take(pos, (-pos) % 8)
    if pad:
        raise ValueError(TABLE_ERRORS[-8])
    return np.array(out, np.int64), end


# ---------------------------------------------------------------------------- the jitted loops


def _put_loop(out, st, value, k):
    """Write the k <= 32 low bits of value, most significant first, to out (uint8) with the
    bit writer st = [pending bits, their count, next byte] (uint64; LSB-first packing)."""
    st[0] |= np.uint64(reverse_bits(value, k)) << st[1]
    st[1] += np.uint64(k)
    while st[1] >= np.uint64(8):
        out[st[2]] = np.uint8(st[0] & np.uint64(255))
        st[0] >>= np.uint64(8)
        st[1] -= np.uint64(8)
        st[2] += np.uint64(1)


_put = njit(cache=True)(_put_loop)


def _write_table_loop(lengths, out, pos):
    """Write the table of lengths (A,) int64 (A >= 1, last one > 0) into out (uint8) from byte
    pos; returns the byte position after it (the last byte zero-padded). out must have
    >= table_bound_bytes(A) bytes from pos."""
    a = lengths.shape[0]
    toks = np.empty(2 * a, np.int64)  # (<= 2A,) tokens, and the run after a REPEAT
    runs = np.zeros(2 * a, np.int64)
    counts = np.zeros(TOKENS, np.int64)
    nt = 0
    p = 1
    i = 0
    while i < a:
        v = lengths[i]
        j = i + 1
        while j < a and lengths[j] == v:
            j += 1
        t = ZERO if v == 0 else (v - p) % 24
        toks[nt] = t
        counts[t] += 1
        nt += 1
        if v != 0:
            p = v
        if j - i >= 2:
            toks[nt] = REPEAT
            runs[nt] = j - i - 1
            counts[REPEAT] += 1
            nt += 1
        i = j
    lam = np.zeros(TOKENS, np.int64)
    optimal_lengths(counts, TOKEN_MAX_LENGTH, lam)
    codes = np.zeros(TOKENS, np.int64)
    canonical(lam, codes)
    k = 0
    for r in range(TOKENS):
        if lam[ORDER[r]] > 0:
            k = r + 1
    st = np.zeros(3, np.uint64)
    st[2] = pos
    _put(out, st, k - 1, 5)
    for r in range(k):
        _put(out, st, lam[ORDER[r]], 3)
    for q in range(nt):
        t = toks[q]
        _put(out, st, codes[t], lam[t])
        if t == REPEAT:
            r = runs[q]
            nbits = 0
            while (r >> (nbits + 1)) > 0:
                nbits += 1
            _put(out, st, 0, nbits)
            _put(out, st, r, nbits + 1)
    if st[1] > np.uint64(0):
        out[st[2]] = np.uint8(st[0])
        st[2] += np.uint64(1)
    return np.int64(st[2])


write_table = njit(cache=True)(_write_table_loop)


def _get_loop(buf, pos, end, k):
    """The k bits at bit pos of buf (LSB-first packing), first bit most significant; -1 if
    they pass the bit limit ``end``."""
    if pos + k > end:
        return -1
    v = 0
    for i in range(pos, pos + k):
        v = (v << 1) | ((np.int64(buf[i >> 3]) >> (i & 7)) & 1)
    return v


_get = njit(cache=True)(_get_loop)


def _read_table_loop(buf, pos, end, lengths):
    """Read the table of A = lengths.shape[0] lengths from bit pos of buf (uint8) without
    passing bit ``end``, into lengths (A,) int64; returns the bit position after the
    padding, or a negative status of ``TABLE_ERRORS``."""
    a = lengths.shape[0]
    km1 = _get(buf, pos, end, 5)
    if km1 < 0:
        return -1
    if km1 > 25:
        return -2
    pos += 5
    lam = np.zeros(TOKENS, np.int64)
    for r in range(km1 + 1):
        v = _get(buf, pos, end, 3)
        if v < 0:
            return -1
        lam[ORDER[r]] = v
        pos += 3
    if not complete(lam, TOKEN_MAX_LENGTH):
        return -3
    codes = np.zeros(TOKENS, np.int64)
    canonical(lam, codes)
    # decode[len * 128 + code] = token + 1 (0: no token of that length and code)
    dec = np.zeros((TOKEN_MAX_LENGTH + 1) * 128, np.int64)
    for t in range(TOKENS):
        if lam[t] > 0:
            dec[lam[t] * 128 + codes[t]] = t + 1
    p = 1
    i = 0
    while i < a:
        code = 0
        t = -1
        for ln in range(1, TOKEN_MAX_LENGTH + 1):
            bit = _get(buf, pos, end, 1)
            if bit < 0:
                return -1
            pos += 1
            code = 2 * code + bit
            if dec[ln * 128 + code] > 0:
                t = dec[ln * 128 + code] - 1
                break
        if t < 0:
            return -4
        if t == REPEAT:
            if i == 0:
                return -5
            zeros = 0
            while True:
                bit = _get(buf, pos, end, 1)
                if bit < 0:
                    return -1
                pos += 1
                if bit == 1:
                    break
                zeros += 1
                if zeros > 16:
                    return -6
            rest = _get(buf, pos, end, zeros)
            if rest < 0:
                return -1
            pos += zeros
            r = (np.int64(1) << zeros) | rest
            if i + r > a:
                return -6
            v = lengths[i - 1]
            for j in range(i, i + r):
                lengths[j] = v
            i += r
        elif t == ZERO:
            lengths[i] = 0
            i += 1
        else:
            p = (p - 1 + t) % 24 + 1
            lengths[i] = p
            i += 1
    if lengths[a - 1] == 0:
        return -7
    while pos & 7:
        bit = _get(buf, pos, end, 1)
        if bit < 0:
            return -1
        if bit:
            return -8
        pos += 1
    return pos


read_table = njit(cache=True)(_read_table_loop)
