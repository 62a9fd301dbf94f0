"""Code construction: package-merge and Huffman lengths, canonical codewords, the prefix-code
check; every fast form (NumPy in huffman_code.py, loops in huffman_build.py) against its oracle."""

import numpy as np
import pytest

from refsim.compress import huffman_build as build
from refsim.compress.huffman_code import (
    MAX_CODE_LENGTH,
    canonical_codes,
    canonical_codes_naive,
    check_code_lengths,
    code_lengths,
    code_lengths_naive,
    entropy_bits,
    huffman_lengths_naive,
    optimal_lengths_naive,
)

FIB = [1, 1]
while len(FIB) < 40:
    FIB.append(FIB[-1] + FIB[-2])

# Edge cases every construction must agree on: no symbol, one, two, all counts equal, ties,
# a single heavy symbol, and Fibonacci counts (the deepest codes for their size).
EDGE_COUNTS = [np.zeros(5, np.int64), np.array([0, 0, 7]), np.array([3, 0, 0, 3]),
               np.array([1, 1]), np.full(256, 9), np.full(17, 1), np.array([10**6, 1, 1, 1]),
               np.array(FIB[:20]), np.array(FIB[:30]), np.array([0] * 100 + [1, 2])]


def _random_counts(trial: int) -> np.ndarray:
    """Counts with many ties (small integers, repeated values) or a wide range."""
    rng = np.random.default_rng(300 + trial)
    size = int(rng.integers(1, 400))
    kind = trial % 4
    if kind == 0:
        return rng.integers(0, 4, size)
    if kind == 1:
        return rng.integers(0, 60, size) ** int(rng.integers(1, 4))
    if kind == 2:
        return np.repeat(rng.integers(1, 5, size // 8 + 1), 8)[:size]
    return np.round(rng.exponential(20.0, size)).astype(np.int64)


def _loop(fn, counts, *args):
    out = np.zeros(len(counts), np.int64)
    fn(np.asarray(counts, np.int64), *args, out)
    return out


@pytest.mark.parametrize("trial", range(24))
def test_package_merge_forms_match_the_oracle(trial):
    counts = _random_counts(trial)
    limit = int(np.random.default_rng(trial).integers(9, MAX_CODE_LENGTH + 1))
    ref = code_lengths_naive(counts, limit)
    np.testing.assert_array_equal(code_lengths(counts, limit), ref, err_msg=f"limit {limit}")
    np.testing.assert_array_equal(_loop(build.package_merge, counts, limit), ref)
    assert int(ref.max(initial=0)) <= limit
    check_code_lengths(ref)


@pytest.mark.parametrize("counts", EDGE_COUNTS, ids=lambda c: f"{len(c)}:{c[:3].tolist()}")
def test_edge_cases_agree_in_every_form(counts):
    ref = code_lengths_naive(counts)
    np.testing.assert_array_equal(code_lengths(counts), ref)
    np.testing.assert_array_equal(_loop(build.package_merge, counts, MAX_CODE_LENGTH), ref)
    np.testing.assert_array_equal(_loop(build.optimal_lengths, counts, MAX_CODE_LENGTH),
                                  optimal_lengths_naive(counts))
    np.testing.assert_array_equal(canonical_codes(ref), canonical_codes_naive(ref))
    codes = np.zeros(len(ref), np.int64)
    build.canonical(ref.astype(np.int64), codes)
    np.testing.assert_array_equal(codes, canonical_codes_naive(ref))
    check_code_lengths(ref)
    assert build.complete(ref.astype(np.int64), MAX_CODE_LENGTH) == bool(np.count_nonzero(ref))


@pytest.mark.parametrize("trial", range(24))
def test_huffman_loop_matches_the_heap_oracle(trial):
    counts = _random_counts(trial)
    ref = huffman_lengths_naive(counts)
    out = np.zeros(len(counts), np.int64)
    assert build.huffman(counts.astype(np.int64), out) == int(ref.max(initial=0))
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(_loop(build.optimal_lengths, counts, MAX_CODE_LENGTH),
                                  optimal_lengths_naive(counts))


@pytest.mark.parametrize("trial", range(40))
def test_huffman_lengths_equal_package_merge_when_they_fit(trial):
    """The remark of huffman_code.optimal_lengths_naive: version 2's code (Huffman's, leaf
    first on ties) has the lengths of version 1's package-merge whenever it fits the limit."""
    counts = _random_counts(trial + 100)
    h = huffman_lengths_naive(counts)
    assert int(h.max(initial=0)) <= MAX_CODE_LENGTH
    np.testing.assert_array_equal(h, code_lengths_naive(counts))


def test_the_limit_engages_on_fibonacci_counts():
    counts = np.array(FIB)  # Huffman depth 39
    assert int(huffman_lengths_naive(counts).max()) == 39
    for limit in (7, 12, MAX_CODE_LENGTH):
        ref = code_lengths_naive(counts, limit)
        assert int(ref.max()) == limit
        np.testing.assert_array_equal(code_lengths(counts, limit), ref)
        np.testing.assert_array_equal(_loop(build.package_merge, counts, limit), ref)
        np.testing.assert_array_equal(_loop(build.optimal_lengths, counts, limit), ref)
        np.testing.assert_array_equal(optimal_lengths_naive(counts, limit), ref)
        check_code_lengths(ref)


@pytest.mark.parametrize("trial", range(20))
def test_prefix_free_and_entropy_bound(trial):
    rng = np.random.default_rng(400 + trial)
    counts = rng.integers(0, 1000, int(rng.integers(2, 300))) ** int(rng.integers(1, 3))
    counts[:2] += 1  # at least two symbols
    ln = optimal_lengths_naive(counts)
    codes = canonical_codes(ln)
    words = [format(int(codes[s]), f"0{int(ln[s])}b") for s in np.flatnonzero(ln)]
    for i, w in enumerate(words):  # no codeword is a prefix of another
        assert not any(v.startswith(w) for j, v in enumerate(words) if j != i)
    h = entropy_bits(counts)
    mean = float((counts * ln).sum() / counts.sum())
    assert h <= mean + 1e-12 < h + 1, (h, mean)


@pytest.mark.parametrize("trial", range(8))
def test_canonical_codes_match_oracle(trial):
    ln = code_lengths(_random_counts(trial + 600))
    np.testing.assert_array_equal(canonical_codes(ln), canonical_codes_naive(ln))
    codes = np.zeros(ln.size, np.int64)
    build.canonical(ln.astype(np.int64), codes)
    np.testing.assert_array_equal(codes, canonical_codes_naive(ln))


@pytest.mark.parametrize("lengths, ok", [
    ([], False), ([0, 0], False), ([1], True), ([2], False), ([1, 1], True), ([1, 2], False),
    ([1, 2, 2], True), ([1, 1, 1], False), ([25, 25] + [1], False), ([2, 2, 2, 2], True),
    (list(range(1, 25)) + [24], True), ([0, 2, 0, 2, 1], True), ([0, 3, 0, 3, 2, 2], False)])
def test_complete_is_the_prefix_code_check(lengths, ok):
    ln = np.array(lengths, np.int64)
    assert build.complete(ln, MAX_CODE_LENGTH) == ok
    if ok:
        check_code_lengths(ln)
    elif ln.size and ln.max() > 0:
        with pytest.raises(ValueError):
            check_code_lengths(ln)


def test_reverse_bits():
    for code, length in [(0, 0), (1, 1), (0b1101, 4), (0b100000000000000000000001, 24),
                         (0xABCDE, 20)]:
        want = int(format(code, f"0{length}b")[::-1] or "0", 2)
        assert build.reverse_bits(code, length) == want
