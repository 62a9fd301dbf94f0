"""The item-3 experiment of docs/compression.md §6: how small a *parametric* code-length table
(lengths from a fitted curve, a possible format version 3) makes the table at n = 10 A, beside
version 2's default and ``lengths="mdl"`` streams.

The family: weights w(s) = 2^(-b g(|s - c|)) over the alphabet s = 0 .. A-1, floored at 2^-20,
with g(d) = d (geometric/Laplace), d^2 (Gaussian) or log2(1 + d) (power law), b = 2^(j/4 - 10)
for j = 0 .. 63 and an integer mode c; the lengths are Huffman's for those weights. The table
is counted as 2 + log2 A + 6 bits (family, c, j); the best member is the one with the shortest
payload on the data's counts. This is an experiment (float weights, not a normative format);
the Gaussian at A = 256 picks j = 0, the grid's edge, so a wider grid could do a little better.

Run: ``python bench/table_param.py`` (about 40 s on the 2-core VM).
"""

from __future__ import annotations

import math

import numpy as np

from refsim.compress import huffman
from refsim.compress.huffman_code import huffman_lengths_naive

FAMILIES = {"linear": lambda d: d, "quadratic": lambda d: d * d,
            "log": lambda d: np.log2(1.0 + d)}


def best_parametric(counts: np.ndarray) -> tuple[int, str, int, int]:
    """(payload bits, family, j, c) of the family member with the shortest payload."""
    a = len(counts)
    s = np.arange(a)
    nz = np.nonzero(counts)[0]
    best = None
    for name, g in FAMILIES.items():
        modes = [int(nz.min()), int(np.argmax(counts))] if name == "log" else \
            range(int(nz.min()), int(nz.max()) + 1)
        for j in range(64):
            for c in modes:
                w = np.maximum(np.exp2(-2.0 ** (j / 4 - 10) * g(np.abs(s - c))), 2.0 ** -20)
                lengths = huffman_lengths_naive(np.round(w * 2**30).astype(np.int64))
                if lengths.max() > 24:
                    continue
                payload = int((counts * lengths).sum())
                if best is None or payload < best[0]:
                    best = (payload, name, j, c)
    return best


def main() -> None:
    rng = np.random.default_rng(0)
    for a in (16, 256):
        n = 10 * a
        cases = {"gaussian": np.clip(np.round(rng.normal(a / 2, a / 10, n)), 0, a - 1),
                 "geometric": np.minimum(rng.geometric(8 / a, n) - 1, a - 1),
                 "zipf": np.minimum(rng.zipf(1.3, n) - 1, a - 1)}
        for name, sym in cases.items():
            x = sym.astype(np.uint8)
            m = huffman.encode(x, lengths="mdl")
            mdl_payload = 8 * (len(m) - huffman.header_size(m))
            payload, fam, j, c = best_parametric(np.bincount(x, minlength=a))
            table = 2 + int(math.log2(a)) + 6
            print(f"A={a:3d} n={n:5d} {name:9s}: 'mdl' payload {mdl_payload} bits, stream "
                  f"{8 * len(m)}; parametric payload {payload} + table {table} bits "
                  f"({100 * table / payload:.2f}%; {fam}, j={j}, c={c})")


if __name__ == "__main__":
    main()
