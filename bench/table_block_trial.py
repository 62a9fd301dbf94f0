"""A trial, not refsim's encoder: would coarser code lengths make the v2 code-length table
cheap enough (issue 16, item 3: at most 1% of the payload when n >= 10 A)?

refsim's encoder (docs/formats.md Sec. 2.1) codes each symbol with its own Huffman length. At
n = 10 A most counts are small and noisy, so neighbouring lengths differ at random and the
table (docs/formats.md Sec. 2.2) spends a token on almost every symbol. This trial measures the
minimum-description-length alternative of one uniform block width (Rissanen's two-part code:
choose the model that minimises table bits + payload bits):

* for w = 1, 2, 4, ..., 2^(8 * width): cut the alphabet into blocks of w symbols (the last
  block padded with symbols of count 0, so A' = w * ceil(A / w), which must fit the symbol
  width), give block b its total count c_b and its optimal length l_b (package-merge, limit
  24 - log2 w), and give every symbol of an occurring block the length l_b + log2 w; a block
  of w symbols then fills 2^-l_b of the Kraft sum, so the code is complete and the decoder of
  version 2 reads it unchanged (a single occurring block is the flat code of log2 w bits);
* the cost of each w is exact: the bits of its table (``huffman_table.table_bits_naive``, the
  oracle of the encoder's table) plus sum_s count_s * length_s; w = 1 is refsim's encoder.

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
            print(f"A={a:5d} n={per * a:6d} {name:9s}: refsim table {100 * t1 / p1:5.2f}% of the "
                  f"payload | best w={w:5d}: table {100 * t / p:5.2f}%, total "
                  f"{100 * ((t + p) / (t1 + p1) - 1):+.2f}%")


if __name__ == "__main__":
    main()
