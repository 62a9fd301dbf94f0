"""IDX reader/writer: round trips over every element type, and readable errors for bad files."""

import gzip

import numpy as np
import pytest

from refsim.data.idx import IDX_TYPES, encode_idx, parse_idx, read_idx


@pytest.mark.parametrize("code", sorted(IDX_TYPES))
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 1, 3)])
@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(code, shape, compress):
    dtype = IDX_TYPES[code].newbyteorder("=")
    a = (np.arange(np.prod(shape)) * 7 % 100).astype(dtype).reshape(shape)
    raw = encode_idx(a, compress=compress)
    b = parse_idx(raw, "x")
    assert b.dtype == dtype and b.shape == shape
    np.testing.assert_array_equal(a, b)
    assert raw[:2] == (b"\x1f\x8b" if compress else bytes([0, 0]))


def test_header_layout_is_big_endian():
    raw = encode_idx(np.array([[1, 2, 3]], dtype=np.int16))
    assert raw[:4] == bytes([0, 0, 0x0B, 2])
    assert raw[4:12] == bytes([0, 0, 0, 1, 0, 0, 0, 3])
    assert raw[12:] == bytes([0, 1, 0, 2, 0, 3])


def test_compressed_bytes_are_reproducible():
    a = np.arange(100, dtype=np.uint8)
    assert encode_idx(a, compress=True) == encode_idx(a, compress=True)


def test_read_idx_from_disk(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    (tmp_path / "a.gz").write_bytes(encode_idx(a, compress=True))
    (tmp_path / "a").write_bytes(encode_idx(a))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), a)


GOOD = encode_idx(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize("raw, message", [
    (b"\x00\x00", "too short"),
    (b"\x01\x00" + GOOD[2:], "bad IDX magic"),
    (GOOD[:2] + b"\x07" + GOOD[3:], "unknown IDX element type"),
    (GOOD[:3] + b"\x00" + GOOD[4:], "0 dimensions"),
    (GOOD[:10], "truncated IDX header"),
    (GOOD[:-1], "truncated IDX body"),
    (GOOD + b"\x00", "trailing bytes"),
    (gzip.compress(GOOD)[:-12], "truncated gzip"),
    (b"\x1f\x8b" + b"\x00" * 30, "corrupt gzip"),
])
def test_bad_files_name_the_file_and_problem(raw, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_idx(raw, "some-file.idx")
    assert "some-file.idx" in str(info.value)


def test_encode_rejects_unsupported_dtype():
    with pytest.raises(TypeError, match="no element type"):
        encode_idx(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="dimensions"):
        encode_idx(np.array(3, dtype=np.uint8))
