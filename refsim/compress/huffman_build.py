"""The code construction of ``huffman_code.py`` as plain loops, for the jitted version-2 coder.

The version-2 coder (``huffman_v2.py``) builds its code inside one Numba call, so that a call on
a thousand symbols costs microseconds rather than the dispatch of a dozen NumPy operations.
These loops compute exactly what the NumPy functions of ``huffman_code.py`` compute:

* ``huffman``: Huffman's algorithm (Proc. IRE 40(9), 1952) with two queues (van Leeuwen,
  ICALP 1976): leaves sorted by (count, symbol) in one queue, merged nodes in creation order in
  the other; each step takes the two lightest fronts, a leaf first on equal weight. Oracle:
  ``huffman_code.huffman_lengths_naive`` (a heap with the same order).
* ``optimal_lengths``: the code version 2 uses: Huffman's lengths when its longest codeword
  fits the limit, package-merge's otherwise (both optimal among codes within the limit).
* ``package_merge``: the code lengths of Larmore and Hirschberg's package-merge (J. ACM 37(3),
  1990) with refsim's tie rule (``huffman_code.py``, steps 1-4). Oracle:
  ``huffman_code.code_lengths_naive``.
* ``canonical``: RFC 1951 Sec. 3.2.2 canonical codewords. Oracle:
  ``huffman_code.canonical_codes_naive``.
* ``complete``: the prefix-code check of ``huffman_code.check_code_lengths`` (Kraft sum exactly 1,
  or one symbol of length 1).
* ``reverse_bits``: a codeword's bits in reverse order, as the LSB-first bit packing of
  version 2 needs (DEFLATE's convention, RFC 1951 Sec. 3.1.1).

Each is ``njit(cache=True)`` of the ``*_loop`` function above it, applied in one visible place;
with ``NUMBA_DISABLE_JIT=1`` they run as the Python they read as.

Package-merge builds lists(L), ..., list(1); list(l) = merge(leaves, packages of list(l + 1)).
Once two consecutive lists are equal, every list above them is equal too (the same
computation), so the forward pass stops there; this makes the cost O(m * depth) rather than
O(m * L) for m symbols whose code is depth bits deep.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["huffman", "optimal_lengths", "package_merge", "canonical", "complete",
           "reverse_bits"]


def _huffman_loop(counts, lengths):
    """Huffman code lengths of counts (A,) int64 >= 0 into lengths (A,) int64 (a single
    symbol gets 1); returns the longest length (0 if no symbol occurs)."""
    a = counts.shape[0]
    m = 0
    for s in range(a):
        lengths[s] = 0
        if counts[s] > 0:
            m += 1
    if m == 0:
        return 0
    syms = np.empty(m, np.int64)
    w = np.empty(m, np.int64)
    j = 0
    for s in range(a):
        if counts[s] > 0:
            syms[j] = s
            w[j] = counts[s]
            j += 1
    if m == 1:
        lengths[syms[0]] = 1
        return 1
    order = np.argsort(w, kind="mergesort")  # stable: (count, symbol)
    syms = syms[order]
    w = w[order]
    node_w = np.empty(m - 1, np.int64)  # merged nodes, in creation order (weights ascending)
    leaf_parent = np.empty(m, np.int64)
    node_parent = np.empty(m - 1, np.int64)
    i = 0  # front of the leaf queue
    k = 0  # front of the node queue
    for t in range(m - 1):  # create node t from the two lightest fronts
        total = 0
        for _ in range(2):
            if i < m and (k >= t or w[i] <= node_w[k]):
                total += w[i]
                leaf_parent[i] = t
                i += 1
            else:
                total += node_w[k]
                node_parent[k] = t
                k += 1
        node_w[t] = total
    depth = np.empty(m - 1, np.int64)  # node m - 2 is the root
    depth[m - 2] = 0
    for t in range(m - 3, -1, -1):
        depth[t] = depth[node_parent[t]] + 1
    longest = 0
    for r in range(m):
        ln = depth[leaf_parent[r]] + 1
        lengths[syms[r]] = ln
        longest = max(longest, ln)
    return longest


huffman = njit(cache=True)(_huffman_loop)


def _package_merge_loop(counts, max_length, lengths):
    """Code lengths of counts (A,) int64 with every length <= max_length, into lengths (A,)
    int64; returns m, the number of symbols with count > 0. The caller guarantees
    m <= 2**max_length and counts >= 0."""
    a = counts.shape[0]
    m = 0
    for s in range(a):
        lengths[s] = 0
        if counts[s] > 0:
            m += 1
    if m == 0:
        return 0
    syms = np.empty(m, np.int64)  # (m,) leaves: symbols with count > 0, ascending
    w = np.empty(m, np.int64)  # (m,) their counts
    j = 0
    for s in range(a):
        if counts[s] > 0:
            syms[j] = s
            w[j] = counts[s]
            j += 1
    if m == 1:
        lengths[syms[0]] = 1
        return 1
    order = np.argsort(w, kind="mergesort")  # stable: ties stay in symbol order
    syms = syms[order]
    w = w[order]
    size = 2 * m  # a list holds m leaves and at most m - 1 packages
    cur = np.empty(size, np.int64)  # (size,) weights of the current list
    nxt = np.empty(size, np.int64)
    before = np.empty((max_length, size + 1), np.int64)  # before[l, t]: leaves in items < t
    before[0, 0] = 0
    for t in range(m):  # list(max_length) = the leaves
        cur[t] = w[t]
        before[0, t + 1] = t + 1
    ncur = m
    last = max_length - 1  # the last list computed; the lists above it equal it
    for lev in range(1, max_length):  # list(max_length - lev)
        npk = ncur // 2
        i = 0
        k = 0
        t = 0
        same = ncur == m + npk
        before[lev, 0] = 0
        while i < m or k < npk:  # merge by weight; a leaf first on equal weight
            if k == npk or (i < m and w[i] <= cur[2 * k] + cur[2 * k + 1]):
                v = w[i]
                i += 1
                leaf = 1
            else:
                v = cur[2 * k] + cur[2 * k + 1]
                k += 1
                leaf = 0
            if same and (cur[t] != v or before[lev - 1, t + 1] - before[lev - 1, t] != leaf):
                same = False
            nxt[t] = v
            before[lev, t + 1] = before[lev, t] + leaf
            t += 1
        if same:
            last = lev - 1
            break
        cur, nxt = nxt, cur
        ncur = t
    take = 2 * m - 2  # items selected in list(1)
    for lev in range(max_length - 1, -1, -1):  # list(1) .. list(max_length)
        j = before[min(lev, last), take]  # leaves among the selected items: the first j
        for t in range(j):
            lengths[syms[t]] += 1
        take = 2 * (take - j)  # a selected package selects the two items it pairs
    return m


package_merge = njit(cache=True)(_package_merge_loop)


def _optimal_lengths_loop(counts, max_length, lengths):
    """Huffman's code lengths if none exceeds max_length, else package-merge's (the caller
    guarantees that the symbols fit: m <= 2**max_length); into lengths, like huffman."""
    if huffman(counts, lengths) > max_length:
        package_merge(counts, max_length, lengths)


optimal_lengths = njit(cache=True)(_optimal_lengths_loop)


def _canonical_loop(lengths, codes):
    """Canonical codewords (RFC 1951 3.2.2) of lengths (A,) int64 (<= 24) into codes (A,)
    int64 (0 for absent symbols)."""
    bl_count = np.zeros(25, np.int64)
    for s in range(lengths.shape[0]):
        bl_count[lengths[s]] += 1
    next_code = np.zeros(25, np.int64)
    code = 0
    for bits in range(1, 25):
        code = (code + (bl_count[bits - 1] if bits > 1 else 0)) << 1
        next_code[bits] = code
    for s in range(lengths.shape[0]):
        ln = lengths[s]
        codes[s] = 0
        if ln > 0:
            codes[s] = next_code[ln]
            next_code[ln] += 1


canonical = njit(cache=True)(_canonical_loop)


def _complete_loop(lengths, max_length):
    """True iff lengths (A,) int64 (0 = absent) are all <= max_length and form a complete
    prefix code (Kraft sum exactly 1), or exactly one symbol has length 1."""
    m = 0
    kraft = 0  # sum of 2**(max_length - len): exact in int64 for max_length <= 24
    for s in range(lengths.shape[0]):
        ln = lengths[s]
        if ln < 0 or ln > max_length:
            return False
        if ln > 0:
            m += 1
            kraft += np.int64(1) << (max_length - ln)
    if m == 1:
        return kraft == np.int64(1) << (max_length - 1)
    return m > 1 and kraft == np.int64(1) << max_length


complete = njit(cache=True)(_complete_loop)


def _reverse_bits_loop(code, length):
    """The low ``length`` bits of ``code`` in reverse order (int64)."""
    r = 0
    for _ in range(length):
        r = (r << 1) | (code & 1)
        code >>= 1
    return r


reverse_bits = njit(cache=True)(_reverse_bits_loop)
