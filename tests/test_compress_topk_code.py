"""Entropy-coded top-k payloads (topk_code.py): the jitted gap coder against its oracle, edge
cases, the bits per non-zero against log2 C(n, k), the values against the quantizer's oracle,
and hostile payloads (truncated, flipped, empty, random) named by one ValueError."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refsim.compress import topk_code
from refsim.compress.quantize import dequantize_naive, quantize_naive

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _subset(rng, n, k):
    return np.sort(rng.choice(n, k, replace=False)).astype(np.int64)


CASES = [(1, [0]), (7, [6]), (7, list(range(7))), (10, [0, 9]), (2**32 - 1, [0, 2**32 - 2]),
         (2**32 - 1, [2**31, 2**32 - 2]), (100, [5, 6, 7, 8, 90])]


@pytest.mark.parametrize("n, idx", CASES)
def test_edge_cases_match_the_oracle(n, idx):
    idx = np.array(idx, np.int64)
    data = topk_code.encode_indices(idx)
    assert data == topk_code.encode_indices_naive(idx)
    for dec in (topk_code.decode_indices, topk_code.decode_indices_naive):
        got, used = dec(data + b"tail", idx.size, n)
        np.testing.assert_array_equal(got, idx)
        assert used == len(data)


@pytest.mark.parametrize("trial", range(12))
def test_random_subsets_match_the_oracle(trial):
    rng = np.random.default_rng(900 + trial)
    n = int(rng.integers(1, 50_000))
    idx = _subset(rng, n, int(rng.integers(1, min(n, 3000) + 1)))
    data = topk_code.encode_indices(idx)
    assert data == topk_code.encode_indices_naive(idx)
    np.testing.assert_array_equal(topk_code.decode_indices(data, idx.size, n)[0], idx)
    np.testing.assert_array_equal(topk_code.decode_indices_naive(data, idx.size, n)[0], idx)


def test_gap_classes():
    classes, gp1 = topk_code.gap_classes(np.array([0, 1, 3, 10, 2**32 - 1], np.int64))
    assert gp1.tolist() == [1, 1, 2, 7, 2**32 - 11]
    assert classes.tolist() == [0, 0, 1, 2, 31]


@pytest.mark.parametrize("n, k", [(10_000, 100), (100_000, 1_000), (199_210, 1_992)])
def test_bits_per_nonzero_near_the_entropy_of_the_subset(n, k):
    idx = _subset(np.random.default_rng(n), n, k)
    bits = 8 * len(topk_code.encode_indices(idx))
    ideal = topk_code.index_entropy_bits(n, k)
    assert ideal == pytest.approx(math.log2(math.comb(n, k)))
    assert ideal < bits < 1.06 * ideal + 8 * 40  # + the class stream's header and table


@pytest.mark.parametrize("bits, stochastic", [(1, True), (4, False), (7, True), (8, True),
                                              (15, False)])
def test_values_follow_the_quantizer_oracle(bits, stochastic):
    rng = np.random.default_rng(bits)
    values = (rng.normal(0, 1, 300) * rng.choice([-1, 1], 300)).astype(np.float32)
    data, lo, hi, sent = topk_code.encode_values(values, bits, stochastic, 77)
    q = quantize_naive(np.abs(values), bits, stochastic=stochastic, seed=77)
    assert (lo, hi) == (q.min, q.max)
    want = np.where(values < 0, -dequantize_naive(q), dequantize_naive(q)).astype(np.float32)
    np.testing.assert_array_equal(sent, want)
    np.testing.assert_array_equal(
        topk_code.decode_values(data, 300, np.dtype(np.float32), bits, lo, hi), want)
    raw, *_ = topk_code.encode_values(values, 0, False, 0)
    np.testing.assert_array_equal(
        topk_code.decode_values(raw, 300, np.dtype(np.float32), 0, 0.0, 0.0), values)


def _indices_agree(data, k, n):
    try:
        ref = topk_code.decode_indices_naive(data, k, n)
    except ValueError:
        with pytest.raises(ValueError):
            topk_code.decode_indices(data, k, n)
        return
    got = topk_code.decode_indices(data, k, n)
    np.testing.assert_array_equal(got[0], ref[0])
    assert got[1] == ref[1]
    assert got[0].size == k and (np.diff(got[0]) > 0).all() and got[0][-1] < n


@FUZZ
@given(st.integers(0, 2**16), st.data())
def test_fuzz_damaged_index_parts(seed, draw):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5000))
    idx = _subset(rng, n, int(rng.integers(1, min(n, 200) + 1)))
    data = bytearray(topk_code.encode_indices(idx))
    kind = draw.draw(st.integers(0, 3))
    if kind == 0:  # truncated
        data = data[:draw.draw(st.integers(0, len(data) - 1))]
    elif kind == 1:  # bit flips
        for _ in range(draw.draw(st.integers(1, 3))):
            bit = draw.draw(st.integers(0, 8 * len(data) - 1))
            data[bit // 8] ^= 1 << (bit % 8)
    elif kind == 2:  # random bytes
        data = bytearray(draw.draw(st.binary(max_size=80)))
    else:  # an empty payload
        data = bytearray()
    _indices_agree(bytes(data), idx.size, n)


@FUZZ
@given(st.binary(max_size=120), st.integers(1, 40), st.integers(0, 15))
def test_fuzz_random_value_parts(data, k, bits):
    try:
        out = topk_code.decode_values(b"\x02" + data, k, np.dtype(np.float64), bits, 0.5, 2.0)
    except ValueError:
        return
    assert out.shape == (k,) and np.isfinite(out).all()
