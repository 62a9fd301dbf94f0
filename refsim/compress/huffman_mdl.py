"""Code lengths by minimum description length: ``huffman.encode(x, lengths="mdl")``.

The default version-2 encoder (docs/formats.md, Sec. 2.1) gives each symbol s its own optimal
length l_s. Its stream costs the code-length table T(l) (Sec. 2.2) plus the payload
sum_r ceil(sum_{i in stream r} l_{x_i} / 8) bytes. When n is small against the alphabet A
(n = 10 A: ten samples per value) most counts are small and noisy, neighbouring lengths differ
at random, and T is 1-6% of the payload. Rissanen's two-part code (J. Rissanen, "Modeling by
shortest data description", Automatica 14, 1978) says to pick the model, here the lengths,
that makes table + payload shortest. This module tries three kinds of code and keeps the one
whose whole stream is fewest bytes, counted exactly (ties: the earlier candidate):

1. the default lengths (so "mdl" is never longer than the default stream);
2. **uniform blocks**, for w = 2, 4, ... up to 2^ceil(log2 A) while A' = w ceil(A / w) fits
   the symbol width: block b = symbols [b w, (b + 1) w) with count C_b = sum of its counts;
   the blocks get optimal lengths L_b of the C_b (limit 24 - log2 w; 0 when one block
   occurs), and every symbol of an occurring block the length L_b + log2 w;
3. a **dyadic partition**: aligned blocks [j 2^k, (j + 1) 2^k) of any sizes, chosen by pruning
   the binary tree over the alphabet padded to 2^K (K = ceil(log2 A)) bottom-up with ideal
   costs: a block of count C and size 2^k costs C (log2(n / C) + k) payload bits (0 when
   C = 0) and 4 bits per table token (its LEN or ZERO token; for k > 0 a REPEAT token and its
   Elias-gamma code of 2^k - 1, 2k - 1 bits, plus 2 bits of slack); a node is one block when
   that is no dearer than its two children. Lengths as in 2, with the limit 24 - max k.

A block of 2^k symbols at length L_b + k adds 2^-L_b to the Kraft sum, so every candidate is
a complete prefix code and any version-2 decoder reads the stream unchanged; only the encoder
rule differs (these streams are not the default's bytes). Symbols that do not occur get a
codeword when their block occurs (the price of a shorter table).

``mdl_lengths`` (the kernels of ``huffman_build`` and ``huffman_table``) and
``mdl_lengths_naive`` (the oracles ``optimal_lengths_naive`` and ``table_bits_naive``, and a
recursive tree) return the same lengths; both take the ideal costs of item 3 from
:func:`leaf_costs`, so their float comparisons see the same numbers.
"""

from __future__ import annotations

import numpy as np

from refsim.compress.huffman_build import optimal_lengths
from refsim.compress.huffman_code import optimal_lengths_naive
from refsim.compress.huffman_table import table_bits_naive, table_bound_bytes, write_table
from refsim.compress.huffman_v2_bits import MAX_LEN, STREAMS, segment, varint_size

__all__ = ["TOKEN_BITS", "stream_counts", "leaf_costs", "mdl_lengths", "mdl_lengths_naive"]

TOKEN_BITS = 4.0  # the dyadic pruning's estimate of one table token, in bits


def stream_counts(a: np.ndarray) -> np.ndarray:
    """counts (4, 2^(8 width)) int64: the histogram of each of the four streams of a (n,)
    uint8/uint16 (stream r: symbols r S .. (r + 1) S - 1, S = 2 ceil(n / 8))."""
    seg, alphabet = int(segment(a.size)), 1 << (8 * a.itemsize)
    return np.stack([np.bincount(a[r * seg:(r + 1) * seg], minlength=alphabet)
                     for r in range(STREAMS)]).astype(np.int64)


def leaf_costs(counts: np.ndarray, k: int, n: int) -> np.ndarray:
    """Ideal bits (m,) float64 of blocks of 2^k symbols with these counts (m,): the leaf costs
    of the dyadic pruning (candidate 3 of the module docstring; docs/formats.md Sec. 2.1)."""
    c = counts.astype(np.float64)
    payload = np.zeros_like(c)
    nz = counts > 0
    payload[nz] = c[nz] * (np.log2(n / c[nz]) + k)
    return payload + (TOKEN_BITS + (TOKEN_BITS + 2 * k + 1 if k else 0.0))


def _stream_bytes(lengths: np.ndarray, counts4: np.ndarray, table_bytes: int) -> int:
    """Bytes after the header's n of a stream coded with lengths (A',): A', the table, the three
    stream sizes and the four streams."""
    bits = counts4[:, :lengths.size] @ lengths  # (4,)
    sizes = (bits + 7) // 8
    return (int(varint_size(lengths.size)) + table_bytes + int(sizes.sum())
            + sum(int(varint_size(int(s))) for s in sizes[:STREAMS - 1]))


def _candidates(counts: np.ndarray, alphabet: int, dyadic_blocks, block_lengths) -> list:
    """Candidates 2 and 3 as a list of lengths arrays, in order (shared by both versions)."""
    a = counts.size
    out = []
    top = max(0, (a - 1).bit_length())  # K
    for k in range(1, top + 1):  # uniform blocks of w = 2^k
        nb = -(-a // (1 << k))
        if nb << k > alphabet:
            break
        out.append(_from_blocks(np.arange(nb, dtype=np.int64) << k, np.full(nb, k, np.int64),
                                _padded(counts, nb << k), block_lengths))
    if (1 << top) <= alphabet:
        padded = _padded(counts, 1 << top)
        out.append(_from_blocks(*dyadic_blocks(padded), padded, block_lengths))
    return [c for c in out if c is not None]


def _padded(counts: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size, np.int64)
    out[:counts.size] = counts
    return out


def _from_blocks(starts: np.ndarray, ks: np.ndarray, padded: np.ndarray,
                 block_lengths) -> np.ndarray | None:
    """Symbol lengths (A',) of the blocks [starts[b], starts[b] + 2^ks[b]) (ascending, covering
    padded), A' ending at the last codeword; None when the code degenerates to one symbol of
    length 0, or when no code of the blocks fits 24 bits."""
    bc = np.add.reduceat(padded, starts)  # (blocks,) their counts
    occurring = np.flatnonzero(bc)
    if occurring.size == 1:
        if ks[occurring[0]] == 0:
            return None  # a single symbol: the default's one-symbol code
        lb = np.zeros(bc.size, np.int64)  # one occurring block of 2^k: a flat code of k bits
    else:
        limit = MAX_LEN - int(ks.max())
        if occurring.size > 1 << limit:
            return None  # no code of these blocks fits the limit (a dyadic partition only)
        lb = block_lengths(bc, limit)
    lengths = np.repeat(np.where(bc > 0, lb + ks, 0), np.int64(1) << ks)  # (padded size,)
    return lengths[:int(np.flatnonzero(lengths)[-1]) + 1]


# ------------------------------------------------------------------------------ fast path


def _lengths_fast(counts: np.ndarray, limit: int) -> np.ndarray:
    out = np.zeros(counts.size, np.int64)
    optimal_lengths(counts.astype(np.int64), limit, out)
    return out


def _dyadic_fast(padded: np.ndarray):
    """The pruned partition (starts, ks) by levels of arrays: costs bottom-up, blocks top-down."""
    n = int(padded.sum())
    top = padded.size.bit_length() - 1
    best = leaf_costs(padded, 0, n)
    sums, leaf = padded, [np.ones(padded.size, bool)]
    for k in range(1, top + 1):
        sums = sums.reshape(-1, 2).sum(axis=1)
        whole = leaf_costs(sums, k, n)
        split = best[0::2] + best[1::2]
        leaf.append(whole <= split)
        best = np.where(leaf[-1], whole, split)
    starts, ks, covered = [], [], np.zeros(1, bool)
    for k in range(top, -1, -1):
        chosen = leaf[k] & ~covered
        starts.append(np.flatnonzero(chosen).astype(np.int64) << k)
        ks.append(np.full(starts[-1].size, k, np.int64))
        if k:
            covered = np.repeat(covered | chosen, 2)
    starts, ks = np.concatenate(starts), np.concatenate(ks)
    order = np.argsort(starts)
    return starts[order], ks[order]


def mdl_lengths(a: np.ndarray) -> np.ndarray:
    """The code lengths (A',) int64 of the candidate with the shortest version-2 stream of a
    (n >= 1,) uint8/uint16. Oracle: :func:`mdl_lengths_naive`."""
    counts4 = stream_counts(a)
    counts = counts4.sum(axis=0)
    size = int(np.flatnonzero(counts)[-1]) + 1
    counts = counts[:size]
    buf = np.empty(table_bound_bytes(1 << (8 * a.itemsize)), np.uint8)
    best = _lengths_fast(counts, MAX_LEN)
    best_bytes = _stream_bytes(best, counts4, int(write_table(best, buf, 0)))
    for cand in _candidates(counts, 1 << (8 * a.itemsize), _dyadic_fast, _lengths_fast):
        nbytes = _stream_bytes(cand, counts4, int(write_table(cand, buf, 0)))
        if nbytes < best_bytes:
            best, best_bytes = cand, nbytes
    return best


# ------------------------------------------------------------------------------ the oracle


def _lengths_naive(counts: np.ndarray, limit: int) -> np.ndarray:
    return optimal_lengths_naive(counts, limit).astype(np.int64)


def _dyadic_naive(padded: np.ndarray):
    """The pruned partition (starts, ks) by recursion over the tree, node by node."""
    n = int(padded.sum())
    top = padded.size.bit_length() - 1
    costs = [leaf_costs(padded.reshape(-1, 1 << k).sum(axis=1), k, n) for k in range(top + 1)]

    def prune(start: int, k: int):
        whole = costs[k][start >> k]
        if k == 0:
            return whole, [(start, 0)]
        lc, lb = prune(start, k - 1)
        rc, rb = prune(start + (1 << (k - 1)), k - 1)
        return (whole, [(start, k)]) if whole <= lc + rc else (lc + rc, lb + rb)

    blocks = prune(0, top)[1]
    return (np.array([b[0] for b in blocks], np.int64), np.array([b[1] for b in blocks], np.int64))


def mdl_lengths_naive(a: np.ndarray) -> np.ndarray:
    """Oracle of :func:`mdl_lengths`: the table's bits from ``table_bits_naive``."""
    counts4 = stream_counts(a)
    counts = counts4.sum(axis=0)
    counts = counts[:int(np.flatnonzero(counts)[-1]) + 1]
    cands = [_lengths_naive(counts, MAX_LEN)]
    cands += _candidates(counts, 1 << (8 * a.itemsize), _dyadic_naive, _lengths_naive)
    sizes = [_stream_bytes(c, counts4, -(-len(table_bits_naive(c)) // 8)) for c in cands]
    return cands[sizes.index(min(sizes))]
