"""huffman.encode(x, lengths="mdl"): the kernels equal the oracle (bytes), the streams decode
with every version-2 decoder, are never longer than the default's, and are shorter where the
table dominates; the code is complete; bad arguments raise one line. Also under
NUMBA_DISABLE_JIT=1 (sizes kept small for that run)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refsim.compress import huffman, huffman_mdl, huffman_v2
from refsim.compress.huffman_code import check_code_lengths
from refsim.compress.huffman_v2_encode import PAIR_MIN


def _check(x):
    """Fast == oracle, decodes back (fast and naive decoders), never longer than the default."""
    data = huffman.encode(x, lengths="mdl")
    assert data == huffman.encode_naive(x, lengths="mdl"), "mdl: encode != encode_naive"
    for got in (huffman.decode(data), huffman.decode_naive(data), huffman_v2.decode(data, 1)):
        np.testing.assert_array_equal(got, x.reshape(-1))
    default = huffman.encode(x)
    assert len(data) <= len(default)
    if x.size:
        lengths = huffman_mdl.mdl_lengths(x.reshape(-1))
        check_code_lengths(lengths)
        np.testing.assert_array_equal(lengths, huffman_mdl.mdl_lengths_naive(x.reshape(-1)))
    return data, default


def _cases(rng, a, n):
    return {"uniform": rng.integers(0, a, n),
            "gaussian": np.clip(np.round(rng.normal(a / 2, a / 10, n)), 0, a - 1),
            "geometric": np.minimum(rng.geometric(8 / a, n) - 1, a - 1),
            "zipf": np.minimum(rng.zipf(1.3, n) - 1, a - 1)}


@pytest.mark.parametrize("a, dtype", [(16, np.uint8), (256, np.uint8), (300, np.uint16),
                                      (1024, np.uint16)])
def test_matches_the_oracle_on_the_table_cost_data(a, dtype):
    rng = np.random.default_rng(a)
    for name, sym in _cases(rng, a, 10 * a).items():
        _check(sym.astype(dtype))


@pytest.mark.parametrize("x", [
    np.zeros(0, np.uint8), np.array([7], np.uint8), np.array([0], np.uint16),
    np.full(50, 255, np.uint8), np.array([0, 255] * 9, np.uint8), np.arange(256, dtype=np.uint8),
    np.array([65535, 0, 65535], np.uint16), np.array([1, 2, 3, 1000], np.uint16),
    np.array([5, 5, 5, 5, 6], np.uint8)], ids=lambda x: f"{x.dtype}-{x.size}")
def test_edge_cases(x):
    _check(x)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 600), a=st.integers(1, 300),
       wide=st.booleans())
def test_random_inputs(seed, n, a, wide):
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if wide else np.uint8
    a = a if wide else min(a, 256)
    x = (rng.geometric(rng.uniform(0.01, 0.9), n) % a).astype(dtype)
    _check(x)


def test_smaller_where_the_table_dominates():
    """Noisy uniform counts (n = 10 A) take a coarser code; on long inputs the table is small
    and so is the gain (a few bytes in 80 kB: the sparse tails of a Gaussian)."""
    rng = np.random.default_rng(0)
    data, default = _check(rng.integers(0, 256, 2560).astype(np.uint8))
    assert len(data) < 0.99 * len(default)
    assert huffman.header_size(data) < huffman.header_size(default) / 2
    x = np.clip(np.round(rng.normal(128, 20, 100_000)), 0, 255).astype(np.uint8)
    data, default = _check(x)
    assert len(default) - 16 <= len(data) <= len(default)


def test_pair_encoder_path():
    """uint8 inputs of PAIR_MIN symbols or more go through the pair encoder, with the given
    lengths."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, PAIR_MIN + 3).astype(np.uint8)
    data = huffman.encode(x, lengths="mdl")
    np.testing.assert_array_equal(huffman.decode(data), x)
    lengths = huffman_mdl.mdl_lengths(x)
    assert data == huffman_v2.stream_naive(lengths, x)


def test_bad_arguments():
    x = np.arange(5, dtype=np.uint8)
    with pytest.raises(ValueError, match="lengths must be 'optimal' or 'mdl'"):
        huffman.encode(x, lengths="smallest")
    with pytest.raises(ValueError, match="needs version 2"):
        huffman.encode(x, version=1, lengths="mdl")
    with pytest.raises(ValueError, match="needs version 2"):
        huffman.encode_naive(x, version=1, lengths="mdl")
