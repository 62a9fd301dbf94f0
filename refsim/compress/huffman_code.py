"""Length-limited optimal prefix codes (package-merge) and canonical codewords.

The reference for the code construction behind ``huffman.py``:

* Code lengths: Larmore and Hirschberg's package-merge (J. ACM 37(3), 1990,
  doi:10.1145/79147.79150), which returns an optimal prefix code (minimum sum count_s * len_s)
  among codes with every length <= ``max_length``. When Huffman's (Proc. IRE 40(9), 1952) own
  code fits in ``max_length`` bits this cost equals Huffman's, so H <= L < H + 1 holds.
* Codewords: the canonical code of DEFLATE (RFC 1951, Sec. 3.2.2): symbols sorted by
  (length, symbol value) get consecutive codewords, each length's first codeword being
  (previous first codeword + previous count) << 1.

Deterministic tie rule (so two conformant encoders emit identical bytes):

1. Leaves are the symbols with count > 0, sorted by (count ascending, symbol ascending).
2. Level lists, for level = max_length down to 1: list(max_length) = leaves; list(level) =
   merge(leaves, packages of list(level + 1)), where packages pair items (0, 1), (2, 3), ... of
   list(level + 1) (a last odd item is dropped) and weigh the sum of the pair. The merge is by
   weight ascending; on equal weights **leaves come before packages**, each keeping its own order.
3. Select the first 2m - 2 items of list(1) (m = number of leaves); a package selected at level
   l selects the items it pairs at level l + 1. len_s = number of levels at which leaf s is
   selected. As each list holds the leaves in order, the selected leaves at a level are its first
   j leaves, so only the counts j per level are needed (``code_lengths``).
4. A single distinct symbol gets length 1 (codeword ``0``), as in DEFLATE; no symbols: no code.

``code_lengths_naive`` runs steps 2-3 with explicit item lists; it is the oracle of
``code_lengths`` (NumPy, counts only).
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = [
    "MAX_CODE_LENGTH",
    "code_lengths",
    "code_lengths_naive",
    "huffman_lengths_naive",
    "optimal_lengths_naive",
    "canonical_codes",
    "canonical_codes_naive",
    "check_code_lengths",
    "entropy_bits",
]

MAX_CODE_LENGTH = 24  # longest codeword the format allows; 2**24 > 2**16 symbols


def _leaves(counts: object, max_length: int):
    c = np.asarray(counts)
    if c.ndim != 1 or c.dtype.kind not in "iu":
        raise TypeError("counts must be a 1-D integer array")
    if c.size > 2**16:
        raise ValueError(f"alphabet has {c.size} symbols, at most 2**16 allowed")
    if c.size and int(c.min()) < 0:
        raise ValueError("counts must be >= 0")
    if not 1 <= max_length <= MAX_CODE_LENGTH:
        raise ValueError(f"max_length must be in 1..{MAX_CODE_LENGTH}, got {max_length}")
    present = np.flatnonzero(c)  # (m,) symbols, ascending
    w = c[present].astype(np.int64)  # (m,)
    order = np.lexsort((present, w))  # by count, then symbol
    if present.size > 2**max_length:
        raise ValueError(f"{present.size} symbols cannot have codes of <= {max_length} bits")
    return c.size, present[order], w[order]


def code_lengths_naive(counts, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Oracle of :func:`code_lengths`: package-merge with explicit item lists (sets of leaves).

    counts : (A,) int, count per symbol. Returns (A,) uint8 code lengths (0 for absent symbols).
    """
    a, syms, w = _leaves(counts, max_length)
    lengths = np.zeros(a, dtype=np.uint8)  # (A,)
    m = syms.size
    if m == 1:
        lengths[syms[0]] = 1
    if m <= 1:
        return lengths
    leaves = [(int(wi), (int(s),)) for wi, s in zip(w, syms)]  # (weight, leaves inside)
    current = list(leaves)  # list(max_length)
    for _level in range(max_length - 1, 0, -1):
        packages = [(current[k][0] + current[k + 1][0], current[k][1] + current[k + 1][1])
                    for k in range(0, len(current) - 1, 2)]
        merged, i, j = [], 0, 0
        while i < len(leaves) or j < len(packages):  # leaves first on equal weight
            if j == len(packages) or (i < len(leaves) and leaves[i][0] <= packages[j][0]):
                merged.append(leaves[i])
                i += 1
            else:
                merged.append(packages[j])
                j += 1
        current = merged
    for _weight, inside in current[: 2 * m - 2]:
        for s in inside:
            lengths[s] += 1
    return lengths


def code_lengths(counts, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal code lengths with every length <= ``max_length`` (package-merge, counts only).

    counts : (A,) int, A <= 2**16. Returns (A,) uint8, 0 for symbols with count 0.
    Tie rule in the module docstring. Oracle: :func:`code_lengths_naive`.

    >>> code_lengths(np.array([5, 1, 1, 2, 0])).tolist()
    [1, 3, 3, 2, 0]
    """
    a, syms, w = _leaves(counts, max_length)
    lengths = np.zeros(a, dtype=np.uint8)  # (A,)
    m = syms.size
    if m == 1:
        lengths[syms[0]] = 1
    if m <= 1:
        return lengths
    # Forward: build each level's merged list as (weights, is_leaf) arrays.
    lists_is_leaf = []
    cur_w = w  # list(max_length): the leaves
    lists_is_leaf.append(np.ones(m, dtype=bool))
    for _level in range(max_length - 1, 0, -1):
        npk = cur_w.size // 2
        pk = cur_w[0:2 * npk:2] + cur_w[1:2 * npk:2]  # (npk,)
        allw = np.concatenate([w, pk])  # (m + npk,) leaves first: a stable sort keeps them first
        order = np.argsort(allw, kind="stable")  # (m + npk,)
        cur_w = allw[order]
        lists_is_leaf.append(order < m)
    # Backward: take 2m - 2 items at level 1, 2 * (packages taken) at the level below, ...
    take = 2 * m - 2
    for is_leaf in reversed(lists_is_leaf):  # level 1 .. max_length
        j = int(np.count_nonzero(is_leaf[:take]))  # leaves among the selected prefix
        lengths[syms[:j]] += 1
        take = 2 * (take - j)
    return lengths


def huffman_lengths_naive(counts) -> np.ndarray:
    """Huffman's code lengths (no limit) with a heap: the oracle of ``huffman_build.huffman``.

    Heap keys (weight, 0, rank) for leaves, rank = position in the (count, symbol) order, and
    (weight, 1, creation index) for merged nodes: the two-queue order (a leaf first on equal
    weight). A single symbol gets length 1. Returns (A,) uint8 (0 for absent symbols; lengths
    above 255 cannot occur for A <= 2**16).
    """
    a, syms, w = _leaves(counts, MAX_CODE_LENGTH)
    lengths = np.zeros(a, dtype=np.uint8)  # (A,)
    if syms.size == 1:
        lengths[syms[0]] = 1
    if syms.size <= 1:
        return lengths
    heap = [(int(wi), 0, r) for r, wi in enumerate(w)]
    parent = {}  # (kind, index) -> node index
    for t in range(syms.size - 1):
        w1, k1, i1 = heapq.heappop(heap)
        w2, k2, i2 = heapq.heappop(heap)
        parent[(k1, i1)] = parent[(k2, i2)] = t
        heapq.heappush(heap, (w1 + w2, 1, t))
    for r, s in enumerate(syms):
        depth, node = 0, (0, r)
        while node in parent:
            node, depth = (1, parent[node]), depth + 1
        lengths[s] = depth
    return lengths


def optimal_lengths_naive(counts, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """The code of version 2: Huffman's lengths when the longest fits ``max_length``, else
    package-merge's (:func:`code_lengths_naive`). Oracle of ``huffman_build.optimal_lengths``.

    On every input the tests draw (ties included) Huffman's lengths with this tie rule equal
    package-merge's whenever they fit, so versions 1 and 2 give the same code lengths.
    """
    lengths = huffman_lengths_naive(counts)
    if int(lengths.max(initial=0)) > max_length:
        return code_lengths_naive(counts, max_length)
    return lengths


def check_code_lengths(lengths: np.ndarray) -> None:
    """ValueError unless ``lengths`` (uint8 per symbol, 0 = absent) is a complete prefix code
    (Kraft sum exactly 1) with lengths <= MAX_CODE_LENGTH, or one symbol of length 1, or empty."""
    ln = np.asarray(lengths)
    used = ln[ln > 0].astype(np.int64)  # (m,)
    if used.size and int(used.max()) > MAX_CODE_LENGTH:
        raise ValueError(f"code length {int(used.max())} exceeds {MAX_CODE_LENGTH}")
    if used.size == 0:
        return
    if used.size == 1:
        if int(used[0]) != 1:
            raise ValueError("a single-symbol code must have length 1")
        return
    kraft = int(np.sum(np.int64(1) << (MAX_CODE_LENGTH - used)))  # exact integer Kraft sum
    if kraft != 1 << MAX_CODE_LENGTH:
        raise ValueError(f"code lengths are not a complete prefix code (Kraft sum "
                         f"{kraft / 2**MAX_CODE_LENGTH!r} != 1)")


def _next_codes(bl_count: np.ndarray) -> np.ndarray:
    """RFC 1951 3.2.2 step 2: the first codeword of each length, (MAX_CODE_LENGTH + 1,) int64."""
    next_code = np.zeros(MAX_CODE_LENGTH + 1, dtype=np.int64)
    code = 0
    for bits in range(1, MAX_CODE_LENGTH + 1):
        code = (code + int(bl_count[bits - 1] if bits > 1 else 0)) << 1
        next_code[bits] = code
    return next_code


def canonical_codes_naive(lengths) -> np.ndarray:
    """Oracle of :func:`canonical_codes`: RFC 1951 3.2.2 step 3, one symbol at a time."""
    ln = np.asarray(lengths).astype(np.int64)  # (A,)
    codes = np.zeros(ln.size, dtype=np.uint32)  # (A,)
    next_code = _next_codes(np.bincount(ln[ln > 0], minlength=MAX_CODE_LENGTH + 1))
    for s in np.flatnonzero(ln):  # ascending symbol value within each length
        codes[s] = next_code[ln[s]]
        next_code[ln[s]] += 1
    return codes


def canonical_codes(lengths) -> np.ndarray:
    """Canonical codewords (RFC 1951 3.2.2) for (A,) code lengths -> (A,) uint32 (0 if absent).

    Symbols sorted by (length, symbol) get consecutive codewords from each length's first
    codeword. Oracle: :func:`canonical_codes_naive`.

    >>> canonical_codes(np.array([1, 3, 3, 2, 0], np.uint8)).tolist()  # 0, 110, 111, 10
    [0, 6, 7, 2, 0]
    """
    ln = np.asarray(lengths).astype(np.int64)  # (A,)
    bl_count = np.bincount(ln[ln > 0], minlength=MAX_CODE_LENGTH + 1)  # (MAX+1,)
    order = np.lexsort((np.arange(ln.size), ln))  # (A,) by (length, symbol)
    order = order[ln[order] > 0]  # (m,)
    first = np.cumsum(bl_count) - bl_count  # (MAX+1,) rank of each length's first symbol
    rank = np.arange(order.size) - first[ln[order]]  # (m,) rank within its length
    codes = np.zeros(ln.size, dtype=np.uint32)  # (A,)
    codes[order] = _next_codes(bl_count)[ln[order]] + rank
    return codes


def entropy_bits(counts) -> float:
    """Shannon entropy H = -sum p log2 p of a histogram, in bits per symbol (0.0 if empty)."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]  # (m,) 0 log 0 = 0, without a warning
    if c.size == 0:
        return 0.0
    p = c / c.sum()  # (m,)
    return float(-(p * np.log2(p)).sum())
