"""A trial, not refsim's encoder: would coarser code lengths make the v2 code-length table
cheap enough (issue 16, item 3: at most 1% of the payload when n >= 10 A)?

refsim's encoder (docs/formats.md Sec. 2.1) codes each symbol with its own Huffman length. At
n = 10 A most counts are small and noisy, so neighbouring lengths differ at random and the
table (docs/formats.md Sec. 2.2) spends a token on almost every symbol. This trial measures the
minimum-description-length alternatives (Rissanen's two-part code: choose the model that
minimises table bits + payload bits), one uniform block width and a dyadic partition:

* for w = 1, 2, 4, ..., 2^(8 * width): cut the alphabet into blocks of w symbols (the last
  block padded with symbols of count 0, so A' = w * ceil(A / w), which must fit the symbol
  width), give block b its total count c_b and its optimal length l_b (package-merge, limit
  24 - log2 w), and give every symbol of an occurring block the length l_b + log2 w; a block
  of w symbols then fills 2^-l_b of the Kraft sum, so the code is complete and the decoder of
  version 2 reads it unchanged (a single occurring block is the flat code of log2 w bits);
* a dyadic partition instead of one width: blocks [j 2^k, (j + 1) 2^k) of any sizes, chosen
  bottom-up by pruning the binary tree over the (padded) alphabet with ideal costs (a block of
  count c and size 2^k: c (log2(n / c) + k) payload bits and ~4 bits per table token, a LEN
  or ZERO token, plus a REPEAT token and its gamma code of 2^k - 1 when k > 0; a node is a
  block if that beats its two children), then the same Huffman lengths over the blocks (limit
  24 minus the largest k) and l_b + k inside each: heavy-headed data (Zipf) keeps single
  symbols at its head and long blocks in its sparse tail;
* the cost of each candidate is exact: the bits of its table (``huffman_table.table_bits_naive``,
  the oracle of the encoder's table) plus sum_s count_s * length_s; w = 1 is refsim's encoder.

Run: ``PYTHONPATH=. python bench/table_block_trial.py`` (the data of
``bench_compress.py::test_table_cost``: uniform, Gaussian, geometric and Zipf symbols at
n = 10 A and 100 A). Results and why refsim does not adopt it: docs/compression.md Sec. 6.
"""

from __future__ import annotations

import numpy as np

from refsim.compress.huffman_code import code_lengths
from refsim.compress.huffman_table import table_bits_naive

MAX_LEN = 24


def block_lengths(counts: np.ndarray, w: int, alphabet: int) -> np.ndarray | None:
    """Code lengths (A',) of the blocks of w symbols described above, or None when A' would
    exceed ``alphabet`` symbols or w = 1 (refsim's own lengths: ``code_lengths``)."""
    a = counts.size
    blocks = -(-a // w)
    if w == 1 or blocks * w > alphabet:
        return None
    padded = np.zeros(blocks * w, dtype=np.int64)
    padded[:a] = counts
    block_counts = padded.reshape(blocks, w).sum(axis=1)  # (blocks,)
    log_w = w.bit_length() - 1
    if np.count_nonzero(block_counts) == 1:
        lb = np.zeros(blocks, dtype=np.int64)  # one block: every symbol log2 w bits
    else:
        lb = code_lengths(block_counts, MAX_LEN - log_w).astype(np.int64)
    return np.repeat(np.where(block_counts > 0, lb + log_w, 0), w)


def dyadic_lengths(counts: np.ndarray, alphabet: int, token_bits: float = 4.0) -> np.ndarray | None:
    """Code lengths of the pruned dyadic partition described above (trailing zeros dropped),
    or None when the padded alphabet exceeds ``alphabet`` symbols."""
    size = 1 << max(0, (counts.size - 1).bit_length())
    if size > alphabet:
        return None
    c = np.zeros(size, dtype=np.int64)
    c[:counts.size] = counts
    n = int(c.sum())

    def leaf(count: int, k: int) -> float:
        payload = count * (np.log2(n / count) + k) if count else 0.0
        return payload + token_bits + (token_bits + 2 * k + 1 if k else 0.0)

    nodes = [(leaf(int(x), 0), [(i, 0)]) for i, x in enumerate(c)]  # (cost, [(start, k)])
    sums = c
    for k in range(1, size.bit_length()):
        sums = sums.reshape(-1, 2).sum(axis=1)
        merged = []
        for j, total in enumerate(sums):
            left, right = nodes[2 * j], nodes[2 * j + 1]
            whole = leaf(int(total), k)
            split = left[0] + right[0]
            merged.append((whole, [(j << k, k)]) if whole <= split else (split, left[1] + right[1]))
        nodes = merged
    blocks = nodes[0][1]
    block_counts = np.array([c[s:s + (1 << k)].sum() for s, k in blocks])  # (blocks,)
    if np.count_nonzero(block_counts) == 1:  # one occurring block
        lb = np.zeros(len(blocks), dtype=np.int64)
        if blocks[int(np.flatnonzero(block_counts)[0])][1] == 0:
            return None  # a single symbol: refsim's one-symbol code
        if len(blocks) > 1:
            return None  # its Kraft sum would fall short of 1
    else:
        lb = code_lengths(block_counts, MAX_LEN - max(k for _, k in blocks)).astype(np.int64)
    lengths = np.zeros(size, dtype=np.int64)
    for (start, k), length, count in zip(blocks, lb, block_counts):
        if count:
            lengths[start:start + (1 << k)] = length + k
    return lengths[:int(np.flatnonzero(lengths)[-1]) + 1]


def cost(counts: np.ndarray, lengths: np.ndarray) -> tuple[int, int]:
    """(table bits, payload bits) of ``counts`` (A,) coded with ``lengths`` (A' >= A,)."""
    padded = np.zeros(lengths.size, dtype=np.int64)
    padded[:counts.size] = counts
    return len(table_bits_naive(lengths)), int((padded * lengths.astype(np.int64)).sum())


def best_block(counts: np.ndarray, alphabet: int) -> tuple[int, int, int, np.ndarray]:
    """(w, table bits, payload bits, lengths) of the w with the smallest total; w = 1 (refsim's
    encoder) wins ties."""
    lengths = code_lengths(counts).astype(np.int64)
    best = (*cost(counts, lengths), 1, lengths)
    w = 2
    while w <= alphabet:
        cand = block_lengths(counts, w, alphabet)
        if cand is not None:
            t, p = cost(counts, cand)
            if t + p < best[0] + best[1]:
                best = (t, p, w, cand)
        w *= 2
    t, p, w, lengths = best
    return w, t, p, lengths


def best_code(counts: np.ndarray, alphabet: int) -> tuple[str, int, int, np.ndarray]:
    """(name, table bits, payload bits, lengths) of the smallest total of refsim's lengths,
    the best uniform width and the dyadic partition ("refsim", "w=<w>" or "dyadic"); refsim's
    own lengths win ties."""
    w, t, p, lengths = best_block(counts, alphabet)
    best = ("refsim" if w == 1 else f"w={w}", t, p, lengths)
    cand = dyadic_lengths(counts, alphabet)
    if cand is not None:
        t, p = cost(counts, cand)
        if t + p < best[1] + best[2]:
            best = ("dyadic", t, p, cand)
    return best


def cases(rng: np.random.Generator, a: int, n: int) -> dict:
    """The symbol sets of ``bench_compress.py::test_table_cost``."""
    return {"uniform": rng.integers(0, a, n),
            "gaussian": np.clip(np.round(rng.normal(a / 2, a / 10, n)), 0, a - 1),
            "geometric": np.minimum(rng.geometric(8 / a, n) - 1, a - 1),
            "zipf": np.minimum(rng.zipf(1.3, n) - 1, a - 1)}


def main() -> None:
    rng = np.random.default_rng(0)
    for a, per in ((16, 10), (256, 10), (4096, 10), (65536, 10), (16, 100), (256, 100)):
        alphabet = 256 if a <= 256 else 65536
        for name, sym in cases(rng, a, per * a).items():
            counts = np.bincount(sym.astype(np.int64))
            t1, p1 = cost(counts, code_lengths(counts).astype(np.int64))
            w, t, p, _ = best_block(counts, alphabet)
            d = dyadic_lengths(counts, alphabet)
            td, pd = cost(counts, d) if d is not None else (t1, p1)
            kind, tb, pb, _ = best_code(counts, alphabet)
            print(f"A={a:5d} n={per * a:6d} {name:9s}: refsim table {100 * t1 / p1:5.2f}% of the "
                  f"payload | best w={w:5d}: {100 * t / p:5.2f}%, total "
                  f"{100 * ((t + p) / (t1 + p1) - 1):+.2f}% | dyadic {100 * td / pd:5.2f}%, "
                  f"{100 * ((td + pd) / (t1 + p1) - 1):+.2f}% | smallest: {kind}, table "
                  f"{100 * tb / pb:5.2f}%")


if __name__ == "__main__":
    main()
