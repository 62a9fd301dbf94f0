"""The Huffman stream, version 1 (still decoded; written with version=1), and what the two
versions share: the version byte, the histogram. Oracle equality, round trips, hostile input.
Version 2: test_compress_huffman_v2.py; the code construction: test_compress_huffman_code.py."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refsim.compress import huffman
from refsim.compress.huffman_code import code_lengths, entropy_bits

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _skewed(rng, n, dtype, alphabet):
    return (rng.geometric(rng.uniform(0.02, 0.9), n) % alphabet).astype(dtype)


def _roundtrip(x):
    data = huffman.encode(x, version=1)
    assert data == huffman.encode_naive(x, version=1), "encode != encode_naive"
    assert data[0] == 1
    for dec in (huffman.decode, huffman.decode_naive):
        y = dec(data)
        assert y.dtype == x.dtype
        np.testing.assert_array_equal(y, x.reshape(-1), err_msg=dec.__name__)
    return data


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_roundtrip_special_inputs(dtype):
    rng = np.random.default_rng(5)
    assert len(_roundtrip(np.zeros(0, dtype))) == 10
    one = _roundtrip(np.full(1000, 7, dtype))  # one symbol: 1 bit each
    assert len(one) == huffman.header_size(one) + 4 * 32  # 4 streams of 250 bits
    _roundtrip(rng.integers(0, 256, 3000).astype(dtype))  # uniform
    _roundtrip(_skewed(rng, 3000, dtype, 256 if dtype == np.uint8 else 5000))
    _roundtrip(np.array([0, np.iinfo(dtype).max], dtype))


def test_roundtrip_all_2_16_symbols():
    x = np.random.default_rng(6).permutation(np.arange(2**16).repeat(2)).astype(np.uint16)
    data = _roundtrip(x[:20000])
    full = huffman.encode(x, version=1)
    np.testing.assert_array_equal(huffman.decode(full), x)
    assert len(full) < 2 * 2**16 * 16 / 8 + 2**16 + 100  # 16 bits per symbol + dense table
    assert data[10] in (0, 1)


@pytest.mark.parametrize("trial", range(15))
def test_encode_decode_match_oracles(trial):
    rng = np.random.default_rng(500 + trial)
    dtype = [np.uint8, np.uint16][trial % 2]
    x = _skewed(rng, int(rng.integers(1, 4000)), dtype, int(rng.integers(1, 3000)) if trial % 2
                else 256)
    _roundtrip(x.reshape(-1, 1) if trial % 3 == 0 else x)


def test_long_codewords_use_the_fallback_path():
    fib = [1, 1]
    while len(fib) < 22:
        fib.append(fib[-1] + fib[-2])
    x = np.repeat(np.arange(22, dtype=np.uint8), fib)  # codewords up to 21 bits long
    assert int(code_lengths(huffman.histogram(x)).max()) > huffman.PRIMARY_BITS
    _roundtrip(np.random.default_rng(0).permutation(x))


def test_size_close_to_entropy():
    x = _skewed(np.random.default_rng(8), 20000, np.uint8, 256)
    h = entropy_bits(huffman.histogram(x))
    data = huffman.encode(x, version=1)
    payload_bits = 8 * (len(data) - huffman.header_size(data))
    assert h * x.size <= payload_bits < (h + 1) * x.size + 8


def test_format_bytes_are_as_documented():
    data = huffman.encode(np.array([3, 3, 3, 1, 0], np.uint8), version=1)
    # version 1, width 1, n = 5, dense table (A = 4 < 3 * 2), lengths 2 2 0 1; canonical
    # codewords 3 -> 0, 0 -> 10, 1 -> 11. Streams (symbol i in stream i % 4): 0: 3 0 -> 010,
    # 1: 3 -> 0, 2: 3 -> 0, 3: 1 -> 11; each zero-padded to a byte; L0 = L1 = L2 = 1.
    assert data.hex() == ("0101" + "0500000000000000" + "01" + "04000000" + "02020001"
                          + "01000000" * 3 + "40" + "00" + "00" + "c0")
    sparse = huffman.encode(np.array([200, 9, 9], np.uint8), version=1)
    # sparse table (m = 2: 2 * 2 < A = 201): symbols 9, 200, lengths 1, 1; 9 -> 0, 200 -> 1.
    assert sparse.hex() == ("0101" + "0300000000000000" + "00" + "02000000" + "09c8" + "0101"
                            + "01000000" * 3 + "80" + "00" + "00")


BAD = [b"", b"\x03" + bytes(9), b"\x01\x03" + bytes(8), b"\x01\x01" + bytes(8) + b"\x00",
       b"\x01\x01\x01" + bytes(7) + b"\x02\x01\x00\x00\x00\x01",  # bad mode
       b"\x01\x01\x01" + bytes(7) + b"\x01\x02\x00\x00\x00\x01\x01",  # no stream lengths
       b"\x01\x01\x01" + bytes(7) + b"\x01\x02\x00\x00\x00\x01\x01" + bytes(12),  # no payload
       b"\x01\x01\x01" + bytes(7) + b"\x01\x02\x00\x00\x00\x01\x01" + b"\x05" + bytes(11)
       + b"\x00",  # L0 = 5 > payload
       b"\x01\x01\x01" + bytes(7) + b"\x01\x02\x00\x00\x00\x01\x02\x00",  # Kraft 3/4
       b"\x01\x01" + b"\xff" * 8 + b"\x01\x02\x00\x00\x00\x01\x01\x00"]  # n >> payload


@pytest.mark.parametrize("data", BAD)
def test_malformed_streams_raise(data):
    for dec in (huffman.decode, huffman.decode_naive):
        with pytest.raises(ValueError):
            dec(data)


def test_trailing_bytes_and_padding_raise():
    good = huffman.encode(np.array([1, 2, 2, 3, 3, 3, 3], np.uint8), version=1)
    huffman.decode(good)
    for bad in (good + b"\x00", good[:-1], good[:-1] + bytes([good[-1] | 1])):
        with pytest.raises(ValueError):
            huffman.decode(bad)
        with pytest.raises(ValueError):
            huffman.decode_naive(bad)


def _valid_stream(seed, n):
    rng = np.random.default_rng(seed)
    dtype = [np.uint8, np.uint16][seed % 2]
    return huffman.encode(_skewed(rng, n, dtype, 600 if seed % 2 else 256), version=1), n


def _decode_agrees(data):
    """decode and decode_naive both raise ValueError or both return the same array."""
    try:
        ref = huffman.decode_naive(data)
    except ValueError:
        with pytest.raises(ValueError):
            huffman.decode(data)
        return None
    np.testing.assert_array_equal(huffman.decode(data), ref)
    return ref


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    _decode_agrees(data)
    _decode_agrees(b"\x01\x01" + data)  # past the version check more often
    _decode_agrees(b"\x01\x02" + data)


@FUZZ
@given(st.integers(0, 2**16), st.integers(1, 400), st.data())
def test_fuzz_truncation(seed, n, draw):
    data, _ = _valid_stream(seed, n)
    cut = draw.draw(st.integers(0, len(data) - 1))
    with pytest.raises(ValueError):
        huffman.decode(data[:cut])


@FUZZ
@given(st.integers(0, 2**16), st.integers(1, 400), st.data())
def test_fuzz_bit_flips(seed, n, draw):
    data, n = _valid_stream(seed, n)
    buf = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 3))):
        bit = draw.draw(st.integers(0, 8 * len(buf) - 1))
        buf[bit // 8] ^= 1 << (bit % 8)
    out = _decode_agrees(bytes(buf))
    if out is not None:  # a flip that still parses yields the declared number of symbols
        declared = int.from_bytes(bytes(buf[2:10]), "little")
        assert out.size == declared


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_histogram_matches_oracle(dtype):
    x = _skewed(np.random.default_rng(9), 5001, dtype, 300)
    np.testing.assert_array_equal(huffman.histogram(x), huffman.histogram_naive(x))
    assert huffman.histogram(x).shape == (256 if dtype == np.uint8 else 65536,)


def test_version_byte_chooses_the_reader():
    x = np.array([5, 5, 1, 200, 5], np.uint8)
    assert huffman.encode(x)[0] == huffman.VERSION == 2 and huffman.VERSIONS == (1, 2)
    for v in huffman.VERSIONS:
        data = huffman.encode(x, version=v)
        assert huffman.version_of(data) == v
        np.testing.assert_array_equal(huffman.decode(data), x)
        np.testing.assert_array_equal(huffman.decode_naive(data), x)
    for bad, what in [(b"", "empty stream"), (b"\x00\x01\x00", "unsupported version 0"),
                      (b"\x07", "unsupported version 7")]:
        for dec in (huffman.decode, huffman.decode_naive, huffman.header_size):
            with pytest.raises(ValueError, match=what):
                dec(bad)
    with pytest.raises(ValueError, match="version must be 1 or 2"):
        huffman.encode(x, version=3)
    with pytest.raises(TypeError, match="bytes"):
        huffman.decode([1, 2])
    with pytest.raises(TypeError, match="uint8 or uint16"):
        huffman.encode(np.zeros(3, np.int32))
