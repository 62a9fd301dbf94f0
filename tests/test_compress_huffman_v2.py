"""The Huffman stream, version 2: oracle equality (bytes and symbols), the code-length table, the
edge cases (empty, one symbol, two, all equal, 24-bit codewords), the pair encoder and every
lookup-table size, the documented bytes, and hostile input (random, truncated, flipped, empty,
trailing), property-based with hypothesis; also with NUMBA_DISABLE_JIT=1."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refsim.compress import huffman, huffman_table, huffman_v2
from refsim.compress.huffman_code import entropy_bits, optimal_lengths_naive
from refsim.compress.huffman_v2_encode import PAIR_MIN, encode_kernel

NO_LENGTHS = np.zeros(0, np.int64)  # encode_kernel's "the default lengths"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIB = [1, 1]
while len(FIB) < 30:
    FIB.append(FIB[-1] + FIB[-2])


def _skewed(rng, n, dtype, alphabet):
    return (rng.geometric(rng.uniform(0.02, 0.9), n) % alphabet).astype(dtype)


def _decoded_by_all(data, want, lookup=(0, 1, 6, 11, 14)):
    for bits in lookup:  # every lookup-table size, down to one bit (all long codewords)
        np.testing.assert_array_equal(huffman_v2.decode(data, bits), want, err_msg=f"tb={bits}")
    y = huffman.decode_naive(data)
    assert y.dtype == want.dtype
    np.testing.assert_array_equal(y, want)


def _roundtrip(x, lookup=(0, 1, 6, 11, 14)):
    data = huffman.encode(x)
    assert data[0] == 2 and data == huffman.encode_naive(x), "encode != encode_naive"
    y = huffman.decode(data)
    assert y.dtype == x.dtype
    _decoded_by_all(data, x.reshape(-1), lookup)
    return data


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_edge_cases(dtype):
    rng = np.random.default_rng(5)
    assert len(_roundtrip(np.zeros(0, dtype))) == 3  # version, width, n = 0
    one = _roundtrip(np.full(1000, 7, dtype))  # one symbol: a 1-bit code; 4 streams of 250
    assert len(one) - huffman.header_size(one) == 4 * 32
    _roundtrip(np.array([7], dtype))
    _roundtrip(np.array([0, np.iinfo(dtype).max], dtype))  # two symbols, the widest table
    _roundtrip(np.array([3, 9] * 50, dtype))  # two symbols, equal counts
    _roundtrip(np.arange(64, dtype=dtype).repeat(3))  # all counts equal: all lengths 6
    _roundtrip(rng.integers(0, 256, 3000).astype(dtype))
    _roundtrip(_skewed(rng, 3000, dtype, 256 if dtype == np.uint8 else 5000))
    for n in range(1, 20):  # every way the four segments can be cut
        _roundtrip(_skewed(rng, n, dtype, 40))


@pytest.mark.parametrize("trial", range(12))
def test_encode_decode_match_oracles(trial):
    rng = np.random.default_rng(500 + trial)
    dtype = [np.uint8, np.uint16][trial % 2]
    x = _skewed(rng, int(rng.integers(1, 3000)), dtype, int(rng.integers(1, 3000)) if trial % 2
                else 256)
    _roundtrip(x.reshape(-1, 1) if trial % 3 == 0 else x, lookup=(0, 3, 12))


@pytest.mark.parametrize("trial", range(8))
def test_pair_encoder_writes_the_same_bytes(trial):
    """Two symbols per lookup (uint8 inputs of PAIR_MIN symbols or more) equal one at a time,
    also for pairs longer than 32 bits (Fibonacci counts: codewords of up to 20 bits)."""
    rng = np.random.default_rng(700 + trial)
    if trial % 2:
        x = rng.permutation(np.repeat(np.arange(21, dtype=np.uint8), FIB[:21]))[:5000 + trial]
    else:
        x = _skewed(rng, int(rng.integers(1, 2000)), np.uint8, 256)
    even = x[:x.size - x.size % 2].copy().view(np.uint16)
    with np.errstate(over="ignore"):
        pairs = encode_kernel(x, even, 1, True, NO_LENGTHS).tobytes()
        single = encode_kernel(x, np.zeros(0, np.uint16), 1, False, NO_LENGTHS).tobytes()
    assert pairs == single == huffman.encode_naive(x)


def test_pair_path_of_encode_on_a_long_input():
    x = _skewed(np.random.default_rng(9), PAIR_MIN + 3, np.uint8, 256)
    data = huffman.encode(x)  # PAIR_MIN symbols or more: the pair encoder
    assert data == huffman.encode_naive(x)
    np.testing.assert_array_equal(huffman.decode(data), x)
    unaligned = np.concatenate([[0], x]).astype(np.uint8)[1:]  # the uint16 view needs a copy
    assert huffman.encode(unaligned) == data


def _l_sizes(data):
    """(L0, L1, L2) of a version-2 stream with n > 0 (docs/formats.md Sec. 2)."""
    _, pos = huffman_v2._varint(data, 2)
    a, pos = huffman_v2._varint(data, pos)
    buf = np.frombuffer(data, np.uint8)
    pos = huffman_table.read_table(buf, 8 * pos, 8 * buf.size, np.zeros(a, np.int64)) // 8
    sizes = []
    for _ in range(3):
        v, pos = huffman_v2._varint(data, pos)
        sizes.append(v)
    return sizes


def test_the_writers_meet_in_every_alignment():
    """The second writer (streams 2 and 3) writes in place from byte p2 when streams 1 and 2
    have >= 4 bytes each, sharing the word p2 // 4 with the end of stream 1 (or past the end of
    the output otherwise): both paths, every p2 mod 4, against the oracle, pairs and single
    symbols (each n here also runs one symbol at a time)."""
    rng = np.random.default_rng(41)
    seen = set()
    for n in list(range(1, 120)) + [int(v) for v in rng.integers(120, 4000, 40)]:
        for x in (_skewed(rng, n, np.uint8, 256), rng.integers(0, 256, n).astype(np.uint8),
                  np.full(n, 5, np.uint8)):
            want = huffman.encode_naive(x)
            even = x[:n - n % 2].copy().view(np.uint16)
            with np.errstate(over="ignore"):
                for pairs, a16 in ((True, even), (False, np.zeros(0, np.uint16))):
                    assert encode_kernel(x, a16, 1, pairs, NO_LENGTHS).tobytes() == want, (n, pairs)
            head = huffman.header_size(want)
            l0, l1, l2 = _l_sizes(want)
            p2 = head + l0 + l1
            seen.add((l1 >= 4 and l2 >= 4, p2 % 4))
    assert seen == {(inplace, r) for inplace in (True, False) for r in range(4)}, seen


def test_the_longest_codewords_decode():
    """A code with codewords of every length 1..24 (Kraft sum 1): the decoder's long path."""
    lengths = np.array(list(range(1, 25)) + [24], np.int64)  # symbols 0..24
    for dtype in (np.uint8, np.uint16):
        x = np.array([24, 23, 0, 1, 24, 12, 5, 24] * 7 + [22], dtype)
        data = huffman_v2.stream_naive(lengths, x)
        _decoded_by_all(data, x)


def test_permutation_of_all_uint16_symbols_is_within_1_percent_of_entropy():
    x = np.random.default_rng(6).permutation(2**16).astype(np.uint16)
    data = _roundtrip(x, lookup=(0,))
    entropy = 16 * 2**16  # 1,048,576 bits
    assert 8 * len(data) <= 1.01 * entropy, 8 * len(data)
    assert 8 * (len(data) - huffman.header_size(data)) == entropy  # every codeword 16 bits
    assert len(huffman.encode(x, version=1)) - len(data) > 65_000  # v1: a byte per length


def test_format_bytes_are_as_documented():
    data = huffman.encode(np.array([3, 3, 3, 1, 0], np.uint8))
    # version 2, width 1, n = 5, A = 4; the table of lengths 2 2 0 1 (docs/formats.md); L0..L2
    # = 1 1 1; S = 2: stream 0 = symbols 3 3 -> 0 0, stream 1 = 3 1 -> 0 11, stream 2 = 0 -> 10,
    # stream 3 empty. LSB first: 0x00, 0b110 = 0x06, 0b01 = 0x01.
    assert data.hex() == "02" "01" "05" "04" "4482c413" "01" "01" "01" "00" "06" "01"
    bits = huffman_table.table_bits_naive(np.array([2, 2, 0, 1]))
    # tokens LEN 1 (p = 1 -> 2), REPEAT r = 1, ZERO, LEN 23 (2 -> 1): four tokens, each a
    # 2-bit codeword (canonical: LEN 1 00, LEN 23 01, ZERO 10, REPEAT 11). K - 1 = 4, the
    # lengths of (REPEAT, ZERO, LEN 0, LEN 1, LEN 23) = 2 2 0 2 2, then the tokens.
    assert bits == "00100" "010010000010010" "00" "11" "1" "10" "01"
    assert np.packbits([int(b) for b in bits + "000"], bitorder="little").tobytes() == \
        bytes.fromhex("4482c413")


@pytest.mark.parametrize("trial", range(30))
def test_table_writer_and_reader_match_their_oracles(trial):
    rng = np.random.default_rng(800 + trial)
    size = int(rng.integers(1, 600))
    counts = rng.integers(0, 5, size) ** int(rng.integers(1, 4))
    counts[-1] += 1
    if trial % 5 == 0:
        counts[:] = 1  # one long run
    lengths = optimal_lengths_naive(counts).astype(np.int64)
    bits = huffman_table.table_bits_naive(lengths)
    out = np.zeros(huffman_table.table_bound_bytes(size) + 3, np.uint8)
    end = huffman_table.write_table(lengths, out, 3)  # from byte 3
    assert end == 3 + (len(bits) + 7) // 8
    padded = bits + "0" * (-len(bits) % 8)
    assert np.packbits([int(b) for b in padded], bitorder="little").tobytes() == \
        out[3:end].tobytes()
    got, used = huffman_table.read_table_naive(padded, size)
    np.testing.assert_array_equal(got, lengths)
    back = np.zeros(size, np.int64)
    assert huffman_table.read_table(out, 24, 8 * end, back) == 24 + used
    np.testing.assert_array_equal(back, lengths)


BAD_TABLES = [  # (bits of a table, A, status): each malformed table the readers must name
    ("0000", 1, -1),  # not even K - 1
    ("11111", 1, -2),  # K - 1 = 31 > 25
    ("00010" "001" "010" "000", 1, -3),  # token lengths 1, 2: Kraft sum 3/4
    ("00010" "000" "000" "001" "1000000", 1, -4),  # one token (LEN 0, codeword 0): 1...
    ("00000" "001" "0", 1, -5),  # one token, REPEAT: before any length
    ("00010" "001" "000" "001" "0" "1" "00100", 3, -6),  # LEN 0, REPEAT r = 4 > A - 1
    ("00010" "001" "000" "001" "0" "1" + "0" * 17 + "1", 3, -6),  # gamma of 18+ bits
    ("00010" "000" "001" "001" "0" "1", 2, -7),  # lengths 1, 0: the last symbol absent
    ("00010" "000" "000" "001" "0" "1", 1, -8),  # LEN 0, then a padding bit 1
]


@pytest.mark.parametrize("bits, size, status", BAD_TABLES)
def test_malformed_tables_are_named(bits, size, status):
    padded = bits + "0" * (-len(bits) % 8)
    buf = np.packbits([int(b) for b in padded], bitorder="little")
    end = len(bits) if status == -1 else 8 * buf.size
    lengths = np.zeros(size, np.int64)
    assert huffman_table.read_table(buf, 0, end, lengths) == status
    with pytest.raises(ValueError, match=huffman_table.TABLE_ERRORS[status].split(": ")[-1]):
        huffman_table.read_table_naive(bits if status == -1 else padded, size)


def _single_symbol_stream(stream0: str) -> bytes:
    """n = 3 uint8 symbols 0 with the one-symbol code (codeword 0): stream 0 carries symbols
    0 and 1 as the bits stream0, stream 1 symbol 2 as 0."""
    table = huffman_table.table_bits_naive(np.array([1]))
    pack = lambda bits: np.packbits([int(b) for b in bits + "0" * (-len(bits) % 8)],  # noqa
                                    bitorder="little").tobytes()
    return b"\x02\x01\x03\x01" + pack(table) + b"\x01\x01\x00" + pack(stream0) + pack("0")


BAD = [  # (stream, what the one-line error says)
    (b"\x02", "truncated header"), (b"\x02\x01", "truncated header"),
    (b"\x02\x03\x00", "width"), (b"\x02\x01\x00\x00", "exactly 3 bytes"),
    (b"\x02\x01\x80", "truncated header"), (b"\x02\x01\x80\x00", "varint"),
    (b"\x02\x01" + b"\xff" * 9 + b"\x01", "varint"), (b"\x02\x01\xff\x01", "more symbols"),
    (b"\x02\x01\x05\x00", "table size"), (b"\x02\x01\x01\x01", "truncated code-length"),
    (b"\x02\x01\x01\x81\x02" + bytes(8), "table size"),
    (b"\x02\x01\x05\x04\x44\x82\xc4\x13\x01\x01\x05\x00\x06\x01", "stream lengths"),
    (b"\x02\x01\x05\x04\x44\x82\xc4\x13\x01\x01\x01\x00\x06", "stream lengths"),
    (b"\x02\x01\x05\x04\x44\x82\xc4\x13\x01\x01\x00\x00\x06", "more symbols"),
    (b"\x02\x01\x05\x04\x44\x82\xc4\x13\x01\x01\x01\x00\x06\x01\x00", "trailing bytes"),
    (b"\x02\x01\x05\x04\x44\x82\xc4\x13\x01\x02\x01\x00\x06\x00\x01", "trailing bytes"),
    (b"\x02\x01\x05\x04\x44\x82\xc4\x13\x01\x01\x01\x00\x0e\x01", "padding"),
    (b"\x02\x01\x05\x04\x44\x82\xc4\x13\x01\x01\x01\x00\x06\x05", "padding"),
    (_single_symbol_stream("01"), "invalid codeword"),  # the one-symbol code has no 1
]


@pytest.mark.parametrize("data, what", BAD, ids=[w for _, w in BAD])
def test_malformed_streams_are_named(data, what):
    for dec in (huffman.decode, huffman.decode_naive):
        with pytest.raises(ValueError, match=what):
            dec(data)


def test_the_valid_streams_the_bad_list_damages_decode():
    good = b"\x02\x01\x05\x04\x44\x82\xc4\x13\x01\x01\x01\x00\x06\x01"
    assert huffman.decode(good).tolist() == [3, 3, 3, 1, 0]
    assert huffman.decode(_single_symbol_stream("00")).tolist() == [0, 0, 0]


def _valid_stream(seed, n):
    rng = np.random.default_rng(seed)
    dtype = [np.uint8, np.uint16][seed % 2]
    return huffman.encode(_skewed(rng, n, dtype, 600 if seed % 2 else 256))


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
    for head in (b"\x02", b"\x02\x01", b"\x02\x02", b"\x02\x01\x20\x10"):
        _decode_agrees(head + data)


@FUZZ
@given(st.integers(0, 2**16), st.integers(1, 400), st.data())
def test_fuzz_truncation_and_trailing_bytes(seed, n, draw):
    data = _valid_stream(seed, n)
    cut = draw.draw(st.integers(0, len(data) - 1))
    for damaged in (data[:cut], data + draw.draw(st.binary(min_size=1, max_size=4))):
        with pytest.raises(ValueError):
            huffman.decode(damaged)
        with pytest.raises(ValueError):
            huffman.decode_naive(damaged)


@FUZZ
@given(st.integers(0, 2**16), st.integers(1, 400), st.data())
def test_fuzz_bit_flips(seed, n, draw):
    buf = bytearray(_valid_stream(seed, n))
    for _ in range(draw.draw(st.integers(1, 3))):
        bit = draw.draw(st.integers(0, 8 * len(buf) - 1))
        buf[bit // 8] ^= 1 << (bit % 8)
    out = _decode_agrees(bytes(buf))
    if out is not None:  # a flip that still parses yields the declared number of symbols
        n_declared, _ = huffman_v2._varint(bytes(buf), 2)
        assert out.size == n_declared


def test_empty_input_is_named():
    for dec in (huffman.decode, huffman.decode_naive):
        with pytest.raises(ValueError, match="empty stream"):
            dec(b"")


def test_sizes_against_version_1_and_the_entropy():
    x = _skewed(np.random.default_rng(8), 20000, np.uint8, 256)
    v1, v2 = huffman.encode(x, version=1), huffman.encode(x)
    assert len(v2) < len(v1)  # the same code, a smaller table and header
    h = entropy_bits(huffman.histogram(x))
    payload = 8 * (len(v2) - huffman.header_size(v2))
    assert abs(payload - 8 * (len(v1) - huffman.header_size(v1))) < 32  # same lengths: only
    assert h * x.size <= payload < (h + 1) * x.size + 32  # the padding of the streams differs
