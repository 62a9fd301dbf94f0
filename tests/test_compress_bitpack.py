"""Bit packing: the 64-bit-accumulator kernels equal the NumPy bit-matrix oracles; damaged
packed data is named."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refsim.compress.bitpack import (
    from_blocks,
    pack,
    pack_naive,
    packed_size,
    to_blocks,
    unpack,
    unpack_naive,
)


@pytest.mark.parametrize("bits", range(1, 17))
def test_pack_matches_oracle_and_roundtrips(bits):
    rng = np.random.default_rng(bits)
    for n in [0, 1, 7, int(rng.integers(2, 600))]:
        a = rng.integers(0, 2**bits, n).astype(np.uint8 if bits <= 8 else np.uint16)
        p = pack(a, bits)
        np.testing.assert_array_equal(p, pack_naive(a, bits), err_msg=f"pack n={n} b={bits}")
        assert p.size == packed_size(n, bits) == -(-n * bits // 8)
        np.testing.assert_array_equal(unpack(p, n, bits), a)
        np.testing.assert_array_equal(unpack_naive(p, n, bits), a)


def test_layout_is_msb_first():
    assert pack(np.array([1, 2, 3], np.uint8), 2).tolist() == [0b01101100]
    assert pack(np.array([0x123], np.uint16), 12).tolist() == [0x12, 0x30]


def test_bad_input():
    with pytest.raises(ValueError, match="fit"):
        pack(np.array([4], np.uint8), 2)
    with pytest.raises(ValueError, match="expected"):
        unpack(np.zeros(3, np.uint8), 10, 4)
    with pytest.raises(TypeError, match="uint8 or uint16"):
        pack(np.array([1], np.int32), 4)


@pytest.mark.parametrize("bits,k", [(1, 8), (2, 4), (4, 2), (2, 3), (3, 5), (8, 2), (1, 16),
                                    (5, 1)])
def test_blocks_roundtrip_and_layout(bits, k):
    rng = np.random.default_rng(10 * bits + k)
    for n in [0, 1, k, k + 1, int(rng.integers(2, 300))]:
        a = rng.integers(0, 2**bits, n).astype(np.uint8 if bits <= 8 else np.uint16)
        blocks = to_blocks(a, bits, k)
        assert blocks.size == -(-n // k) and blocks.dtype == (np.uint8 if k * bits <= 8
                                                               else np.uint16)
        # block j = levels jk .. jk+k-1, first level in the high bits, zero-padded
        padded = np.concatenate([a, np.zeros(-n % k, a.dtype)]).astype(np.int64).reshape(-1, k)
        weights = 2 ** (bits * np.arange(k - 1, -1, -1))
        np.testing.assert_array_equal(blocks, padded @ weights)
        np.testing.assert_array_equal(from_blocks(blocks, n, bits, k), a)


def test_blocks_bad_input():
    with pytest.raises(ValueError, match="1..16 bits"):
        to_blocks(np.zeros(3, np.uint8), 4, 5)
    with pytest.raises(ValueError, match="blocks"):
        from_blocks(np.zeros(3, np.uint8), 20, 2, 4)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 16), st.integers(0, 300), st.integers(0, 2**16), st.data())
def test_damaged_packed_data(bits, n, seed, draw):
    """Truncated, padded, empty or random bytes: ValueError naming the size; flipped bits
    still unpack (every bit pattern is a level) to exactly n levels below 2**bits."""
    rng = np.random.default_rng(seed)
    levels = rng.integers(0, 2**bits, n).astype(np.uint8 if bits <= 8 else np.uint16)
    data = bytearray(pack(levels, bits).tobytes())
    size = len(data)
    for bad in (data[:draw.draw(st.integers(0, max(0, size - 1)))] if size else b"\x00",
                data + b"\x00", bytes(draw.draw(st.binary(max_size=40)))):
        if len(bad) == size:
            continue
        for fn in (unpack, unpack_naive):
            with pytest.raises(ValueError, match="expected ceil"):
                fn(bytes(bad), n, bits)
    if size:
        bit = draw.draw(st.integers(0, 8 * size - 1))
        data[bit // 8] ^= 1 << (bit % 8)
        out = unpack(bytes(data), n, bits)
        np.testing.assert_array_equal(out, unpack_naive(bytes(data), n, bits))
        assert out.size == n and (n == 0 or int(out.max()) < 2**bits)
